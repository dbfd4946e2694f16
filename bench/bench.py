#!/usr/bin/env python3
"""Benchmark qga-mini against the real qemu-ga, side by side, in one run.

Usage (from the repository root):

    /usr/bin/python3 bench/bench.py                 # full run, table on stdout
    /usr/bin/python3 bench/bench.py --quick         # few rounds (CI smoke)
    /usr/bin/python3 bench/bench.py --only ping,exec --json /tmp/bench.json

Both agents run as real processes on a unix socket in a fresh temporary state directory:

    qga-mini:  /usr/bin/python3 qga_mini.py -m unix-listen -p SOCK -t STATEDIR
    qemu-ga:   qemu-ga -m unix-listen -p SOCK -t STATEDIR

Use /usr/bin/python3 (not a pyenv shim, which adds ~270 ms to every start) both to run this
script and as the interpreter of the agent (`--python`).

Method
------
* Every figure is measured in rounds; each round measures both agents, and the order alternates
  (A/B, B/A, ...) so that drift of the machine hits both alike. The table shows the median of
  the rounds; `--json FILE` saves every raw number.
* Figures that need a quiet process (start-up, idle RSS, peak RSS of a bulk transfer) start a
  fresh agent for every measurement: peak RSS is the process's VmHWM (/proc/PID/status) right
  after that one operation. The other figures use one long-lived agent per side.
* Times are wall-clock, from the first byte sent to the last byte (the `\\n`) of the reply, with
  no client-side parsing inside the timed span.
* The bench runs on one CPU and the agents on another (`--pin split`, like a host and a guest):
  left to the scheduler, request round trips change by 2x with whether client and agent happen
  to share a CPU. `--pin same` puts all on one CPU (CPU cost per request), `--pin none` neither.
* "ours/qemu-ga" is the ratio of the two medians; each row says whether higher or lower is better
  and states its target. Missed targets are reported, never a failure: the exit status is 0
  unless the harness itself broke (1) or the command line is wrong (2).
* A figure whose command qga-mini answers with CommandNotFound prints `n/a (not implemented)`.
  An agent that times out, closes the socket or dies gets `error (...)` in its column, is
  restarted, and the run goes on. Every socket operation has a timeout; all agent processes
  and temporary files are removed on exit (also on Ctrl-C / SIGTERM).

Figures (names for --only; groups: core, files, inspect, all)
-------------------------------------------------------------
startup       spawn to first guest-ping reply of `python3 qga_mini.py` (information: it compiles
              itself at every start, then hands its code to a fresh interpreter) and of the
              launcher contrib/qga-mini, at its first start (no bytecode yet) and from its
              bytecode (as images run it); target: launcher <= bare `python3 -c pass` + 15 ms
idle_rss      VmRSS after start-up and one ping, of the same three; target <= 12 MiB
ping          sequential guest-ping round trips/s on one connection; target >= 1x qemu-ga
pipeline      10,000 guest-ping requests written in one go, all replies read; target >= 1x
sync_pipeline 5,000 guest-sync requests with ids written in one go, all read; target >= 1.5x
proxmox       Proxmox VE's pattern: new connection, guest-sync-delimited and
              guest-network-get-interfaces in one write, both replies read, close; pairs/s >= 1x
libvirt       libvirt's pattern: guest-sync with a fresh id, then guest-get-vcpus, on one
              connection; pairs/s >= 1x
              (ping, pipeline and these three also show the min-max of the per-round ratios)
ingest        time to ingest a 16 MiB and a 64 MiB request (one huge string argument, sent in
              4 KiB writes, answered with an error); the 64/16 time ratio of the fastest
              rounds must be ~4 (linear; the target allows up to 5)
read          guest-file-read of a 48 MiB file in one call: MiB/s (>= 4x) and peak RSS (<= 1x;
              also shown: the RSS growth during the operation, VmHWM minus VmRSS before it)
read_chunked  the same file in 1 MiB reads until eof: MiB/s (>= 2x) and peak RSS (<= 1x)
write         guest-file-write of a 16 MiB payload in one call: MiB/s (>= 4x), peak RSS (<= 1x)
              (read and write also give the launcher's peak RSS, started from its bytecode)
exec          guest-exec /bin/true, then guest-exec-status until exited; target <= 1.5x time
fsinfo, interfaces, vcpus, diskstats, cpustats, disks, memblocks
              per-call latency of guest-get-fsinfo, guest-network-get-interfaces,
              guest-get-vcpus, guest-get-diskstats, guest-get-cpustats, guest-get-disks,
              guest-get-memory-blocks; target <= 1.2x time
"""

import argparse
import base64
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

MiB = 1 << 20
QEMU_GA_LABEL = "qemu-ga"
OURS_LABEL = "qga-mini"
DEFAULT_PYTHON = "/usr/bin/python3"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

START_TIMEOUT = 10.0        # seconds for an agent to accept and answer its first ping
CALL_TIMEOUT = 10.0         # seconds for an ordinary request
BULK_TIMEOUT = 120.0        # seconds for a bulk transfer (64 MiB ingest, 48 MiB read)
STARTUP_SETTLE = 0.1        # seconds of idling before VmRSS is read
CONNECT_POLL = 0.0005       # seconds between connect attempts while an agent starts

READ_FILE_SIZE = 48 * MiB   # qemu-ga's maximum count for one guest-file-read
READ_CHUNK = 1 * MiB
WRITE_SIZE = 16 * MiB
INGEST_SIZES = (16 * MiB, 64 * MiB)
INGEST_WRITE = 4096
# A message may hold at most 64 MiB of tokens (accumulated + token + 1 > 64 MiB is refused), so
# the "64 MiB" request is 256 bytes short of it; the 16 MiB one is cut the same for a fair ratio.
INGEST_SLACK = 256
PIPELINE_PING = b'{"execute":"guest-ping"}\n'
SYNC_REQUEST = b'{"execute":"guest-sync","arguments":{"id":%d}}\n'
PROXMOX_REQUEST = (b'{"execute":"guest-sync-delimited","arguments":{"id":%d}}\n'
                   b'{"execute":"guest-network-get-interfaces"}\n')
LIBVIRT_COMMAND = b'{"execute":"guest-get-vcpus"}\n'

# Rounds per figure: (normal, --quick). Each round measures both agents once.
ROUNDS = {
    "startup": (15, 3),
    "ping": (7, 2),
    "pipeline": (7, 2),
    "sync_pipeline": (7, 2),
    "proxmox": (7, 2),
    "libvirt": (7, 2),
    "ingest": (3, 1),
    "read": (5, 1),
    "read_chunked": (5, 1),
    "write": (5, 1),
    "exec": (5, 2),
    "inspect": (5, 2),
}
PING_COUNT = (3000, 300)
PIPELINE_COUNT = (10000, 10000)
SYNC_PIPELINE_COUNT = (5000, 5000)
PAIR_COUNT = (500, 50)      # Proxmox- and libvirt-style request pairs per round
EXEC_COUNT = (20, 5)
INSPECT_COUNT = (40, 5)

