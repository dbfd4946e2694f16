"""Helpers for the hostile-input tests (fuzzing, properties, the bad-argument matrix).

- ``fixture_guest()``: a throw-away guest root (CPUs, network, users, homes) for an agent
  that must not be able to change this machine.
- ``MACHINE_COMMANDS`` / ``agent_for_hostile_input()``: an in-process agent with every command
  that could change the machine blocked and the kernel hooks forbidden.
- ``check_reply_lines()``: the reply invariant: each reply is one line holding one JSON
  object, ``{"return": ...}`` or ``{"error": {"class": ..., "desc": ...}}`` (plus ``id``).
- ``valid_value()`` / ``bad_values()``: argument values derived from the command table, so
  every command, including ones added later, is covered without a list to maintain.
"""
import json
import os
import re
import shutil
import tempfile

from tests.guestroot import GuestRoot, forbid_machine_changes
from tests.support import FIXTURES, make_config, qga_mini

# Commands whose bodies change the machine (clock, power, passwords, CPUs, memory, file
# systems) or reach outside any fixture root (guest-file-open and guest-exec take real paths).
# A fuzzer never runs them; tests that do run them point the agent at a fixture root.
MACHINE_COMMANDS = (
    "guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid",
    "guest-set-time", "guest-set-user-password", "guest-set-vcpus", "guest-set-memory-blocks",
    "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw",
    "guest-fstrim", "guest-exec", "guest-file-open",
)

# Commands whose bodies must never run in a test on this machine even with a fixture root:
# their ioctls act on whatever file system holds the path they are given (the fixture tree
# lives on this machine's disk).  The bad-argument matrix replaces their bodies with a stub.
NEVER_RUN_COMMANDS = ("guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list",
                      "guest-fsfreeze-thaw", "guest-fstrim")

SYSTEM_FIXTURE = os.path.join(FIXTURES, "system", "cpus-net", "this-machine")
ALICE_UID, ALICE_GID = 4242, 4243


def fixture_guest():
    """A GuestRoot with /proc, /sys and rtnetlink dumps of a captured machine, the identity
    passwd/shadow/sessions, and alice's home (owned by her when we are root)."""
    guest = GuestRoot()
    for name in ("proc", "sys", "rtnetlink"):
        shutil.copytree(os.path.join(SYSTEM_FIXTURE, name), guest.path("/" + name),
                        symlinks=True)
    identity = os.path.join(FIXTURES, "identity")
    for name, target in (("passwd", "/etc/passwd"), ("shadow", "/etc/shadow"),
                         ("test-qga-os-release", "/etc/os-release")):
        with open(os.path.join(identity, name), "rb") as f:
            guest.write(target, f.read())
    shutil.copytree(os.path.join(identity, "sessions"), guest.path("/run/systemd/sessions"))
    home = guest.mkdir("/home/alice", 0o755)
    if os.geteuid() == 0:
        os.chown(home, ALICE_UID, ALICE_GID)
    guest.mkdir("/root", 0o700)
    return guest


def agent_for_hostile_input(guest, block=MACHINE_COMMANDS):
    """An in-process Agent rooted in ``guest`` with ``block`` disabled and the kernel hooks
    forbidden; returns (agent, statedir, patchers).  The caller removes the statedir."""
    statedir = tempfile.mkdtemp(prefix="qga-hostile-state-")
    config = make_config(statedir, block_rpcs=list(block))
    devnull = open(os.devnull, "w")
    log = qga_mini.Log(devnull, verbose=False)
    log._syslog = False             # millions of inputs must not flood this machine's syslog
    agent = qga_mini.Agent(config, host=qga_mini.Host(guest.root, {"PATH": "/usr/bin:/bin"}),
                           log=log)
    agent.cleanups.append(devnull.close)
    agent.state.ensure()
    return agent, statedir, forbid_machine_changes()


# -- the reply invariant -------------------------------------------------------------------------

_STRING_OR_INF = re.compile(r'("(?:[^"\\]|\\.)*")|(?<![\w.])inf(?![\w.])')
ERROR_CLASSES = ("GenericError", "CommandNotFound")


class BadReply(AssertionError):
    """A reply that breaks the protocol (not one JSON object line, an internal error...)."""


def parse_reply_line(line):
    """One reply line as a dict; BadReply unless it is a well-formed qemu-ga reply.

    qemu prints an infinite double as a bare ``inf``; that is accepted as a number.
    """
    delimited = line.startswith(b"\xff")
    body = line[1:] if delimited else line
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise BadReply("reply is not ASCII: %r" % line[:200])
    if "\n" in text or "\r" in text:
        raise BadReply("reply spans lines: %r" % line[:200])
    try:
        reply = json.loads(_STRING_OR_INF.sub(lambda m: m.group(1) or "1e999", text))
    except ValueError as exc:
        raise BadReply("reply is not JSON (%s): %r" % (exc, line[:200]))
    if not isinstance(reply, dict) or set(reply) - {"return", "error", "id"} \
            or ("return" in reply) == ("error" in reply):
        raise BadReply("reply is not a QMP reply object: %r" % line[:200])
    if "error" in reply:
        error = reply["error"]
        if (not isinstance(error, dict) or set(error) != {"class", "desc"}
                or error["class"] not in ERROR_CLASSES or not isinstance(error["desc"], str)):
            raise BadReply("malformed error: %r" % line[:200])
        if error["desc"].startswith("internal error"):
            raise BadReply("uncaught exception in the agent: %r" % error["desc"])
    if delimited and "return" not in reply:
        raise BadReply("0xFF before an error reply: %r" % line[:200])
    return reply


