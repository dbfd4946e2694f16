"""Inputs for the differential fuzzer, generated from schema.json.

``make_case(seed, index)`` is a pure function of its two numbers, so any input of any run can
be made again.  A case is a dict: ``chunks`` (the writes, as bytes; HANDLE and PID stand for
the setup's file handle and exec pid, different in each agent), ``needs`` (which setup it
wants), ``what`` (a one-line description) and ``compare-return`` (a single request whose
return value must be the same in both agents, see SAME_RETURN).

Each input is one of:
- a command with a valid argument set (derived from the schema, with values that are safe
  here: files in the agent's throw-away directory, harmless programs);
- the same with one argument, a list item's member, ``id``, ``execute`` or ``arguments``
  replaced by a value of another JSON type or by a hostile value (HOSTILE below), a required
  argument left out, or an unknown or duplicated key added;
- a stream of 1-4 such messages with 0xFF/0xFE bytes and whitespace between or inside them.
Every input is then cut into 1-6 writes at random places.  Commands that change the machine
always carry guard.GUARD_KEY (see guard.py).
"""
import base64
import json
import random

from tests.fuzz_diff.guard import GUARD_KEY, HARMLESS_PROGRAMS, MACHINE_COMMANDS, refusal
from tests.support import SCHEMA

HANDLE, PID = b"@HANDLE@", b"@PID@"
PLACEHOLDERS = (HANDLE, PID)
WORK_FILE = "fuzz-file"             # exists in each agent's working directory
MIB = 1 << 20


def _nest(depth, kind):
    if kind == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _hostile_values():
    """Raw JSON tokens: every JSON type, then the values that break parsers and checkers."""
    values = [b"null", b"true", b"false", b"0", b"1", b"-1", b"1.5", b'""', b'"fuzz"', b"[]",
              b"{}", b"[1]", b'["a"]', b'{"a":1}', b"[null]", b"[[]]", b"[{}]"]
    for number in (2 ** 31, 2 ** 31 - 1, -2 ** 31, 2 ** 32, 2 ** 63 - 1, 2 ** 63, -2 ** 63,
                   -2 ** 63 - 1, 2 ** 64 - 1, 2 ** 64, 2 ** 64 + 1, -2 ** 64, 10 ** 30):
        values.append(str(number).encode())
    values += [b"9" * 4400, b"-" + b"9" * 4400, b"1" + b"0" * 20000, b"4" * 1000 + b".5",
               b"1" * 400 + b"e-500", b"1e308", b"1e309", b"-1e309", b"1.7976931348623157e308",
               b"4.9e-324", b"1e-400", b"-0.0", b"-0", b"0.0", b"1.0", b"1E2", b"-1.5e+3",
               b"NaN", b"nan", b"Infinity", b"-Infinity", b"inf", b"-inf", b"01", b"1.",
               b"-", b".5", b"0x10", b"+1"]
    values += [b'"' + b"a" * MIB + b'"', b'"' + b"9" * 5000 + b'"', b'"\\u0000"',
               b'"a\\u0000b"', b'"fuzz-file\\u0000tail"', b'"\\ud800"', b'"\\udc00"',
               b'"\\ud800\\udc00"', b'"\\ud83d\\ude00"', b'"\xed\xa0\x80"', b'"\xc3"',
               b'"\x80"', b'"\xc0\x80"', b'"\xc1\xbf"', b'"\xf4\x90\x80\x80"', b'"\xfd"',
               b'"\xc3\xa9"', b'"\x01"', b'"\t"', b'"\\n"', b'"\\x"', b'"\\u12"', b"'sq'",
               b"'\\''", b'" "', b'"-1"', b'"1"', b'"set"', b'"true"', b'"/"', b'"."',
               b'"\\/"', b'"\\u00e9"']
    for depth in (1021, 1022, 1023, 1024, 1025):
        values += [_nest(depth, "["), _nest(depth, "{")]
    values += [b"[" * 1100, b"{" * 3, b"]", b"}", b"[1,]", b'{"a"}', b"[1 2]"]
    return values


HOSTILE = _hostile_values()
JSON_KINDS = HOSTILE[:17]


def _valid(typ, rng):
    """A valid value of QAPI type ``typ``, as a Python value."""
    if isinstance(typ, list):
        return [_valid(typ[0], rng) for _ in range(rng.choice((0, 1, 1, 2)))]
    simple = {"int": lambda: rng.choice((0, 1, 5, 1000)),
              "uint64": lambda: rng.choice((0, 1, 4096)), "number": lambda: 1.5,
              "str": lambda: rng.choice(("fuzz", "", "root")),
              "bool": lambda: rng.choice((True, False))}
    if typ in simple:
        return simple[typ]()
    kind, expr = SCHEMA.types[typ]
    if kind == "enum":
        return rng.choice(expr["data"])
    if kind == "alternate":
        return _valid(rng.choice(list(expr["data"].values())), rng)
    return {spec.lstrip("*"): _valid(member, rng) for spec, member in expr["data"].items()
            if not spec.startswith("*") or rng.random() < 0.5}


