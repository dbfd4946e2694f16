"""--self-test (every read-only command, run here) and the host-side client (``client``)."""
import contextlib
import io
import json
import os
import pty
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from unittest import mock

from tests.support import (AGENT, PYTHON, SCHEMA, AgentProcess, make_config, qga_mini,
                           stop_process)

# What qemu-ga's schema declares read-only, by reading it: these and no other commands may run.
READ_ONLY = {
    "guest-ping", "guest-info", "guest-get-time", "guest-fsfreeze-status",
    "guest-network-get-interfaces", "guest-get-vcpus", "guest-get-disks", "guest-get-fsinfo",
    "guest-get-memory-blocks", "guest-get-memory-block-info", "guest-exec-status",
    "guest-get-host-name", "guest-get-users", "guest-get-timezone", "guest-get-osinfo",
    "guest-get-devices", "guest-ssh-get-authorized-keys", "guest-get-diskstats",
    "guest-get-cpustats", "guest-get-load", "guest-network-get-route",
}


def run_agent(*args, timeout=30):
    """qga_mini.py run to its end: (exit status, stdout, stderr)."""
    proc = subprocess.run([PYTHON, AGENT] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def rows(output):
    """{command: (result, summary)} of a self-test table."""
    table = {}
    for line in output.splitlines():
        fields = line.split(None, 2)
        if fields and fields[0] in qga_mini.COMMANDS:
            table[fields[0]] = (fields[1], fields[2] if len(fields) > 2 else "")
    return table


class ReadOnlyPattern(unittest.TestCase):
    def test_it_picks_exactly_the_schemas_read_only_commands(self):
        picked = {name for name in SCHEMA.commands if qga_mini.READ_ONLY_COMMAND.match(name)}
        self.assertEqual(picked, READ_ONLY)

    def test_nothing_that_changes_the_guest_matches(self):
        for name in ("guest-shutdown", "guest-suspend-ram", "guest-set-time", "guest-exec",
                     "guest-fsfreeze-freeze", "guest-fsfreeze-thaw", "guest-fstrim",
                     "guest-file-open", "guest-set-user-password", "guest-sync",
                     "guest-ssh-add-authorized-keys", "guest-set-vcpus"):
            self.assertIsNone(qga_mini.READ_ONLY_COMMAND.match(name), name)


class SelfTest(unittest.TestCase):
    def test_exits_0_and_lists_every_read_only_command(self):
        status, out, err = run_agent("--self-test")
        self.assertEqual(status, 0, out + err)
        table = rows(out)
        expected = {c for c in qga_mini.COMMANDS if qga_mini.READ_ONLY_COMMAND.match(c)}
        self.assertEqual(set(table), expected)
        self.assertEqual(table["guest-ping"], ("ok", "{}"))
        self.assertEqual(table["guest-exec-status"], ("skipped", "needs pid"))
        self.assertTrue(table["guest-info"][1].startswith("version=" + qga_mini.__version__))
        self.assertNotIn("CRASHED", out)
        self.assertRegex(out.splitlines()[-1], r"^self-test: \d+ ok")

    def test_blocked_commands_are_shown_disabled(self):
        status, out, _ = run_agent("--self-test", "-b", "guest-get-users,guest-get-load")
        self.assertEqual(status, 0)
        table = rows(out)
        self.assertEqual(table["guest-get-users"][0], "disabled")
        self.assertEqual(table["guest-get-load"][0], "disabled")
        self.assertEqual(table["guest-ping"][0], "ok")

    def self_test(self, *commands):
        """Run the self-test in-process on only ``commands``: (exit status, stdout)."""
        registry = {c.name: c for c in commands}
        out = io.StringIO()
        with mock.patch.dict(qga_mini.COMMANDS, registry, clear=True), \
                mock.patch("sys.stdout", out), mock.patch("sys.stderr", io.StringIO()):
            status = qga_mini.self_test(make_config(tempfile.gettempdir()))
        return status, out.getvalue()

    def fake(self, name, func, data=None):
        return qga_mini.Command(name, func, data or {}, None, True, False)

    def test_an_error_reply_is_a_finding_a_crash_is_exit_1(self):
        def unsupported(agent):
            raise qga_mini.QgaError(qga_mini.UNSUPPORTED_TEXT)

        def fails(agent):
            raise qga_mini.QgaError("no such thing here")

        def crashes(agent):
            return {}["missing"]

        status, out = self.self_test(self.fake("guest-get-a", unsupported),
                                     self.fake("guest-get-b", fails))
        self.assertEqual(status, 0, out)
        self.assertIn("guest-get-a                    unsupported  this feature", out)
        self.assertIn("guest-get-b                    error        no such thing here", out)
        status, out = self.self_test(self.fake("guest-get-c", crashes),
                                     self.fake("guest-get-d", lambda agent: [{"name": "x"}]))
        self.assertEqual(status, 1, out)
        self.assertIn("guest-get-c                    CRASHED      KeyError: 'missing'", out)
        self.assertIn("guest-get-d                    ok           1 entries: x", out)

    def test_a_reply_that_cannot_be_encoded_is_a_crash(self):
        status, out = self.self_test(self.fake("guest-get-e", lambda agent: {"x": object()}))
        self.assertEqual(status, 1)
        self.assertIn("CRASHED", out)

    def test_a_user_name_argument_is_filled_and_only_read_only_commands_run(self):
        calls = []
        status, out = self.self_test(
            self.fake("guest-ssh-get-authorized-keys",
                      lambda agent, username: calls.append(username) or {"keys": []},
                      {"username": "str"}),
            self.fake("guest-set-something", lambda agent: calls.append("set")))
        self.assertEqual(status, 0)
        self.assertEqual(len(calls), 1)
        self.assertNotEqual(calls[0], "set")
        self.assertIn("keys: 0 entries", out)
        self.assertNotIn("guest-set-something", out)

    def test_summaries_are_short_lines(self):
        self.assertEqual(qga_mini.summarize({"a": 1, "b": [1, 2], "c": {"d": "e"}}),
                         "a=1, b: 2 entries, c=d=e")
        self.assertEqual(qga_mini.summarize("x\ny"), "x y")
        long = qga_mini.summarize({"k": "v" * 200})
        self.assertEqual(len(long), qga_mini.SELF_TEST_SUMMARY_WIDTH)
        self.assertTrue(long.endswith("..."))


def client(*args, timeout=30):
    return run_agent("client", *args, timeout=timeout)


class ClientAgainstAProcess(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.agent = AgentProcess("-b", "guest-get-users")

    @classmethod
    def tearDownClass(cls):
        cls.agent.close()

    def test_ping(self):
        self.assertEqual(client(self.agent.path, "guest-ping"), (0, "{}\n", ""))

    def test_pretty_json_of_a_command_with_arguments(self):
        status, out, err = client(self.agent.path, "guest-sync", '{"id": 42}')
        self.assertEqual((status, out, err), (0, "42\n", ""))
        status, out, _ = client(self.agent.path, "guest-info")
        self.assertEqual(status, 0)
        self.assertIn('\n  "version": "%s",\n' % qga_mini.__version__, out)
        self.assertEqual(json.loads(out)["version"], qga_mini.__version__)

    def test_exec_output_decoded(self):
        status, out, _ = client(self.agent.path, "guest-exec",
                                '{"path": "/bin/echo", "arg": ["h\u00e9llo"], '
                                '"capture-output": true}')
        self.assertEqual(status, 0)
        pid = json.loads(out)["pid"]
        deadline = time.time() + 10
        while True:
            status, out, _ = client("--decode", self.agent.path, "guest-exec-status",
                                    json.dumps({"pid": pid}))
            if json.loads(out)["exited"] or time.time() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(json.loads(out)["out-data"], "h\u00e9llo\n")

    def test_an_error_reply_is_exit_1(self):
        status, out, err = client(self.agent.path, "guest-get-users")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "CommandNotFound: Command guest-get-users has been disabled\n")
        status, _, err = client(self.agent.path, "guest-sync", '{"id": "x"}')
        self.assertEqual(status, 1)
        self.assertIn("Invalid parameter type for 'id'", err)

    def test_bad_command_lines_are_exit_2(self):
        for args in ([], [self.agent.path], [self.agent.path, "guest-sync", "[1]"],
                     [self.agent.path, "guest-sync", "{"], ["--timeout", "x", "a", "b"],
                     ["--timeout"]):
            status, out, err = client(*args)
            self.assertEqual(status, 2, args)
            self.assertIn("client --help", err)
        status, out, _ = client("--help")
        self.assertEqual(status, 0)
        self.assertIn("SOCKET COMMAND [JSON-ARGS]", out)
        self.assertIn("qga_mini.py client SOCKET COMMAND", run_agent("--help")[1])

    def test_no_agent_there_is_exit_2(self):
        status, _, err = client(self.agent.path + ".missing", "guest-ping")
        self.assertEqual(status, 2)
        self.assertIn("cannot connect to", err)


class ClientProtocol(unittest.TestCase):
    """Against stand-in agents: timeouts, stale replies, commands that do not reply."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="qga-client-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.path = os.path.join(self.tmp, "s")

    def listen(self):
        server = socket.socket(socket.AF_UNIX)
        server.bind(self.path)
        server.listen(1)
        self.addCleanup(server.close)
        return server

    def test_an_agent_that_never_answers_times_out(self):
        self.listen()                   # the connection waits in the backlog, unanswered
        start = time.monotonic()
        status, _, err = client("--timeout", "0.5", self.path, "guest-ping")
        self.assertEqual(status, 2)
        self.assertIn("no reply within 0.5 s", err)
        self.assertLess(time.monotonic() - start, 10)

    def test_replies_before_the_syncs_marker_are_skipped(self):
        server = self.listen()

        def agent():
            conn, _ = server.accept()
            with conn:
                data = b""
                while b"\n" not in data:
                    data += conn.recv(4096)
                self.assertTrue(data.startswith(b"\xff"))
                sync_id = json.loads(data[1:].split(b"\n")[0])["arguments"]["id"]
                # Left over from an earlier client, then an old delimited reply, then ours.
                conn.sendall(b'{"return": {"stale": 1}}\n\xff{"return": 1}\n'
                             b'\xff{"return": %d}\n' % sync_id)
                data = data.split(b"\n", 1)[1]
                while b"\n" not in data:
                    data += conn.recv(4096)
                self.assertEqual(json.loads(data), {"execute": "guest-get-osinfo"})
                conn.sendall(b'{"return": {"id": "fresh"}}\n')

        thread = threading.Thread(target=agent)
        thread.start()
        status, out, err = client(self.path, "guest-get-osinfo")
        thread.join(10)
        self.assertEqual((status, json.loads(out)), (0, {"id": "fresh"}), err)

    def in_process_agent(self, func):
        """An agent in this process, with ``func`` as the success-response:false command
        guest-test-silent, serving self.path; the client runs in-process too."""
        silent = qga_mini.Command("guest-test-silent", func, {}, None, False, False)
        patcher = mock.patch.dict(qga_mini.COMMANDS, {silent.name: silent})
        patcher.start()
        self.addCleanup(patcher.stop)
        config = make_config(os.path.join(self.tmp, "state"), path=self.path)
        log = qga_mini.Log(io.StringIO())
        agent = qga_mini.Agent(config, log=log)
        agent.state.ensure()
        server = qga_mini.Server(agent, qga_mini.Channel(config, agent.host, log))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        self.addCleanup(server.close)
        self.addCleanup(thread.join, 10)
        self.addCleanup(server.stop)
        while server.listener is None:      # bound and listening
            time.sleep(0.01)

    def run_client(self, *args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = qga_mini.client_main(list(args), "qga_mini.py")
        return status, out.getvalue(), err.getvalue()

    def test_a_command_without_reply_succeeds_unless_an_error_comes(self):
        calls = []
        self.in_process_agent(lambda agent: calls.append(1))
        self.assertEqual(self.run_client(self.path, "guest-test-silent"), (0, "", ""))
        self.assertEqual(calls, [1])

    def test_a_command_without_reply_fails_when_it_cannot_be_sent(self):
        status, _, err = self.run_client(self.path, "guest-shutdown")
        self.assertEqual(status, 2)
        self.assertIn("cannot connect", err)

    def test_a_command_without_reply_that_fails_is_exit_1(self):
        def fails(agent):
            raise qga_mini.QgaError("child process has failed to shutdown")
        self.in_process_agent(fails)
        self.assertEqual(self.run_client(self.path, "guest-test-silent"),
                         (1, "", "GenericError: child process has failed to shutdown\n"))

    def test_a_serial_device(self):
        """An agent on the master side of a pty, the client on its device (QEMU's pty)."""
        master, slave = pty.openpty()
        device = os.ttyname(slave)
        self.addCleanup(os.close, slave)    # while no one has it open, the master reads EIO
        agent = subprocess.Popen([PYTHON, AGENT, "-m", "stdio", "-t",
                                  os.path.join(self.tmp, "state")], stdin=master,
                                 stdout=master, stderr=subprocess.DEVNULL)
        os.close(master)
        self.addCleanup(stop_process, agent)
        status, out, err = client(device, "guest-sync", '{"id": 7}')
        self.assertEqual((status, out), (0, "7\n"), err)


if __name__ == "__main__":
    unittest.main()
