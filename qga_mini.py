#!/usr/bin/env python3
"""qga-mini: a QEMU guest agent for Linux guests in one standard-library Python file.

A host (libvirt, Proxmox, OpenStack, QEMU's qemu-ga-client) cannot tell it from the real
``qemu-ga``: it speaks the same JSON protocol over the same channels, answers the same
commands with the same shapes, and fails with the same error classes and texts.

Running it
    python3 qga_mini.py                    # virtio-serial, finds org.qemu.guest_agent.0 itself
    python3 qga_mini.py --device           # the same, spelled out
    python3 qga_mini.py -m unix-listen -p /tmp/qga.sock -t /tmp/qga-state
    python3 qga_mini.py -m isa-serial -p /dev/ttyS1
    python3 qga_mini.py -m vsock-listen -p 4294967295:1234   # VMADDR_CID_ANY:port
    python3 qga_mini.py -m stdio           # one client on stdin/stdout (inetd style, tests)
    python3 qga_mini.py --help             # every option; qemu-ga's flags and config file work

The options and the config file (``/etc/qemu/qemu-ga.conf``, ``$QGA_CONF`` or ``-c``) are
qemu-ga's; ``-D`` prints the effective configuration in qemu-ga's format.

Security
    Every command runs as the agent's user, normally root: whoever controls the host end of the
    channel can read and write any file, run any program and change passwords in the guest.
    That is what a guest agent is for; restrict it with ``-b/--block-rpcs`` or
    ``-a/--allow-rpcs`` where the host is not fully trusted.

Limits (each enforced with a clear error; see the constants below)
    one JSON message        64 MiB, 2 Mi tokens, nesting depth 1024
    guest-file-read count   48 MiB per call
    guest-exec output       16 MiB per stream, then ``*-truncated``

Python 3.6 or newer, Linux, nothing outside the standard library.
"""

__version__ = "7.2.22"   # the qemu-ga release whose behaviour this agent reproduces
__project_version__ = "0.1.0"

import base64
import binascii
import errno
import fcntl
import json
import os
import re
import select
import signal
import socket
import stat
import struct
import sys
import time
from collections import OrderedDict, namedtuple

# ==============================================================================================
# Constants and limits
# ==============================================================================================

# Wire protocol (qemu-ga's JSON streamer limits; a message over them is answered with one error).
MAX_MESSAGE_BYTES = 64 << 20       # bytes of one request; large enough for a 48 MiB base64 write
MAX_MESSAGE_TOKENS = 2 << 20       # tokens of one request
MAX_NESTING = 1024                 # open braces + brackets of one request
READ_CHUNK = 65536                 # bytes per read(); qemu-ga uses 4096, more is fewer syscalls
MAX_PENDING_OUTPUT = 1 << 20       # stop reading requests while this much reply data waits
ERROR_TOKEN_ECHO = 64              # bytes of a bad token quoted back in a lexer error

# Channels.
VIRTIO_PORT_NAME = "org.qemu.guest_agent.0"
DEFAULT_VIRTIO_PATH = "/dev/virtio-ports/" + VIRTIO_PORT_NAME
DEFAULT_SERIAL_PATH = "/dev/ttyS0"
RETRY_INTERVAL = 5.0               # seconds between channel re-opens with -r (qemu-ga's value)
BUSY_RETRY_INTERVAL = 1.0          # seconds between opens of a port another process holds
PORT_RESCAN_INTERVAL = 5.0         # seconds between sysfs scans while waiting for a hotplug
LISTEN_BACKLOG = 8                 # clients queue in the kernel and are served one at a time

# Files, state and configuration.
DEFAULT_CONFIG_PATH = "/etc/qemu/qemu-ga.conf"
DEFAULT_STATEDIR = "/var/run"
DEFAULT_PIDFILE = "/var/run/qemu-ga.pid"
DEFAULT_FSFREEZE_HOOK = "/etc/qemu/fsfreeze-hook"
STATE_FILE = "qga.state"
FROZEN_MARKER = "qga.state.isfrozen"
FIRST_FILE_HANDLE = 1000           # guest-file handles start here and are never reused

# Constants of the time commands.
# (end of time constants)

# Constants of the files commands.
DEFAULT_READ_COUNT = 4096          # guest-file-read count when absent (qemu-ga's default)
MAX_READ_COUNT = 48 << 20          # per guest-file-read (CVE-2018-12617): base64 fits 64 MiB
NEW_FILE_MODE = 0o666              # files guest-file-open creates, less the umask (see README)
# guest-file-open modes, exactly the strings qemu-ga accepts, and their open(2) flags.
FILE_OPEN_MODES = {
    "r": os.O_RDONLY, "rb": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "r+": os.O_RDWR, "rb+": os.O_RDWR, "r+b": os.O_RDWR,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC, "wb+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "w+b": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND, "ab+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "a+b": os.O_RDWR | os.O_CREAT | os.O_APPEND,
}
# Added to every mode: no controlling tty, never block the agent (FIFOs), not inherited.
FILE_OPEN_EXTRA_FLAGS = os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
SEEK_WHENCE = {"set": os.SEEK_SET, "cur": os.SEEK_CUR, "end": os.SEEK_END}
# (end of files constants)

# Constants of the exec commands.
EXEC_OUTPUT_CAP = 16 << 20         # bytes kept per captured stream; the rest is read and dropped
EXEC_READ_CHUNK = 65536            # bytes per read of a child's output pipe
EXEC_WRITE_CHUNK = 65536           # bytes per write of input-data into a child's stdin
MAX_EXEC_PROCESSES = 256           # children tracked at once (running or not yet collected)
EXEC_REAP_INTERVAL = 1.0           # seconds between reap attempts while a grandchild holds a pipe
DEFAULT_EXEC_SEARCH_PATH = "/bin:/usr/bin:."   # GLib's PATH when neither env nor agent has one
# (end of exec constants)

# Constants of the power commands.
# (end of power constants)

# Constants of the freeze commands.
# (end of freeze constants)

# Constants of the disks commands.
# (end of disks constants)

# Constants of the cpus commands.
# (end of cpus constants)

# Constants of the network commands.
# (end of network constants)

# Constants of the devices commands.
# (end of devices constants)

# Constants of the identity commands.
# (end of identity constants)

# Constants of the ssh commands.
# (end of ssh constants)

# Constants of the stats commands.
# (end of stats constants)

# Integer ranges of the QAPI types.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1

# ==============================================================================================
# Errors
# ==============================================================================================

GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"


class QgaError(Exception):
    """A failure reported to the host as {"error": {"class": cls, "desc": desc}}."""

    def __init__(self, desc, cls=GENERIC_ERROR):
        Exception.__init__(self, desc)
        self.desc = desc
        self.cls = cls


def os_error_text(exc):
    """strerror of an OSError, as C's strerror() words it."""
    return exc.strerror or os.strerror(exc.errno or 0)


_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n"
_PAD_TO_DEL = bytes(0x7F if c == 0x3D else 0 for c in range(256))   # '=' -> 0x7F, rest -> 0


def decode_base64(text):
    """The bytes of a base64 argument, decoded exactly as qemu-ga decodes them.

    Only the alphabet, '=' and newlines are accepted.  Then GLib's lenient decoder runs:
    newlines are skipped, '=' counts as a zero digit wherever it stands, a group whose third
    or fourth character is '=' yields one byte less each, and an incomplete last group is
    dropped ("YQ==YWJj" is b"aabc", "====" is b"\\0", "YWJ" is b"").  Every step is a C-speed
    bytes operation, whatever the input: 16 MiB decodes in tens of milliseconds.
    """
    try:
        body = text.encode("ascii")
    except UnicodeEncodeError:
        body = None
    if body is None or body.translate(None, _BASE64_ALPHABET):
        raise QgaError("Base64 data contains invalid characters")
    if b"\n" in body:
        body = body.replace(b"\n", b"")
    body = body[:len(body) - len(body) % 4]
    first_pad = body.find(b"=")
    if first_pad < 0 or (first_pad >= len(body) - 2 and body.count(b"=") == len(body) - first_pad):
        return base64.b64decode(body)               # ordinary padding: the C decoder agrees
    # '=' inside the data: decode it as 'A' (zero bits), then drop the bytes GLib drops.  The
    # bytes go through hex so that the dropped ones can be marked, all at once, by OR-ing
    # 0x7F (never a hex digit) over their two digits, and deleted by translate().
    groups = len(body) // 4
    marks = bytearray(6 * groups)
    marks[2::6] = marks[3::6] = body[2::4].translate(_PAD_TO_DEL)     # 2nd byte of a group
    marks[4::6] = marks[5::6] = body[3::4].translate(_PAD_TO_DEL)     # 3rd byte of a group
    digits = base64.b64decode(body.replace(b"=", b"A")).hex().encode("ascii")
    marked = int.from_bytes(digits, "big") | int.from_bytes(marks, "big")
    kept = marked.to_bytes(len(digits), "big").translate(None, b"\x7f")
    return bytes.fromhex(kept.decode("ascii"))


# ==============================================================================================
# Host access: every path the agent reads goes through one object whose root tests can move
# ==============================================================================================

class Host(object):
    """The guest's file system as the commands see it.

    ``Host("/")`` is the running system; tests pass a fixture tree, so every reader of
    /proc, /sys, /dev, /etc and /run is exercised on more than the machine it runs on.
    Environment-dependent values (os-release override, ...) are read through here too.
    """

    def __init__(self, root="/", environ=None):
        self.root = root.rstrip("/") or "/"
        self.environ = os.environ if environ is None else environ

    def path(self, path):
        """The real path of an absolute guest path."""
        return path if self.root == "/" else self.root + path

    def read_bytes(self, path, limit=-1):
        with open(self.path(path), "rb") as f:
            return f.read(limit)

    def read_text(self, path, default=None):
        """A file's text, or ``default`` if it cannot be read."""
        try:
            with open(self.path(path), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, IOError):
            return default

    def read_attr(self, path, default=None):
        """A sysfs attribute: the file's text without the trailing newline."""
        text = self.read_text(path)
        return default if text is None else text.strip()

    def read_int(self, path, default=None, base=10):
        text = self.read_attr(path)
        try:
            return int(text, base)
        except (TypeError, ValueError):
            return default

    def listdir(self, path):
        """Names in a directory, sorted; empty if it cannot be read."""
        try:
            return sorted(os.listdir(self.path(path)))
        except OSError:
            return []

    def exists(self, path):
        return os.path.exists(self.path(path))

    def realpath(self, path):
        """Resolve links inside the root; the result is a guest path."""
        real = os.path.realpath(self.path(path))
        if self.root != "/" and real.startswith(self.root):
            real = real[len(self.root):] or "/"
        return real


