"""qga_mini and the real qemu-ga 7.2, side by side, on the file and exec commands.

Runs only where /usr/sbin/qemu-ga is installed (``apt-get install qemu-guest-agent``).  Both
agents get the same requests, each in a working directory of its own (so relative paths meet
the same files), and must give the same reply lines byte for byte; guest-exec pids are the
only thing masked.  The deliberate differences (README) are left out of these scripts and
pinned in tests/test_files.py and tests/test_exec.py instead.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

from tests.support import AGENT, PYTHON, connect_unix, stop_process
from tests.system_support import ORACLE_STOP_GRACE

QEMU_GA = "/usr/sbin/qemu-ga"
HELLO_B64 = base64.b64encode(b"Hello World!\n\x00").decode()


class RawAgent(object):
    """An agent process on a unix socket, spoken to in raw reply lines."""

    def __init__(self, argv):
        self.dir = tempfile.mkdtemp(prefix="qga-oracle-")
        self.work = os.path.join(self.dir, "work")
        os.makedirs(os.path.join(self.dir, "state"))
        os.makedirs(self.work)
        path = os.path.join(self.dir, "sock")
        self.proc = subprocess.Popen(argv + ["-m", "unix-listen", "-p", path, "-t",
                                             os.path.join(self.dir, "state")],
                                     cwd=self.work, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 15
            while not os.path.exists(path):
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("%s did not start" % argv)
                time.sleep(0.01)
            self.sock = connect_unix(path)
        except BaseException:
            stop_process(self.proc, grace=ORACLE_STOP_GRACE)
            raise
        self.sock.settimeout(30)
        self.buf = b""

    def request(self, name, **arguments):
        message = {"execute": name}
        if arguments:
            message["arguments"] = {k.replace("_", "-"): v for k, v in arguments.items()}
        self.sock.sendall(json.dumps(message).encode())
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("agent closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def close(self):
        self.sock.close()
        stop_process(self.proc, grace=ORACLE_STOP_GRACE)
        shutil.rmtree(self.dir, ignore_errors=True)


@unittest.skipUnless(os.access(QEMU_GA, os.X_OK), "qemu-ga is not installed")
class SideBySide(unittest.TestCase):
    def setUp(self):
        self.qemu = RawAgent([QEMU_GA])
        self.addCleanup(self.qemu.close)
        self.mini = RawAgent([PYTHON, AGENT])
        self.addCleanup(self.mini.close)
        self.step = 0

    def both(self, name, **arguments):
        """Send one request to both agents; their replies must be the same line."""
        self.step += 1
        expected = self.qemu.request(name, **arguments)
        got = self.mini.request(name, **arguments)
        if name == "guest-exec":
            expected, got = (re.sub(rb'"pid": \d+', b'"pid": N', line)
                             for line in (expected, got))
        self.assertEqual(got, expected, "step %d: %s %r" % (self.step, name, arguments))
        return json.loads(expected.decode("ascii"))

    def in_both(self, action):
        for agent in (self.qemu, self.mini):
            action(agent.work)

    # -- files -------------------------------------------------------------------------------

    def test_test_qga_file_sequences(self):
        handle = self.both("guest-file-open", path="foo", mode="w+")["return"]
        self.both("guest-file-write", handle=handle, buf_b64=HELLO_B64)
        self.both("guest-file-flush", handle=handle)
        self.both("guest-file-close", handle=handle)
        handle = self.both("guest-file-open", path="foo", mode="r")["return"]
        self.both("guest-file-read", handle=handle)
        self.both("guest-file-read", handle=handle)
        self.both("guest-file-seek", handle=handle, offset=6, whence="set")
        self.both("guest-file-read", handle=handle)
        self.both("guest-file-close", handle=handle)
        handle = self.both("guest-file-open", path="foo", mode="w+")["return"]
        self.both("guest-file-write", handle=handle, buf_b64=HELLO_B64)
        self.both("guest-file-read", handle=handle)
        self.both("guest-file-seek", handle=handle, offset=0, whence="set")
        self.both("guest-file-read", handle=handle)
        self.both("guest-file-close", handle=handle)
        self.both("guest-file-close", handle=handle)

    def test_modes_and_open_errors(self):
        for mode in ("r", "rb", "w", "wb", "a", "ab", "r+", "rb+", "r+b", "w+", "wb+", "w+b",
                     "a+", "ab+", "a+b", "rw", "wx", "R", "r ", "br", "+r", "rbb", "", "x"):
            self.both("guest-file-open", path="m%d" % len(mode), mode=mode)
        self.both("guest-file-open", path="missing")
        self.both("guest-file-open", path="")
        self.both("guest-file-open", path="no/such/dir", mode="w")
        self.both("guest-file-open", path=".", mode="w")
        handle = self.both("guest-file-open", path=".")["return"]
        self.both("guest-file-read", handle=handle)
        self.both("guest-file-seek", handle=handle, offset=0, whence="cur")
        self.in_both(lambda work: os.mkfifo(os.path.join(work, "fifo")))
        self.both("guest-file-open", path="fifo", mode="w")
        handle = self.both("guest-file-open", path="fifo")["return"]
        self.both("guest-file-read", handle=handle)
        self.both("guest-file-seek", handle=handle, offset=0, whence="set")
        self.both("guest-file-open", path=1)
        self.both("guest-file-open", path="x", mode=None)
        self.both("guest-file-open")

    def test_read_write_seek(self):
        def make(work):
            with open(os.path.join(work, "ten"), "wb") as f:
                f.write(b"0123456789")
        self.in_both(make)
        handle = self.both("guest-file-open", path="ten", mode="r")["return"]
        for count in (4, 6, 6, 0, -1, 50331649, 1 << 62, "1"):
            self.both("guest-file-read", handle=handle, count=count)
        self.both("guest-file-write", handle=handle, buf_b64="YQ==")
        self.both("guest-file-flush", handle=handle)
        for offset, whence in ((3, "set"), (2, "cur"), (-1, "end"), (1, 0), (1, 1), (0, 2),
                               (100, "cur"), (-5, "set"), (0, 3), (0, -1), (0, "bogus"),
                               (0, True), (0, 1.5), ("0", 0)):
            self.both("guest-file-seek", handle=handle, offset=offset, whence=whence)
        self.both("guest-file-read", handle=handle)
        self.both("guest-file-seek", handle=handle, offset=0)
        handle = self.both("guest-file-open", path="ten", mode="a")["return"]
        self.both("guest-file-seek", handle=handle, offset=0, whence="cur")
        self.both("guest-file-write", handle=handle, buf_b64="YQ==")
        self.both("guest-file-seek", handle=handle, offset=0, whence="cur")
        self.both("guest-file-read", handle=handle)
        self.both("guest-file-seek", handle=handle, offset=2, whence="set")
        self.both("guest-file-write", handle=handle, buf_b64="Yg==")
        self.both("guest-file-seek", handle=handle, offset=0, whence="cur")
        self.both("guest-file-close", handle=handle)
        handle = self.both("guest-file-open", path="ten", mode="a+")["return"]
        self.both("guest-file-read", handle=handle, count=3)
        self.both("guest-file-write", handle=handle, buf_b64="Yw==")
        self.both("guest-file-seek", handle=handle, offset=0, whence="cur")
        self.both("guest-file-read", handle=handle, count=3)
        self.both("guest-file-seek", handle=handle, offset=0, whence="set")
        self.both("guest-file-read", handle=handle, count=100)
        handle = self.both("guest-file-open", path="ten", mode="r+")["return"]
        self.both("guest-file-read", handle=handle, count=2)
        self.both("guest-file-write", handle=handle, buf_b64="WFk=")
        self.both("guest-file-read", handle=handle, count=2)
        self.both("guest-file-seek", handle=handle, offset=0, whence="set")
        self.both("guest-file-read", handle=handle, count=20)
        for name in ("guest-file-read", "guest-file-flush", "guest-file-close"):
            self.both(name, handle=999999)
        self.both("guest-file-seek", handle=999999, offset=0, whence=0)
        self.both("guest-file-write", handle=999999, buf_b64="YQ==")
        self.both("guest-file-read", handle=999999, count=-1)

    def test_base64_and_write_counts(self):
        for text in ("YWJ", "YQ", "YQ=", "YQ==", "YWJjZA", "YWJjZA==", "YQ==YWJj", "====",
                     "Y\nWJj", "Y===", "=YQ=", "YR==", "YWI=", "\n", "YQ==\n", "YW=j", "",
                     "Y Q==", "a\u00e9", "YQ\x00==", "YQ-=", "YWJj\r\n"):
            handle = self.both("guest-file-open", path="b64", mode="w+")["return"]
            self.both("guest-file-write", handle=handle, buf_b64=text)
            self.both("guest-file-seek", handle=handle, offset=0, whence=0)
            self.both("guest-file-read", handle=handle)
            self.both("guest-file-close", handle=handle)
        handle = self.both("guest-file-open", path="wo", mode="w")["return"]
        self.both("guest-file-read", handle=handle)
        for count in (0, 2, 3, 4, -1):
            self.both("guest-file-write", handle=handle, buf_b64="YWJj", count=count)
        self.both("guest-file-write", handle=handle, buf_b64="YWJj", count="1")
        self.both("guest-file-write", handle=handle)

    # -- exec --------------------------------------------------------------------------------

    def both_exec(self, **arguments):
        """guest-exec on both, then poll both to the end: the final statuses must match."""
        self.step += 1
        replies = [agent.request("guest-exec", **arguments) for agent in (self.qemu, self.mini)]
        masked = [re.sub(rb'"pid": \d+', b'"pid": N', line) for line in replies]
        self.assertEqual(masked[1], masked[0], "step %d: guest-exec %r" % (self.step, arguments))
        if b'"return"' not in replies[0]:
            return
        lines = []
        for agent, reply in zip((self.qemu, self.mini), replies):
            pid = json.loads(reply.decode())["return"]["pid"]
            deadline = time.time() + 30
            while True:
                status = agent.request("guest-exec-status", pid=pid)
                if b'"exited": true' in status or time.time() > deadline:
                    break
            lines.append((status, agent.request("guest-exec-status", pid=pid)))
        self.assertEqual(lines[1], lines[0], "step %d: status of %r" % (self.step, arguments))

    def test_test_qga_exec_sequences(self):
        self.both_exec(path="echo", arg=["-n", "\" test_str \""], capture_output=True)
        script = ("for i in 1 2 3 4; do if [ $((i % 2)) = 1 ]; then echo stdout; "
                  "else echo stderr 1>&2; fi; done")
        self.both_exec(path="sh", arg=["-c", script], capture_output=True)
        self.both_exec(path="/bin/invalid-cmd42")
        self.both("guest-exec-status", pid=0)

    def test_exec_cases(self):
        self.both_exec(path="sh", arg=["-c", "echo out; echo err >&2"], capture_output=True)
        self.both_exec(path="sh", arg=["-c", "echo out; echo err >&2"], capture_output=False)
        self.both_exec(path="sh", arg=["-c", "echo out; echo err >&2"])
        self.both_exec(path="sh", arg=["-c", "echo err >&2"], capture_output=True)
        self.both_exec(path="sh", arg=["-c", "exit 3"], capture_output=True)
        self.both_exec(path="true", capture_output=True)
        self.both_exec(path="sh", arg=["-c", "kill -9 $$"], capture_output=True)
        self.both_exec(path="sh", arg=["-c", "kill -TERM $$"])
        self.both_exec(path="cat", input_data=base64.b64encode(b"hello input").decode(),
                       capture_output=True)
        self.both_exec(path="cat", capture_output=True)
        self.both_exec(path="wc", arg=["-c"], input_data="", capture_output=True)
        self.both_exec(path="sh", arg=["-c", "sleep 0.2; echo ignored"],
                       input_data=base64.b64encode(b"x" * 300000).decode(),
                       capture_output=True)
        self.both_exec(path="env", env=["FOO=bar"], capture_output=True)
        self.both_exec(path="sh", arg=["-c", "head -c 20000000 /dev/zero"], capture_output=True)
        self.both_exec(path="head", arg=["-c", "16777216", "/dev/zero"], capture_output=True)
        self.both_exec(path="sh", arg=["-c", "(sleep 0.5; echo late) & echo early"],
                       capture_output=True)
        self.both_exec(path="envx", env=["PATH=/nonexistent"])
        self.both_exec(path="invalid-cmd42")
        self.both_exec(path="/tmp")
        self.both_exec(path="/etc/passwd")
        self.both_exec(path="")
        self.both_exec(path="cat", input_data="a b")
        self.both_exec(path="echo", arg=["\u00e9t\u00e9"], capture_output=True)
        self.both("guest-exec-status", pid=-1)
        self.both("guest-exec-status", pid="1")
        self.both("guest-exec", arg=[])


if __name__ == "__main__":
    unittest.main()
