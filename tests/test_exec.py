"""guest-exec and guest-exec-status, with real child processes.

Expectations were checked against qemu-ga 7.2 side by side (tests/test_oracle_files.py
repeats the comparison where qemu-ga is installed).  capture-output modes are 10.2's (8.0+);
7.2 accepts only a boolean.
"""
import base64
import os
import shutil
import signal
import tempfile
import time
import unittest
from unittest import mock

from tests.support import AgentHarness, AgentProcess, qga_mini

# test-qga's script for the separated and merged cases, without bash's (( )).
ALTERNATING = ("for i in 1 2 3 4; do if [ $((i % 2)) = 1 ]; then echo stdout; "
               "else echo stderr 1>&2; fi; done")


def b64(data):
    return base64.b64encode(data).decode()


def process_state(pid):
    """The state letter of a process (Z for a zombie), or None once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IOError):
        return None


class ExecTestCase(unittest.TestCase):
    def setUp(self):
        self.agent = AgentHarness()
        self.dir = tempfile.mkdtemp(prefix="qga-exec-")

    def tearDown(self):
        self.agent.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def exec(self, path, *args, **options):
        arguments = {"path": path}
        if args:
            arguments["arg"] = list(args)
        arguments.update((k.replace("_", "-"), v) for k, v in options.items())
        return self.agent.call("guest-exec", arguments)["pid"]

    def wait(self, pid, timeout=10.0):
        """Poll guest-exec-status until exited (test-qga polls without sleeping)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.agent.call("guest-exec-status", pid=pid)
            if status["exited"]:
                return status
            time.sleep(0.005)
        raise AssertionError("pid %d did not exit" % pid)

    def run_to_end(self, path, *args, timeout=10.0, **options):
        return self.wait(self.exec(path, *args, **options), timeout)

    def output(self, status, key="out-data"):
        return base64.b64decode(status[key]) if key in status else None


class TestQgaSequences(ExecTestCase):
    """test-qga's /qga/guest-exec, -separated, -merged and -invalid."""

    def test_guest_exec(self):
        pid = self.exec("echo", "-n", '" test_str "', capture_output=True)
        self.assertGreater(pid, 0)
        status = self.wait(pid, timeout=5)
        self.assertEqual(status["exitcode"], 0)
        self.assertEqual(self.output(status), b'" test_str "')

    def test_guest_exec_separated(self):
        status = self.run_to_end("sh", "-c", ALTERNATING, capture_output="separated")
        self.assertEqual(status["exitcode"], 0)
        self.assertEqual(self.output(status), b"stdout\nstdout\n")
        self.assertEqual(self.output(status, "err-data"), b"stderr\nstderr\n")

    def test_guest_exec_merged(self):
        status = self.run_to_end("sh", "-c", ALTERNATING, capture_output="merged")
        self.assertEqual(status["exitcode"], 0)
        self.assertEqual(self.output(status), b"stdout\nstderr\nstdout\nstderr\n")
        self.assertNotIn("err-data", status)
        self.assertNotIn("err-truncated", status)

    def test_guest_exec_invalid(self):
        self.assertEqual(self.agent.error("guest-exec", path="/bin/invalid-cmd42"),
                         ("GenericError", "Guest agent command failed, error was 'Failed to "
                          "execute child process \u201c/bin/invalid-cmd42\u201d (No such file "
                          "or directory)'"))
        self.assertEqual(self.agent.error("guest-exec-status", pid=0),
                         ("GenericError", "Invalid parameter 'pid'"))


