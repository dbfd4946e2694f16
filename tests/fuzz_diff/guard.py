"""The sender's last check: nothing that could act on this machine reaches either agent.

The differential fuzzer runs both agents as root on the real host.  Commands that change the
machine are only ever sent with ``GUARD_KEY`` among their arguments: an unexpected member is
rejected by the argument check (qemu's generated marshaller and qga-mini's check_members())
before the command body runs.  ``refusal(data)`` re-derives that from the bytes about to be
sent, without trusting the generator; the runner sends nothing it refuses.

How the bytes are judged, conservatively:
- ``data`` is split at 0xFF/0xFE (each resets both agents' parsers).  A segment in which no
  machine-changing command name can appear, even spelled with ``\\uXXXX`` escapes or overlong
  UTF-8, cannot name one.
- A segment where a name appears must be, after optional whitespace, a sequence of JSON
  objects or arrays that the json module reads strictly (no NaN, no duplicate keys, no raw
  control bytes, nesting and size far below both agents' limits).  Such text has no lexer
  error, so qemu's lexer and ours cut it into the same messages as the json module does.
- Every object in it naming such a command must carry GUARD_KEY in ``arguments``; guest-exec
  may run only HARMLESS_PROGRAMS and guest-file-open only a plain name in the agent's own
  throw-away working directory.
"""
import json
import re

GUARD_KEY = "fuzz-diff-guard"
HARMLESS_PROGRAMS = ("/bin/true", "/bin/echo")

# Every command that can change the machine.  guest-file-write/-seek/-read/-flush/-close only
# reach files that guest-file-open opened; guest-exec-status only reads.
MACHINE_COMMANDS = frozenset((
    "guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid",
    "guest-set-time", "guest-set-vcpus", "guest-set-memory-blocks", "guest-set-user-password",
    "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw",
    "guest-fstrim", "guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys",
    "guest-exec", "guest-file-open",
))
_NAMES = re.compile("|".join(re.escape(name) + ("(?!-status)" if name == "guest-exec" else "")
                             for name in sorted(MACHINE_COMMANDS, key=len, reverse=True)))
_U_ESCAPE = re.compile(rb"\\u([0-9a-fA-F]{4})")
_OVERLONG = re.compile(rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80-\x9f][\x80-\xbf]"
                       rb"|\xf0[\x80-\x8f][\x80-\xbf][\x80-\xbf]")
_SEGMENT_START = re.compile(r"[ \t\r\n]*(?=[{\[])")
_SPACE = re.compile(r"[ \t\r\n]*")
MAX_CHECKED_BYTES = 2000000         # well below qemu's 2 Mi token and 64 MiB limits
MAX_CHECKED_DEPTH = 1000            # below both agents' 1024


def _decode_overlong(match):
    raw = match.group(0)
    value = raw[0] & (0x1F, 0x0F, 0x07)[len(raw) - 2]
    for byte in raw[1:]:
        value = value << 6 | byte & 0x3F
    char = bytes((value,)) if value < 0x80 else b"?"
    return char if char.isalnum() or char == b"-" else b"?"     # never a quote or backslash


def names_in(segment):
    """The machine-changing command names a parser could read out of ``segment``."""
    text = _OVERLONG.sub(_decode_overlong, segment)
    text = _U_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)).encode("utf-8", "replace"), text)
    return set(_NAMES.findall(text.decode("latin-1")))


class Refused(ValueError):
    pass


def _reject_constant(name):
    raise Refused("%s is not strict JSON" % name)


def _no_duplicates(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise Refused("duplicate key")
    return obj


_STRICT = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def _depth(value):
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1)
                         for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def message_refusal(message):
    """Why one parsed message could act, or None."""
    if not isinstance(message, dict):
        return None
    arguments = message.get("arguments")
    arguments = arguments if isinstance(arguments, dict) else {}
    for key in ("execute", "exec-oob"):
        name = message.get(key)
        if not isinstance(name, str) or name not in MACHINE_COMMANDS or GUARD_KEY in arguments:
            continue
        if name == "guest-exec" and arguments.get("path") in HARMLESS_PROGRAMS:
            continue
        path = arguments.get("path")
        if name == "guest-file-open" and isinstance(path, str):
            name_part = path.split("\0", 1)[0]      # qemu-ga's C string ends at a NUL
            if "/" not in name_part and name_part not in ("", ".."):
                continue
        return "%s without %s" % (name, GUARD_KEY)
    return None


def segment_refusal(segment):
    """Why a segment naming a machine-changing command could act, or None."""
    if len(segment) > MAX_CHECKED_BYTES:
        return "too long to check"
    # Overlong letters are read as letters: a lenient parser would see the name.
    text = _OVERLONG.sub(_decode_overlong, segment).decode("utf-8", "surrogateescape")
    start = _SEGMENT_START.match(text)
    if start is None:
        return "does not start with an object or array"
    pos = start.end()
    while pos < len(text):
        if text[pos] not in "{[":
            return "a message that is not an object or array"
        try:
            message, pos = _STRICT.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            return "not strict JSON (%s)" % (str(exc)[:80],)
        if _depth(message) > MAX_CHECKED_DEPTH:
            return "nested too deep to check"
        why = message_refusal(message)
        if why:
            return why
        pos = _SPACE.match(text, pos).end()
    return None


def refusal(data):
    """Why ``data`` (the bytes of one input, however it is split into writes) must not be
    sent, or None when it cannot change the machine."""
    for segment in re.split(rb"[\xfe\xff]", data):
        if names_in(segment):
            why = segment_refusal(segment)
            if why:
                return why
    return None
