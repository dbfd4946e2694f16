"""Host-side guest-agent clients that talk the way real hosts do.

Each client's `cmd(name, args)` returns the reply object ({"return": ...} or
{"error": {...}}), so checks can treat all of them alike:

- ProxmoxClient: guest-sync-delimited plus the command in ONE write, the reply
  matched with Proxmox's own regular expression, the connection closed after
  every command (PVE::QMPClient).
- LibvirtClient: one connection, a plain guest-sync with a millisecond id,
  then a line reader that insists every line is a JSON object with "return" or
  "error" (libvirt's qemu_agent.c).
- QmpClient: the qemu.qmp package's legacy QEMUMonitorProtocol with
  negotiate=False, as QEMU's qemu-ga-client uses it (replies routed by "id").
- BuiltinClient: qga_mini.py's own host-side client (``qga_mini.py client``),
  one process per command; its exit status and output make the reply again.
"""
import json
import os
import random
import re
import select
import socket
import subprocess
import time

AGENT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "qga_mini.py")


class ClientError(Exception):
    """The client could not get a well-formed reply."""


def _connect(path, timeout):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def _recv_until(sock, done, timeout, allow_close=False):
    """Read until done(buffer) is true; returns the buffer (None on EOF if allowed)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while not done(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClientError("timeout after %.1f s, got %r" % (timeout, buf[-200:]))
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            continue
        chunk = sock.recv(65536)
        if not chunk:
            if allow_close:
                return None
            raise ClientError("connection closed, got %r" % buf[-200:])
        buf += chunk
    return buf


class ProxmoxClient:
    """PVE::QMPClient's guest-agent mode: one connection per command."""
    # The reply regex of QMPClient.pm: 0xFF, the sync reply line, the command
    # reply on one line ending in "}", then anything.
    REPLY = re.compile(rb"^.*\xff([^\n]+}\r?\n[^\n]+})\r?\n(.*)$", re.S)

    name = "proxmox"

    def __init__(self, path):
        self.path = path
        self.seq = 0

    def cmd(self, name, args=None, timeout=5.0, allow_close=False):
        self.seq += 1
        sync_id = int("%d0%d" % (os.getpid(), self.seq))
        request = (json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}) + "\n"
                   + json.dumps({"execute": name, "arguments": args or {}}) + "\n")
        sock = _connect(self.path, timeout)
        try:
            sock.sendall(request.encode())
            buf = _recv_until(sock, lambda b: self.REPLY.match(b) is not None, timeout,
                              allow_close=allow_close)
        except ClientError:
            if allow_close:  # guest-shutdown: no reply, the VM goes away
                return None
            raise
        finally:
            sock.close()
        if buf is None:
            return None
        sync_line, reply_line = self.REPLY.match(buf).group(1).split(b"\n", 1)
        sync = json.loads(sync_line)
        if sync.get("return") != sync_id:
            raise ClientError("got wrong command id: %r" % sync_line)
        return json.loads(reply_line)


class LibvirtClient:
    """libvirt's agent monitor: sync once, then strict line-by-line replies."""
    name = "libvirt"

    def __init__(self, path, timeout=5.0):
        self.sock = _connect(path, timeout)
        self.buf = b""
        self.synced = False

    def close(self):
        self.sock.close()

    def _line(self, timeout):
        buf = _recv_until(self.sock, lambda b: b"\n" in b, timeout) if b"\n" not in self.buf else b""
        self.buf += buf
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def _lines(self, timeout):
        """Whole lines; checks what libvirt's qemuAgentIOProcessLine checks."""
        deadline = time.monotonic() + timeout
        while True:
            if b"\n" not in self.buf:
                self.buf += _recv_until(self.sock, lambda b: b"\n" in b,
                                        max(0.01, deadline - time.monotonic()))
            line, self.buf = self.buf.split(b"\n", 1)
            yield line

    def sync(self, timeout=5.0):
        sync_id = int(time.time() * 1000)
        self.sock.sendall(b'{"execute":"guest-sync", "arguments":{"id":%d}}\n' % sync_id)
        for line in self._lines(timeout):
            try:
                obj = json.loads(line)
            except ValueError:
                raise ClientError("Received garbage on sync: %r" % line)
            if obj.get("return") == sync_id:
                self.synced = True
                return
            # anything else is a delayed reply to an earlier command

    def cmd(self, name, args=None, timeout=5.0, allow_close=False):
        if not self.synced:
            self.sync()
        msg = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        try:
            for line in self._lines(timeout):
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise ClientError("reply %r isn't JSON" % line)
                if not isinstance(obj, dict):
                    raise ClientError("Parsed JSON reply %r isn't an object" % line)
                if "return" in obj or "error" in obj:
                    return obj
                if "QMP" in obj or "event" in obj:
                    continue
                raise ClientError("Unknown JSON reply %r" % line)
        except ClientError:
            if allow_close:
                return None
            raise


class QmpClient:
    """QEMU's qemu-ga-client: qemu.qmp legacy QEMUMonitorProtocol, negotiate=False."""
    name = "qemu.qmp"

    def __init__(self, path, timeout=5.0):
        from qemu.qmp.legacy import QEMUMonitorProtocol
        self.qmp = QEMUMonitorProtocol(path)
        self.qmp.connect(negotiate=False)
        self.qmp.settimeout(timeout)

    def close(self):
        self.qmp.close()

    def sync(self):
        """qemu-ga-client's sync(): guest-ping with 3 s, then guest-sync until the id is back."""
        self.qmp.settimeout(3)
        self.qmp.cmd("guest-ping")
        uid = random.randint(0, (1 << 32) - 1)
        while True:
            if self.qmp.cmd("guest-sync", id=uid) == uid:
                break
        self.qmp.settimeout(5)

    def cmd(self, name, args=None, timeout=5.0, allow_close=False):
        from qemu.qmp import ExecuteError
        self.qmp.settimeout(timeout)
        try:
            return {"return": self.qmp.cmd(name, **(args or {}))}
        except ExecuteError as e:
            return {"error": {"class": e.error.error.class_, "desc": e.error.error.desc}}
        except Exception as e:  # timeout or connection loss
            if allow_close:
                return None
            raise ClientError("%s: %s" % (type(e).__name__, e))


class BuiltinClient:
    """``python3 qga_mini.py client SOCKET COMMAND [JSON-ARGS]``, run for every command.

    Exit 0 with JSON on stdout is a return value (nothing at all: a command that sends
    no reply worked), exit 1 with "Class: desc" on stderr an error reply.
    """
    name = "qga_mini-client"

    def __init__(self, path):
        self.path = path

    def cmd(self, name, args=None, timeout=5.0, allow_close=False):
        argv = ["/usr/bin/python3", AGENT, "client", "--timeout", str(timeout), self.path, name]
        if args is not None:
            argv.append(json.dumps(args))
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=timeout + 30)
        if p.returncode == 0:
            return {"return": json.loads(p.stdout)} if p.stdout.strip() else None
        if p.returncode == 1:
            cls, _, desc = p.stderr.strip().partition(": ")
            return {"error": {"class": cls, "desc": desc}}
        raise ClientError("qga_mini.py client exited %d: %s" % (p.returncode, p.stderr.strip()))