class TestCapture(ExecTestCase):
    SCRIPT = "echo out; echo err >&2"

    def test_every_capture_mode(self):
        expected = {True: (b"out\n", b"err\n"), False: (None, None), "none": (None, None),
                    "stdout": (b"out\n", None), "stderr": (None, b"err\n"),
                    "separated": (b"out\n", b"err\n")}
        for mode, (out, err) in expected.items():
            status = self.run_to_end("sh", "-c", self.SCRIPT, capture_output=mode)
            self.assertEqual(self.output(status), out, mode)
            self.assertEqual(self.output(status, "err-data"), err, mode)
            self.assertEqual(status.get("out-truncated"), None if out is None else False, mode)
            self.assertEqual(status.get("err-truncated"), None if err is None else False, mode)
        status = self.run_to_end("sh", "-c", self.SCRIPT)
        self.assertEqual(status, {"exitcode": 0, "exited": True})

    def test_captured_but_empty_streams_are_left_out(self):
        self.assertEqual(self.run_to_end("true", capture_output=True),
                         {"exitcode": 0, "exited": True})

    def test_status_key_order_is_qemu_ga_order(self):
        pid = self.exec("sh", "-c", self.SCRIPT, capture_output=True)
        self.wait_until_finished(pid)
        self.agent.send({"execute": "guest-exec-status", "arguments": {"pid": pid}})
        self.assertEqual(self.agent.read_line(),
                         b'{"return": {"exitcode": 0, "err-data": "ZXJyCg==", "out-data": '
                         b'"b3V0Cg==", "err-truncated": false, "out-truncated": false, '
                         b'"exited": true}}')

    def wait_until_finished(self, pid):
        child = self.agent.agent.exec_children[pid]
        self.assertTrue(child.finished.wait(10))

    def test_output_is_capped_at_16_mib_and_the_child_is_drained(self):
        cap = qga_mini.EXEC_OUTPUT_CAP
        status = self.run_to_end("sh", "-c", "head -c %d /dev/zero; head -c 100 /dev/zero >&2"
                                 % (cap + 3 * 65536 + 5), capture_output=True, timeout=60)
        self.assertEqual(status["exitcode"], 0)
        self.assertEqual(len(self.output(status)), cap)
        self.assertTrue(status["out-truncated"])
        self.assertEqual(len(self.output(status, "err-data")), 100)
        self.assertFalse(status["err-truncated"])

    def test_exactly_16_mib_is_not_truncated(self):
        cap = qga_mini.EXEC_OUTPUT_CAP
        status = self.run_to_end("head", "-c", str(cap), "/dev/zero", capture_output="stdout")
        self.assertEqual(len(self.output(status)), cap)
        self.assertFalse(status["out-truncated"])

    def test_capture_output_types(self):
        self.assertEqual(self.agent.error("guest-exec", path="true", **{"capture-output": 1}),
                         ("GenericError", "Invalid parameter type for 'capture-output', "
                          "expected: GuestExecCaptureOutput"))
        self.assertEqual(self.agent.error("guest-exec", path="true",
                                          **{"capture-output": "both"}),
                         ("GenericError", "Parameter 'capture-output' does not accept value "
                          "'both'"))


class TestStatus(ExecTestCase):
    def test_exit_code(self):
        self.assertEqual(self.run_to_end("sh", "-c", "exit 3"),
                         {"exitcode": 3, "exited": True})

    def test_a_child_killed_by_a_signal(self):
        self.assertEqual(self.run_to_end("sh", "-c", "kill -9 $$", capture_output=True),
                         {"signal": 9, "exited": True})
        self.assertEqual(self.run_to_end("sh", "-c", "kill -TERM $$"),
                         {"signal": 15, "exited": True})

    def test_the_record_is_forgotten_once_the_exit_was_reported(self):
        pid = self.exec("true")
        self.wait(pid)
        self.assertEqual(self.agent.error("guest-exec-status", pid=pid),
                         ("GenericError", "Invalid parameter 'pid'"))
        self.assertNotIn(pid, self.agent.agent.exec_children)

    def test_a_running_child_reports_only_exited_false(self):
        pid = self.exec("sleep", "5", capture_output=True)
        try:
            self.assertEqual(self.agent.call("guest-exec-status", pid=pid), {"exited": False})
            self.assertEqual(self.agent.call("guest-exec-status", pid=pid), {"exited": False})
        finally:
            os.kill(pid, signal.SIGKILL)
        self.assertEqual(self.wait(pid), {"signal": 9, "exited": True})

    def test_unknown_pids(self):
        for pid in (0, -1, os.getpid(), 1 << 40):
            self.assertEqual(self.agent.error("guest-exec-status", pid=pid),
                             ("GenericError", "Invalid parameter 'pid'"))
        self.assertEqual(self.agent.error("guest-exec-status", pid="1"),
                         ("GenericError", "Invalid parameter type for 'pid', expected: integer"))

    def test_a_grandchild_holding_stdout_keeps_exited_false_but_the_child_is_reaped(self):
        # The grandchild outlives the reap interval used where there is no pidfd (PyPy).
        pid = self.exec("sh", "-c", "(sleep 3; echo late) & echo early", capture_output=True)
        deadline = time.time() + 5
        while process_state(pid) is not None and time.time() < deadline:
            time.sleep(0.01)
        self.assertIsNone(process_state(pid), "the child was left a zombie")
        self.assertEqual(self.agent.call("guest-exec-status", pid=pid), {"exited": False})
        status = self.wait(pid)
        self.assertEqual(self.output(status), b"early\nlate\n")

    def test_without_pidfd_a_child_is_reaped_while_its_grandchild_keeps_writing(self):
        # Python < 3.9 and PyPy have no os.pidfd_open: the child must still be reaped
        # although the grandchild's output wakes the reader more often than once a second.
        with mock.patch.object(qga_mini, "_pidfd_open", None):
            pid = self.exec("sh", "-c", "(for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do "
                            "echo $i; sleep 0.2; done) & echo started", capture_output=True)
            deadline = time.time() + 2.5
            while process_state(pid) is not None and time.time() < deadline:
                time.sleep(0.01)
            self.assertIsNone(process_state(pid), "the child was left a zombie")
            self.assertEqual(self.agent.call("guest-exec-status", pid=pid), {"exited": False})
            self.assertIn(b"started", self.output(self.wait(pid)).split())

    def test_children_nobody_asks_about_are_reaped(self):
        pids = [self.exec("true") for _ in range(10)]
        for pid in pids:
            self.assertTrue(self.agent.agent.exec_children[pid].finished.wait(10))
            self.assertIsNone(process_state(pid), "pid %d is a zombie" % pid)
        # ... and still reported, as qemu-ga does, until someone asks.
        for pid in pids:
            self.assertEqual(self.agent.call("guest-exec-status", pid=pid),
                             {"exitcode": 0, "exited": True})

    def test_the_number_of_tracked_children_is_bounded(self):
        limit = qga_mini.MAX_EXEC_PROCESSES
        qga_mini.MAX_EXEC_PROCESSES = 3
        try:
            pids = [self.exec("true") for _ in range(3)]
            self.assertEqual(self.agent.error("guest-exec", path="true"),
                             ("GenericError", "too many guest-exec processes: 3 are running or "
                              "waiting for guest-exec-status to collect them"))
            self.wait(pids[0])
            pids.append(self.exec("true"))
            for pid in pids[1:]:
                self.wait(pid)
        finally:
            qga_mini.MAX_EXEC_PROCESSES = limit


