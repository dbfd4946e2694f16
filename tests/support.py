"""Shared test helpers: talk to the agent as a host does, and hold replies to schema.json.

- ``AgentHarness``: the agent in this process, served by its real event loop on one end of a
  ``socket.socketpair()``; the test is the host on the other end.
- ``AgentProcess``: ``qga_mini.py`` as a real subprocess listening on a unix socket.
- ``Schema``: schema.json, with ``check_return(command, value)`` that fails a test when a reply
  does not have the declared type.  Both clients check every successful reply against it.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, TOP)

import qga_mini  # noqa: E402

AGENT = os.path.join(TOP, "qga_mini.py")
FIXTURES = os.path.join(HERE, "fixtures")
# The interpreter of every agent process a test starts: the one running the suite, or what
# QGA_MINI_TEST_PYTHON names (`make test-pythons` sets it to a wrapper script when the
# interpreter comes from a Debian root and sys.executable cannot be exec'd on this host).
PYTHON = os.environ.get("QGA_MINI_TEST_PYTHON") or sys.executable
STARTED_BY_WRAPPER = PYTHON != sys.executable
# PyPy's collector lets the heap grow past the agent's RSS bounds before it collects (a
# 48 MiB guest-file-read peaks at ~250 MiB, not 3x): those bounds are asserted for CPython.
RSS_BOUNDS_HOLD = sys.implementation.name != "pypy"
INT64_MIN, UINT64_MAX = -(1 << 63), (1 << 64) - 1


class Schema(object):
    """schema.json indexed by name."""

    def __init__(self, path=os.path.join(TOP, "schema.json")):
        with open(path) as f:
            self.expressions = json.load(f)
        self.commands, self.types = {}, {}
        for expr in self.expressions:
            if "command" in expr:
                self.commands[expr["command"]] = expr
            else:
                kind = next(k for k in ("struct", "enum", "union", "alternate") if k in expr)
                self.types[expr[kind]] = (kind, expr)

    def check_return(self, command, value):
        """Raise AssertionError unless ``value`` is what ``command`` declares it returns."""
        expr = self.commands[command]
        if "returns" not in expr:
            if value != {}:
                raise AssertionError("%s returns %r, expected {}" % (command, value))
            return
        self.check(value, expr["returns"], command)

    def check(self, value, typ, path):
        def fail(what):
            raise AssertionError("%s: %r is not %s" % (path, value, what))
        if isinstance(typ, list):
            if not isinstance(value, list):
                fail("a list")
            for i, item in enumerate(value):
                self.check(item, typ[0], "%s[%d]" % (path, i))
            return
        if typ in ("int", "int64"):
            if type(value) is not int or not INT64_MIN <= value < 1 << 63:
                fail("an int64")
        elif typ in ("uint64", "uint32", "uint16", "uint8", "size"):
            bits = {"uint64": 64, "size": 64, "uint32": 32, "uint16": 16, "uint8": 8}[typ]
            if type(value) is not int or not 0 <= value < 1 << bits:
                fail("a " + typ)
        elif typ == "number":
            if type(value) not in (int, float):
                fail("a number")
        elif typ == "str":
            if not isinstance(value, str):
                fail("a string")
        elif typ == "bool":
            if type(value) is not bool:
                fail("a bool")
        elif typ == "any":
            pass
        else:
            kind, expr = self.types[typ]
            if kind == "enum":
                if value not in expr["data"]:
                    fail("one of %s" % expr["data"])
            elif kind == "struct":
                self.check_members(value, expr["data"], path)
            elif kind == "union":
                members = dict(expr["base"])
                if not isinstance(value, dict):
                    fail("an object")
                tag = value.get(expr["discriminator"])
                branch = expr["data"].get(tag)
                if branch is None:
                    fail("a %s (bad discriminator %r)" % (typ, tag))
                members.update(self.types[branch][1]["data"])
                self.check_members(value, members, path)
            elif kind == "alternate":
                for branch in expr["data"].values():
                    try:
                        self.check(value, branch, path)
                        return
                    except AssertionError:
                        pass
                fail("a " + typ)

    def check_members(self, value, members, path):
        if not isinstance(value, dict):
            raise AssertionError("%s: %r is not an object" % (path, value))
        names = set()
        for spec, typ in members.items():
            name = spec.lstrip("*")
            names.add(name)
            if name in value:
                self.check(value[name], typ, "%s.%s" % (path, name))
            elif not spec.startswith("*"):
                raise AssertionError("%s: member %r is missing" % (path, name))
        extra = set(value) - names
        if extra:
            raise AssertionError("%s: unexpected members %s" % (path, sorted(extra)))


SCHEMA = Schema()


class QgaReplyError(Exception):
    """An error reply: .cls and .desc."""

    def __init__(self, error):
        Exception.__init__(self, "%s: %s" % (error.get("class"), error.get("desc")))
        self.cls, self.desc = error.get("class"), error.get("desc")


class LineClient(object):
    """A host end: writes requests, reads newline-terminated replies."""

    def __init__(self, sock, timeout=10.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buffer = b""

    def send(self, data):
        if not isinstance(data, bytes):
            data = json.dumps(data).encode()
        self.sock.sendall(data)

    def read_line(self):
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("agent closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def read_reply(self):
        line = self.read_line()
        if line.startswith(b"\xff"):
            line = line[1:]
        return json.loads(line.decode("ascii"))

    def expect_silence(self, seconds=0.3):
        """Assert that nothing arrives for a while (success-response:false commands)."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            data = None
        finally:
            self.sock.settimeout(10.0)
        if data:
            raise AssertionError("unexpected reply %r" % data)

    def call(self, name, arguments=None, **kwargs):
        """Run a command; its checked return value, or QgaReplyError."""
        request = {"execute": name}
        if arguments is not None or kwargs:
            request["arguments"] = dict(arguments or {}, **kwargs)
        self.send(request)
        reply = self.read_reply()
        if "error" in reply:
            raise QgaReplyError(reply["error"])
        SCHEMA.check_return(name, reply["return"])
        return reply["return"]

    def error(self, name, arguments=None, **kwargs):
        """Run a command that must fail; its (class, desc)."""
        try:
            value = self.call(name, arguments, **kwargs)
        except QgaReplyError as exc:
            return exc.cls, exc.desc
        raise AssertionError("%s succeeded with %r" % (name, value))