# Valid values that are safe here (throw-away files, harmless programs), per command argument.
SAFE_VALUES = {
    ("guest-file-open", "path"): [WORK_FILE, "missing-file", ".", "fuzz-new"],
    ("guest-file-open", "mode"): ["r", "rb", "r+", "w", "a", "w+", "rb+", "x"],
    ("guest-file-read", "count"): [0, 1, 4096, 48 * MIB],
    ("guest-file-write", "buf-b64"): [base64.b64encode(b"fuzz\n").decode(), "", "eA==", "!"],
    ("guest-file-write", "count"): [0, 1, 5],
    ("guest-file-seek", "offset"): [0, 1, -1],
    ("guest-exec", "path"): list(HARMLESS_PROGRAMS),
    ("guest-exec", "arg"): [[], ["fuzz"], ["-n", "x"]],
    ("guest-exec", "env"): [[], ["A=1"]],
    ("guest-exec", "input-data"): ["", "eA=="],
    ("guest-ssh-get-authorized-keys", "username"): ["root", "nobody", "no-such-user"],
    ("guest-sync", "id"): [0, 7, 2 ** 40], ("guest-sync-delimited", "id"): [0, 7, 2 ** 40],
}
# Commands whose return value is the same in both agents here (same files, same machine, no
# clock or counters in it): for a single such request the values are compared too.
SAME_RETURN = ("guest-sync", "guest-sync-delimited", "guest-ping", "guest-file-read",
               "guest-file-write", "guest-file-seek", "guest-file-flush", "guest-file-close",
               "guest-fsfreeze-status", "guest-get-host-name", "guest-get-timezone",
               "guest-get-osinfo", "guest-get-vcpus", "guest-get-memory-block-info",
               "guest-get-memory-blocks", "guest-get-users", "guest-ssh-get-authorized-keys")
HANDLE_COMMANDS = ("guest-file-close", "guest-file-read", "guest-file-write",
                   "guest-file-seek", "guest-file-flush")


class Raw(object):
    """A JSON token written as it is."""

    def __init__(self, token):
        self.token = token