# ==============================================================================================
# Wire protocol: the streaming framer, the JSON parser and the reply encoder
# ==============================================================================================
#
# The host writes a byte stream of JSON values.  A message is a complete top-level value; it
# may arrive over many reads, several may arrive in one read, and newlines mean nothing.  A
# 0xFF or 0xFE byte (never valid in JSON text) throws away whatever partial message came
# before it: clients send one before guest-sync-delimited to resynchronise.  qemu-ga answers
# each such byte with a "stray" lexer error, and so do we.
#
# The framer only finds where messages start and end.  It walks the stream token by token
# with regular expressions (C speed; a 64 MiB string is one search, never a Python loop per
# byte) and keeps its place, so bytes are scanned once however the stream is split.  Each
# complete message is then parsed by the json module; only a message json rejects, or one
# using qemu's extensions (single-quoted strings), goes through the slower parse_json_qemu()
# below, which reproduces qemu's parse errors.

_STRUCTURAL = b"{}[]:,"
_SPACE = re.compile(rb"[ \t\r\n]*")
_STRING_STOP = {0x22: re.compile(rb'["\\\x00-\x1f]'), 0x27: re.compile(rb"['\\\x00-\x1f]")}
_NUMBER_CHARS = re.compile(rb"[0-9.eE+\-]*")
_KEYWORD_CHARS = re.compile(rb"[a-z]*")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_RECOVERY_STOP = re.compile(rb"[\[\]{}:,\x00-\x08\x0a-\x1f\xfe\xff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

# Framer states.
_BETWEEN, _STRING, _NUMBER_TOKEN, _KEYWORD_TOKEN, _RECOVERY = range(5)


def _find_resync(data):
    """Where the first 0xFF or 0xFE byte of ``data`` is, or -1.  Two memchr() scans: a
    regular expression would cost ~50x more on a megabytes-long base64 string."""
    ff, fe = data.find(b"\xff"), data.find(b"\xfe")
    return fe if ff < 0 else ff if fe < 0 else min(ff, fe)


def _quote_token(raw):
    """A bad token as qemu quotes it in 'stray' errors (bytes shown as text, length capped)."""
    raw = raw.split(b"\x00", 1)[0]           # qemu's C string ends at a NUL
    if len(raw) > ERROR_TOKEN_ECHO:
        raw = raw[:ERROR_TOKEN_ECHO // 2] + b"..." + raw[-ERROR_TOKEN_ECHO // 2:]
    return raw.decode("utf-8", "replace")


class Framer(object):
    """Bytes in, messages out.

    ``feed(data)`` returns a list of events: ``(raw_message_bytes, uses_extensions)`` for
    every complete message, or a ``QgaError`` for every lexer error and exceeded limit.
    Unlike qemu-ga, a message over a limit is skipped to its end (its structure is followed
    without storing it), so one error is answered and the next request works.
    """

    def __init__(self):
        self.buf = bytearray()
        self.reset()

    def reset(self):
        """Forget any partial message (0xFF, a new client, a host hang-up)."""
        del self.buf[:]
        self.pos = 0            # scanning position in buf
        self.start = 0          # where the current message (or token) starts in buf
        self.state = _BETWEEN
        self.braces = self.brackets = 0
        self.tokens = 0
        self.quote = 0
        self.token_start = 0
        self.extensions = False  # a single-quoted string was seen
        self.discarding = False  # over a limit: follow the message to its end, keep nothing

    # -- public ---------------------------------------------------------------------------------

    def feed(self, data):
        events = []
        while data:
            marker = _find_resync(data)
            if marker < 0:
                self._scan(data, events)
                break
            self._scan(data[:marker], events)
            partial = b""
            if self.state in (_STRING, _NUMBER_TOKEN, _KEYWORD_TOKEN):
                partial = bytes(self.buf[self.token_start:])
            if not self.discarding or self.state != _STRING:
                events.append(self._lexer_error(partial + b"\xff"))
            self.reset()
            data = data[marker + 1:]
        self._compact()
        return events

    # -- scanning -------------------------------------------------------------------------------

    def _compact(self):
        """Drop consumed bytes; while discarding, keep nothing but a number or keyword."""
        keep = self.start
        if self.discarding:
            scalar = self.state in (_NUMBER_TOKEN, _KEYWORD_TOKEN)
            keep = self.start = self.token_start if scalar else self.pos
        if keep:
            del self.buf[:keep]
            self.pos -= keep
            self.start -= keep
            self.token_start -= keep

    def _scan(self, data, events):
        buf = self.buf
        buf += data
        end = len(buf)
        while self.pos < end:
            state = self.state
            if state == _BETWEEN:
                pos = _SPACE.match(buf, self.pos).end()
                if pos == end:
                    self.pos = pos
                    if not self.tokens:
                        self.start = pos
                    break
                c = buf[pos]
                if not self.tokens:
                    self.start = pos
                if c in _STRUCTURAL:
                    self.pos = pos + 1
                    if c == 0x7B:
                        self.braces += 1
                    elif c == 0x5B:
                        self.brackets += 1
                    elif c == 0x7D:
                        self.braces -= 1
                    elif c == 0x5D:
                        self.brackets -= 1
                    self._token_done(events)
                elif c == 0x22 or c == 0x27:
                    self.token_start, self.quote, self.state = pos, c, _STRING
                    self.pos = pos + 1
                    if c == 0x27:
                        self.extensions = True
                elif c == 0x2D or 0x30 <= c <= 0x39:
                    self.token_start, self.state, self.pos = pos, _NUMBER_TOKEN, pos
                elif 0x61 <= c <= 0x7A:
                    self.token_start, self.state, self.pos = pos, _KEYWORD_TOKEN, pos
                else:
                    self._fail(events, bytes(buf[pos:pos + 1]), pos + 1)
            elif state == _STRING:
                if not self._scan_string(events, end):
                    break
            elif state == _NUMBER_TOKEN or state == _KEYWORD_TOKEN:
                chars = _NUMBER_CHARS if state == _NUMBER_TOKEN else _KEYWORD_CHARS
                pos = chars.match(buf, self.pos).end()
                self.pos = pos
                if pos == end:                      # the token may go on in the next read
                    self._check_size(events)
                    break
                token = bytes(buf[self.token_start:pos])
                if state == _NUMBER_TOKEN and not _NUMBER.match(token):
                    self._fail(events, token + bytes(buf[pos:pos + 1]), pos + 1)
                    continue
                self.state = _BETWEEN
                self._token_done(events)
            else:                                   # _RECOVERY: skip to a structural byte
                stop = _RECOVERY_STOP.search(buf, self.pos)
                if stop is None:
                    self.pos = self.start = end
                    break
                self.pos = self.start = stop.start()
                self.state = _BETWEEN

    def _scan_string(self, events, end):
        """Advance through a string token; False when more input is needed."""
        buf = self.buf
        stop = _STRING_STOP[self.quote].search(buf, self.pos)
        if stop is None:
            self.pos = end
            self._check_size(events)
            return False
        pos = stop.start()
        c = buf[pos]
        if c == self.quote:
            self.pos = pos + 1
            self.state = _BETWEEN
            self._token_done(events)
        elif c == 0x5C:                             # backslash: an escape
            if pos + 1 >= end:
                self.pos = pos
                return False
            if buf[pos + 1] < 0x20:                 # the parser judges the escape itself
                self._fail(events, bytes(buf[self.token_start:pos + 2]), pos + 2)
            else:
                self.pos = pos + 2
        else:                                       # a raw control byte inside a string
            self._fail(events, bytes(buf[self.token_start:pos + 1]), pos + 1)
        return True

    def _token_done(self, events):
        """Count a finished token; emit the message when its nesting closes."""
        self.tokens += 1
        if self.discarding:
            pass
        elif self.braces + self.brackets > MAX_NESTING:
            self._over_limit(events, "JSON nesting depth limit exceeded")
        elif self.tokens > MAX_MESSAGE_TOKENS:
            self._over_limit(events, "JSON token count limit exceeded")
        elif self.pos - self.start > MAX_MESSAGE_BYTES:
            self._over_limit(events, "JSON token size limit exceeded")
        if (self.braces > 0 or self.brackets > 0) and self.braces >= 0 and self.brackets >= 0:
            return                  # qemu also ends a message on an unbalanced closer
        if not self.discarding:
            events.append((bytes(self.buf[self.start:self.pos]), self.extensions))
        self.braces = self.brackets = self.tokens = 0
        self.extensions = self.discarding = False
        self.start = self.pos

    def _check_size(self, events):
        if not self.discarding and self.pos - self.start > MAX_MESSAGE_BYTES:
            self._over_limit(events, "JSON token size limit exceeded")

    def _over_limit(self, events, text):
        events.append(QgaError(text))
        self.discarding = True

    def _lexer_error(self, token):
        return QgaError("JSON parse error, stray '%s'" % _quote_token(token))

    def _fail(self, events, token, resume):
        """A lexer error: report it, drop the partial message, skip to a safe byte."""
        if not self.discarding:
            events.append(self._lexer_error(token))
        self.braces = self.brackets = self.tokens = 0
        self.extensions = self.discarding = False
        self.pos = self.start = resume
        self.state = _RECOVERY


class JsonError(ValueError):
    """A parse error, worded as qemu words it (without the 'JSON parse error, ' prefix)."""


def _no_duplicate_keys(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise JsonError("duplicate key")
    return obj


def _qemu_int(text):
    """qemu reads integers as int64, else uint64, else double."""
    value = int(text)
    return value if INT64_MIN <= value <= UINT64_MAX else float(text)


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_int=_qemu_int)


def parse_message(raw, uses_extensions=False):
    """The value of one framed message; JsonError with qemu's wording if it is not JSON."""
    if not uses_extensions and not _SURROGATE_ESCAPE.search(raw):
        try:
            return _DECODER.decode(raw.decode("utf-8"))
        except ValueError:
            pass                    # let the exact parser say what is wrong
    return parse_json_qemu(raw)


_TOKEN = re.compile(rb"""[ \t\r\n]*(?:
      (?P<punct>[{}\[\]:,])
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<number>-?(?:0|[1-9][0-9]*)(?P<frac>\.[0-9]+)?(?P<exp>[eE][+-]?[0-9]+)?)
    | (?P<keyword>[a-z]+)
    )""", re.X | re.S)
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "/": "/", "\\": "\\",
            '"': '"', "'": "'"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}(?:\\u[0-9a-fA-F]{4})?|u.{0,4}|.)", re.S)


def _unescape(match):
    esc = match.group(1)
    if esc[0] == "u" and not re.match(r"u[0-9a-fA-F]{4}", esc):
        raise JsonError("\\%s is not a valid Unicode character" % esc)
    if esc[0] != "u":
        if esc not in _ESCAPES:
            raise JsonError("invalid escape sequence in string")
        return _ESCAPES[esc]
    high = int(esc[1:5], 16)
    if 0xD800 <= high < 0xDC00 and len(esc) == 11:
        low = int(esc[7:11], 16)
        if 0xDC00 <= low < 0xE000:
            return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
    if 0xD800 <= high < 0xE000:
        raise JsonError("\\%s is not a valid Unicode character" % esc[:5])
    return chr(high) + (_ESCAPE.sub(_unescape, esc[5:]) if len(esc) > 5 else "")