class TestStdin(ExecTestCase):
    def test_input_data_is_fed_to_stdin(self):
        status = self.run_to_end("cat", input_data=b64(b"hello input"), capture_output=True)
        self.assertEqual(self.output(status), b"hello input")

    def test_large_input_round_trips_through_cat(self):
        data = os.urandom(3 << 20)
        status = self.run_to_end("cat", input_data=b64(data), capture_output=True)
        self.assertEqual(self.output(status), data)

    def test_empty_input_is_an_immediate_end_of_file(self):
        status = self.run_to_end("wc", "-c", input_data="", capture_output=True)
        self.assertEqual(self.output(status).strip(), b"0")

    def test_without_input_data_stdin_is_dev_null(self):
        status = self.run_to_end("sh", "-c", "readlink /proc/self/fd/0; cat",
                                 capture_output=True)
        self.assertEqual(self.output(status), b"/dev/null\n")

    def test_a_child_that_ignores_stdin_does_not_hang_anything(self):
        pid = self.exec("sh", "-c", "sleep 0.3; echo done", input_data=b64(b"x" * (8 << 20)),
                        capture_output=True)
        for _ in range(20):
            self.assertEqual(self.agent.call("guest-ping"), {})
        status = self.wait(pid)
        self.assertEqual((status["exitcode"], self.output(status)), (0, b"done\n"))

    def test_a_child_that_closes_stdin_at_once(self):
        status = self.run_to_end("sh", "-c", "exec 0<&-; echo closed",
                                 input_data=b64(b"y" * (1 << 20)), capture_output=True)
        self.assertEqual(self.output(status), b"closed\n")

    def test_ignored_stdin_without_capture(self):
        status = self.run_to_end("true", input_data=b64(b"z" * (1 << 20)))
        self.assertEqual(status, {"exitcode": 0, "exited": True})

    def test_invalid_input_data(self):
        self.assertEqual(self.agent.error("guest-exec", path="cat", **{"input-data": "a b"}),
                         ("GenericError", "Base64 data contains invalid characters"))


