"""Divergences that are understood, each with the area that owns it and why.

An entry matches either one differing pair of replies (``pair``: qemu-ga's reply, qga-mini's
reply, each as run.normalize() gives it) or a whole exchange (``whole``: case, qemu-ga's and
qga-mini's ([replies], end)).  An input whose differences are all matched is "known".
Areas:
- "proto": the wire protocol, number parsing, integer ranges.  That developer's branch is
  fixing them; the lead drops these entries after merging it.
- "README": a deliberate difference listed in README.md's differences table.
- "qemu-ga bug": qemu-ga 7.2 misbehaves (crash, hang, nonsense); never copied.
"""
import re
from collections import namedtuple

Known = namedtuple("Known", "name area why pair whole")

LIMIT_ERRORS = ("JSON nesting depth limit exceeded", "JSON token count limit exceeded",
                "JSON token size limit exceeded")
PARSE_LEVEL = re.compile(r"JSON parse error, |QMP input must be a JSON object\Z")
NEWER_COMMANDS = re.compile(r"The command (guest-get-load|guest-network-get-route) has not "
                            r"been found\Z")
UNEXPECTED = re.compile(r"(Parameter|QMP input member) '[^']*' is unexpected\Z")


def _error(reply, pattern):
    return reply[0] == "error" and re.match(pattern, reply[2]) is not None


def _limit_then_anything(case, theirs, ours):
    """Both met the same limit error at the same place; what follows may differ."""
    for a, b in zip(theirs[0], ours[0]):
        if a != b:
            return False
        if a[0] == "error" and a[2] in LIMIT_ERRORS:
            return True
    return False


def _huge_integer_kills(case, theirs, ours):
    return (ours[1] == "dead" and theirs[1] == "ok"
            and re.search(rb"[0-9]{4300}", b"".join(case["chunks"])) is not None)


def _parse_level_difference(case, theirs, ours):
    """The first difference is between two parse-level errors (lexer 'stray' texts, the
    recovery after a lexer error inside a number or string): the streams part from there."""
    for a, b in zip(theirs[0], ours[0]):
        if a != b:
            return (a[0] == b[0] == "error" and PARSE_LEVEL.match(a[2]) is not None
                    and PARSE_LEVEL.match(b[2]) is not None)
    return False


KNOWN = [
    Known("limit-then-rest-of-message", "README",
          "Limits: after a limit error qemu-ga lexes the rest of the message as new input "
          "(a flood of errors); qga-mini skips to the message's end",
          None, _limit_then_anything),
    Known("huge-integer-kills-agent", "proto",
          "an integer literal of 4300+ digits ends qga-mini (issue 9 item 2)",
          None, _huge_integer_kills),
    Known("parse-error-texts-and-recovery", "proto",
          "lexer error texts and the recovery after an error inside a token differ "
          "(e.g. '\\u12\"' quoted with its quote, a 0xFF inside a number)",
          None, _parse_level_difference),
    Known("newer-commands", "README",
          "guest-get-load and guest-network-get-route are qemu-ga 10.x commands",
          lambda a, b: _error(a, NEWER_COMMANDS), None),
    Known("guest-get-devices", "README",
          "qemu-ga disables guest-get-devices on Linux; qga-mini lists PCI devices",
          lambda a, b: _error(a, r"Command guest-get-devices has been disabled\Z"), None),
    Known("exec-capture-output-modes", "README",
          "guest-exec capture-output takes 10.x's modes too (qemu-ga 7.2: a boolean only)",
          lambda a, b: _error(a, r"Invalid parameter type for 'capture-output', expected: "
                                 r"boolean\Z"), None),
    Known("ssh-unknown-user-text", "README",
          "guest-ssh-*: an unknown user is 'No such user' (qemu-ga 7.2 says 'Success')",
          lambda a, b: _error(a, r"(?s)failed to lookup user '.*': Success\Z")
          and _error(b, r"(?s)failed to lookup user '.*': No such user\Z"), None),
    Known("unexpected-member-order", "README",
          "with several unexpected members qemu-ga names the first in its hash table's "
          "order, qga-mini the first in the request",
          lambda a, b: _error(a, UNEXPECTED) and _error(b, UNEXPECTED)
          and a[2].split("'")[0] == b[2].split("'")[0], None),
]
BY_NAME = {k.name: k for k in KNOWN}


def match(case, theirs, ours):
    """The entry that explains this divergence, or None."""
    for entry in KNOWN:
        if entry.whole and entry.whole(case, theirs, ours):
            return entry
    if theirs[1] != ours[1] or len(theirs[0]) != len(ours[0]):
        return None
    found = None
    for a, b in zip(theirs[0], ours[0]):
        if a == b:
            continue
        entry = next((k for k in KNOWN if k.pair and k.pair(a, b)), None)
        if entry is None:
            return None
        found = found or entry
    return found