def _string_value(raw):
    body = raw[1:-1].replace(b"\xc0\x80", b"\\u0000")   # qemu takes overlong NUL as U+0000
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonError("invalid UTF-8 sequence in string")
    return _ESCAPE.sub(_unescape, text) if "\\" in text else text


def parse_json_qemu(raw):
    """Parse one message exactly as qemu's JSON parser does, errors included.

    Iterative (no recursion limit to hit at depth 1024); the first error found is the one
    reported, as in qemu.
    """
    tokens = []
    pos, end = 0, len(raw)
    while True:
        pos = _SPACE.match(raw, pos).end()
        if pos >= end:
            break
        m = _TOKEN.match(raw, pos)
        if m is None:
            raise JsonError("stray '%s'" % _quote_token(raw[pos:pos + 1]))
        tokens.append(m)
        pos = m.end()

    # An explicit stack instead of recursion: depth 1024 must not hit Python's limit.
    stack = []          # frames: [container, expecting, pending key]
    i, n = 0, len(tokens)
    while True:
        if i >= n:
            raise JsonError("premature EOI")
        tok = tokens[i]
        punct = tok.group("punct")
        frame = stack[-1] if stack else None
        expecting = frame[1] if frame else "value"
        i += 1
        if expecting == "colon":
            if punct != b":":
                raise JsonError("missing : in object pair")
            frame[1] = "value"
            continue
        if expecting == "separator":
            is_dict = isinstance(frame[0], dict)
            if punct == (b"}" if is_dict else b"]"):
                value = stack.pop()[0]
            elif punct == b",":
                frame[1] = "key" if is_dict else "value"
                continue
            else:
                raise JsonError("expected separator in %s" % ("dict" if is_dict else "list"))
        elif expecting == "first-key" and punct == b"}" or expecting == "first" and punct == b"]":
            value = stack.pop()[0]
        elif expecting in ("key", "first-key"):
            if punct and punct not in b"{[":
                raise JsonError("expecting value")
            if punct or tok.lastgroup != "string":
                raise JsonError("key is not a string in object")
            frame[2], frame[1] = _string_value(tok.group("string")), "colon"
            continue
        elif punct == b"{":
            stack.append([OrderedDict(), "first-key", None])
            continue
        elif punct == b"[":
            stack.append([[], "first", None])
            continue
        elif punct:
            raise JsonError("expecting value")
        else:
            value = _literal(tok)
        # A value is complete: put it into its container, or it is the message.
        if not stack:
            return value
        parent = stack[-1]
        if isinstance(parent[0], dict):
            if parent[2] in parent[0]:
                raise JsonError("duplicate key")
            parent[0][parent[2]] = value
        else:
            parent[0].append(value)
        parent[1] = "separator"


def _literal(tok):
    """The value of a string, number or keyword token."""
    kind = tok.lastgroup
    if kind == "string":
        return _string_value(tok.group("string"))
    if kind == "keyword":
        word = tok.group("keyword")
        if word in _KEYWORDS:
            return _KEYWORDS[word]
        raise JsonError("invalid keyword '%s'" % word.decode())
    text = tok.group("number")
    if tok.group("frac") or tok.group("exp"):
        return float(text)
    return _qemu_int(text)


_KEYWORDS = {b"true": True, b"false": False, b"null": None}


# -- Encoding replies --------------------------------------------------------------------------

_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": "))
_LOWER_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-f]{4})")
_SPLICE_MARK = "@@qga-mini-splice@@"    # never produced by a command


def _upper_escape(match):
    return match.group(1) + "\\u" + match.group(2).upper()


def encode_reply(reply):
    """One reply as a list of byte chunks forming a single compact ASCII line.

    qemu writes ``\\u00E9`` (upper-case hex) and escapes 0x7F; we do the same.  ``bytes``
    values directly inside ``reply["return"]`` (base64 payloads, which need no escaping) are
    spliced in as JSON strings without being copied through the encoder, so a 48 MiB read or
    a 16 MiB exec output costs no extra copies.
    """
    spliced = []
    ret = reply.get("return")
    if isinstance(ret, dict):
        for key, value in ret.items():
            if isinstance(value, (bytes, bytearray)):
                spliced.append(value)
        if spliced:
            marked = OrderedDict((key, _SPLICE_MARK if isinstance(value, (bytes, bytearray))
                                  else value) for key, value in ret.items())
            reply = dict(reply, **{"return": marked})
    text = _ENCODER.encode(reply)
    if "\\u" in text:
        text = _LOWER_ESCAPE.sub(_upper_escape, text)
    if "\x7f" in text:
        text = text.replace("\x7f", "\\u007F")
    if not spliced:
        return [text.encode("ascii") + b"\n"]
    pieces = text.split(json.dumps(_SPLICE_MARK))
    chunks = [(pieces[0] + '"').encode("ascii")]
    for payload, piece in zip(spliced, pieces[1:-1]):
        chunks += [payload, ('"' + piece + '"').encode("ascii")]
    chunks += [spliced[-1], ('"' + pieces[-1] + "\n").encode("ascii")]
    return chunks


# ==============================================================================================
# Command registry and argument checking
# ==============================================================================================
#
# A command is one function plus one @command(...) line recording its QAPI definition in the
# schema's own notation: ``data`` maps argument names to types ("*name" when optional),
# ``returns`` names the result type.  The dispatcher checks arguments against ``data`` before
# the function runs, so a command body only sees well-typed values.  guest-info, -b help and
# the tests all read this one table; tests/test_schema.py holds it against schema.json.

# qemu-ga's registration order (the schema's declaration order).  guest-info lists commands in
# the reverse of it, and -b help in it.
COMMAND_ORDER = (
    "guest-sync-delimited", "guest-sync", "guest-ping", "guest-get-time", "guest-set-time",
    "guest-info", "guest-shutdown", "guest-file-open", "guest-file-close", "guest-file-read",
    "guest-file-write", "guest-file-seek", "guest-file-flush", "guest-fsfreeze-status",
    "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw",
    "guest-fstrim", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid",
    "guest-network-get-interfaces", "guest-get-vcpus", "guest-set-vcpus", "guest-get-disks",
    "guest-get-fsinfo", "guest-set-user-password", "guest-get-memory-blocks",
    "guest-set-memory-blocks", "guest-get-memory-block-info", "guest-exec-status",
    "guest-exec", "guest-get-host-name", "guest-get-users", "guest-get-timezone",
    "guest-get-osinfo", "guest-get-devices", "guest-ssh-get-authorized-keys",
    "guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys",
    "guest-get-diskstats", "guest-get-cpustats", "guest-get-load", "guest-network-get-route",
)

# The complex types that appear in command arguments, in QAPI notation.
ARGUMENT_TYPES = {
    "QGASeek": {"enum": ["set", "cur", "end"]},
    "GuestFileWhence": {"alternate": {"value": "int", "name": "QGASeek"}},
    "GuestLogicalProcessor": {"struct": {"logical-id": "int", "online": "bool",
                                         "*can-offline": "bool"}},
    "GuestMemoryBlock": {"struct": {"phys-index": "uint64", "online": "bool",
                                    "*can-offline": "bool"}},
    "GuestExecCaptureOutputMode": {"enum": ["none", "stdout", "stderr", "separated",
                                            "merged"]},
    "GuestExecCaptureOutput": {"alternate": {"flag": "bool",
                                             "mode": "GuestExecCaptureOutputMode"}},
}

Command = namedtuple("Command", "name func data returns success_response frozen_ok")
COMMANDS = {}

# The commands qemu-ga still runs while file systems are frozen.
FREEZE_SAFE_COMMANDS = frozenset(("guest-ping", "guest-info", "guest-sync",
                                  "guest-sync-delimited", "guest-fsfreeze-status",
                                  "guest-fsfreeze-thaw"))


def command(name, data=None, returns=None, success_response=True):
    """Register ``func(agent, **arguments)`` as the QAPI command ``name``.

    Argument names reach the function with '-' turned into '_'; absent optional arguments are
    not passed, so the function's defaults apply.
    """
    def register(func):
        COMMANDS[name] = Command(name, func, OrderedDict(data or {}), returns,
                                 success_response, name in FREEZE_SAFE_COMMANDS)
        return func
    return register


def registered_commands():
    """The registered commands in qemu-ga's registration order."""
    rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
    return sorted(COMMANDS.values(), key=lambda c: rank.get(c.name, len(rank)))


def _type_error(path, expected):
    return QgaError("Invalid parameter type for '%s', expected: %s" % (path, expected))


_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean"}


def check_value(value, typ, path):
    """``value`` checked against QAPI type ``typ``; returns it as the command gets it."""
    if isinstance(typ, list):
        if not isinstance(value, list):
            raise _type_error(path, "array")
        return [check_value(v, typ[0], "%s[%d]" % (path, i)) for i, v in enumerate(value)]
    if typ == "int":
        if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
            raise _type_error(path, "integer")
        return value
    if typ in ("uint64", "uint32", "uint16", "uint8"):
        if type(value) is not int or not INT64_MIN <= value <= UINT64_MAX:
            raise QgaError("Parameter '%s' expects %s" % (path, typ))
        return value & UINT64_MAX             # negative values wrap, as in qemu
    if typ == "number":
        if type(value) not in (int, float):
            raise _type_error(path, "number")
        return float(value)
    if typ == "str" or typ == "bool":
        expected = str if typ == "str" else bool
        if type(value) is not expected:
            raise _type_error(path, _JSON_TYPE_NAMES[expected])
        return value
    definition = ARGUMENT_TYPES[typ]
    if "struct" in definition:
        if not isinstance(value, dict):
            raise _type_error(path, "object")
        return check_members(value, definition["struct"], path + ".")
    if "enum" in definition:
        if not isinstance(value, str):
            raise _type_error(path, "string")
        if value not in definition["enum"]:
            raise QgaError("Parameter '%s' does not accept value '%s'" % (path, value))
        return value
    for branch in definition["alternate"].values():   # chosen by the JSON type of the value
        kind = ARGUMENT_TYPES.get(branch)
        if (kind and "enum" in kind and isinstance(value, str)
                or branch == "int" and type(value) in (int, float)   # a number picks int
                or branch == "bool" and type(value) is bool):
            return check_value(value, branch, path)
    raise _type_error(path, typ)