INSPECT_COMMANDS = [
    ("fsinfo", "guest-get-fsinfo"),
    ("interfaces", "guest-network-get-interfaces"),
    ("vcpus", "guest-get-vcpus"),
    ("diskstats", "guest-get-diskstats"),
    ("cpustats", "guest-get-cpustats"),
    ("disks", "guest-get-disks"),
    ("memblocks", "guest-get-memory-blocks"),
]

# Rows of the table: key, figure (for --only), label, unit, better, target.
# target: None (information only), ("ratio>=", x), ("ratio<=", x), ("abs<=", x), ("bare+", ms)
ROWS = [
    # The plain `python3 qga_mini.py` (which compiles itself at every start, then hands its
    # code to a fresh interpreter) and the launcher contrib/qga-mini, before and after its
    # bytecode exists (an image built with qga-mini-deps --compile has it from the start).
    ("startup_ms", "startup", "start-to-first-reply, python3 qga_mini.py", "ms", "lower",
     None),
    ("bare_ms", "startup", "  bare python3 -c pass (baseline)", "ms", "lower", None),
    ("first_ms", "startup", "  launcher, first start (no bytecode yet)", "ms", "lower", None),
    ("cached_ms", "startup", "  launcher, from bytecode", "ms", "lower", ("bare+", 15.0)),
    ("idle_rss", "idle_rss", "idle RSS (VmRSS), python3 qga_mini.py", "MiB", "lower",
     ("abs<=", 12.0)),
    ("first_rss", "idle_rss", "  launcher, first start (no bytecode yet)", "MiB", "lower", None),
    ("cached_rss", "idle_rss", "  launcher, from bytecode", "MiB", "lower", ("abs<=", 12.0)),
    ("ping_rps", "ping", "sequential ping round trips", "1/s", "higher", ("ratio>=", 1.0)),
    ("pipe_rps", "pipeline", "pipelined pings, 10000 in one write", "1/s", "higher",
     ("ratio>=", 1.0)),
    ("sync_rps", "sync_pipeline", "pipelined guest-sync with ids, 5000 in one write", "1/s",
     "higher", ("ratio>=", 1.5)),
    ("proxmox_pps", "proxmox", "Proxmox-style pairs (new conn, sync-delimited+interfaces)",
     "1/s", "higher", ("ratio>=", 1.0)),
    ("libvirt_pps", "libvirt", "libvirt-style pairs (guest-sync, then guest-get-vcpus)", "1/s",
     "higher", ("ratio>=", 1.0)),
    ("ingest16_ms", "ingest", "ingest 16 MiB request (4 KiB writes)", "ms", "lower", None),
    ("ingest64_ms", "ingest", "ingest 64 MiB request (4 KiB writes)", "ms", "lower", None),
    ("ingest_linear", "ingest", "  64 MiB / 16 MiB time, best rounds (4 = linear)", "x", "lower",
     ("abs<=", 5.0)),
    ("read1_mibs", "read", "file-read 48 MiB, one call", "MiB/s", "higher", ("ratio>=", 4.0)),
    ("read1_hwm", "read", "  peak RSS (VmHWM), one-call read", "MiB", "lower", ("ratio<=", 1.0)),
    ("read1_growth", "read", "  RSS growth during the read", "MiB", "lower", None),
    ("read1_hwm_l", "read", "  peak RSS, one-call read, launcher from bytecode", "MiB", "lower",
     ("ratio<=", 1.0)),
    ("readc_mibs", "read_chunked", "file-read 48 MiB, 1 MiB chunks", "MiB/s", "higher",
     ("ratio>=", 2.0)),
    ("readc_hwm", "read_chunked", "  peak RSS (VmHWM), chunked read", "MiB", "lower",
     ("ratio<=", 1.0)),
    ("readc_growth", "read_chunked", "  RSS growth during the reads", "MiB", "lower", None),
    ("write_mibs", "write", "file-write 16 MiB, one call", "MiB/s", "higher", ("ratio>=", 4.0)),
    ("write_hwm", "write", "  peak RSS (VmHWM), one-call write", "MiB", "lower",
     ("ratio<=", 1.0)),
    ("write_growth", "write", "  RSS growth during the write", "MiB", "lower", None),
    ("write_hwm_l", "write", "  peak RSS, one-call write, launcher from bytecode", "MiB",
     "lower", ("ratio<=", 1.0)),
    ("exec_ms", "exec", "exec /bin/true + status until exited", "ms", "lower",
     ("ratio<=", 1.5)),
] + [
    (name + "_ms", name, command + " per call", "ms", "lower", ("ratio<=", 1.2))
    for name, command in INSPECT_COMMANDS
]
# Rows measured only on our side, and rows whose qemu-ga column comes from another row.
OURS_ONLY = ("bare_ms", "first_ms", "cached_ms", "first_rss", "cached_rss")
QEMU_GA_COLUMN = {"read1_hwm_l": "read1_hwm", "write_hwm_l": "write_hwm"}
# Rows whose ratio is also given per round, min-max: the run-to-run spread.
SPREAD_ROWS = ("ping_rps", "pipe_rps", "sync_rps", "proxmox_pps", "libvirt_pps")

FIGURES = ["startup", "idle_rss", "ping", "pipeline", "sync_pipeline", "proxmox", "libvirt",
           "ingest", "read", "read_chunked", "write", "exec"] + [
               name for name, _ in INSPECT_COMMANDS]
GROUPS = {
    "core": ["startup", "idle_rss", "ping", "pipeline", "ingest"],
    "hosts": ["sync_pipeline", "proxmox", "libvirt"],
    "files": ["read", "read_chunked", "write"],
    "inspect": [name for name, _ in INSPECT_COMMANDS],
    "all": FIGURES,
}


class AgentError(Exception):
    """The agent under test misbehaved: timeout, hang-up, crash or an unexpected reply."""


class NotImplementedByAgent(Exception):
    """The agent answered CommandNotFound for a command the figure needs."""


# --------------------------------------------------------------------------- processes

LIVE_AGENTS = set()
AGENT_CPUS = None   # set of CPUs for the agents (--pin), None: wherever the scheduler likes


def read_status_kib(pid, key):
    """Return a `VmXXX:` value of /proc/PID/status in KiB."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError as e:
        raise AgentError("cannot read /proc/%d/status: %s" % (pid, e))
    raise AgentError("no %s in /proc/%d/status" % (key, pid))


class RecvBuffer:
    """One receive buffer shared by every connection (the client reads one reply at a time).

    Bulk replies (a 48 MiB read is a 64 MiB line) are received with recv_into into this
    pre-faulted buffer: no reallocation or extra copy inside the timed span, so the client can
    take in about 5 GiB/s and does not cap the agents' figures."""

    buf = bytearray(1 << 20)

    @classmethod
    def reserve(cls, size):
        if len(cls.buf) < size:
            cls.buf = bytearray(size)   # zero-filled, so its pages are faulted in now