def check_reply_lines(chunks):
    """The replies of one batch of reply chunks, each checked by parse_reply_line()."""
    data = b"".join(chunks)
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise BadReply("reply does not end with a newline: %r" % data[-200:])
    return [parse_reply_line(line) for line in data[:-1].split(b"\n")]


# -- argument values from the command table -------------------------------------------------------

JSON_KINDS = {"null": None, "bool": True, "int": 7, "float": 1.5, "str": "qga", "list": [],
              "object": {}}
INT64_MIN, INT64_MAX, UINT64_MAX = qga_mini.INT64_MIN, qga_mini.INT64_MAX, qga_mini.UINT64_MAX
HUGE_STRING_BYTES = 1 << 20
HUGE_LIST_ITEMS = 4096
TRAVERSALS = ("../../../../../../../../etc/passwd", "/tmp/../../etc/shadow",
              "./../../root/.ssh/authorized_keys", "a/../../../../b")
# Argument names whose values name files, users or directories: traversal is tried on them.
PATH_LIKE = re.compile(r"path|name|mountpoint|dir|file|user|keys")


def type_definition(typ):
    return qga_mini.ARGUMENT_TYPES.get(typ, {}) if isinstance(typ, str) else {}


def accepted_kinds(typ):
    """The JSON kinds (keys of JSON_KINDS) that type ``typ`` may be given."""
    if isinstance(typ, list):
        return {"list"}
    if typ in ("int", "uint64", "uint32", "uint16", "uint8"):
        return {"int"}
    if typ == "number":
        return {"int", "float"}
    if typ == "str":
        return {"str"}
    if typ == "bool":
        return {"bool"}
    definition = type_definition(typ)
    if "struct" in definition:
        return {"object"}
    if "enum" in definition:
        return {"str"}
    kinds = set()
    for branch in definition["alternate"].values():
        kinds |= accepted_kinds(branch)
    return kinds


def valid_value(typ):
    """A plain valid value of QAPI type ``typ`` (the first enum value, a one-item list...)."""
    if isinstance(typ, list):
        return [valid_value(typ[0])]
    simple = {"int": 1, "uint64": 1, "uint32": 1, "uint16": 1, "uint8": 1, "number": 1.0,
              "str": "qga", "bool": False}
    if typ in simple:
        return simple[typ]
    definition = type_definition(typ)
    if "struct" in definition:
        return {spec.lstrip("*"): valid_value(member)
                for spec, member in definition["struct"].items() if not spec.startswith("*")}
    if "enum" in definition:
        return definition["enum"][0]
    return valid_value(next(iter(definition["alternate"].values())))


def bad_values(name, typ):
    """[(variant, value, must_fail)] for one argument: every wrong JSON kind (must fail),
    huge, negative, empty, NUL/newline and traversal values where the type allows them."""
    variants = [("wrong type %s" % kind, value, True)
                for kind, value in sorted(JSON_KINDS.items()) if kind not in accepted_kinds(typ)]
    kinds = accepted_kinds(typ)
    if "int" in kinds:
        variants += [("huge int64", INT64_MAX, False), ("huge uint64", UINT64_MAX, False),
                     ("over uint64", UINT64_MAX + 1, typ != "number"),
                     ("huge double", 1e308, typ != "number"),
                     ("negative", -1, False), ("most negative", INT64_MIN, False),
                     ("zero", 0, False)]
    elif "float" in kinds:
        variants += [("huge double", 1e308, False), ("negative", -1.0, False)]
    if "str" in kinds:
        variants += [("empty string", "", False), ("huge string", "x" * HUGE_STRING_BYTES, False),
                     ("embedded NUL", "qga\0tail", False), ("embedded newline", "qga\ntail", False),
                     ("lone surrogate", "qga\udc80", False), ("non-ASCII", "\u00e9\U0001F600", False)]
        if PATH_LIKE.search(name):
            variants += [("traversal %d" % i, path, False) for i, path in enumerate(TRAVERSALS)]
    if isinstance(typ, list):
        variants += [("empty list", [], False),
                     ("huge list", [valid_value(typ[0])] * HUGE_LIST_ITEMS, False)]
    return variants


def argument_cases(data, base):
    """[(path, variant, arguments, must_fail)] for a QAPI ``data`` dict: each argument (and,
    inside lists of structs, each member of the first item) replaced in turn by every bad
    value, the others kept at ``base``; plus one unexpected argument."""
    cases = [("(unexpected)", "unexpected member", dict(base, **{"no-such-argument": 1}), True)]
    for spec, typ in data.items():
        name = spec.lstrip("*")
        for variant, value, must_fail in bad_values(name, typ):
            cases.append((name, variant, dict(base, **{name: value}), must_fail))
        element = typ[0] if isinstance(typ, list) else None
        for variant, value, must_fail in bad_values(name, element) if element else ():
            item = value
            cases.append(("%s[0]" % name, variant, dict(base, **{name: [item]}), must_fail))
        members = type_definition(element).get("struct") if element else None
        for mspec, mtyp in (members or {}).items():
            mname = mspec.lstrip("*")
            first = dict(base[name][0]) if base.get(name) else valid_value(element)
            for variant, value, must_fail in bad_values(mname, mtyp):
                item = dict(first, **{mname: value})
                cases.append(("%s[0].%s" % (name, mname), variant,
                              dict(base, **{name: [item]}), must_fail))
    return cases