def make_config(statedir, **settings):
    config = qga_mini.Config()
    config.method = "unix-listen"
    config.statedir = statedir
    for key, value in settings.items():
        setattr(config, key, value)
    return config


class AgentHarness(LineClient):
    """The agent in-process, served by its own event loop over a socketpair.

    ``host_root`` points the agent's Host at a fixture tree; ``settings`` are Config fields
    (e.g. block_rpcs=[...], fsfreeze_hook=...).  Use as a context manager or call close().
    """

    def __init__(self, host_root="/", environ=None, **settings):
        self.tmp = tempfile.mkdtemp(prefix="qga-test-")
        self.statedir = os.path.join(self.tmp, "state")
        config = make_config(self.statedir, **settings)
        self.devnull = open(os.devnull, "w")
        log = qga_mini.Log(self.devnull, verbose=False)
        self.agent = qga_mini.Agent(config, host=qga_mini.Host(host_root, environ), log=log)
        self.agent.state.ensure()
        ours, theirs = socket.socketpair()
        self.server = qga_mini.Server(self.agent, qga_mini.Channel(config, self.agent.host, log))
        self.server.listener = None
        self._ours = ours
        self.server.attach(ours.fileno(), sock=ours)
        self.thread = threading.Thread(target=self.server.run_loop, daemon=True)
        self.thread.start()
        LineClient.__init__(self, theirs)

    def close(self):
        self.server.stop()
        self.thread.join(10)
        self.sock.close()
        self.devnull.close()
        self.agent.shutdown()
        # guest-exec children outlive an agent (as under qemu-ga); here they are ours.
        stop_process(*[child.proc for child in self.agent.exec_children.values()],
                     close_pipes=False)
        try:
            self.server.close()
        except OSError:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


STOP_GRACE = 10.0      # seconds a process gets to exit after SIGTERM, and again after SIGKILL


def stop_process(*procs, grace=STOP_GRACE, group=False, close_pipes=True):
    """Tear down processes a test started: SIGTERM to all, at most ``grace`` seconds for
    them to exit, then SIGKILL to those left and another bounded wait.  Each is a Popen (it
    is reaped and its pipes closed) or the pid of a process that is not our child (a
    daemon); with ``group`` each whole process group is signalled; without ``close_pipes``
    the pipes are left to whoever reads them (a guest-exec watcher).  Never raises: teardown
    must not fail a test, and nothing is waited for without a bound.  Returns the exit
    status of the last one (for a pid: True once gone); None if it would not die."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [proc for proc in procs if not process_exited(proc)]
        if not left:
            break
        for proc in left:
            try:
                if isinstance(proc, int) or group:
                    pid = proc if isinstance(proc, int) else proc.pid
                    (os.killpg if group else os.kill)(pid, sig)
                else:
                    proc.send_signal(sig)       # nothing if it has been reaped meanwhile
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not all(process_exited(p) for p in left):
            time.sleep(0.02)
    for proc in procs if close_pipes else ():
        if not isinstance(proc, int):
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
    if not procs:
        return None
    last = procs[-1]
    if isinstance(last, int):
        return True if process_exited(last) else None
    return last.returncode


def process_exited(proc):
    """Whether a Popen has exited (it is then reaped), or a pid is gone or a zombie."""
    if not isinstance(proc, int):
        try:
            return proc.poll() is not None
        except OSError:
            return True
    try:
        with open("/proc/%d/stat" % proc) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def connect_unix(path, wait=10.0):
    """A socket connected to ``path``; the file exists from bind(), before listen(), so a
    refused connection right after start-up is retried."""
    deadline = time.time() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            if time.time() > deadline:
                raise
            time.sleep(0.01)


class AgentProcess(object):
    """qga_mini.py as a real process on a unix socket (``-m unix-listen``)."""

    def __init__(self, *args, env=None, statedir=None):
        self.tmp = tempfile.mkdtemp(prefix="qga-proc-")
        self.sockets = []
        self.path = os.path.join(self.tmp, "qga.sock")
        self.statedir = statedir or os.path.join(self.tmp, "state")
        self.stderr_path = os.path.join(self.tmp, "stderr")
        cmd = [PYTHON, AGENT, "-m", "unix-listen", "-p", self.path, "-t", self.statedir]
        cmd += list(args)
        self.stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, env=env)
        deadline = time.time() + 15
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("agent did not start: %s" % self.read_stderr())
            time.sleep(0.01)

    def connect(self, timeout=10.0):
        sock = connect_unix(self.path)
        self.sockets.append(sock)
        return LineClient(sock, timeout)

    def read_stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        status = stop_process(self.proc)
        self.stderr.close()
        return status

    def close(self):
        for sock in self.sockets:
            sock.close()
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def needs_root(test):
    return unittest.skipUnless(os.geteuid() == 0, "needs root")(test)
