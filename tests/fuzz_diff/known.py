"""Divergences that are understood, each with the area that owns it and why.

An entry explains one differing pair of replies (``pair(theirs, ours)``: qemu-ga's and
qga-mini's reply, as run.normalize() gives them), everything from a differing reply on
(``rest(theirs, ours, i)``: the two reply lists, the index; the streams part there), or a
whole exchange (``whole(case, theirs, ours)``, each side as ([replies], end)).  An input whose
differences are all explained is "known".
Areas:
- "proto": the wire protocol, number parsing, integer ranges: to be fixed, not kept.  None is
  left; each fixed one keeps its reproducer as tests/fuzz_diff/reproducers/fixed-*.json, which
  must now answer alike.
- "README": a deliberate difference listed in README.md's differences table.
- "qemu-ga bug": qemu-ga 7.2 misbehaves (crash, hang, nonsense); never copied.
"""
import json
import re
from collections import namedtuple

Known = namedtuple("Known", "name area why pair rest whole")

LIMIT_ERRORS = ("JSON nesting depth limit exceeded", "JSON token count limit exceeded",
                "JSON token size limit exceeded")
STRAY = r"(?s)JSON parse error, stray '.*'\Z"
ERROR_TOKEN_ECHO = 64
NEWER_COMMANDS = re.compile(r"The command (guest-get-load|guest-network-get-route) has not "
                            r"been found\Z")
UNEXPECTED = re.compile(r"(Parameter|QMP input member) '[^']*' is unexpected\Z")


def _error(reply, pattern):
    return reply[0] == "error" and re.match(pattern, reply[2]) is not None


def _limit_then_anything(theirs, ours, i):
    """Both met the same limit error before this place; what follows may differ."""
    return any(a == b and a[0] == "error" and a[2] in LIMIT_ERRORS
               for a, b in zip(theirs[:i], ours[:i]))


def _same_when_sorted(theirs, ours):
    """Two returned lists with the same items in another order."""
    if theirs[0] != "return" or ours[0] != "return" or theirs[1] != ours[1] or not theirs[2]:
        return False
    a, b = json.loads(theirs[2]), json.loads(ours[2])
    key = lambda item: json.dumps(item, sort_keys=True)     # noqa: E731
    return isinstance(a, list) and isinstance(b, list) and sorted(a, key=key) == sorted(
        b, key=key)


def _capped(theirs, ours):
    """qga-mini's stray text is qemu-ga's cut to its first 32 and last 32 bytes (ASCII and
    the 0xFF here, which both show as one U+FFFD)."""
    inner_a, inner_b = (text[len("JSON parse error, stray '"):-1] for text in (theirs, ours))
    half = ERROR_TOKEN_ECHO // 2
    return len(inner_a) > ERROR_TOKEN_ECHO and inner_b == inner_a[:half] + "..." + inner_a[
        -half:]


KNOWN = [
    Known("limit-then-rest-of-message", "README",
          "Limits: after a limit error qemu-ga lexes the rest of the message as new input "
          "(a flood of errors); qga-mini skips to the message's end",
          None, _limit_then_anything, None),
    Known("lexer-error-quote-cap", "README",
          "Lexer error text: qga-mini quotes at most 64 bytes of a bad token",
          lambda a, b: _error(a, STRAY) and _error(b, STRAY) and _capped(a[2], b[2]),
          None, None),
    Known("newer-commands", "README",
          "guest-get-load and guest-network-get-route are qemu-ga 10.x commands",
          lambda a, b: _error(a, NEWER_COMMANDS), None, None),
    Known("guest-get-devices", "README",
          "qemu-ga disables guest-get-devices on Linux; qga-mini lists PCI devices",
          lambda a, b: _error(a, r"Command guest-get-devices has been disabled\Z"),
          None, None),
    Known("exec-capture-output-modes", "README",
          "guest-exec capture-output takes 10.x's modes too (qemu-ga 7.2: a boolean only)",
          lambda a, b: _error(a, r"Invalid parameter type for 'capture-output', expected: "
                                 r"boolean\Z"), None, None),
    Known("ssh-unknown-user-text", "README",
          "guest-ssh-*: an unknown user is 'No such user' (qemu-ga 7.2 says 'Success')",
          lambda a, b: _error(a, r"(?s)failed to lookup user '.*': Success\Z")
          and _error(b, r"(?s)failed to lookup user '.*': No such user\Z"), None, None),
    Known("numeric-order", "README",
          "guest-get-vcpus / memory blocks: qemu-ga lists sysfs in directory order, qga-mini "
          "in numeric order",
          _same_when_sorted, None, None),
    Known("unexpected-member-order", "README",
          "with several unexpected members qemu-ga names the first in its hash table's "
          "order, qga-mini the first in the request",
          lambda a, b: _error(a, UNEXPECTED) and _error(b, UNEXPECTED)
          and a[2].split("'")[0] == b[2].split("'")[0], None, None),
]
BY_NAME = {k.name: k for k in KNOWN}


def match(case, theirs, ours):
    """The entry that explains this divergence (the first one used), or None."""
    for entry in KNOWN:
        if entry.whole and entry.whole(case, theirs, ours):
            return entry
    (a_list, a_end), (b_list, b_end) = theirs, ours
    found = None
    for i in range(max(len(a_list), len(b_list)) + 1):
        a, b = a_list[i:i + 1], b_list[i:i + 1]
        if a == b and (a or a_end == b_end):
            if not a:
                return found
            continue
        entry = next((k for k in KNOWN if a and b and k.pair and k.pair(a[0], b[0])), None)
        if entry is None:
            entry = next((k for k in KNOWN if k.rest and k.rest(a_list, b_list, i)), None)
            return (found or entry) if entry else None
        found = found or entry
    return found
