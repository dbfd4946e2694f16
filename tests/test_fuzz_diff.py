"""The differential fuzzer's safety: its guard, its inputs, and that a guarded request never
runs its command, in qga-mini (in process, bodies replaced) and in qemu-ga (as nobody, under
strace with exec and the clock calls made to fail, and no forbidden system call seen).

The fuzzing itself is ``make fuzz-diff`` (long) and ``make fuzz-diff-replay`` (CI).
"""
import json
import os
import random
import select
import shutil
import subprocess
import tempfile
import time
import unittest
from unittest import mock

from tests.fuzz_diff import guard, known
from tests.fuzz_diff.agents import LineReader
from tests.fuzz_diff.cases import Raw, make_case, valid_arguments
from tests.support import connect_unix, make_config, qga_mini
from tests.test_oracle_files import QEMU_GA

GUARDED = sorted(guard.MACHINE_COMMANDS - {"guest-exec", "guest-file-open"})


def request(name, **arguments):
    return json.dumps({"execute": name, "arguments": arguments}).encode()


def guarded_requests():
    """Each machine-changing command with valid arguments plus the guard key."""
    rng = random.Random(9)
    out = {}
    for name in sorted(guard.MACHINE_COMMANDS):
        arguments = {k: v for k, v in valid_arguments(name, rng).items()
                     if not isinstance(v, Raw)}
        arguments[guard.GUARD_KEY] = 0
        out[name] = {"execute": name, "arguments": arguments}
    return out


class Guard(unittest.TestCase):
    def assertRefused(self, data):
        self.assertIsNotNone(guard.refusal(data), data)

    def assertSent(self, data):
        self.assertIsNone(guard.refusal(data), data)

    def test_machine_commands_need_the_guard_key(self):
        for name in GUARDED:
            self.assertRefused(request(name))
            self.assertRefused(b'{"execute":"%s"}' % name.encode())
            self.assertRefused(b'{"exec-oob":"%s"}' % name.encode())
            self.assertSent(request(name, **{guard.GUARD_KEY: 0}))

    def test_names_spelled_with_escapes_or_overlong_utf8_are_seen(self):
        self.assertRefused(b'{"execute":"guest-\\u0073hutdown"}')
        self.assertRefused(b'{"execute":"guest-\xc1\xb3hutdown"}')
        self.assertRefused(b"{'execute':'guest-shutdown'}")

    def test_text_a_lexer_error_could_turn_into_a_request_is_refused(self):
        # After 0xFF (or any lexer error) both agents skip to the next '{' or '[': a
        # request inside a string, or after a bad number, would run.
        self.assertRefused(b"\xff\"{'execute':'guest-shutdown'}\"")
        self.assertRefused(b"01\"{'execute':'guest-shutdown'}\"")
        self.assertRefused(b'{"id":NaN, "x":{"execute":"guest-shutdown"}}')
        self.assertRefused(b'{"id":"\x01", "x":{"execute":"guest-shutdown"}}')
        self.assertRefused(b'{"execute":"guest-shutdown","execute":"guest-ping"}')
        self.assertRefused(b'{"a":' * 1030 + b'{"execute":"guest-shutdown"}' + b"}" * 1030)
        guarded = request("guest-shutdown", **{guard.GUARD_KEY: 0})
        self.assertRefused(guarded[:30] + b"\xff" + guarded[30:])
        self.assertSent(b"\xff \n" + guarded + b"\xff[1]" + guarded)

    def test_exec_and_file_open_only_where_harmless(self):
        self.assertSent(request("guest-exec", path="/bin/true", arg=["x"]))
        self.assertRefused(request("guest-exec", path="/bin/sh", arg=["-c", "reboot"]))
        self.assertRefused(request("guest-exec", path="true"))
        self.assertSent(request("guest-file-open", path="fuzz-file", mode="w"))
        self.assertSent(request("guest-file-open", path="fuzz-file\0/etc/passwd", mode="w"))
        for path in ("/etc/passwd", "../x", "a/b", "", "..", "\0/etc/passwd"):
            self.assertRefused(request("guest-file-open", path=path, mode="r"))
        self.assertSent(request("guest-file-open", path="/etc/shadow", mode="w",
                                **{guard.GUARD_KEY: 0}))

    def test_other_commands_pass_as_they_are(self):
        self.assertSent(b'\xff{"execute":"guest-get-fsinfo"}{"execute":"guest-exec-status",'
                        b'"arguments":{"pid":NaN}}\xc3')

    def test_generated_inputs_all_pass_the_guard(self):
        seen = set()
        for index in range(1500):
            case = make_case("test", index)
            data = b"".join(case["chunks"])
            self.assertIsNone(guard.refusal(data), case["what"])
            seen.update(guard.names_in(data))
        self.assertEqual(seen, set(guard.MACHINE_COMMANDS))   # every one is exercised


