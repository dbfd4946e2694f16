"""Seeds for the fuzzer: real clients' byte patterns, protocol corner cases, and every command
of the command table with valid and invalid arguments.

``python3 -m tests.fuzz.make_corpus`` rewrites tests/fuzz/corpus/ (the committed seeds);
tests/fuzz/run.py and tests/test_fuzz_corpus.py also call ``command_seeds()`` at run time, so
a command added later is fuzzed without regenerating anything.
"""
import hashlib
import json
import os
import sys

from tests.fuzz.target import CORPUS_DIR, FILE_HANDLE
from tests.hostile import argument_cases, valid_value
from tests.support import qga_mini

# What the hosts send, byte for byte (see the reference, section 1.11).
CLIENT_SEEDS = {
    # libvirt: a line-based sync before each command, no 0xFF, ms timestamp ids.
    "libvirt-sync": b'{"execute":"guest-sync", "arguments":{"id":1700000000000}}\n',
    "libvirt-sync-then-command": b'{"execute":"guest-sync", "arguments":{"id":1700000000001}}\n'
                                 b'{"execute":"guest-get-time"}\n',
    "libvirt-interfaces": b'{"execute":"guest-network-get-interfaces"}\n',
    "libvirt-fsinfo": b'{"execute":"guest-get-fsinfo"}\n',
    "libvirt-set-vcpus": b'{"execute":"guest-set-vcpus","arguments":{"vcpus":'
                         b'[{"logical-id":1,"online":false}]}}\n',
    # Proxmox: sync-delimited and the command in one write, arguments always present.
    "proxmox-ping": b'{"execute":"guest-sync-delimited","arguments":{"id":123450001}}\n'
                    b'{"execute":"guest-ping","arguments":{}}\n',
    "proxmox-osinfo": b'{"execute":"guest-sync-delimited","arguments":{"id":123450002}}\n'
                      b'{"execute":"guest-get-osinfo","arguments":{}}\n',
    "proxmox-file-read": b'{"execute":"guest-sync-delimited","arguments":{"id":123450003}}\n'
                         b'{"execute":"guest-file-read","arguments":{"handle":77,'
                         b'"count":16}}\n',
    # qemu-ga-client (qemu.qmp, negotiate=False): ping, then sync with a random id.
    "qemu-qmp-ping": b'{"execute": "guest-ping"}',
    "qemu-qmp-sync": b'{"execute": "guest-sync", "arguments": {"id": 2918234519}}',
    "qemu-qmp-with-id": b'{"execute": "guest-info", "id": "__qmp#00001"}',
    "qemu-qmp-cat": b'{"execute": "guest-file-read", "arguments": {"handle": 77, '
                    b'"count": 1024}}',
    # The documented resynchronisation: 0xFF, then guest-sync-delimited.
    "resync": b'\xff{"execute":"guest-sync-delimited","arguments":{"id":42}}',
    "resync-after-partial": b'{"execute":"guest-sy\xff{"execute":"guest-sync-delimited",'
                            b'"arguments":{"id":43}}',
}

