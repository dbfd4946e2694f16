#!/usr/bin/env python3
"""Turn the QAPI schema seed into schema.json (the Linux view, plus the 10.x additions).

Usage: python3 tools/qapi_to_json.py ../shared/seeds/001_*.reflowed.json > schema.json

QAPI files are a sequence of Python-literal dicts with '#' comments. We keep every
command, struct, enum, union and alternate in declaration order (which is also qemu-ga's
registration order), drop pragmas and 'if' conditions (we only build for Linux), and add
what QEMU 9.1-10.x added: guest-network-get-route, guest-get-load and fsinfo's
total-bytes-privileged.
"""
import ast
import json
import sys

ADDITIONS = [
    {"struct": "GuestLoadAverage",
     "data": {"load1m": "number", "load5m": "number", "load15m": "number"}},
    {"command": "guest-get-load", "returns": "GuestLoadAverage"},
    {"struct": "GuestNetworkRoute",
     "data": {"iface": "str", "destination": "str", "metric": "int",
              "*gateway": "str", "*mask": "str", "*irtt": "int", "*flags": "uint64",
              "*refcnt": "int", "*use": "int", "*window": "int", "*mtu": "int",
              "*desprefixlen": "str", "*source": "str", "*srcprefixlen": "str",
              "*nexthop": "str", "version": "int"}},
    {"command": "guest-network-get-route", "returns": ["GuestNetworkRoute"]},
]


def expressions(text):
    """Yield each top-level {...} of a QAPI file as a Python value."""
    code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    depth, start, quoted = 0, 0, False
    for i, ch in enumerate(code):
        if quoted:
            quoted = ch != "'"
        elif ch == "'":
            quoted = True
        elif ch == "{":
            depth, start = depth + 1, start if depth else i
        elif ch == "}":
            depth -= 1
            if depth == 0:
                lit = code[start:i + 1].replace("true", "True").replace("false", "False")
                yield ast.literal_eval(lit)


def linux_view(expr):
    expr = {k: v for k, v in expr.items() if k != "if"}
    if "enum" in expr:
        expr["data"] = [m["name"] if isinstance(m, dict) else m for m in expr["data"]]
    if expr.get("struct") == "GuestFilesystemInfo":
        data = {}
        for k, v in expr["data"].items():
            data[k] = v
            if k == "*total-bytes":
                data["*total-bytes-privileged"] = "uint64"
        expr["data"] = data
    return expr


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    out = [linux_view(e) for e in expressions(text) if "pragma" not in e] + ADDITIONS
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