class KnownDivergences(unittest.TestCase):
    CASE = {"chunks": [b'{"execute":"guest-ping"}']}

    def test_a_different_outcome_is_not_explained(self):
        ok = ([("return", "'(no id)'", "")], "ok")
        failed = ([("error", "GenericError", "Parameter 'x' is unexpected", "'(no id)'")], "ok")
        self.assertIsNone(known.match(self.CASE, ok, failed))
        self.assertIsNone(known.match(self.CASE, ok, ([], "dead")))
        self.assertIsNone(known.match(self.CASE, ok, ([], "timeout")))
        self.assertIsNone(known.match(self.CASE, ok, (ok[0] * 2, "ok")))

    def test_each_entry_explains_what_it_says(self):
        newer = ("error", "CommandNotFound", "The command guest-get-load has not been found",
                 "1")
        self.assertEqual(known.match(self.CASE, ([newer], "ok"), ([("return", "1", "")], "ok")),
                         known.BY_NAME["newer-commands"])
        theirs = ("return", "1", '[{"logical-id": 1}, {"logical-id": 0}]')
        ours = ("return", "1", '[{"logical-id": 0}, {"logical-id": 1}]')
        self.assertEqual(known.match(self.CASE, ([theirs], "ok"), ([ours], "ok")),
                         known.BY_NAME["numeric-order"])
        self.assertIsNone(known.match(self.CASE, ([theirs], "ok"),
                                      ([("return", "1", '[{"logical-id": 0}]')], "ok")))
        # Fixed wire-protocol divergences are no longer explained: they must not come back.
        stray = ("error", "GenericError", "JSON parse error, stray '01'", "x")
        cut = ("error", "GenericError", "JSON parse error, stray '01\ufffd'", "x")
        self.assertIsNone(known.match(self.CASE, ([stray, cut], "ok"), ([cut, stray], "ok")))
        bytewise = ("error", "GenericError", "JSON parse error, stray '\"\ufffd\ufffd\ufffd'", "x")
        one = ("error", "GenericError", "JSON parse error, stray '\"\ufffd'", "x")
        self.assertIsNone(known.match(self.CASE, ([one], "ok"), ([bytewise], "ok")))
        for entry in known.KNOWN:
            self.assertIn(entry.area, ("README", "proto", "qemu-ga bug"))


class Reader(unittest.TestCase):
    def test_lines_across_reads(self):
        reader = LineReader()
        self.assertEqual(reader.feed(b"a"), [])
        self.assertEqual(reader.feed(b"b\nc\n\nd"), [b"ab", b"c", b""])
        self.assertEqual(reader.feed(b"\n"), [b"d"])


