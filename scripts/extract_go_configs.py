#!/usr/bin/env python3
"""Copy the Go cc-relay's configs into tests/compat/go/ as fixtures for the compatibility suite.

Usage: scripts/extract_go_configs.py GO_REPO_DIR [COMMIT]

Takes, from the Go project's tree at COMMIT (default HEAD): example.yaml, and every ```yaml /
```toml block of README.md and docs-site/content/en/docs/*.md whose top-level keys are the Go
config's sections (other blocks, e.g. docker-compose files, are not configs). Each is written as
`{source}-{n}.{yaml,toml}`, byte for byte; SOURCE.md records where each came from. They are the
Go project's (AGPL-3.0), kept with its licence: see tests/compat/go/NOTICE.
"""
import os
import re
import subprocess
import sys

SECTIONS = {"server", "providers", "routing", "logging", "health", "cache", "model_mapping"}


def show(repo, commit, path):
    return subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def top_keys(text, lang):
    keys = set()
    in_table = False
    for line in text.splitlines():
        if lang == "yaml":
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):", line)
        else:
            m = re.match(r"^\[\[?([A-Za-z_][A-Za-z0-9_]*)", line)
            if m:
                in_table = True
            elif not in_table:
                # A key = value before any table header is a top-level key.
                m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if m:
            keys.add(m.group(1))
    return keys


def go_constants(repo, rev, files):
    """`name = "value"` string constants of the Go test package (single-line ones)."""
    consts = {}
    for path in files:
        for m in re.finditer(r'^\s*(\w+)\s*(?:string\s*)?:?=\s*"((?:[^"\\]|\\.)*)"\s*$',
                             show(repo, rev, path), re.M):
            consts.setdefault(m.group(1), m.group(2))
    return consts


def go_string(expr, consts):
    """A Go string expression of raw `...`, "..." and constant names joined by `+`, or None."""
    out, pos = [], 0
    token = re.compile(r'\s*(?:`([^`]*)`|"((?:[^"\\]|\\.)*)"|(\w+))\s*(\+)?', re.S)
    while True:
        m = token.match(expr, pos)
        if not m:
            return None
        raw, quoted, name, plus = m.groups()
        if raw is not None:
            out.append(raw)
        elif quoted is not None:
            out.append(bytes(quoted, "utf-8").decode("unicode_escape"))
        elif name in consts:
            out.append(consts[name])
        else:
            return None
        pos = m.end()
        if not plus:
            return "".join(out)


def go_test_configs(repo, rev):
    """`yamlContent := ...` / `tomlContent := ...` strings of the Go config package's tests:
    (test function, format, text)."""
    files = [p for p in subprocess.run(["git", "-C", repo, "ls-tree", "--name-only", rev,
                                        "internal/config/"], check=True, capture_output=True,
                                       text=True).stdout.split() if p.endswith("_test.go")]
    consts = go_constants(repo, rev, files)
    found = []
    for path in files:
        source = show(repo, rev, path)
        for m in re.finditer(r'(yaml|toml)Content\s*:?=\s*', source, re.I):
            text = go_string(source[m.end():], consts)
            func = re.findall(r"^func (Test\w+)", source[:m.start()], re.M)
            if text is not None and func:
                found.append((func[-1], m.group(1).lower(), text))
    return found


def main():
    repo = sys.argv[1]
    commit = sys.argv[2] if len(sys.argv) > 2 else "HEAD"
    rev = subprocess.run(["git", "-C", repo, "rev-parse", commit], check=True,
                         capture_output=True, text=True).stdout.strip()
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "compat", "go")
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if f.endswith((".yaml", ".toml")):
            os.remove(os.path.join(out, f))
    sources = [("example.yaml", "example.yaml")]
    with open(os.path.join(out, "example.yaml"), "w") as f:
        f.write(show(repo, rev, "example.yaml"))
    docs = ["README.md"] + sorted(
        p for p in subprocess.run(["git", "-C", repo, "ls-tree", "--name-only", rev,
                                   "docs-site/content/en/docs/"], check=True,
                                  capture_output=True, text=True).stdout.split()
        if p.endswith(".md"))
    for doc in docs:
        text = show(repo, rev, doc)
        stem = os.path.splitext(os.path.basename(doc))[0].lower()
        n = 0
        for m in re.finditer(r"^```(yaml|toml)[^\n]*\n(.*?)^```", text, re.S | re.M):
            lang, body = m.group(1), m.group(2)
            keys = top_keys(body, lang)
            if not keys or not keys <= SECTIONS:
                continue
            n += 1
            name = f"{stem}-{n:02}.{lang}"
            line = text[:m.start()].count("\n") + 1
            with open(os.path.join(out, name), "w") as f:
                f.write(body)
            sources.append((name, f"{doc}:{line}"))
    seen = {}
    for func, lang, body in go_test_configs(repo, rev):
        stem = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-",
                      func[len("Test"):]).lower()
        seen[stem] = seen.get(stem, 0) + 1
        # A test named for invalid input holds a config meant to be refused.
        prefix = "invalid-" if "invalid" in stem else ""
        name = f"{prefix}go-test-{stem}-{seen[stem]:02}.{lang}"
        with open(os.path.join(out, name), "w") as f:
            f.write(body)
        sources.append((name, f"internal/config tests, {func}"))
    with open(os.path.join(out, "SOURCE.md"), "w") as f:
        f.write(f"# Where these fixtures come from\n\nomarluq/cc-relay at {rev}, copied by "
                "`scripts/extract_go_configs.py`. Licence: see NOTICE.\n\n")
        for name, src in sources:
            f.write(f"- `{name}`: `{src}`\n")
    print(f"{len(sources)} fixtures from {rev}")


if __name__ == "__main__":
    main()