def check_members(obj, members, prefix=""):
    """An object's members checked against a QAPI ``data`` dict, in schema order."""
    checked = OrderedDict()
    for spec, typ in members.items():
        name = spec.lstrip("*")
        if name in obj:
            checked[name] = check_value(obj[name], typ, prefix + name)
        elif not spec.startswith("*"):
            raise QgaError("Parameter '%s' is missing" % (prefix + name))
    for name in obj:
        if name not in checked:
            raise QgaError("Parameter '%s' is unexpected" % (prefix + name))
    return checked


# ==============================================================================================
# Agent state: configuration, the state directory, logging, the freeze flag, dispatch
# ==============================================================================================

class Log(object):
    """qemu-ga's log: ``<sec>.<usec>: <level>: <message>`` to stderr or the -l file.

    Nothing is written while file systems are frozen (a write could block on them).
    Audit lines ("guest-ping called", ...) go to syslog, as qemu-ga's slog() does.
    """

    LEVELS = ("error", "critical", "warning", "message", "info", "debug")

    def __init__(self, stream=None, verbose=False):
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.muted = False
        self._syslog = None

    def write(self, level, text):
        if self.muted or (not self.verbose and level not in ("error", "critical")):
            return
        now = time.time()
        try:
            self.stream.write("%d.%d: %s: %s\n" % (int(now), int(now % 1 * 1e6), level, text))
            self.stream.flush()
        except (OSError, IOError, ValueError):
            pass

    def error(self, text):
        self.write("error", text)

    def warning(self, text):
        self.write("warning", text)

    def info(self, text):
        self.write("info", text)

    def debug(self, text):
        self.write("debug", text)

    def audit(self, text):
        """An accounting line for syslog (qemu-ga's slog)."""
        if self.muted:
            return
        if self._syslog is None:
            try:
                import syslog
                syslog.openlog("qemu-ga", 0, syslog.LOG_DAEMON)
                self._syslog = syslog
            except ImportError:
                self._syslog = False
        if self._syslog:
            self._syslog.syslog(self._syslog.LOG_INFO, "info: " + text)
        self.debug(text)