class Conn:
    """One client connection: raw bytes out, reply lines in, a timeout on everything.

    Linear in what it receives: every byte is searched for the newline once, and replies that
    arrived together (pipelined) are cut off one by one without copying the rest each time."""

    def __init__(self, sock):
        self.sock = sock
        self.pending = b""   # bytes received after the last reply line ...
        self.start = 0       # ... from this offset on

    def settimeout(self, seconds):
        self.sock.settimeout(seconds)

    def send(self, data):
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise AgentError("timeout while sending (agent stopped reading)")
        except OSError as e:
            raise AgentError("send failed: %s" % e)

    def read_line(self, full=True):
        """Return (reply line without its newline, perf_counter when the newline arrived).

        With full=False only the first and last 256 bytes of a long line are returned (joined
        by NUL): enough to find the small keys around a bulk buf-b64 without copying it."""
        i = self.pending.find(b"\n", self.start)
        if i >= 0:   # already received (pipelined replies)
            t = time.perf_counter()
            line = self.pending[self.start:i]
            self.start = i + 1
            return line, t
        buf = RecvBuffer.buf
        end = len(self.pending) - self.start   # a partial line: copied once, never searched again
        if end > len(buf):
            RecvBuffer.reserve(2 * end)
            buf = RecvBuffer.buf
        buf[:end] = memoryview(self.pending)[self.start:]
        i = -1
        while i < 0:
            if end == len(buf):
                bigger = bytearray(2 * len(buf))
                bigger[:end] = buf[:end]
                RecvBuffer.buf = buf = bigger
            try:
                n = self.sock.recv_into(memoryview(buf)[end:])
            except socket.timeout:
                raise AgentError("timeout waiting for a reply")
            except OSError as e:
                raise AgentError("receive failed: %s" % e)
            if not n:
                raise AgentError("agent closed the connection")
            i = buf.find(b"\n", end, end + n)
            end += n
        t = time.perf_counter()
        self.pending = bytes(buf[i + 1:end])
        self.start = 0
        view = memoryview(buf)
        if full or i <= 512:
            line = bytes(view[:i])
        else:
            line = bytes(view[:256]) + b"\0" + bytes(view[i - 256:i])
        view.release()
        return line, t

    def call(self, execute, arguments=None, timeout=CALL_TIMEOUT):
        """Send one request, return its `return` value; QAPI errors become exceptions."""
        request = {"execute": execute}
        if arguments is not None:
            request["arguments"] = arguments
        self.settimeout(timeout)
        self.send(json.dumps(request).encode() + b"\n")
        line, _ = self.read_line()
        return parse_reply(line, execute)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def parse_reply(line, execute):
    try:
        reply = json.loads(line.lstrip(b"\xff").decode("ascii", "replace"))
    except ValueError:
        raise AgentError("unparsable reply to %s: %r" % (execute, line[:120]))
    if not isinstance(reply, dict):
        raise AgentError("reply to %s is not an object: %r" % (execute, line[:120]))
    if "error" in reply:
        err = reply["error"] or {}
        if err.get("class") == "CommandNotFound":
            raise NotImplementedByAgent(execute)
        raise AgentError("%s failed: %s: %s" % (execute, err.get("class"), err.get("desc")))
    if "return" not in reply:
        raise AgentError("reply to %s has no return: %r" % (execute, line[:120]))
    return reply["return"]


class Agent:
    """One agent process in its own temporary directory (socket, state dir, log)."""

    def __init__(self, argv_prefix, workroot, tag):
        self.dir = tempfile.mkdtemp(prefix=tag + "-", dir=workroot)
        self.sock_path = os.path.join(self.dir, "q.sock")
        self.state_dir = os.path.join(self.dir, "state")
        os.mkdir(self.state_dir)   # qemu-ga refuses a missing state dir
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.argv = list(argv_prefix) + ["-m", "unix-listen", "-p", self.sock_path,
                                         "-t", self.state_dir]
        self.proc = None
        self.t_spawn = None

    def spawn(self):
        log = open(self.log_path, "wb")
        try:
            self.t_spawn = time.perf_counter()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log,
                                         start_new_session=True, cwd=self.dir)
        except OSError as e:
            raise AgentError("cannot start %s: %s" % (self.argv[0], e))
        finally:
            log.close()
        LIVE_AGENTS.add(self)
        if AGENT_CPUS:
            try:
                os.sched_setaffinity(self.proc.pid, AGENT_CPUS)
            except OSError:
                pass

    @property
    def pid(self):
        return self.proc.pid

    def log_tail(self, n=300):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        text = data[-n:].decode("utf-8", "replace").strip()
        return (" | stderr: " + " / ".join(text.splitlines()[-3:])) if text else ""

    def connect(self, timeout=START_TIMEOUT):
        """Connect as soon as the agent listens; raise AgentError if it dies or never listens."""
        deadline = time.perf_counter() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.sock_path)
                s.settimeout(CALL_TIMEOUT)
                return Conn(s)
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
            except OSError as e:
                s.close()
                raise AgentError("connect failed: %s" % e)
            if self.proc.poll() is not None:
                raise AgentError("agent exited with status %s before listening%s"
                                 % (self.proc.returncode, self.log_tail()))
            if time.perf_counter() > deadline:
                raise AgentError("agent did not listen within %.0f s%s"
                                 % (timeout, self.log_tail()))
            time.sleep(CONNECT_POLL)

    def check_alive(self):
        if self.proc.poll() is not None:
            raise AgentError("agent died with status %s%s"
                             % (self.proc.returncode, self.log_tail()))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                try:
                    self.proc.kill()
                except OSError:
                    pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        LIVE_AGENTS.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_all_agents():
    for agent in list(LIVE_AGENTS):
        agent.stop()


class Side:
    """One column of the table: how to start that agent, plus its long-lived instance."""

    def __init__(self, label, argv_prefix, workroot):
        self.label = label
        self.argv_prefix = argv_prefix
        self.workroot = workroot
        self.warm_agent = None
        self.warm_conn = None
        self.version = None

    def fresh(self):
        """Start a new agent; return (agent, connection, seconds from spawn to first reply)."""
        agent = Agent(self.argv_prefix, self.workroot, self.label)
        conn = None
        try:
            agent.spawn()
            conn = agent.connect()
            conn.settimeout(START_TIMEOUT)
            conn.send(b'{"execute":"guest-ping"}\n')
            line, t_reply = conn.read_line()
            parse_reply(line, "guest-ping")
        except BaseException:
            if conn is not None:
                conn.close()
            agent.stop()
            raise
        return agent, conn, t_reply - agent.t_spawn

    def warm(self):
        if self.warm_agent is None:
            agent, conn, _ = self.fresh()
            self.warm_agent, self.warm_conn = agent, conn
            if self.version is None:
                try:
                    self.version = conn.call("guest-info")["version"]
                except (AgentError, NotImplementedByAgent, KeyError, TypeError):
                    self.version = "?"
        return self.warm_agent, self.warm_conn

    def drop_warm(self):
        if self.warm_conn is not None:
            self.warm_conn.close()
        if self.warm_agent is not None:
            self.warm_agent.stop()
        self.warm_agent = self.warm_conn = None


