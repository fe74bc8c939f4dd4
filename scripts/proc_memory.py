"""A process's resident memory from /proc, for the scripts that measure the relay under load."""


def rss_kb(pid, field="VmRSS:"):
    """`VmRSS:` (now) or `VmHWM:` (peak) of `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0