class StateDir(object):
    """The -t directory: the guest-file handle counter and the frozen marker."""

    def __init__(self, path):
        self.path = path
        self.state_file = os.path.join(path, STATE_FILE)
        self.frozen_marker = os.path.join(path, FROZEN_MARKER)

    def ensure(self):
        """Create the directory and qga.state if missing (qemu-ga does so at start-up)."""
        if not os.path.isdir(self.path):
            os.makedirs(self.path, 0o755)
        if not os.path.exists(self.state_file):
            self.write_counter(FIRST_FILE_HANDLE)

    def read_counter(self):
        """The next guest-file handle (GLib keyfile ``[global] fd_counter=N``)."""
        try:
            with open(self.state_file) as f:
                text = f.read()
        except (OSError, IOError) as exc:
            if exc.errno == errno.ENOENT:
                return FIRST_FILE_HANDLE
            raise
        section = None
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "global" and line.startswith("fd_counter="):
                return int(line.split("=", 1)[1])
        return FIRST_FILE_HANDLE

    def write_counter(self, value):
        """Replace qga.state atomically (temp file + rename, as GLib does)."""
        tmp = "%s.%d.tmp" % (self.state_file, os.getpid())
        with open(tmp, "w") as f:
            f.write("[global]\nfd_counter=%d\n" % value)
        os.rename(tmp, self.state_file)

    def is_frozen(self):
        return os.path.exists(self.frozen_marker)

    def set_frozen(self, frozen):
        if frozen:
            os.close(os.open(self.frozen_marker, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        else:
            try:
                os.unlink(self.frozen_marker)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise


class Agent(object):
    """Everything that outlives one request: configuration, state, handles, children.

    Handles, exec children and the freeze are global, as in qemu-ga: they survive host
    reconnects.  ``dispatch(request)`` turns one parsed request into one reply (or none).
    """

    def __init__(self, config, host=None, log=None):
        self.config = config
        self.host = host or Host("/")
        self.log = log or Log(verbose=config.verbose)
        self.state = StateDir(config.statedir)
        self.frozen = False
        self.reply_prefix = b""      # set by guest-sync-delimited for its own reply
        self.file_handles = {}       # guest-file handle -> open file
        self.next_file_handle = None  # loaded from qga.state by the first guest-file-open
        self.exec_children = {}      # guest-exec pid -> child record
        self.cleanups = []           # callables run once when the agent exits
        self.timers = []             # [deadline, callable], run by the event loop

    # -- frozen state ---------------------------------------------------------------------------

    def set_frozen(self, frozen):
        """Enter or leave the frozen state: marker file, command filter, logging."""
        if frozen == self.frozen:
            return
        if frozen:
            self.log.warning("disabling logging due to filesystem freeze")
            self.log.muted = True
            self.state.set_frozen(True)
        else:
            self.state.set_frozen(False)
            self.log.muted = False
            self.log.warning("logging re-enabled due to filesystem unfreeze")
        self.frozen = frozen

    # -- command filter -------------------------------------------------------------------------

    def disabled_reason(self, name):
        """Why ``name`` may not run now (qemu-ga 7.2's texts), or None."""
        config = self.config
        if name in config.block_rpcs or (config.allow_rpcs and name not in config.allow_rpcs):
            return "Command %s has been disabled" % name
        if self.frozen and name not in FREEZE_SAFE_COMMANDS:
            return "Command %s has been disabled: the agent is in frozen state" % name
        return None

    def is_enabled(self, name):
        return self.disabled_reason(name) is None

    # -- timers ---------------------------------------------------------------------------------

    def call_later(self, seconds, func):
        """Run ``func()`` from the event loop after ``seconds``; returns a cancel function."""
        timer = [time.monotonic() + seconds, func]
        self.timers.append(timer)
        return lambda: timer in self.timers and self.timers.remove(timer)

    def run_due_timers(self):
        now = time.monotonic()
        for timer in [t for t in self.timers if t[0] <= now]:
            if timer in self.timers:
                self.timers.remove(timer)
                self._guarded(timer[1])

    def next_timer_delay(self):
        if not self.timers:
            return None
        return max(0.0, min(t[0] for t in self.timers) - time.monotonic())

    def _guarded(self, func):
        try:
            func()
        except Exception as exc:        # a background task must never kill the agent
            self.log.error("internal error in %s: %r" % (getattr(func, "__name__", func), exc))

    def shutdown(self):
        """Run the exit cleanups once (thaw, kill children, ...)."""
        cleanups, self.cleanups = self.cleanups, []
        for func in reversed(cleanups):
            self._guarded(func)

    # -- dispatch -------------------------------------------------------------------------------

    def dispatch(self, request):
        """The reply to one parsed request as byte chunks, or [] when there is none."""
        has_id = isinstance(request, dict) and "id" in request
        try:
            if not isinstance(request, dict):
                raise QgaError("QMP input must be a JSON object")
            name, arguments = self._check_request(request)
            cmd = COMMANDS.get(name)
            if cmd is None:
                raise QgaError("The command %s has not been found" % name, COMMAND_NOT_FOUND)
            reason = self.disabled_reason(name)
            if reason:
                raise QgaError(reason, COMMAND_NOT_FOUND)
            kwargs = check_members(arguments, cmd.data)
            result = cmd.func(self, **{k.replace("-", "_"): v for k, v in kwargs.items()})
            if not cmd.success_response:
                return []
            reply = {"return": {} if result is None else result}
        except QgaError as exc:
            reply = {"error": {"class": exc.cls, "desc": exc.desc}}
        except Exception as exc:        # a bug in a command must not take the agent down
            self.log.error("internal error: %r" % (exc,))
            reply = {"error": {"class": GENERIC_ERROR, "desc": "internal error: %s" % (exc,)}}
        if has_id:
            if "error" in reply:
                reply = {"id": request["id"], "error": reply["error"]}   # qemu's key order
            else:
                reply["id"] = request["id"]
        prefix, self.reply_prefix = self.reply_prefix, b""
        chunks = encode_reply(reply)
        if prefix and "return" in reply:
            chunks.insert(0, prefix)
        return chunks

    @staticmethod
    def _check_request(request):
        name, arguments = None, {}
        for key, value in request.items():
            if key == "execute":
                if not isinstance(value, str):
                    raise QgaError("QMP input member 'execute' must be a string")
                name = value
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise QgaError("QMP input member 'arguments' must be an object")
                arguments = value
            elif key != "id":
                raise QgaError("QMP input member '%s' is unexpected" % key)
        if name is None:
            raise QgaError("QMP input lacks member 'execute'")
        return name, arguments

    def handle_bytes(self, framer, data):
        """Feed received bytes; the reply chunks for every message they complete."""
        out = []
        events = framer.feed(data)
        for i in range(len(events)):
            event, events[i] = events[i], None    # a message's bytes die with its parsing
            if isinstance(event, QgaError):
                out.extend(encode_reply({"error": {"class": event.cls, "desc": event.desc}}))
                continue
            try:
                request = parse_message(*event)
            except JsonError as exc:
                out.extend(encode_reply({"error": {"class": GENERIC_ERROR,
                                                   "desc": "JSON parse error, %s" % exc}}))
                continue
            event = None
            out.extend(self.dispatch(request))
        return out


# ==============================================================================================
# Commands
# ==============================================================================================

# -- Session: sync, ping, info -----------------------------------------------------------------

@command("guest-sync-delimited", data={"id": "int"}, returns="int")
def guest_sync_delimited(agent, id):
    """guest-sync-delimited: echo ``id``; the reply is preceded by a 0xFF byte."""
    agent.reply_prefix = b"\xff"
    return id


@command("guest-sync", data={"id": "int"}, returns="int")
def guest_sync(agent, id):
    """guest-sync: echo ``id`` so the host can find its place in the stream."""
    return id


@command("guest-ping")
def guest_ping(agent):
    """guest-ping: answer {}."""
    agent.log.audit("guest-ping called")


@command("guest-info", returns="GuestAgentInfo")
def guest_info(agent):
    """guest-info: the version and every command, newest registration first (as qemu-ga)."""
    return {"version": __version__,
            "supported_commands": [
                {"enabled": agent.is_enabled(c.name), "name": c.name,
                 "success-response": c.success_response}
                for c in reversed(registered_commands())]}


# -- Time: guest-get-time, guest-set-time --------------------------------------------------

# (end of time commands)


# -- Files: guest-file-open, -close, -read, -write, -seek, -flush --------------------------
#
# qemu-ga wraps every handle in a stdio FILE.  We keep the bare file descriptor and give the
# host what it can see of stdio: a read returns fewer bytes than asked only at end of file or
# when a pipe runs dry; ``eof`` is true when that read met the end of the file; positions are
# the kernel's.  Writes reach the kernel at once instead of waiting in a stdio buffer for
# flush, seek, read or close: only a process reading the file behind the host's back could
# tell, and an error (a full disk) is reported by the write that caused it.


def guest_file(agent, handle):
    """The file descriptor behind a guest-file handle."""
    fd = agent.file_handles.get(handle)
    if fd is None:
        raise QgaError("handle '%d' has not been found" % handle)
    return fd


def close_guest_files(agent):
    """Close every guest-file handle (at exit; they are global, so reconnects keep them)."""
    handles, agent.file_handles = agent.file_handles, {}
    for fd in handles.values():
        try:
            os.close(fd)
        except OSError:
            pass


def take_file_handle(agent):
    """The next guest-file handle, committed to qga.state before anyone sees it.

    The counter is never rolled back, not even when the commit fails, so a handle number is
    used at most once across the agent's whole life, restarts included.
    """
    if agent.next_file_handle is None:
        try:
            agent.next_file_handle = agent.state.read_counter()
        except (OSError, IOError, ValueError):
            raise QgaError("failed to load persistent state")
        agent.cleanups.append(lambda: close_guest_files(agent))
    handle = agent.next_file_handle
    agent.next_file_handle += 1
    try:
        agent.state.write_counter(agent.next_file_handle)
    except (OSError, IOError):
        raise QgaError("failed to commit persistent state to disk")
    return handle


@command("guest-file-open", data={"path": "str", "*mode": "str"}, returns="int")
def guest_file_open(agent, path, mode="r"):
    """guest-file-open: open ``path`` with an fopen() mode; returns a new handle.

    New files get 0666 less the umask; qemu-ga forces 0666 (see README: a world-writable
    file created by a root agent is an invitation to every local user).
    """
    agent.log.audit("guest-file-open called, filepath: %s, mode: %s" % (path, mode))
    flags = FILE_OPEN_MODES.get(mode)
    if flags is None:
        raise QgaError("invalid file open mode '%s'" % mode)
    try:
        fd = os.open(path, flags | FILE_OPEN_EXTRA_FLAGS, NEW_FILE_MODE)
    except (OSError, ValueError) as exc:     # ValueError: a NUL or lone surrogate in path
        why = os_error_text(exc) if isinstance(exc, OSError) else os.strerror(errno.EINVAL)
        raise QgaError("failed to open file '%s' (mode: '%s'): %s" % (path, mode, why))
    try:
        handle = take_file_handle(agent)
    except QgaError:
        os.close(fd)
        raise
    agent.file_handles[handle] = fd
    agent.log.audit("guest-file-open, handle: %d" % handle)
    return handle


@command("guest-file-close", data={"handle": "int"})
def guest_file_close(agent, handle):
    """guest-file-close: close a handle; its number is never given out again."""
    agent.log.audit("guest-file-close called, handle: %d" % handle)
    fd = guest_file(agent, handle)
    del agent.file_handles[handle]
    try:
        os.close(fd)
    except OSError as exc:
        raise QgaError("failed to close handle: %s" % os_error_text(exc))


@command("guest-file-read", data={"handle": "int", "*count": "int"}, returns="GuestFileRead")
def guest_file_read(agent, handle, count=DEFAULT_READ_COUNT):
    """guest-file-read: up to ``count`` bytes from the current position, base64-encoded.

    As fread() does, it reads until ``count`` bytes came or the file ended, and ``eof``
    says it ended.  A pipe that runs dry after some bytes returns them (qemu-ga reports
    EAGAIN and loses them).  Memory: the bytes read plus their base64, which the encoder
    writes out without another copy.
    """
    fd = guest_file(agent, handle)
    if not 0 <= count <= MAX_READ_COUNT:
        raise QgaError("value '%d' is invalid for argument count" % count)
    chunks, got, eof = [], 0, False
    while got < count:
        try:
            data = os.read(fd, count - got)
        except OSError as exc:
            if got and exc.errno == errno.EAGAIN:
                break
            raise QgaError("failed to read file: %s" % os_error_text(exc))
        if not data:
            eof = True
            break
        chunks.append(data)
        got += len(data)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    del chunks[:]
    return OrderedDict((("count", got), ("buf-b64", binascii.b2a_base64(data, newline=False)),
                        ("eof", eof)))


@command("guest-file-write", data={"handle": "int", "buf-b64": "str", "*count": "int"},
         returns="GuestFileWrite")
def guest_file_write(agent, handle, buf_b64, count=None):
    """guest-file-write: write the first ``count`` decoded bytes (all by default)."""
    fd = guest_file(agent, handle)
    data = decode_base64(buf_b64)
    if count is None:
        count = len(data)
    elif not 0 <= count <= len(data):
        raise QgaError("value '%d' is invalid for argument count" % count)
    view = memoryview(data)
    written = 0
    while written < count:
        try:
            done = os.write(fd, view[written:count])
        except OSError as exc:
            if written and exc.errno == errno.EAGAIN:
                break                       # a full pipe: report the part that went in
            raise QgaError("failed to write to file: %s" % os_error_text(exc))
        if not done:
            break
        written += done
    return OrderedDict((("count", written), ("eof", False)))


@command("guest-file-seek", data={"handle": "int", "offset": "int",
                                  "whence": "GuestFileWhence"}, returns="GuestFileSeek")
def guest_file_seek(agent, handle, offset, whence):
    """guest-file-seek: move the position; ``whence`` is 0/1/2 or set/cur/end."""
    fd = guest_file(agent, handle)
    if isinstance(whence, str):
        whence = SEEK_WHENCE[whence]
    elif whence not in SEEK_WHENCE.values():
        raise QgaError("invalid whence code %d" % whence)
    try:
        position = os.lseek(fd, offset, whence)
    except OSError as exc:
        raise QgaError("failed to seek file: %s" % os_error_text(exc))
    return OrderedDict((("eof", False), ("position", position)))


@command("guest-file-flush", data={"handle": "int"})
def guest_file_flush(agent, handle):
    """guest-file-flush: writes are never held back, so only the handle is checked."""
    guest_file(agent, handle)

# (end of files commands)


# -- Exec: guest-exec, guest-exec-status ---------------------------------------------------
#
# Every child gets a watcher thread that feeds its stdin, drains its output pipes and reaps
# it, so a child never blocks on a full pipe and never stays a zombie, while the event loop
# goes on answering requests.  The loop only looks at ``finished`` and, once it is set, at
# the final fields.  The agent does not kill its children when it exits (neither does
# qemu-ga): a host may have started a long job, such as a package upgrade that restarts the
# agent itself.  They are reparented to init; a child still writing into a captured pipe then
# gets SIGPIPE, as under qemu-ga.

# capture-output -> where the child's stdout and stderr go.  ``true`` is "separated", as in
# qemu-ga; "merged" points stderr at the stdout pipe, so the order of the lines is kept.
EXEC_CAPTURE = {
    False: ("null", "null"), "none": ("null", "null"),
    True: ("pipe", "pipe"), "separated": ("pipe", "pipe"),
    "stdout": ("pipe", "null"), "stderr": ("null", "pipe"), "merged": ("pipe", "stdout"),
}

_pidfd_open = getattr(os, "pidfd_open", None)       # Python 3.9+ on Linux 5.3+


def open_pidfd(pid):
    """A file descriptor that polls readable when ``pid`` exits, or None where unsupported."""
    if _pidfd_open is None:
        return None
    try:
        return _pidfd_open(pid)
    except OSError:
        return None


def find_program(name, env):
    """The file GLib's spawn runs for ``name``: ``name`` itself when it has a slash, else the
    first executable regular file along PATH (the child's ``env`` PATH, else the agent's)."""
    if "/" in name:
        return name
    search = env.get("PATH") if env is not None else None
    if search is None:
        search = os.environ.get("PATH", DEFAULT_EXEC_SEARCH_PATH)
    denied = False
    for directory in search.split(":") if name else ():
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        denied = denied or os.path.exists(candidate)
    code = errno.EACCES if denied else errno.ENOENT
    raise OSError(code, os.strerror(code))


def exec_environment(entries):
    """``env`` as a mapping: each "NAME=value" once (the first wins, as for getenv())."""
    if entries is None:
        return None
    environ = OrderedDict()
    for entry in entries:
        name, eq, value = entry.partition("=")
        if eq and name and name not in environ:
            environ[name] = value
    return environ


def spawn_child(argv, env, stdin, stdout, stderr):
    """Start ``argv`` as guest-exec does: PATH search, no agent fds, default signals, the
    agent's cwd and session.  A file without a #! line runs under /bin/sh, as with GLib.

    ``stdin``, ``stdout`` and ``stderr`` are "pipe", "null" or (stderr only) "stdout".
    """
    import subprocess
    where = {"pipe": subprocess.PIPE, "null": subprocess.DEVNULL, "stdout": subprocess.STDOUT}
    program = find_program(argv[0], env)
    options = dict(stdin=where[stdin], stdout=where[stdout], stderr=where[stderr], env=env,
                   bufsize=0, close_fds=True, restore_signals=True, start_new_session=False)
    try:
        return subprocess.Popen(argv, executable=program, **options)
    except OSError as exc:
        if exc.errno != errno.ENOEXEC:
            raise
    return subprocess.Popen(["/bin/sh", program] + argv[1:], **options)


class ExecChild(object):
    """A guest-exec child: the process, its captured output, and whether it is over.

    ``finished`` is set once the child has been reaped and every captured pipe has hit end
    of file (a grandchild holding stdout open keeps it unset, as in qemu-ga).
    """

    def __init__(self, proc, input_data):
        import threading
        self.proc = proc
        self.out = bytearray() if proc.stdout is not None else None
        self.err = bytearray() if proc.stderr is not None else None
        self.out_truncated = self.err_truncated = False
        self.finished = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(input_data,),
                                   name="guest-exec-%d" % proc.pid)
        watcher.daemon = True
        watcher.start()

    def _watch(self, input_data):
        proc = self.proc
        try:
            self._pump(input_data)
        finally:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
            self.finished.set()

    def _pump(self, input_data):
        """Feed stdin and drain stdout/stderr until the output pipes close."""
        proc = self.proc
        poller = select.poll()
        streams = {}                        # output fd -> "out" / "err"
        for pipe, name in ((proc.stdout, "out"), (proc.stderr, "err")):
            if pipe is not None:
                streams[pipe.fileno()] = name
                poller.register(pipe.fileno(), select.POLLIN)
        stdin, pending = None, memoryview(input_data or b"")
        if proc.stdin is not None:
            if pending:
                stdin = proc.stdin.fileno()
                os.set_blocking(stdin, False)
                poller.register(stdin, select.POLLOUT)
            else:
                proc.stdin.close()
        # The child may exit long before its pipes close (a grandchild holds them): a pidfd
        # says so at once and it is reaped at once; without one we look every second.
        pidfd = open_pidfd(proc.pid) if streams or stdin is not None else None
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        try:
            while streams or stdin is not None:
                if not streams and proc.poll() is not None:
                    break                   # only stdin is left and nobody will read it
                waiting = pidfd is None and proc.returncode is None
                events = poller.poll(EXEC_REAP_INTERVAL * 1000 if waiting else None)
                if not events:
                    proc.poll()
                for fd, _ in events:
                    if fd == pidfd:
                        proc.poll()
                        poller.unregister(pidfd)
                        os.close(pidfd)
                        pidfd = None
                    elif fd == stdin:
                        try:
                            pending = pending[os.write(fd, pending[:EXEC_WRITE_CHUNK]):]
                        except BlockingIOError:
                            continue
                        except OSError:     # EPIPE: the child closed its stdin or is gone
                            pending = None
                        if not pending:
                            poller.unregister(fd)
                            proc.stdin.close()
                            stdin = None
                    else:
                        try:
                            data = os.read(fd, EXEC_READ_CHUNK)
                        except OSError:
                            data = b""
                        if data:
                            self._keep(streams[fd], data)
                        else:
                            poller.unregister(fd)
                            del streams[fd]
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _keep(self, name, data):
        """Store output up to the cap; past it, note the truncation and drop the bytes."""
        buf = self.out if name == "out" else self.err
        room = EXEC_OUTPUT_CAP - len(buf)
        if len(data) > room:
            setattr(self, name + "_truncated", True)
            data = data[:room]
        if data:
            buf += data

    def status(self):
        """GuestExecStatus in qemu-ga's key order, base64 as bytes for the encoder."""
        if not self.finished.is_set():
            return {"exited": False}
        code = self.proc.returncode
        result = OrderedDict()
        if code >= 0:
            result["exitcode"] = code
        if self.err:
            result["err-data"] = binascii.b2a_base64(self.err, newline=False)
        if self.out:
            result["out-data"] = binascii.b2a_base64(self.out, newline=False)
        if self.err:
            result["err-truncated"] = self.err_truncated
        if code < 0:
            result["signal"] = -code
        if self.out:
            result["out-truncated"] = self.out_truncated
        result["exited"] = True
        return result


@command("guest-exec", data={"path": "str", "*arg": ["str"], "*env": ["str"],
                             "*input-data": "str",
                             "*capture-output": "GuestExecCaptureOutput"},
         returns="GuestExec")
def guest_exec(agent, path, arg=(), env=None, input_data=None, capture_output=False):
    """guest-exec: start a program and return its pid; guest-exec-status follows it.

    ``env`` replaces the environment; ``input-data`` goes to stdin (else /dev/null);
    output that is not captured goes to /dev/null.
    """
    argv = [path] + list(arg)
    agent.log.audit('guest-exec called: "%s"' % " ".join(argv))
    if len(agent.exec_children) >= MAX_EXEC_PROCESSES:
        raise QgaError("too many guest-exec processes: %d are running or waiting for "
                       "guest-exec-status to collect them" % MAX_EXEC_PROCESSES)
    data = decode_base64(input_data) if input_data is not None else None
    stdout, stderr = EXEC_CAPTURE[capture_output]
    try:
        proc = spawn_child(argv, exec_environment(env), "null" if data is None else "pipe",
                           stdout, stderr)
    except (OSError, ValueError) as exc:     # ValueError: a NUL or lone surrogate
        why = os_error_text(exc) if isinstance(exc, OSError) else os.strerror(errno.EINVAL)
        raise QgaError("Guest agent command failed, error was 'Failed to execute child "
                       "process \u201c%s\u201d (%s)'" % (path, why))
    agent.exec_children[proc.pid] = ExecChild(proc, data)
    return {"pid": proc.pid}


@command("guest-exec-status", data={"pid": "int"}, returns="GuestExecStatus")
def guest_exec_status(agent, pid):
    """guest-exec-status: how a guest-exec child is doing; forgotten once reported over."""
    agent.log.audit("guest-exec-status called, pid: %d" % pid)
    child = agent.exec_children.get(pid)
    if child is None:
        raise QgaError("Invalid parameter 'pid'")
    result = child.status()
    if result["exited"]:
        del agent.exec_children[pid]
    return result

# (end of exec commands)


# -- Power: guest-shutdown, guest-suspend-disk, -ram, -hybrid ------------------------------

# (end of power commands)


# -- Freeze and trim: guest-fsfreeze-*, guest-fstrim ---------------------------------------

# (end of freeze commands)


# -- Filesystems and disks: guest-get-fsinfo, guest-get-disks ------------------------------

# (end of disks commands)


# -- CPUs and memory: guest-get/set-vcpus, memory blocks -----------------------------------

# (end of cpus commands)


# -- Network: guest-network-get-interfaces, guest-network-get-route ------------------------

# (end of network commands)


# -- Devices: guest-get-devices ------------------------------------------------------------

# (end of devices commands)


# -- Users and identity: host name, timezone, OS info, users, passwords --------------------

# (end of identity commands)


# -- SSH keys: guest-ssh-get/add/remove-authorized-keys ------------------------------------

# (end of ssh commands)


# -- Statistics: guest-get-diskstats, guest-get-cpustats, guest-get-load -------------------

# (end of stats commands)


# ==============================================================================================
# Transports and the event loop
# ==============================================================================================

class ChannelError(Exception):
    """The channel cannot be opened or has failed; with -r the agent reopens it."""


def find_virtio_port(host, name=VIRTIO_PORT_NAME):
    """The device node of the virtio-serial port ``name`` and the paths tried to find it.

    udev makes /dev/virtio-ports/<name>; without udev (initramfs, busybox) the port's name is
    in /sys/class/virtio-ports/vportNpM/name and its node is /dev/vportNpM.
    """
    tried = ["/dev/virtio-ports/" + name]
    if host.exists(tried[0]):
        return tried[0], tried
    tried.append("/sys/class/virtio-ports/*/name")
    for port in host.listdir("/sys/class/virtio-ports"):
        if host.read_attr("/sys/class/virtio-ports/%s/name" % port) == name:
            node = "/dev/" + port
            tried.append(node)
            if host.exists(node):
                return node, tried
            dev = host.read_attr("/sys/class/virtio-ports/%s/dev" % port)
            if dev and ":" in dev:                   # no /dev node yet: make one, as udev would
                major, minor = (int(x) for x in dev.split(":"))
                try:
                    os.mknod(host.path(node), 0o600 | stat.S_IFCHR, os.makedev(major, minor))
                    return node, tried
                except OSError:
                    pass
    return None, tried


def _uevent_socket():
    """A netlink socket that wakes us on device hotplug, or None where that is not allowed."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 15)
        sock.bind((0, 1))       # NETLINK_KOBJECT_UEVENT, kernel multicast group
        return sock
    except (OSError, AttributeError):
        return None


def set_raw_serial(fd):
    """isa-serial line settings exactly as qemu-ga makes them (raw, 38400, VMIN 1)."""
    import termios
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.IGNPAR | termios.PARMRK
               | termios.INPCK | termios.ISTRIP | termios.INLCR | termios.IGNCR
               | termios.ICRNL | termios.IXON | termios.IXOFF | termios.IXANY
               | termios.IMAXBEL)
    cflag |= termios.B38400
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    termios.tcflush(fd, termios.TCIFLUSH)
    termios.tcsetattr(fd, termios.TCSANOW,
                      [iflag, 0, cflag, 0, termios.B38400, termios.B38400, cc])


class Channel(object):
    """Where requests come from: a serial port, a listening socket, or stdin/stdout.

    ``open()`` returns the listening socket (listen kinds) or None; ``connect()`` yields the
    (read_fd, write_fd) of the next client, for serial ports the port itself.
    """

    def __init__(self, config, host, log):
        self.config, self.host, self.log = config, host, log
        self.method = config.method
        self.listener = None
        self.port_fd = None

    # Listening kinds ----------------------------------------------------------------------------

    def _listen(self):
        config = self.config
        if config.listen_fd is not None:
            return config.listen_fd
        if self.method == "unix-listen":
            try:
                os.unlink(config.path)
            except OSError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(config.path)
            except OSError as exc:
                raise ChannelError("error binding socket '%s': %s"
                                   % (config.path, os_error_text(exc)))
        else:
            cid, port = parse_vsock_address(config.path)
            family = getattr(socket, "AF_VSOCK", 40)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.bind((cid, port))
            except (OSError, TypeError) as exc:
                raise ChannelError("error binding vsock %s: %s" % (config.path, exc))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        return sock

    # Serial kinds --------------------------------------------------------------------------------

    def open_serial(self, waiting):
        """Open the serial port; None (with the reason logged once) while it cannot be."""
        config = self.config
        path = config.path
        if self.method == "virtio-serial" and path is None:
            path, tried = find_virtio_port(self.host)
            if path is None:
                if not waiting:
                    self.log.warning("virtio port %s not found (tried %s); waiting for it"
                                     % (VIRTIO_PORT_NAME, ", ".join(tried)))
                return None
            path = self.host.path(path)
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
        if self.method == "isa-serial":
            flags |= os.O_NOCTTY
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                if not waiting:
                    self.log.warning("channel '%s' is busy (opened by another process); "
                                     "retrying" % path)
                return None
            raise ChannelError("error opening channel '%s': %s" % (path, os_error_text(exc)))
        if self.method == "isa-serial":
            try:
                set_raw_serial(fd)
            except Exception as exc:
                os.close(fd)
                raise ChannelError("error setting termios on '%s': %s" % (path, exc))
        self.log.debug("opened channel %s" % path)
        return fd


def parse_vsock_address(text):
    """``CID:PORT`` (both decimal, at most 2^32-1) as qemu parses it."""
    if text is None or ":" not in text:
        raise ChannelError("error parsing address '%s'" % text)
    cid, port = text.split(":", 1)
    for part, what in ((cid, "cid"), (port, "port")):
        if not part.isdigit() or int(part) > 0xFFFFFFFF:
            raise ChannelError("Failed to parse %s '%s'" % (what, part))
    return int(cid), int(port)


class Connection(object):
    """One client: its file descriptor, its framer and the reply bytes waiting to go out."""

    def __init__(self, fd, sock=None, owned=False):
        self.fd, self.sock, self.owned = fd, sock, owned
        self.framer = Framer()
        self.out = []            # memoryviews still to write
        self.pending = 0

    def queue(self, chunks):
        for chunk in chunks:
            if len(chunk):
                self.out.append(memoryview(chunk))
                self.pending += len(chunk)

    def flush(self):
        """Write what the fd takes now; raises OSError on a hung-up peer."""
        while self.out:
            try:
                written = os.writev(self.fd, self.out[:64])
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return
                raise
            self.pending -= written
            while written:
                head = self.out[0]
                if written >= len(head):
                    written -= len(head)
                    self.out.pop(0)
                else:
                    self.out[0] = head[written:]
                    written = 0

    def drop_output(self):
        self.out, self.pending = [], 0


class Server(object):
    """The event loop: one client at a time, never blocking on it, never spinning.

    The client fd is watched edge-triggered.  That matters for virtio-serial: while no host
    has the port open it stays readable-at-EOF (POLLHUP) for ever, which made qemu-ga poll at
    10 Hz; with an edge trigger we hear of it once and sleep until the host writes again.
    Reply bytes are written without blocking, so a host that stops reading cannot stop us from
    noticing that it hung up; while a reply is stuck we stop reading new requests.
    """

    def __init__(self, agent, channel):
        self.agent = agent
        self.channel = channel
        self.log = agent.log
        self.epoll = select.epoll()
        self.conn = None
        self.listener = None
        self.stop_requested = False
        self.channel_error = None
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        self.epoll.register(self.wake_r, select.EPOLLIN)

    # -- stopping --------------------------------------------------------------------------------

    def request_stop(self, signum=None, frame=None):
        """SIGTERM/SIGINT: stop, except while frozen (as qemu-ga: never die holding a freeze)."""
        if self.agent.frozen:
            self.log.warning("ignoring signal %s while file systems are frozen" % signum)
            return
        self.stop_requested = True
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    # -- connections -----------------------------------------------------------------------------

    def attach(self, fd, sock=None, owned=False):
        """Serve a connected client: a serial port or an accepted socket."""
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.conn = Connection(fd, sock, owned)
        self.epoll.register(fd, select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
        self.on_readable()

    def detach(self):
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            self.epoll.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        if conn.sock is not None:
            conn.sock.close()
        elif conn.owned:
            os.close(conn.fd)
        if self.listener is not None:
            self.epoll.register(self.listener.fileno(), select.EPOLLIN)

    def accept(self):
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        self.epoll.unregister(self.listener.fileno())
        fcntl.fcntl(sock.fileno(), fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        self.log.debug("client connected")
        self.attach(sock.fileno(), sock=sock)

    # -- I/O -------------------------------------------------------------------------------------

    def on_readable(self):
        """Read until the fd runs dry (edge trigger), answering every complete request."""
        conn = self.conn
        while conn is self.conn and conn.pending < MAX_PENDING_OUTPUT:
            try:
                data = os.read(conn.fd, READ_CHUNK)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return
                if self.listener is None:           # a serial port failed (e.g. unplugged)
                    self.channel_error = "error reading channel: %s" % os_error_text(exc)
                    return
                self.on_hangup("error reading channel: %s" % os_error_text(exc))
                return
            if not data:
                self.on_hangup("received EOF")
                return
            conn.queue(self.agent.handle_bytes(conn.framer, data))
            self.on_writable()

    def on_writable(self):
        conn = self.conn
        if conn is None:
            return
        try:
            conn.flush()
        except OSError as exc:
            self.on_hangup("error sending reply: %s" % os_error_text(exc))

    def on_hangup(self, why):
        """The host went away: forget its partial request and its unsent replies."""
        self.log.debug(why)
        conn = self.conn
        if conn is None:
            return
        conn.framer.reset()
        conn.drop_output()
        if self.listener is not None:
            self.detach()
        # A serial port stays open: the edge trigger wakes us when a host writes again.

    # -- the loop --------------------------------------------------------------------------------

    def run(self):
        """Serve until stopped; raises ChannelError when the channel fails."""
        channel = self.channel
        if channel.method in ("unix-listen", "vsock-listen"):
            self.listener = channel._listen()
            self.epoll.register(self.listener.fileno(), select.EPOLLIN)
            self.run_loop()
        elif channel.method == "stdio":
            self.run_stdio()
        else:
            self.run_serial()

    def run_stdio(self):
        """One client on stdin/stdout, served with plain blocking I/O until EOF."""
        framer = Framer()
        while not self.stop_requested:
            try:
                data = os.read(0, READ_CHUNK)
            except InterruptedError:
                continue
            if not data:
                return
            for chunk in self.agent.handle_bytes(framer, data):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(1, view):]

    def run_serial(self):
        waiting, busy_wait = False, None
        uevents = None
        while not self.stop_requested:
            fd = self.channel.open_serial(waiting)
            if fd is not None:
                if uevents is not None:
                    self.epoll.unregister(uevents.fileno())
                    uevents.close()
                    uevents = None
                self.attach(fd, owned=True)
                self.run_loop()
                self.detach()
                if self.stop_requested:
                    return
                if self.channel.config.path is not None:
                    raise ChannelError(self.channel_error or "channel closed")
                self.log.warning("%s; looking for the port again" % self.channel_error)
                self.channel_error, waiting = None, False
                continue
            # Not there yet (hotplug) or busy: sleep until a device event or the next rescan.
            if not waiting:
                uevents = _uevent_socket()
                if uevents is not None:
                    self.epoll.register(uevents.fileno(), select.EPOLLIN)
            waiting = True
            for efd, _ in self._poll(PORT_RESCAN_INTERVAL if uevents else BUSY_RETRY_INTERVAL):
                if uevents is not None and efd == uevents.fileno():
                    try:
                        while uevents.recv(65536, socket.MSG_DONTWAIT):
                            pass
                    except OSError:
                        pass
                self._drain_wake(efd)

    def _poll(self, timeout):
        delay = self.agent.next_timer_delay()
        if delay is not None:
            timeout = delay if timeout is None else min(timeout, delay)
        try:
            events = self.epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            events = []
        self.agent.run_due_timers()
        return events

    def _drain_wake(self, fd):
        if fd == self.wake_r:
            try:
                os.read(self.wake_r, 4096)
            except OSError:
                pass

    def run_loop(self):
        while not self.stop_requested and self.channel_error is None:
            for fd, events in self._poll(None):
                conn = self.conn
                if self.listener is not None and fd == self.listener.fileno():
                    if conn is None:
                        self.accept()
                elif conn is not None and fd == conn.fd:
                    if events & select.EPOLLOUT:
                        self.on_writable()
                    if self.conn is conn and events & (select.EPOLLIN | select.EPOLLHUP
                                                       | select.EPOLLERR):
                        self.on_readable()
                    elif self.conn is conn and not conn.out and conn.pending == 0:
                        self.on_readable()      # reading was paused behind a stuck reply
                else:
                    self._drain_wake(fd)

    def close(self):
        self.detach()
        if self.listener is not None:
            self.listener.close()
        self.epoll.close()
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)


# ==============================================================================================
# Configuration and command line (qemu-ga's options, config file and --dump-conf)
# ==============================================================================================

class Config(object):
    """The effective settings, after the config file and then the command line."""

    def __init__(self):
        self.daemon = False
        self.method = "virtio-serial"
        self.path = None
        self.logfile = None
        self.pidfile = DEFAULT_PIDFILE
        self.fsfreeze_hook = None
        self.statedir = DEFAULT_STATEDIR
        self.verbose = False
        self.retry_path = False
        self.block_rpcs = []
        self.allow_rpcs = []
        self.block_rpcs_raw = None      # the config file's text, dumped back verbatim
        self.listen_fd = None           # systemd socket activation
        self.freeze_timeout = 0


USAGE = """Usage: %(prog)s [-m <method> -p <path>] [<options>]
QEMU Guest Agent (qga-mini %(project)s, behaves as qemu-ga %(version)s)

  -m, --method      transport method: one of unix-listen, virtio-serial,
                    isa-serial, vsock-listen or stdio (virtio-serial is the default)
  -p, --path        device/socket path (the default for virtio-serial is
                    found in /dev/virtio-ports or /sys/class/virtio-ports,
                    the default for isa-serial is '/dev/ttyS0'); for vsock-listen
                    it is '<cid>:<port>'
      --device      virtio-serial with the port found automatically
  -l, --logfile     set logfile path, logs to stderr by default
  -f, --pidfile     specify pidfile (default is %(pidfile)s)
  -F, --fsfreeze-hook
                    enable fsfreeze hook. Accepts an optional argument that
                    specifies script to run on freeze/thaw. Script will be
                    called with 'freeze'/'thaw' arguments accordingly.
                    (default is %(hook)s)
                    If using -F with an argument, do not follow -F with a
                    space. (for example: -F/var/run/fsfreezehook.sh)
      --freeze-timeout SECONDS
                    thaw by itself if the host has not thawed after SECONDS
                    (default 0: never, as qemu-ga)
  -t, --statedir    specify dir to store state information (absolute paths
                    only, default is %(statedir)s)
  -v, --verbose     log extra debugging information
  -V, --version     print version information and exit
  -d, --daemonize   become a daemon
  -b, --block-rpcs  comma-separated list of RPCs to disable (no spaces,
                    use "help" to list available RPCs)
  -a, --allow-rpcs  comma-separated list of RPCs to enable (no spaces,
                    use "help" to list available RPCs)
  -c, --config      configuration file (default %(config)s, or $QGA_CONF)
  -D, --dump-conf   dump a qemu-ga config file based on current config
                    options / command-line parameters to stdout
  -r, --retry-path  attempt re-opening path if it's unavailable or closed
                    due to an error which may be recoverable in the future
      --self-test   run every read-only command here and print a table
  -h, --help        display this help and exit
"""

# Options taking an argument, and their long names.
_OPTS_WITH_ARG = {"-m": "method", "-p": "path", "-l": "logfile", "-f": "pidfile",
                  "-t": "statedir", "-b": "block-rpcs", "-a": "allow-rpcs", "-c": "config"}
_LONG_OPTS = {"--method": "-m", "--path": "-p", "--logfile": "-l", "--pidfile": "-f",
              "--statedir": "-t", "--block-rpcs": "-b", "--blacklist": "-b",
              "--allow-rpcs": "-a", "--config": "-c", "--verbose": "-v", "--version": "-V",
              "--daemonize": "-d", "--dump-conf": "-D", "--retry-path": "-r", "--help": "-h",
              "--fsfreeze-hook": "-F", "--device": "--device",
              "--freeze-timeout": "--freeze-timeout", "--self-test": "--self-test"}
_FLAGS = set("vVdDrh")


class UsageError(Exception):
    """A bad command line or config: one line on stderr, exit 1."""


def parse_args(argv):
    """qemu-ga's command line as a list of (option, value) pairs in order.

    ``-F`` takes its argument only when attached (``-F/path``, ``--fsfreeze-hook=/path``), as
    getopt's optional arguments do; stray non-option words are ignored, as in qemu-ga.
    """
    opts = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            matches = [l for l in _LONG_OPTS if l.startswith(name)]
            if name in _LONG_OPTS:
                matches = [name]
            if len(matches) != 1:
                raise UsageError("unrecognized option '%s'" % arg)
            short = _LONG_OPTS[matches[0]]
            if short in ("-F",):
                opts.append(("-F", value if eq else None))
            elif short in _OPTS_WITH_ARG or short == "--freeze-timeout":
                if not eq:
                    if not args:
                        raise UsageError("option '%s' requires an argument" % matches[0])
                    value = args.pop(0)
                opts.append((short, value))
            else:
                if eq:
                    raise UsageError("option '%s' doesn't allow an argument" % matches[0])
                opts.append((short, None))
        elif arg.startswith("-") and len(arg) > 1:
            i = 1
            while i < len(arg):
                flag = "-" + arg[i]
                rest = arg[i + 1:]
                if flag == "-F":
                    opts.append(("-F", rest or None))
                    break
                if flag in _OPTS_WITH_ARG:
                    if not rest:
                        if not args:
                            raise UsageError("option requires an argument -- '%s'" % arg[i])
                        rest = args.pop(0)
                    opts.append((flag, rest))
                    break
                if arg[i] not in _FLAGS:
                    raise UsageError("invalid option -- '%s'" % arg[i])
                opts.append((flag, None))
                i += 1
    return opts


def split_rpc_list(text):
    """A comma list of command names (qemu-ga splits on commas only, never on ';')."""
    return [name for name in text.split(",") if name]


def parse_keyfile(text, path):
    """A GLib key file as {group: {key: value}}; UsageError on a syntax error."""
    groups, group = {}, None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = groups.setdefault(line[1:-1], OrderedDict())
        elif "=" in line and group is not None:
            key, value = line.split("=", 1)
            group[key.strip()] = value.strip()
        else:
            raise UsageError("error loading configuration from path: %s, Key file contains "
                             "line “%s” which is not a key-value pair, group, or comment"
                             % (path, line))
    return groups


def _keyfile_bool(value, key, path):
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise UsageError("error loading configuration from path: %s, Key file contains key “%s” "
                     "which has a value that cannot be interpreted." % (path, key))


def load_config_file(config, path, required, log):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except (OSError, IOError) as exc:
        if not required and exc.errno == errno.ENOENT:
            return
        raise UsageError("error loading configuration from path: %s, %s"
                         % (path, os_error_text(exc)))
    general = parse_keyfile(text, path).get("general", {})
    for key, value in general.items():
        if key in ("daemon", "verbose", "retry-path"):
            setattr(config, key.replace("-", "_"), _keyfile_bool(value, key, path))
        elif key in ("method", "path", "logfile", "pidfile", "fsfreeze-hook", "statedir"):
            setattr(config, key.replace("-", "_"), value)
        elif key == "block-rpcs" and "blacklist" not in general:
            config.block_rpcs_raw = value
            config.block_rpcs.extend(split_rpc_list(value))
        elif key == "blacklist":
            log.warning("config using deprecated 'blacklist' key, should be replaced with "
                        "the 'block-rpcs' key.")
            config.block_rpcs_raw = value
            config.block_rpcs.extend(split_rpc_list(value))
        elif key == "allow-rpcs":
            config.allow_rpcs.extend(split_rpc_list(value))
        elif key == "freeze-timeout":
            config.freeze_timeout = _parse_seconds(value)


def _parse_seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError("invalid freeze timeout '%s'" % text)
    return value


def dump_config(config):
    """--dump-conf, in qemu-ga's key order."""
    lines = ["[general]", "daemon=%s" % str(config.daemon).lower(),
             "method=%s" % config.method, "path=%s" % config.path]
    if config.logfile:
        lines.append("logfile=%s" % config.logfile)
    lines.append("pidfile=%s" % config.pidfile)
    if config.fsfreeze_hook:
        lines.append("fsfreeze-hook=%s" % config.fsfreeze_hook)
    lines += ["statedir=%s" % config.statedir, "verbose=%s" % str(config.verbose).lower(),
              "retry-path=%s" % str(config.retry_path).lower()]
    blocked = config.block_rpcs_raw if config.block_rpcs_raw is not None else ""
    extra = [n for n in config.block_rpcs if n not in split_rpc_list(blocked)]
    lines.append("block-rpcs=%s" % ",".join(([blocked] if blocked else []) + extra))
    if config.allow_rpcs:
        lines.append("allow-rpcs=%s" % ",".join(config.allow_rpcs))
    if config.freeze_timeout:
        lines.append("freeze-timeout=%g" % config.freeze_timeout)
    return "\n".join(lines) + "\n"


def build_config(argv, environ, log):
    """The Config and the action ("run", "dump", "version", "help", "list", "self-test")."""
    opts = parse_args(argv)
    config = Config()
    cli_config = [value for opt, value in opts if opt == "-c"]
    path = environ.get("QGA_CONF") or (cli_config[-1] if cli_config else DEFAULT_CONFIG_PATH)
    load_config_file(config, path, required=bool(environ.get("QGA_CONF") or cli_config),
                     log=log)
    action = "run"
    for opt, value in opts:
        if opt == "-m":
            config.method = value
        elif opt == "--device":
            config.method, config.path = "virtio-serial", None
        elif opt == "-p":
            config.path = value
        elif opt == "-l":
            config.logfile = value
        elif opt == "-f":
            config.pidfile = value
        elif opt == "-F":
            config.fsfreeze_hook = value or DEFAULT_FSFREEZE_HOOK
        elif opt == "-t":
            config.statedir = value
        elif opt == "-v":
            config.verbose = True
        elif opt == "-d":
            config.daemon = True
        elif opt == "-r":
            config.retry_path = True
        elif opt == "--freeze-timeout":
            config.freeze_timeout = _parse_seconds(value)
        elif opt in ("-b", "-a"):
            if value in ("help", "?"):
                action = "list"
            else:
                names = split_rpc_list(value)[::-1]       # qemu-ga prepends each piece
                (config.block_rpcs if opt == "-b" else config.allow_rpcs).extend(names)
        elif opt == "-V":
            return config, "version"
        elif opt == "-h":
            return config, "help"
        elif opt == "-D":
            action = "dump"
        elif opt == "--self-test":
            action = "self-test"
    if action == "list":
        return config, action
    if config.method not in ("virtio-serial", "isa-serial", "unix-listen", "vsock-listen",
                             "stdio"):
        raise UsageError("unsupported channel method/type: %s" % config.method)
    listen_fd = systemd_listen_fd(environ)
    if listen_fd is not None:
        config.listen_fd = listen_fd
        config.method = ("vsock-listen" if listen_fd.family == getattr(socket, "AF_VSOCK", 40)
                         else "unix-listen")
    elif config.path is None:
        if config.method in ("unix-listen", "vsock-listen"):
            raise UsageError("must specify a path for this channel")
        if config.method == "isa-serial":
            config.path = DEFAULT_SERIAL_PATH
    return config, action


def systemd_listen_fd(environ):
    """The socket systemd passed us (LISTEN_FDS/LISTEN_PID), or None."""
    if environ.get("LISTEN_PID") != str(os.getpid()) or "LISTEN_FDS" not in environ:
        return None
    if environ.get("LISTEN_FDS") != "1":
        raise UsageError("qemu-ga only supports listening on one socket")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    fd = 3
    try:
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        if sys.version_info < (3, 7):       # socket() learnt to find the family in 3.7
            probe = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM)
            family = probe.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_DOMAIN", 39))
            probe.close()
            sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
        else:
            sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise UsageError("unsupported listen fd type: %s" % exc)
    if sock.family not in (socket.AF_UNIX, getattr(socket, "AF_VSOCK", 40)):
        raise UsageError("unsupported listen fd type")
    sock.setblocking(False)
    return sock