# Protocol corner cases the framer and the parser must survive.
PROTOCOL_SEEDS = {
    "partial": b'{"execute":"guest-pi',
    "pipelined": b'{"execute":"guest-ping"}{"execute":"guest-ping","id":1}\n'
                 b'{"execute":"guest-sync","arguments":{"id":-5}}',
    "whitespace": b' \t\r\n\r\n  {\r\n"execute"\t:\n"guest-ping"\r\n}\r\n',
    "not-objects": b'[1,2] "x" 42\nnull true {}',
    "duplicate-key": b'{"execute":"guest-ping","execute":"guest-ping"}',
    "single-quotes": b"{'execute':'guest-sync','arguments':{'id':1},'id':'it\\'s'}",
    "escapes": b'{"execute":"guest-sync","arguments":{"id":1},"id":"\\u0000\\ud83d\\ude00'
               b'\\ud800\\t\\/"}',
    "overlong-nul": b'{"execute":"guest-ping","id":"\xc0\x80\xed\xa0\x80"}',
    "lexer-errors": b'{"execute":01}{"a":1.}{"a":-}{"a":1e}{"a":.5}{"a":TRUE}\x01\x1f',
    "keywords": b'{"execute":"guest-ping","id":nul}{"id":truefalse}',
    "deep-nesting": b'{"execute":"guest-ping","id":' + b"[" * 1025 + b"]" * 1025 + b"}",
    "nesting-limit": b'{"execute":"guest-ping","id":' + b"[" * 1023 + b"]" * 1023 + b"}",
    "big-numbers": b'{"execute":"guest-sync","arguments":{"id":18446744073709551615},'
                   b'"id":[1e400,-1e400,1.5e-7,-0,9223372036854775808]}',
    "arguments-not-object": b'{"execute":"guest-ping","arguments":[]}'
                            b'{"execute":"guest-ping","arguments":null}',
    "exec-oob": b'{"exec-oob":"guest-ping"}{"execute":"guest-ping","exec-oob":"x"}',
    "unknown-command": b'{"execute":" guest-ping"}{"execute":"GUEST-PING"}{"execute":""}',
    "blocked-command": b'{"execute":"guest-shutdown","arguments":{"mode":"reboot"}}',
    "unbalanced": b'}]{"execute":"guest-ping"}]]}}',
    "stray-ff-fe": b'\xff\xfe\xff{"execute":"\xff"}\xfe',
    "file-handle-ops": b'{"execute":"guest-file-write","arguments":{"handle":77,'
                       b'"buf-b64":"aGVsbG8="}}{"execute":"guest-file-seek","arguments":'
                       b'{"handle":77,"offset":0,"whence":"set"}}{"execute":"guest-file-read",'
                       b'"arguments":{"handle":77,"count":5}}{"execute":"guest-file-flush",'
                       b'"arguments":{"handle":77}}',
    "file-close": b'{"execute":"guest-file-close","arguments":{"handle":77}}',
    "base64-oddities": b'{"execute":"guest-file-write","arguments":{"handle":77,'
                       b'"buf-b64":"YQ==YWJj\\n===="}}',
}


def _request(name, arguments):
    request = {"execute": name}
    if arguments is not None:
        request["arguments"] = arguments
    return json.dumps(request).encode("ascii")


def _base_arguments(cmd):
    base = {}
    for spec, typ in cmd.data.items():
        if not spec.startswith("*"):
            base[spec] = FILE_HANDLE if spec == "handle" else valid_value(typ)
    return base


def command_seeds():
    """{name: bytes}: for every registered command, a valid request (all optional arguments
    too) and each argument case of tests.hostile.argument_cases() short enough for a seed."""
    seeds = {}
    for name in sorted(qga_mini.COMMANDS):
        cmd = qga_mini.COMMANDS[name]
        base = _base_arguments(cmd)
        full = dict(base)
        for spec, typ in cmd.data.items():
            full.setdefault(spec.lstrip("*"), FILE_HANDLE if spec == "handle"
                            else valid_value(typ))
        seeds["%s-valid" % name] = _request(name, base or None)
        seeds["%s-all-arguments" % name] = _request(name, full)
        for path, variant, arguments, _ in argument_cases(cmd.data, base):
            if variant.startswith("huge") and variant not in ("huge int64", "huge uint64"):
                continue                        # seeds stay small; the fuzzer grows them
            data = _request(name, arguments)
            seeds["%s-%s-%s-%s" % (name, path, variant.replace(" ", "-"),
                                   hashlib.sha1(data).hexdigest()[:6])] = data
    return seeds


def write_corpus(directory=CORPUS_DIR):
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    seeds = dict(CLIENT_SEEDS)
    seeds.update(PROTOCOL_SEEDS)
    seeds.update(command_seeds())
    for name, data in seeds.items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        with open(os.path.join(directory, safe), "wb") as f:
            f.write(data)
    return len(seeds)


if __name__ == "__main__":
    sys.stdout.write("%d seeds in %s\n" % (write_corpus(), CORPUS_DIR))