def encode(value):
    """JSON bytes of ``value``; Raw tokens go in unchanged, dict order is kept."""
    if isinstance(value, Raw):
        return value.token
    if isinstance(value, dict):
        return b"{" + b",".join(encode(k) + b":" + encode(v) for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(encode(v) for v in value) + b"]"
    if isinstance(value, tuple):                    # duplicated keys: [(key, value), ...]
        return b"{" + b",".join(encode(k) + b":" + encode(v) for k, v in value) + b"}"
    return json.dumps(value).encode()


def valid_arguments(name, rng):
    data = SCHEMA.commands[name].get("data") or {}
    arguments = {}
    for spec, typ in data.items():
        arg = spec.lstrip("*")
        if spec.startswith("*") and rng.random() < 0.5:
            continue
        if name in HANDLE_COMMANDS and arg == "handle":
            arguments[arg] = Raw(HANDLE)
        elif name == "guest-exec-status":
            arguments[arg] = Raw(PID)
        elif (name, arg) in SAFE_VALUES:
            arguments[arg] = rng.choice(SAFE_VALUES[(name, arg)])
        else:
            arguments[arg] = _valid(typ, rng)
    if name in MACHINE_COMMANDS and name not in ("guest-exec", "guest-file-open"):
        arguments[GUARD_KEY] = 0
    return arguments


def _guard_if_unsafe(name, arguments):
    """guest-exec and guest-file-open run unguarded only with their safe values."""
    if name == "guest-exec" and arguments.get("path") not in HARMLESS_PROGRAMS:
        arguments[GUARD_KEY] = 0
    if name == "guest-file-open" and arguments.get("path") not in SAFE_VALUES[(name, "path")]:
        arguments[GUARD_KEY] = 0


def _mutate_list_member(name, arguments, rng):
    """Replace a member of a list item (vcpus[0].online, mem-blks[0].phys-index, ...)."""
    data = SCHEMA.commands[name].get("data") or {}
    for spec, typ in data.items():
        arg = spec.lstrip("*")
        if isinstance(typ, list) and typ[0] in SCHEMA.types \
                and SCHEMA.types[typ[0]][0] == "struct":
            item = _valid(typ[0], rng)
            member = rng.choice(list(item) or ["x"])
            item[member] = Raw(rng.choice(HOSTILE))
            arguments[arg] = [item]
            return "%s[0].%s" % (arg, member)
    return None


def make_message(rng):
    """(message value, description, needs) of one request, valid or mutated."""
    names = sorted(SCHEMA.commands)
    name = rng.choice(names)
    arguments = valid_arguments(name, rng)
    message = {"execute": name}
    what = name
    roll = rng.random()
    hostile = rng.choice(HOSTILE)
    guarded = name in MACHINE_COMMANDS
    if roll < 0.1:
        what += " valid"
    elif roll < 0.5:
        data = SCHEMA.commands[name].get("data") or {}
        targets = [spec.lstrip("*") for spec in data]
        member = _mutate_list_member(name, arguments, rng) if rng.random() < 0.2 else None
        if member:
            what += " %s=%r" % (member, hostile[:40])
        elif targets:
            arg = rng.choice(targets)
            arguments[arg] = Raw(hostile)
            what += " %s=%r" % (arg, hostile[:40])
        else:
            arguments["x"] = Raw(hostile)
            what += " unexpected x=%r" % (hostile[:40],)
    elif roll < 0.62:
        message["id"] = Raw(hostile)
        what += " id=%r" % (hostile[:40],)
    elif roll < 0.68:
        message["execute"] = Raw(hostile)
        arguments.pop(GUARD_KEY, None)
        arguments[GUARD_KEY] = 0                    # whatever it names now, it stays guarded
        what = "execute=%r" % (hostile[:40],)
    elif roll < 0.72 and not guarded:
        message["arguments"] = Raw(hostile)
        what += " arguments=%r" % (hostile[:40],)
    elif roll < 0.8:
        required = [spec for spec in SCHEMA.commands[name].get("data") or {}
                    if not spec.startswith("*")]
        if required:
            arg = rng.choice(required)
            arguments.pop(arg, None)
            what += " without %s" % arg
        else:
            arguments["x"] = 1
            what += " unexpected x"
    elif roll < 0.88:
        where = rng.choice(("top", "arguments"))
        (message if where == "top" else arguments)[rng.choice(("x", "ID", "execute "))] = 1
        what += " unknown key in %s" % where
    elif not guarded:
        pairs = [(k, v) for k, v in arguments.items()]
        if pairs and rng.random() < 0.5:
            pairs.append(rng.choice(pairs))
            arguments = Raw(encode(tuple(pairs)))
            what += " duplicated argument"
        else:
            message = Raw(encode((("execute", name), ("execute", name))))
            what += " duplicated execute"
    else:
        what += " valid"
    if isinstance(message, dict):
        if "arguments" not in message and (arguments or guarded or rng.random() < 0.3):
            if isinstance(arguments, dict):
                _guard_if_unsafe(name, arguments)
            message["arguments"] = arguments
        if rng.random() < 0.3 and "id" not in message:
            message["id"] = rng.choice((1, "x", None, [1]))
            keys = list(message)
            rng.shuffle(keys)
            message = {k: message[k] for k in keys}
    needs = []
    if name in HANDLE_COMMANDS:
        needs.append("handle")
    if name == "guest-exec-status":
        needs.append("pid")
    return message, what, needs


def _cut(data, rng, pieces):
    """``data`` cut at ``pieces - 1`` random places, never inside a placeholder."""
    banned = set()
    for placeholder in PLACEHOLDERS:
        start = data.find(placeholder)
        while start >= 0:
            banned.update(range(start + 1, start + len(placeholder)))
            start = data.find(placeholder, start + 1)
    cuts = sorted(set(c for c in (rng.randrange(1, len(data)) for _ in range(pieces - 1))
                      if c not in banned)) if len(data) > 1 else []
    bounds = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def make_case(seed, index):
    """The input number ``index`` of the run with ``seed``.  An input the guard would refuse
    (a guarded request cut by a 0xFF, or holding a token strict JSON rejects) is drawn again:
    the sender would not send it."""
    rng = random.Random("%s:%s" % (seed, index))
    while True:
        case = _draw_case(rng)
        if refusal(b"".join(case["chunks"])) is None:
            return dict(case, seed=seed, index=index)


def _draw_case(rng):
    compare = False
    if rng.random() < 0.75:
        message, what, needs = make_message(rng)
        data = encode(message)
        compare = isinstance(message, dict) and message.get("execute") in SAME_RETURN
    else:
        parts, whats, needs = [], [], []
        for _ in range(rng.randint(1, 4)):
            message, what, more = make_message(rng)
            parts.append(encode(message))
            whats.append(what)
            needs += [n for n in more if n not in needs]
        glue = [rng.choice((b"", b"\n", b" ", b"\xff", b"\xfe", b"\r\n\t")) for _ in parts]
        data = b"".join(g + p for g, p in zip(glue, parts))
        for _ in range(rng.randint(0, 3)):
            at = rng.randrange(len(data) + 1)
            data = data[:at] + b"\xff" + data[at:]
        what = "stream: " + " | ".join(whats)
    pieces = rng.choice((1, 1, 2, 3, 6))
    return {"chunks": _cut(data, rng, pieces), "needs": needs, "what": what,
            "compare-return": compare}