# ==============================================================================================
# main()
# ==============================================================================================

def daemonize(config):
    """Fork into the background as qemu-ga does: pidfile locked, umask 077, stdio /dev/null."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.umask(0o077)
    os.chdir("/")
    fd = os.open(config.pidfile, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        raise UsageError("Cannot lock pid file: %s" % os_error_text(exc))
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % os.getpid())
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.close(null)
    return fd


def open_log(config):
    stream = None
    if config.logfile:
        try:
            stream = open(config.logfile, "a")
            fcntl.fcntl(stream.fileno(), fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        except (OSError, IOError) as exc:
            raise UsageError("unable to open specified log file: %s" % os_error_text(exc))
    return Log(stream, config.verbose)


def serve(agent):
    """Open the channel and serve until stopped; with -r, reopen it after every failure."""
    while True:
        server = Server(agent, Channel(agent.config, agent.host, agent.log))
        server.install_signal_handlers()
        try:
            server.run()
            if server.stop_requested or agent.config.method == "stdio":
                return 0
            raise ChannelError("channel closed")
        except ChannelError as exc:
            agent.log.error(str(exc))
            if not agent.config.retry_path:
                agent.log.error("failed to initialize guest agent channel")
                return 1
            agent.log.error("agent stopped unexpectedly, restarting...")
            time.sleep(RETRY_INTERVAL)
        finally:
            server.close()


def main(argv=None, environ=None):
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    prog = os.path.basename(sys.argv[0] or "qga_mini.py")
    early_log = Log()
    try:
        config, action = build_config(argv, environ, early_log)
        if action == "version":
            print("QEMU Guest Agent %s (qga-mini %s)" % (__version__, __project_version__))
            return 0
        if action == "help":
            print(USAGE % {"prog": prog, "project": __project_version__, "version": __version__,
                           "pidfile": DEFAULT_PIDFILE, "hook": DEFAULT_FSFREEZE_HOOK,
                           "statedir": DEFAULT_STATEDIR, "config": DEFAULT_CONFIG_PATH})
            return 0
        if action == "list":
            for cmd in registered_commands():
                print(cmd.name)
            return 0
        if action == "dump":
            if config.method == "virtio-serial" and config.path is None:
                config.path = DEFAULT_VIRTIO_PATH
            sys.stdout.write(dump_config(config))
            return 0
        if action == "self-test":
            return self_test(config)
        pidfile_fd = daemonize(config) if config.daemon else None
        agent = Agent(config, log=open_log(config))
        if pidfile_fd is not None:
            agent.cleanups.append(lambda: os.unlink(config.pidfile))
        if config.method == "unix-listen" and config.listen_fd is None:
            agent.cleanups.append(lambda: os.path.exists(config.path) and os.unlink(config.path))
        start_agent(agent)
    except UsageError as exc:
        sys.stderr.write("%s: %s\n" % (prog, exc))
        return 1
    try:
        return serve(agent)
    finally:
        agent.shutdown()


def start_agent(agent):
    """Bring up the state dir; come up frozen if a previous instance died frozen."""
    state = agent.state
    try:
        if state.is_frozen():
            agent.log.warning(
                "previous instance appears to have exited with frozen filesystems. deferring "
                "logging/pidfile creation and disabling non-fsfreeze-safe commands until "
                "guest-fsfreeze-thaw is issued, or filesystems are manually unfrozen and the "
                "file %s is removed" % state.frozen_marker)
            agent.frozen = True
            agent.log.muted = True
        else:
            state.ensure()
    except (OSError, IOError) as exc:
        raise UsageError("failed to load persistent state: %s" % os_error_text(exc))


def self_test(config):
    """Placeholder replaced when the self-test lands (issue: packaging)."""
    sys.stderr.write("--self-test is not available in this build\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
