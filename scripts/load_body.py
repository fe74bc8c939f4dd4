#!/usr/bin/env python3
"""Request bodies for scripts/load.sh: a small Messages request (~2 KB) and one shaped like a
Claude Code turn (~76 KB: system prompt blocks with cache_control, ~20 tools with JSON schemas,
a conversation with tool_use / tool_result blocks). Deterministic: same bytes on every run.

usage: load_body.py small|claude-code [--stream] [--size BYTES]  (writes the body to stdout)
"""
import argparse
import json
import sys

WORDS = (
    "the relay forwards each request to the upstream with a key from the pool and reads usage "
    "from the response as it streams back to the client without buffering it whole"
).split()


def text(n_bytes, seed=0):
    """Plain prose of about n_bytes bytes."""
    out, i = [], seed
    size = 0
    while size < n_bytes:
        w = WORDS[i % len(WORDS)]
        out.append(w)
        size += len(w) + 1
        i += 7
    return " ".join(out)[:n_bytes]


def small(stream, size):
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64000,
        "stream": stream,
        "system": "You are a helpful assistant.",
        "messages": [{"role": "user", "content": ""}],
    }
    base = len(json.dumps(body, separators=(",", ":")))
    body["messages"][0]["content"] = text(max(0, size - base))
    return body


def tool(i):
    return {
        "name": f"tool_{i}",
        "description": text(900, i),
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": text(120, i + 1)},
                "pattern": {"type": "string", "description": text(120, i + 2)},
                "limit": {"type": "integer", "description": "maximum number of results"},
                "options": {
                    "type": "object",
                    "properties": {"recursive": {"type": "boolean"}, "glob": {"type": "string"}},
                },
            },
            "required": ["path"],
            "additionalProperties": False,
        },
    }


def claude_code(stream, size):
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64000,
        "stream": stream,
        "metadata": {"user_id": "user_load_test_account__session_0000"},
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", "text": text(12000, 3), "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [tool(i) for i in range(20)],
        "messages": [],
    }
    turn = 0
    while True:
        msgs = body["messages"]
        msgs.append({"role": "user", "content": [{"type": "text", "text": text(1500, turn)}]})
        msgs.append({
            "role": "assistant",
            "content": [
                {"type": "text", "text": text(400, turn + 1)},
                {"type": "tool_use", "id": f"toolu_{turn:024d}", "name": f"tool_{turn % 20}",
                 "input": {"path": f"src/file_{turn}.rs", "pattern": "fn main"}},
            ],
        })
        msgs.append({
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": f"toolu_{turn:024d}",
                         "content": text(2500, turn + 2)}],
        })
        turn += 1
        if len(json.dumps(body, separators=(",", ":"))) >= size:
            break
    body["messages"].append({"role": "user", "content": "Continue."})
    body["messages"][-1]["content"] = [
        {"type": "text", "text": "Continue.", "cache_control": {"type": "ephemeral"}}
    ]
    return body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["small", "claude-code"])
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--size", type=int, default=None)
    a = ap.parse_args()
    if a.kind == "small":
        body = small(a.stream, a.size or 2048)
    else:
        body = claude_code(a.stream, a.size or 76000)
    sys.stdout.write(json.dumps(body, separators=(",", ":")))


if __name__ == "__main__":
    main()