class GuardedRequestsNeverRun(unittest.TestCase):
    """qga-mini: the guard key stops every machine-changing command before its body."""

    def test_in_qga_mini(self):
        tmp = tempfile.mkdtemp(prefix="qga-guard-")
        self.addCleanup(shutil.rmtree, tmp, True)
        devnull = open(os.devnull, "w")
        self.addCleanup(devnull.close)
        agent = qga_mini.Agent(make_config(tmp), log=qga_mini.Log(devnull))
        ran = []
        bodies = {name: cmd._replace(func=lambda agent, **kw: ran.append(kw))
                  for name, cmd in qga_mini.COMMANDS.items()}
        with mock.patch.dict(qga_mini.COMMANDS, bodies):
            for name, message in guarded_requests().items():
                reply = json.loads(b"".join(agent.dispatch(message)).decode())
                self.assertEqual(reply["error"]["desc"],
                                 "Parameter '%s' is unexpected" % guard.GUARD_KEY, name)
        self.assertEqual(ran, [])


SANDBOX_TOOLS = [shutil.which(t) for t in ("strace", "setpriv")]
FORBIDDEN_CALLS = ("clone", "fork", "vfork", "execve", "ioctl", "reboot", "settimeofday",
                   "clock_settime", "clock_adjtime", "adjtimex", "kill", "unlink", "rename",
                   "mkdir", "chmod", "fchmod", "chown", "fchown", "truncate", "ftruncate")


@unittest.skipUnless(os.access(QEMU_GA, os.X_OK) and all(SANDBOX_TOOLS)
                     and os.geteuid() == 0, "needs root, qemu-ga, strace and setpriv")
class GuardedRequestsNeverRunInQemuGa(unittest.TestCase):
    """qemu-ga 7.2 runs as nobody under strace, exec and the clock calls failing: if a
    guarded request did reach its command, it could do nothing and the trace would show it."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="qga-guard-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        os.chmod(self.tmp, 0o755)
        state = os.path.join(self.tmp, "state")
        os.mkdir(state)
        os.chown(state, 65534, 65534)
        self.sock_path = os.path.join(state, "sock")
        self.agent = subprocess.Popen(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", QEMU_GA,
             "-m", "unix-listen", "-p", self.sock_path, "-t", state],
            cwd=state, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.addCleanup(self.stop, self.agent)

    @staticmethod
    def stop(proc):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def trace(self):
        """strace attached to the agent; returns (process, trace file path)."""
        path = os.path.join(self.tmp, "trace")
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", path, "-p", str(self.agent.pid),
             "-e", "inject=execve,execveat,reboot,settimeofday,clock_settime,clock_adjtime,"
                   "adjtimex,ioctl:error=EPERM"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self.stop, tracer)
        deadline = time.time() + 10
        while time.time() < deadline:       # attached once the agent's state says so
            with open("/proc/%d/status" % self.agent.pid) as f:
                if "TracerPid:\t0\n" not in f.read():
                    return tracer, path
            time.sleep(0.02)
        self.fail("strace did not attach")

    def test_in_qemu_ga(self):
        sock = connect_unix(self.sock_path)
        self.addCleanup(sock.close)
        tracer, path = self.trace()
        reader = LineReader()
        for name, message in guarded_requests().items():
            sock.sendall(json.dumps(message).encode())
            lines, deadline = [], time.time() + 10
            while not lines and time.time() < deadline:
                if select.select([sock], [], [], 1)[0]:
                    lines = reader.feed(sock.recv(65536))
            self.assertEqual(len(lines), 1, name)
            self.assertEqual(json.loads(lines[0])["error"]["desc"],
                             "Parameter '%s' is unexpected" % guard.GUARD_KEY, name)
        self.stop(self.agent)
        tracer.wait(10)
        with open(path) as f:
            calls = [line.split(None, 1)[1] for line in f if " " in line]
        self.assertTrue(any(call.startswith("read(") for call in calls))   # it did trace
        for call in calls:
            self.assertFalse(call.startswith(FORBIDDEN_CALLS), call)
            if call.startswith("open"):
                self.assertNotRegex(call, "O_WRONLY|O_RDWR|O_CREAT")


if __name__ == "__main__":
    unittest.main()