# --------------------------------------------------------------------------- figures

class Bench:
    def __init__(self, args, sides, workroot):
        self.args = args
        self.quick = args.quick
        self.sides = sides
        self.workroot = workroot
        self.python = args.python
        # results[row_key][side_label] = {"values": [...], "status": None | text}
        self.results = {key: {s.label: {"values": [], "status": None} for s in sides}
                        for key, *_ in ROWS}
        self.notes = []
        self.harness_broke = False
        self.data_dir = tempfile.mkdtemp(prefix="data-", dir=workroot)
        self.read_file = None
        self.launchers = {}   # {cached: Side} of contrib/qga-mini (see launcher_side)

    def count(self, pair):
        return pair[1] if self.quick else pair[0]

    def rounds(self, figure):
        if self.args.rounds:
            return self.args.rounds
        return self.count(ROUNDS[figure])

    def record(self, side, values):
        for key, value in values.items():
            self.results[key][side.label]["values"].append(value)

    def mark(self, side, keys, status):
        for key in keys:
            cell = self.results[key][side.label]
            if cell["status"] is None:
                cell["status"] = status

    def alternate(self, figure, keys, measure, rounds_key=None):
        """Run measure(side, round) for every round and side, alternating the order."""
        failed = set()
        for r in range(self.rounds(rounds_key or figure)):
            order = self.sides if r % 2 == 0 else self.sides[::-1]
            for side in order:
                if side.label in failed:
                    continue
                try:
                    self.record(side, measure(side, r))
                except NotImplementedByAgent as e:
                    self.mark(side, keys, "n/a (not implemented)")
                    self.notes.append("%s: %s answers CommandNotFound for %s"
                                      % (figure, side.label, e))
                    failed.add(side.label)
                except AgentError as e:
                    self.mark(side, keys, "error (see notes)")
                    if side.warm_agent is not None and side.warm_agent.proc.poll() is not None:
                        e = "%s; agent exited with status %s%s" % (
                            e, side.warm_agent.proc.returncode, side.warm_agent.log_tail())
                    self.notes.append("%s: %s: %s" % (figure, side.label, e))
                    failed.add(side.label)
                    side.drop_warm()

    # -- start-up and idle memory ---------------------------------------------------------

    def fig_startup(self):
        keys = ["startup_ms", "bare_ms", "first_ms", "cached_ms", "idle_rss", "first_rss",
                "cached_rss"]

        def measure(side, r):
            values = {}
            if side.label == OURS_LABEL and r % 2 == 1:
                values.update(self.startup_extras())
            seconds, rss = self.start_once(side)
            values.update({"startup_ms": seconds * 1000.0, "idle_rss": rss})
            # The baselines run next to our agent, before or after it in turn.
            if side.label == OURS_LABEL and r % 2 == 0:
                values.update(self.startup_extras())
            return values

        self.alternate("startup", keys, measure)

    @staticmethod
    def start_once(side):
        """Start a fresh agent of side; return (seconds to first reply, idle VmRSS in MiB)."""
        agent, conn, seconds = side.fresh()
        try:
            time.sleep(STARTUP_SETTLE)
            agent.check_alive()
            return seconds, read_status_kib(agent.pid, "VmRSS") / 1024.0
        finally:
            conn.close()
            agent.stop()

    def startup_extras(self):
        values = {"bare_ms": self.bare_python_ms()}
        for name, cached in (("first", False), ("cached", True)):
            side = self.launcher_side(cached)
            if side is None:
                continue
            try:
                seconds, rss = self.start_once(side)
            except (AgentError, NotImplementedByAgent) as e:
                self.notes.append("startup: launcher (%s start) failed: %s" % (name, e))
                continue
            values.update({name + "_ms": seconds * 1000.0, name + "_rss": rss})
        return values

    def launcher_side(self, cached):
        """A side that starts our agent as images do: contrib/qga-mini beside qga_mini.py.

        cached=False: no bytecode yet (removed before every start, as after an upgrade);
        cached=True: compiled once beforehand, as qga-mini-deps --compile does in an image.
        The copies live in the bench's temporary directory, not in the work tree."""
        launcher = os.path.join(REPO_ROOT, "contrib", "qga-mini")
        if (self.args.ours_cmd or not os.path.exists(self.args.agent)
                or not os.path.exists(launcher)
                or not any(s.label == OURS_LABEL for s in self.sides)):
            return None
        if cached not in self.launchers:
            libdir = tempfile.mkdtemp(prefix="launcher-", dir=self.workroot)
            module = os.path.join(libdir, "qga_mini.py")
            shutil.copyfile(self.args.agent, module)
            shutil.copy(launcher, libdir)
            if cached:
                import py_compile
                try:
                    py_compile.compile(module, doraise=True)
                except py_compile.PyCompileError as e:
                    self.notes.append("startup: cannot byte-compile qga_mini.py: %s" % e)
                    return None
            self.launchers[cached] = Side(OURS_LABEL + "-launcher", [
                os.path.join(libdir, "qga-mini")], self.workroot)
        side = self.launchers[cached]
        if not cached:
            shutil.rmtree(os.path.join(os.path.dirname(side.argv_prefix[0]), "__pycache__"),
                          ignore_errors=True)
        return side

    def bare_python_ms(self):
        """Time of a bare `python3 -c pass`, spawned like the agents (same Popen options).

        Popen.wait(timeout) polls with growing sleeps (0.5, 1, 2, 4 ms ...), which would add
        up to ~6 ms; a blocking wait with a watchdog timer measures the real exit time."""
        t0 = time.perf_counter()
        proc = subprocess.Popen([self.python, "-c", "pass"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.workroot)
        if AGENT_CPUS:
            try:
                os.sched_setaffinity(proc.pid, AGENT_CPUS)
            except OSError:
                pass
        watchdog = threading.Timer(START_TIMEOUT, proc.kill)
        watchdog.start()
        try:
            proc.wait()
        finally:
            watchdog.cancel()
        t1 = time.perf_counter()
        if proc.returncode != 0:
            raise AgentError("bare python exited with status %s" % proc.returncode)
        return (t1 - t0) * 1000.0

    # -- request throughput ---------------------------------------------------------------

    def fig_ping(self):
        n = self.count(PING_COUNT)
        request = b'{"execute":"guest-ping"}\n'

        def measure(side, r):
            agent, conn = side.warm()
            conn.settimeout(CALL_TIMEOUT)
            t0 = time.perf_counter()
            for _ in range(n):
                conn.send(request)
                line, t1 = conn.read_line()
                if line != b'{"return": {}}':
                    parse_reply(line, "guest-ping")
            return {"ping_rps": n / (t1 - t0)}

        self.alternate("ping", ["ping_rps"], measure)

    def fig_pipeline(self):
        n = self.count(PIPELINE_COUNT)
        payload = PIPELINE_PING * n

        def measure(side, r):
            agent, conn = side.warm()
            seconds, bad, _ = self.pipelined(conn, payload, n)
            if bad:
                raise AgentError("pipelined replies were not all {\"return\": {}}")
            return {"pipe_rps": n / seconds}

        self.alternate("pipeline", ["pipe_rps"], measure)

    def fig_sync_pipeline(self):
        """guest-sync with ids written in one go: what a host's many-request read costs."""
        n = self.count(SYNC_PIPELINE_COUNT)
        payload = b"".join(SYNC_REQUEST % i for i in range(n))
        last = b'{"return": %d}\n' % (n - 1)

        def measure(side, r):
            agent, conn = side.warm()
            seconds, bad, tail = self.pipelined(conn, payload, n)
            if bad or not tail.endswith(last):
                raise AgentError("pipelined guest-sync replies wrong; last bytes %r" % tail)
            return {"sync_rps": n / seconds}

        self.alternate("sync_pipeline", ["sync_rps"], measure)

    @staticmethod
    def pipelined(conn, payload, n):
        """Write payload (n requests) from a thread while reading n reply lines; return
        (seconds, whether an error reply was seen, the last 64 bytes). Linear: each received
        byte is looked at once (newline count, "error" search with a 16-byte overlap)."""
        conn.settimeout(CALL_TIMEOUT)
        errors = []

        def writer():
            try:
                conn.sock.sendall(payload)
            except OSError as e:
                errors.append(e)

        thread = threading.Thread(target=writer, daemon=True)
        t0 = time.perf_counter()
        thread.start()
        seen = 0
        bad = False
        tail = b""
        while seen < n:
            try:
                chunk = conn.sock.recv(1 << 20)
            except socket.timeout:
                raise AgentError("timeout after %d of %d pipelined replies" % (seen, n))
            except OSError as e:
                raise AgentError("receive failed: %s" % e)
            if not chunk:
                raise AgentError("agent closed the connection after %d replies" % seen)
            seen += chunk.count(b"\n")
            if b'"error"' in tail[-16:] + chunk[:16] or b'"error"' in chunk:
                bad = True
            tail = (tail + chunk[-64:])[-64:]
        t1 = time.perf_counter()
        thread.join(CALL_TIMEOUT)
        if errors:
            raise AgentError("pipelined send failed: %s" % errors[0])
        if seen != n:
            raise AgentError("%d reply lines to %d pipelined requests" % (seen, n))
        return t1 - t0, bad, tail

    def fig_proxmox(self):
        """Proxmox VE's pattern: for every command a new connection, guest-sync-delimited and
        the command in one write, both replies read, the connection closed."""
        n = self.count(PAIR_COUNT)

        def measure(side, r):
            agent, warm_conn = side.warm()
            warm_conn.close()   # one client at a time: the long-lived one steps aside
            try:
                return {"proxmox_pps": n / self.proxmox_pairs(agent, n)}
            finally:
                side.warm_conn = agent.connect()

        self.alternate("proxmox", ["proxmox_pps"], measure)

    @staticmethod
    def proxmox_pairs(agent, n):
        """n Proxmox-style pairs; return the seconds they took."""
        t0 = time.perf_counter()
        for i in range(n):
            conn = agent.connect()
            try:
                conn.send(PROXMOX_REQUEST % i)
                sync, _ = conn.read_line()
                reply, t1 = conn.read_line()
            finally:
                conn.close()
            if sync != b'\xff{"return": %d}' % i or not reply.startswith(b'{"return"'):
                parse_reply(reply, "guest-network-get-interfaces")
                raise AgentError("Proxmox-style pair %d: %r / %r" % (i, sync, reply[:80]))
        return t1 - t0

    def fig_libvirt(self):
        """libvirt's pattern: a plain guest-sync with a fresh id, its reply, then the command
        and its reply, on the one long-lived connection."""
        n = self.count(PAIR_COUNT)

        def measure(side, r):
            agent, conn = side.warm()
            conn.settimeout(CALL_TIMEOUT)
            base = 1000000 * (r + 1)
            t0 = time.perf_counter()
            for i in range(base, base + n):
                conn.send(SYNC_REQUEST % i)
                sync, _ = conn.read_line()
                conn.send(LIBVIRT_COMMAND)
                reply, t1 = conn.read_line()
                if sync != b'{"return": %d}' % i or not reply.startswith(b'{"return"'):
                    parse_reply(reply, "guest-get-vcpus")
                    raise AgentError("libvirt-style pair %d: %r / %r" % (i, sync, reply[:80]))
            return {"libvirt_pps": n / (t1 - t0)}

        self.alternate("libvirt", ["libvirt_pps"], measure)

    def fig_ingest(self):
        keys = ["ingest16_ms", "ingest64_ms", "ingest_linear"]
        requests = {}
        for size in INGEST_SIZES:
            head = b'{"execute":"guest-ping","arguments":{"x":"'
            tail = b'"}}\n'
            body = b"A" * (size - INGEST_SLACK - len(head) - len(tail))
            requests[size] = head + body + tail

        def measure(side, r):
            agent, conn = side.warm()
            out = {}
            for size in INGEST_SIZES:
                data = memoryview(requests[size])
                conn.settimeout(BULK_TIMEOUT)
                t0 = time.perf_counter()
                for off in range(0, len(data), INGEST_WRITE):
                    conn.send(data[off:off + INGEST_WRITE])
                line, t1 = conn.read_line()
                if b"limit exceeded" in line or b"parse error" in line:
                    raise AgentError("%d-byte request refused: %r" % (len(data), line[:160]))
                if b'"error"' not in line and b'"return"' not in line:
                    raise AgentError("odd reply to a huge request: %r" % line[:160])
                out["ingest%d_ms" % (size // MiB)] = (t1 - t0) * 1000.0
            return out

        self.alternate("ingest", keys, measure)
        for side in self.sides:
            cells = self.results
            a = cells["ingest16_ms"][side.label]["values"]
            b = cells["ingest64_ms"][side.label]["values"]
            if a and b:
                # Linearity is a property of the algorithm: compare the fastest rounds, which
                # other work on the machine can only have slowed down, not sped up.
                cells["ingest_linear"][side.label]["values"].append(min(b) / min(a))
            status = cells["ingest16_ms"][side.label]["status"]
            if status:
                self.mark(side, ["ingest_linear"], status)

    # -- file transfer ---------------------------------------------------------------------

    def ensure_read_file(self):
        if self.read_file is None:
            path = os.path.join(self.data_dir, "read-48MiB.bin")
            data = os.urandom(READ_FILE_SIZE)
            with open(path, "wb") as f:
                f.write(data)
            self.read_file = (path, data)
        return self.read_file

    def open_handle(self, conn, path, mode):
        handle = conn.call("guest-file-open", {"path": path, "mode": mode})
        if not isinstance(handle, int):
            raise AgentError("guest-file-open returned %r" % (handle,))
        return handle

    def fig_read(self, chunked):
        figure = "read_chunked" if chunked else "read"
        prefix = "readc" if chunked else "read1"
        keys = [prefix + "_mibs", prefix + "_hwm", prefix + "_growth"]
        path, content = self.ensure_read_file()
        RecvBuffer.reserve(READ_FILE_SIZE * 3 // 2)   # one 64 MiB base64 line, pre-faulted

        def measure(side, r):
            agent, conn, _ = side.fresh()
            try:
                handle = self.open_handle(conn, path, "r")
                before = read_status_kib(agent.pid, "VmRSS") / 1024.0
                conn.settimeout(BULK_TIMEOUT)
                if chunked:
                    total, t0, t1 = self.read_chunks(conn, handle)
                    if total != READ_FILE_SIZE:
                        raise AgentError("chunked read returned %d bytes, expected %d"
                                         % (total, READ_FILE_SIZE))
                else:
                    request = json.dumps({"execute": "guest-file-read", "arguments": {
                        "handle": handle, "count": READ_FILE_SIZE}}).encode() + b"\n"
                    t0 = time.perf_counter()
                    conn.send(request)
                    line, t1 = conn.read_line(full=(r == 0))
                    self.check_read_reply(line, content if r == 0 else None)
                agent.check_alive()
                hwm = read_status_kib(agent.pid, "VmHWM") / 1024.0
                conn.call("guest-file-close", {"handle": handle})
            finally:
                conn.close()
                agent.stop()
            return {keys[0]: READ_FILE_SIZE / MiB / (t1 - t0), keys[1]: hwm,
                    keys[2]: hwm - before}

        if not chunked:
            measure = self.with_launcher_peak(measure, "read1_hwm")
            keys.append("read1_hwm_l")
        self.alternate(figure, keys, measure)

    def with_launcher_peak(self, measure, hwm_key):
        """measure(side, r), and for our side the same once more started by the launcher from
        its bytecode: that peak RSS is recorded as hwm_key + "_l"."""
        def both(side, r):
            values = measure(side, r)
            launcher = self.launcher_side(True) if side.label == OURS_LABEL else None
            if launcher is not None:
                values[hwm_key + "_l"] = measure(launcher, r)[hwm_key]
            return values
        return both

    def read_chunks(self, conn, handle):
        """Read 1 MiB at a time until eof; return (bytes, t0, t1). Only count/eof are parsed."""
        request = json.dumps({"execute": "guest-file-read", "arguments": {
            "handle": handle, "count": READ_CHUNK}}).encode() + b"\n"
        total = 0
        t0 = time.perf_counter()
        while True:
            conn.send(request)
            line, t1 = conn.read_line(full=False)
            count, eof = reply_count_eof(line)
            total += count
            if eof or count == 0 or total > READ_FILE_SIZE:
                return total, t0, t1

    def check_read_reply(self, line, content):
        count, _ = reply_count_eof(line)
        if count != READ_FILE_SIZE:
            raise AgentError("one-call read returned %d bytes, expected %d"
                             % (count, READ_FILE_SIZE))
        if content is not None:   # decode once per side: the bytes must be the file's
            value = parse_reply(line, "guest-file-read")
            if base64.b64decode(value["buf-b64"]) != content:
                raise AgentError("one-call read returned wrong data")

    def fig_write(self):
        keys = ["write_mibs", "write_hwm", "write_growth"]
        payload = os.urandom(WRITE_SIZE)
        b64 = base64.b64encode(payload).decode("ascii")

        def measure(side, r):
            agent, conn, _ = side.fresh()
            target = os.path.join(agent.dir, "written.bin")
            try:
                handle = self.open_handle(conn, target, "w")
                before = read_status_kib(agent.pid, "VmRSS") / 1024.0
                request = json.dumps({"execute": "guest-file-write", "arguments": {
                    "handle": handle, "buf-b64": b64}}).encode() + b"\n"
                conn.settimeout(BULK_TIMEOUT)
                t0 = time.perf_counter()
                conn.send(request)
                line, t1 = conn.read_line()
                value = parse_reply(line, "guest-file-write")
                if not isinstance(value, dict) or value.get("count") != WRITE_SIZE:
                    raise AgentError("guest-file-write returned %r" % (value,))
                agent.check_alive()
                hwm = read_status_kib(agent.pid, "VmHWM") / 1024.0
                conn.call("guest-file-close", {"handle": handle})
                with open(target, "rb") as f:
                    if f.read() != payload:
                        raise AgentError("written file differs from the payload")
            finally:
                conn.close()
                agent.stop()
            return {"write_mibs": WRITE_SIZE / MiB / (t1 - t0), "write_hwm": hwm,
                    "write_growth": hwm - before}

        self.alternate("write", keys + ["write_hwm_l"],
                       self.with_launcher_peak(measure, "write_hwm"))

    # -- exec and inspection ---------------------------------------------------------------

    def fig_exec(self):
        n = self.count(EXEC_COUNT)

        def measure(side, r):
            agent, conn = side.warm()
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                pid = conn.call("guest-exec", {"path": "/bin/true"})["pid"]
                deadline = t0 + CALL_TIMEOUT
                while True:
                    status = conn.call("guest-exec-status", {"pid": pid})
                    if status.get("exited"):
                        break
                    if time.perf_counter() > deadline:
                        raise AgentError("/bin/true not reported exited within %.0f s"
                                         % CALL_TIMEOUT)
                times.append(time.perf_counter() - t0)
                if status.get("exitcode") != 0:
                    raise AgentError("/bin/true reported %r" % (status,))
            return {"exec_ms": statistics.median(times) * 1000.0}

        self.alternate("exec", ["exec_ms"], measure)

    def fig_inspect(self, name, command):
        n = self.count(INSPECT_COUNT)
        key = name + "_ms"

        def measure(side, r):
            agent, conn = side.warm()
            conn.call(command)   # warm-up, and CommandNotFound check
            request = json.dumps({"execute": command}).encode() + b"\n"
            conn.settimeout(CALL_TIMEOUT)
            t0 = time.perf_counter()
            for _ in range(n):
                conn.send(request)
                line, t1 = conn.read_line()
                if not line.startswith(b'{"return"') and b'"return"' not in line:
                    parse_reply(line, command)
            return {key: (t1 - t0) / n * 1000.0}

        self.alternate(name, [key], measure, rounds_key="inspect")

    # -- driver ----------------------------------------------------------------------------

    def run(self, figures):
        steps = []
        if "startup" in figures or "idle_rss" in figures:
            steps.append(("startup", self.fig_startup))
        simple = {"ping": self.fig_ping, "pipeline": self.fig_pipeline,
                  "sync_pipeline": self.fig_sync_pipeline, "proxmox": self.fig_proxmox,
                  "libvirt": self.fig_libvirt, "ingest": self.fig_ingest, "read": lambda: self.fig_read(False),
                  "read_chunked": lambda: self.fig_read(True), "write": self.fig_write,
                  "exec": self.fig_exec}
        for name in ["ping", "pipeline", "sync_pipeline", "proxmox", "libvirt", "exec"] + [
                n for n, _ in INSPECT_COMMANDS] + [
                "ingest", "read", "read_chunked", "write"]:
            if name not in figures:
                continue
            if name in simple:
                steps.append((name, simple[name]))
            else:
                command = dict(INSPECT_COMMANDS)[name]
                steps.append((name, lambda n=name, c=command: self.fig_inspect(n, c)))
        for name, step in steps:
            if not self.args.quiet:
                print("# running %s ..." % name, file=sys.stderr, flush=True)
            try:
                step()
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception:
                self.harness_broke = True
                self.notes.append("%s: harness error:\n%s" % (name, traceback.format_exc()))
        for side in self.sides:
            side.drop_warm()


def reply_count_eof(line):
    """Pull `count` and `eof` out of a guest-file-read reply without decoding the buffer.

    base64 has no quotes, so the key patterns cannot occur inside buf-b64."""
    if b'"error"' in line[:40] or b'"return"' not in line[:40]:
        parse_reply(line, "guest-file-read")
        raise AgentError("unexpected guest-file-read reply: %r" % line[:160])
    i = line.find(b'"count":')
    j = line.find(b'"eof":')
    if i < 0 or j < 0:
        raise AgentError("guest-file-read reply lacks count or eof: %r" % line[:160])
    i += len(b'"count":')
    end = i
    while end < len(line) and line[end:end + 1] in b" 0123456789":
        end += 1
    count = int(line[i:end])
    eof = line[j + len(b'"eof":'):].lstrip().startswith(b"true")
    return count, eof


# --------------------------------------------------------------------------- report

def median_of(cell):
    return statistics.median(cell["values"]) if cell["values"] else None


def fmt_value(value, unit):
    if value is None:
        return "-"
    if unit == "1/s":
        return "%.0f" % value
    if unit in ("MiB/s",):
        return "%.1f" % value
    if unit == "x":
        return "%.2f" % value
    if unit == "MiB":
        return "%.1f" % value
    if value >= 100:
        return "%.1f" % value
    return "%.2f" % value if value >= 1 else "%.3f" % value


def evaluate(row, q, o, bare, have_qemu):
    """Return (ratio text, target text, met text) for one row."""
    key, figure, label, unit, better, target = row
    ratio = o / q if (o is not None and q) else None
    ratio_text = ("%.2fx" % ratio) if ratio is not None else "-"
    if target is None:
        return ratio_text, "(info)", "-"
    kind, x = target
    if kind == "bare+":
        if bare is None:
            return ratio_text, "<= bare + %.0f ms" % x, "n/a"
        limit = bare + x
        met = "-" if o is None else ("yes" if o <= limit else "no")
        return ratio_text, "<= %.1f ms (bare+%.0f)" % (limit, x), met
    if kind == "abs<=":
        text = "<= %g %s" % (x, unit) if unit != "x" else "<= %g (linear ~4)" % x
        return ratio_text, text, "-" if o is None else ("yes" if o <= x else "no")
    if kind == "ratio>=":
        text = ">= %gx qemu-ga" % x
        if not have_qemu:
            return ratio_text, text, "n/a (no qemu-ga)"
        return ratio_text, text, "-" if ratio is None else ("yes" if ratio >= x else "no")
    if kind == "ratio<=":
        text = "<= %gx qemu-ga" % x
        if not have_qemu:
            return ratio_text, text, "n/a (no qemu-ga)"
        return ratio_text, text, "-" if ratio is None else ("yes" if ratio <= x else "no")
    raise ValueError(kind)


def build_table(bench, figures, have_qemu):
    rows_out = []
    bare = median_of(bench.results["bare_ms"][OURS_LABEL])
    for row in ROWS:
        key, figure, label, unit, better, target = row
        if figure not in figures:
            continue
        cells = bench.results[key]
        qcell = bench.results[QEMU_GA_COLUMN.get(key, key)].get(QEMU_GA_LABEL)
        ocell = cells[OURS_LABEL]
        q = median_of(qcell) if qcell else None
        o = median_of(ocell)
        ours_only = key in OURS_ONLY
        if ours_only:
            q = None
        ratio_text, target_text, met = evaluate(row, q, o, bare, have_qemu)
        if key in SPREAD_ROWS and qcell and len(qcell["values"]) == len(ocell["values"]) > 1:
            ratios = [b / a for a, b in zip(qcell["values"], ocell["values"]) if a]
            if ratios:
                ratio_text += " (%.2f-%.2f)" % (min(ratios), max(ratios))
        if ours_only:
            ratio_text = "-"
            if o is None and not ocell["status"]:
                continue   # an information row with nothing measured (e.g. --ours-cmd)
        qtext = "-" if qcell is None or ours_only else (
            qcell["status"] or fmt_value(q, unit))
        otext = ocell["status"] or fmt_value(o, unit)
        if ocell["status"]:
            ratio_text, met = "-", "n/a"
        elif qcell is not None and qcell["status"] and target and target[0].startswith("ratio"):
            ratio_text, met = "-", "n/a"
        rows_out.append({
            "key": key, "figure": "%s [%s, %s better]" % (label, unit, better),
            QEMU_GA_LABEL: qtext, OURS_LABEL: otext, "ratio": ratio_text,
            "target": target_text, "met": met,
            "median": {QEMU_GA_LABEL: q, OURS_LABEL: o},
        })
    return rows_out


def print_table(rows, out=sys.stdout):
    headers = ["figure", QEMU_GA_LABEL, OURS_LABEL, "ours/qemu-ga", "target", "met"]
    cols = [[r["figure"], r[QEMU_GA_LABEL], r[OURS_LABEL], r["ratio"], r["target"], r["met"]]
            for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cols)) if cols else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line, file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for c in cols:
        print("  ".join((v.ljust(w) if i == 0 else v.rjust(w) if i < 4 else v.ljust(w))
                        for i, (v, w) in enumerate(zip(c, widths))).rstrip(), file=out)


# --------------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Benchmark qga-mini against qemu-ga side by side (see the module docstring).")
    p.add_argument("--quick", action="store_true", help="few rounds, for a CI smoke run")
    p.add_argument("--only", metavar="NAME[,NAME]",
                   help="figures or groups to run: %s; groups: %s"
                   % (", ".join(FIGURES), ", ".join(sorted(GROUPS))))
    p.add_argument("--json", metavar="FILE", help="save every raw number to FILE")
    p.add_argument("--rounds", type=int, metavar="N", help="override the rounds of every figure")
    p.add_argument("--python", default=DEFAULT_PYTHON if os.path.exists(DEFAULT_PYTHON)
                   else sys.executable, help="interpreter for qga_mini.py and the bare "
                   "start-up baseline (default %(default)s)")
    p.add_argument("--agent", default=os.path.join(REPO_ROOT, "qga_mini.py"),
                   help="path of qga_mini.py (default %(default)s)")
    p.add_argument("--ours-cmd", metavar="CMD",
                   help="command line that starts 'our' agent instead of PYTHON AGENT "
                   "(the -m/-p/-t options are appended); e.g. a second qemu-ga to test the harness")
    p.add_argument("--qemu-ga", metavar="PATH", dest="qemu_ga",
                   default=(shutil.which("qemu-ga")
                            or shutil.which("qemu-ga", path="/usr/sbin:/usr/bin:/sbin:/bin")),
                   help="qemu-ga binary (default: found on PATH or in /usr/sbin)")
    p.add_argument("--no-qemu-ga", action="store_true", help="measure only qga-mini")
    p.add_argument("--pin", choices=["split", "same", "none"], default="split",
                   help="CPU placement: split (default: bench on one CPU, agents on another, "
                   "like a host and a guest; stable figures), same (all on one CPU: compares "
                   "CPU cost per request without cross-CPU wake-ups), none (the scheduler "
                   "decides; figures then vary from run to run with where it puts them)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.only:
        chosen = []
        for name in args.only.split(","):
            name = name.strip()
            if name in GROUPS:
                chosen.extend(GROUPS[name])
            elif name in FIGURES:
                chosen.append(name)
            elif name:
                p.error("unknown figure %r (choose from %s)"
                        % (name, ", ".join(FIGURES + sorted(GROUPS))))
        args.figures = [f for f in FIGURES if f in chosen]
    else:
        args.figures = list(FIGURES)
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def load_average():
    """The 1-minute load average: other work on the machine shows up as noise in the figures."""
    try:
        return "%.2f" % os.getloadavg()[0]
    except OSError:
        return "?"


def install_signal_handlers():
    def on_signal(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def apply_pinning(mode):
    global AGENT_CPUS
    if mode == "none" or not hasattr(os, "sched_getaffinity"):     # PyPy has no affinity calls
        return
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})
    if mode == "split" and len(cpus) > 1:
        AGENT_CPUS = {cpus[1]}
    else:
        AGENT_CPUS = {cpus[0]}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    apply_pinning(args.pin)
    os.environ["QGA_MINI_PYTHON"] = args.python   # the interpreter contrib/qga-mini runs
    install_signal_handlers()
    workroot = tempfile.mkdtemp(prefix="qga-bench-")
    try:
        return run(args, workroot)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stop_all_agents()
        shutil.rmtree(workroot, ignore_errors=True)


def run(args, workroot):
    sides = []
    have_qemu = False
    header = []
    if args.no_qemu_ga:
        header.append("qemu-ga: not measured (--no-qemu-ga): only qga-mini's numbers")
    elif args.qemu_ga and os.access(args.qemu_ga, os.X_OK):
        sides.append(Side(QEMU_GA_LABEL, [args.qemu_ga], workroot))
        have_qemu = True
    else:
        header.append("qemu-ga is not installed: only qga-mini's numbers are printed "
                      "(apt-get install qemu-guest-agent for the comparison)")
    if args.ours_cmd:
        ours_argv = shlex.split(args.ours_cmd)
    else:
        ours_argv = [args.python, args.agent]
    sides.append(Side(OURS_LABEL, ours_argv, workroot))

    bench = Bench(args, sides, workroot)
    ours_ok = True
    if not args.ours_cmd and not os.path.exists(args.agent):
        ours_ok = False
        reason = "n/a (no %s)" % os.path.basename(args.agent)
    else:
        try:
            sides[-1].warm()
        except AgentError as e:
            ours_ok = False
            reason = "n/a (does not start)"
            bench.notes.append("%s does not start: %s" % (OURS_LABEL, e))
        except NotImplementedByAgent as e:
            ours_ok = False
            reason = "n/a (not implemented)"
            bench.notes.append("%s answers CommandNotFound for %s" % (OURS_LABEL, e))
    if not ours_ok:
        for key, *_ in ROWS:
            bench.results[key][OURS_LABEL]["status"] = reason
        sides = sides[:-1]
        bench.sides = sides
    if have_qemu:
        try:
            sides[0].warm()
        except (AgentError, NotImplementedByAgent) as e:
            header.append("qemu-ga does not start (%s): only qga-mini's numbers" % e)
            sides = sides[1:]
            bench.sides = sides
            have_qemu = False
            for key, *_ in ROWS:
                bench.results[key][QEMU_GA_LABEL]["status"] = "n/a (does not start)"

    load_before = load_average()
    t_start = time.time()
    if sides:
        bench.run(args.figures)
    elapsed = time.time() - t_start

    versions = {s.label: s.version for s in bench.sides}
    print("qga-mini bench: %s; python %s (%s); %d CPUs; %s run, %.0f s"
          % (time.strftime("%Y-%m-%d %H:%M"), platform.python_version(), args.python,
             os.cpu_count() or 0, "quick" if args.quick else "full", elapsed))
    print("agents: %s; CPU placement: %s; load average before/after: %s / %s"
          % (", ".join("%s %s" % (k, v or "?") for k, v in versions.items()) or "none",
             args.pin, load_before, load_average()))
    for line in header:
        print(line)
    print("medians of alternating A/B rounds; ratio = ours/qemu-ga of the medians "
          "(in brackets: min-max of the per-round ratios)")
    print()
    rows = build_table(bench, set(args.figures), have_qemu)
    if not have_qemu:
        for r in rows:
            r[QEMU_GA_LABEL] = "-"
    print_table(rows)
    missed = [r["key"] for r in rows if r["met"] == "no"]
    print()
    print("targets missed: %s" % (", ".join(missed) if missed else "none"))
    if bench.notes:
        print("notes:")
        for note in bench.notes:
            print("  - " + note.rstrip().replace("\n", "\n    "))

    if args.json:
        raw = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "quick": args.quick, "python": args.python, "versions": versions,
            "have_qemu_ga": have_qemu, "figures": args.figures,
            "raw": {key: {label: cell for label, cell in cells.items()}
                    for key, cells in bench.results.items()},
            "rows": rows, "missed": missed, "notes": bench.notes,
        }
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1, sort_keys=True)
    return 1 if bench.harness_broke else 0


if __name__ == "__main__":
    sys.exit(main())