class TestProgramAndEnvironment(ExecTestCase):
    def script(self, name, text, mode=0o755):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_env_replaces_the_environment(self):
        status = self.run_to_end("env", env=["FOO=bar", "EMPTY="], capture_output=True)
        self.assertEqual(self.output(status), b"FOO=bar\nEMPTY=\n")

    def test_without_env_the_agent_environment_is_inherited(self):
        os.environ["QGA_EXEC_TEST"] = "inherited"
        try:
            status = self.run_to_end("sh", "-c", "echo $QGA_EXEC_TEST", capture_output=True)
        finally:
            del os.environ["QGA_EXEC_TEST"]
        self.assertEqual(self.output(status), b"inherited\n")

    def test_path_is_searched_in_the_child_path_first(self):
        self.script("qga-tool", "#!/bin/sh\necho from tmp\n")
        status = self.run_to_end("qga-tool", env=["PATH=%s" % self.dir], capture_output=True)
        self.assertEqual(self.output(status), b"from tmp\n")
        self.assertEqual(self.agent.error("guest-exec", path="qga-tool"),
                         ("GenericError", "Guest agent command failed, error was 'Failed to "
                          "execute child process \u201cqga-tool\u201d (No such file or "
                          "directory)'"))

    def test_path_falls_back_to_the_agent_path(self):
        status = self.run_to_end("echo", "x", env=["FOO=1"], capture_output=True)
        self.assertEqual(self.output(status), b"x\n")

    def test_not_executable(self):
        path = self.script("plain", "echo no\n", mode=0o644)
        for target in (path, self.dir):
            self.assertEqual(self.agent.error("guest-exec", path=target),
                             ("GenericError", "Guest agent command failed, error was 'Failed "
                              "to execute child process \u201c%s\u201d (Permission denied)'"
                              % target))
        self.assertEqual(self.agent.error("guest-exec", path="plain",
                                          env=["PATH=%s" % self.dir]),
                         ("GenericError", "Guest agent command failed, error was 'Failed to "
                          "execute child process \u201cplain\u201d (Permission denied)'"))

    def test_empty_path(self):
        self.assertEqual(self.agent.error("guest-exec", path=""),
                         ("GenericError", "Guest agent command failed, error was 'Failed to "
                          "execute child process \u201c\u201d (No such file or directory)'"))

    def test_a_script_without_a_shebang_runs_under_sh(self):
        path = self.script("noshebang", 'echo "args: $*"\n')
        status = self.run_to_end(path, "a", "b", capture_output=True)
        self.assertEqual(self.output(status), b"args: a b\n")

    def test_argv0_is_the_path_as_given(self):
        status = self.run_to_end("sh", "-c", 'echo "$0"', capture_output=True)
        self.assertEqual(self.output(status), b"sh\n")

    def test_a_nul_in_an_argument_is_a_spawn_error(self):
        self.assertEqual(self.agent.error("guest-exec", path="echo", arg=["a\x00b"]),
                         ("GenericError", "Guest agent command failed, error was 'Failed to "
                          "execute child process \u201cecho\u201d (Invalid argument)'"))

    def test_children_get_no_agent_fds_default_signals_and_the_agent_cwd(self):
        status = self.run_to_end("sh", "-c", "pwd; ls /proc/self/fd; grep SigIgn /proc/self/"
                                 "status; umask", capture_output=True)
        lines = self.output(status).decode().split("\n")
        self.assertEqual(lines[0], os.getcwd())
        fds = set(lines[1:-3])
        self.assertLessEqual(fds, {"0", "1", "2", "3"})   # 3: ls's own directory handle
        # SIGPIPE (and SIGXFSZ) back to default; what the agent inherited ignored stays so.
        ignored = int(lines[-3].split()[1], 16)
        restored = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
        self.assertEqual(ignored, ignored_signals() & ~restored)
        self.assertEqual(signal.getsignal(signal.SIGPIPE), signal.SIG_IGN)
        self.assertEqual(lines[-2], "%04o" % current_umask())

    def test_arguments_reach_the_child_untouched(self):
        args = ["", "two words", "quote\"s", "\u00e9t\u00e9", "$HOME", "*"]
        status = self.run_to_end("printf", "[%s]", *args, capture_output=True)
        self.assertEqual(self.output(status).decode(), "".join("[%s]" % a for a in args))


class TestConcurrency(ExecTestCase):
    def test_pings_are_answered_while_a_child_runs_and_writes(self):
        pid = self.exec("sh", "-c", "for i in 1 2 3 4 5; do echo tick; sleep 0.1; done",
                        capture_output=True)
        started = time.time()
        answered = 0
        while self.agent.call("guest-exec-status", pid=pid)["exited"] is False:
            t = time.time()
            self.assertEqual(self.agent.call("guest-ping"), {})
            self.assertLess(time.time() - t, 0.2)
            answered += 1
            self.assertLess(time.time() - started, 10)
        self.assertGreater(answered, 10)

    def test_many_children_at_once(self):
        pids = [self.exec("sh", "-c", "echo %d; sleep 0.2" % i, capture_output=True)
                for i in range(20)]
        for i, pid in enumerate(pids):
            self.assertEqual(self.output(self.wait(pid)), b"%d\n" % i)


class TestRealProcess(unittest.TestCase):
    def test_exec_through_qga_mini_py(self):
        with AgentProcess() as agent:
            client = agent.connect()
            pid = client.call("guest-exec", path="sh", arg=["-c", "echo $PPID"],
                              **{"capture-output": True})["pid"]
            deadline = time.time() + 10
            while True:
                status = client.call("guest-exec-status", pid=pid)
                if status["exited"] or time.time() > deadline:
                    break
            self.assertEqual(base64.b64decode(status["out-data"]),
                             b"%d\n" % agent.proc.pid)
            client.sock.close()


def ignored_signals():
    """This process's mask of ignored signals, as /proc shows it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("SigIgn:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigIgn")


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


if __name__ == "__main__":
    unittest.main()
