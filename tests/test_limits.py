"""The README's "Limits and guarantees" table: each limit of the constants block, reached,
and the error the host sees at it.  The agent stays usable at every limit."""
import base64
import os
import resource
import shutil
import tempfile
import time
import unittest
from unittest import mock

from tests.procstat import cpu_seconds, status_field
from tests.support import RSS_BOUNDS_HOLD, AgentHarness, AgentProcess, qga_mini


class Limits(unittest.TestCase):
    def setUp(self):
        self.h = AgentHarness()
        self.addCleanup(self.h.close)
        self.tmp = tempfile.mkdtemp(prefix="qga-limits-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.file = os.path.join(self.tmp, "data")
        with open(self.file, "wb") as f:
            f.write(b"limits\n")

    def test_the_values_the_readme_states(self):
        self.assertEqual(qga_mini.MAX_MESSAGE_BYTES, 64 << 20)
        self.assertEqual(qga_mini.MAX_MESSAGE_TOKENS, 2 << 20)
        self.assertEqual(qga_mini.MAX_NESTING, 1024)
        self.assertEqual(qga_mini.MAX_READ_COUNT, 48 << 20)
        self.assertEqual(qga_mini.EXEC_OUTPUT_CAP, 16 << 20)
        self.assertEqual(qga_mini.EXEC_OUTPUT_TOTAL_CAP, 256 << 20)
        self.assertEqual(qga_mini.MAX_EXEC_PROCESSES, 256)
        self.assertEqual(qga_mini.MAX_FILE_HANDLES, 1024)
        self.assertEqual(qga_mini.MAX_PENDING_OUTPUT, 1 << 20)
        self.assertEqual(qga_mini.DEFAULT_FSFREEZE_HOOK_TIMEOUT, 60)
        self.assertEqual(qga_mini.HELPER_TIMEOUT, 120)
        self.assertEqual(qga_mini.HELPER_OUTPUT_KEPT, 4096)
        self.assertEqual(qga_mini.HELPER_KILL_WAIT, 5)

    def test_nesting_limit(self):
        depth = qga_mini.MAX_NESTING
        ok = b'{"execute":"guest-ping","id":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
        self.h.send(ok)
        self.assertEqual(self.h.read_reply()["return"], {})
        self.h.send(b'{"execute":"guest-ping","id":' + b"[" * depth + b"]" * depth + b"}")
        self.assertEqual(self.h.read_reply()["error"]["desc"],
                         "JSON nesting depth limit exceeded")
        self.assertEqual(self.h.call("guest-ping"), {})      # the rest was skipped, one error

    def test_parsing_memory_follows_the_bytes_not_the_tokens(self):
        """A message only qemu's parser can judge (a trailing comma, single quotes) with
        half a million values: peak memory stays a small multiple of its 1 MB, as for valid
        JSON (qemu-ga needs 4 KiB per value; we needed 240 bytes per token, 250 MB here)."""
        with AgentProcess() as agent:
            client = agent.connect()
            for message, reply in (
                    (b'{"execute":"guest-ping","id":[' + b"1," * 500000 + b"]}",
                     {"error": {"class": "GenericError",
                                "desc": "JSON parse error, expecting value"}}),
                    (b"{'execute':'guest-ping','id':[" + b"'',"* 500000 + b"'']}",
                     {"return": {}, "id": [""] * 500001})):
                client.send(message)
                self.assertEqual(client.read_reply(), reply)
            peak_kib = status_field(agent.proc.pid, "VmHWM")
        if RSS_BOUNDS_HOLD:
            self.assertLess(peak_kib, 100 * 1024)

    def test_pipelined_big_replies_wait_for_the_host(self):
        """Forty 8 MiB reads in one write, none of the replies read yet: the agent answers
        them as the host reads, holding about MAX_PENDING_OUTPUT plus one reply, instead of
        all forty (430 MiB; one 64 KiB read fits 600 such requests)."""
        path = os.path.join(self.tmp, "eight-mib")
        with open(path, "wb") as f:
            f.truncate(8 << 20)
        with AgentProcess() as agent:
            client = agent.connect()
            handle = client.call("guest-file-open", path=path)
            request = ('{"execute":"guest-file-read","arguments":{"handle":%d,"count":%d}}'
                       % (handle, 8 << 20)).encode()
            client.send(b'{"execute":"guest-file-seek","arguments":{"handle":%d,"offset":0,'
                        b'"whence":"set"}}%s' % (handle, request) * 40)
            time.sleep(1.0)
            peak_kib = status_field(agent.proc.pid, "VmHWM")
            for _ in range(40):
                self.assertEqual(client.read_reply()["return"]["position"], 0)
                self.assertEqual(client.read_reply()["return"]["count"], 8 << 20)
            self.assertEqual(client.call("guest-ping"), {})
        if RSS_BOUNDS_HOLD:
            self.assertLess(peak_kib, 100 * 1024)

    def test_idle_agent_uses_no_cpu(self):
        """No polling: an idle agent sleeps in epoll, with or without a client connected."""
        with AgentProcess() as agent:
            for connected in (False, True):
                if connected:
                    agent.connect().call("guest-ping")
                time.sleep(0.2)
                before = cpu_seconds(agent.proc.pid)
                time.sleep(1.0)
                self.assertLess(cpu_seconds(agent.proc.pid) - before, 0.05)

    def test_read_count_limit(self):
        handle = self.h.call("guest-file-open", path=self.file)
        count = qga_mini.MAX_READ_COUNT + 1
        self.assertEqual(self.h.error("guest-file-read", handle=handle, count=count),
                         ("GenericError", "value '%d' is invalid for argument count" % count))

    def test_open_file_handles_limit(self):
        """Past MAX_FILE_HANDLES open handles a clear error, instead of running the agent out
        of file descriptors (then guest-exec, helpers and new clients fail with EMFILE)."""
        with mock.patch.object(qga_mini, "MAX_FILE_HANDLES", 3):
            handles = [self.h.call("guest-file-open", path=self.file) for _ in range(3)]
            self.assertEqual(self.h.error("guest-file-open", path=self.file),
                             ("GenericError", "too many open guest-file handles: 3 are open; "
                              "close one with guest-file-close"))
            self.h.call("guest-file-close", handle=handles[0])
            self.h.call("guest-file-open", path=self.file)
        self.assertEqual(len(self.h.agent.file_handles), 3)

    def test_handle_limit_is_reached_before_the_fd_limit(self):
        """Started with the usual soft limit of 1024 fds, the agent still reaches the handle
        cap with its own error, and guest-exec still works there."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < qga_mini.fd_budget():
            self.skipTest("the hard fd limit %d is below the agent's budget" % hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        try:
            agent = AgentProcess()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.addCleanup(agent.close)
        client = agent.connect()
        for _ in range(qga_mini.MAX_FILE_HANDLES):
            client.call("guest-file-open", path=self.file)
        self.assertEqual(client.error("guest-file-open", path=self.file)[1],
                         "too many open guest-file handles: %d are open; close one with "
                         "guest-file-close" % qga_mini.MAX_FILE_HANDLES)
        pid = client.call("guest-exec", path="/bin/true", **{"capture-output": True})["pid"]
        self.assertIsInstance(pid, int)

    def test_a_failed_state_commit_leaves_no_temporary_file(self):
        """A full disk (here a failing rename) while qga.state is rewritten: the open fails
        with qemu-ga's error and the state dir keeps only qga.state."""
        failure = OSError(28, os.strerror(28))
        with mock.patch.object(qga_mini.os, "rename", side_effect=failure):
            self.assertEqual(self.h.error("guest-file-open", path=self.file),
                             ("GenericError", "failed to commit persistent state to disk"))
        self.assertEqual(os.listdir(self.h.statedir), ["qga.state"])
        self.h.call("guest-file-open", path=self.file)

    def test_exec_processes_limit(self):
        with mock.patch.object(qga_mini, "MAX_EXEC_PROCESSES", 2):
            pids = [self.h.call("guest-exec", path="/bin/true")["pid"] for _ in range(2)]
            self.assertEqual(self.h.error("guest-exec", path="/bin/true"),
                             ("GenericError", "too many guest-exec processes: 2 are running "
                              "or waiting for guest-exec-status to collect them"))
            for pid in pids:
                deadline = time.time() + 10
                while not self.h.call("guest-exec-status", pid=pid)["exited"]:
                    self.assertLess(time.time(), deadline)
                    time.sleep(0.01)
            self.h.call("guest-exec", path="/bin/true")

    def collect(self, pid):
        deadline = time.time() + 10
        while True:
            status = self.h.call("guest-exec-status", pid=pid)
            if status["exited"]:
                return status
            self.assertLess(time.time(), deadline)
            time.sleep(0.01)

    def test_exec_output_held_for_all_children_is_capped(self):
        """Uncollected output of all children together stays under EXEC_OUTPUT_TOTAL_CAP
        (else 256 children x 2 streams x 16 MiB = 8 GiB); what does not fit is dropped and
        flagged truncated, and collecting a child gives its share back."""
        def run(text):
            pid = self.h.call("guest-exec", path="/bin/echo", arg=["-n", text],
                              **{"capture-output": True})["pid"]
            self.assertTrue(self.h.agent.exec_children[pid].finished.wait(10))
            return pid

        with mock.patch.object(qga_mini, "EXEC_OUTPUT_TOTAL_CAP", 12):
            first, second = run("12345678"), run("abcdefgh")
            self.assertEqual(base64.b64decode(self.collect(first)["out-data"]), b"12345678")
            status = self.collect(second)
            self.assertEqual(base64.b64decode(status["out-data"]), b"abcd")
            self.assertIs(status["out-truncated"], True)
            status = self.collect(run("ABCDEFGH"))
            self.assertEqual(base64.b64decode(status["out-data"]), b"ABCDEFGH")
            self.assertIs(status["out-truncated"], False)

    def test_exec_output_cap(self):
        with mock.patch.object(qga_mini, "EXEC_OUTPUT_CAP", 10):
            pid = self.h.call("guest-exec", path="/bin/echo", arg=["0123456789abc"],
                              **{"capture-output": True})["pid"]
            deadline = time.time() + 10
            while True:
                status = self.h.call("guest-exec-status", pid=pid)
                if status["exited"]:
                    break
                self.assertLess(time.time(), deadline)
                time.sleep(0.01)
        self.assertEqual(base64.b64decode(status["out-data"]), b"0123456789")
        self.assertIs(status["out-truncated"], True)


if __name__ == "__main__":
    unittest.main()
