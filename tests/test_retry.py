"""-r/--retry-path: a channel that cannot be opened is retried every 5 s, as in qemu-ga."""
import os
import pty
import shutil
import subprocess
import tempfile
import time
import tty
import unittest

from tests.support import AGENT, PYTHON, LineClient, connect_unix, qga_mini, stop_process


class RetryPath(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)
        self.state = os.path.join(self.tmp, "state")

    def spawn(self, *args):
        proc = subprocess.Popen([PYTHON, AGENT, "-t", self.state] + list(args),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        self.addCleanup(stop_process, proc)
        return proc

    def test_without_retry_a_missing_channel_is_fatal(self):
        proc = self.spawn("-m", "virtio-serial", "-p", os.path.join(self.tmp, "no-such-port"))
        self.assertEqual(proc.wait(20), 1)
        err = proc.stderr.read().decode()
        self.assertIn("error opening channel", err)
        self.assertIn("No such file or directory", err)

    def test_unix_socket_in_a_directory_that_appears_later(self):
        path = os.path.join(self.tmp, "later", "qga.sock")
        proc = self.spawn("-r", "-m", "unix-listen", "-p", path)
        time.sleep(1)
        self.assertIsNone(proc.poll())
        os.mkdir(os.path.dirname(path))
        deadline = time.time() + 15
        while not os.path.exists(path):
            self.assertLess(time.time(), deadline, "the agent never retried")
            time.sleep(0.1)
        sock = connect_unix(path)
        self.addCleanup(sock.close)
        self.assertEqual(LineClient(sock).call("guest-ping"), {})

    def test_serial_port_that_appears_later(self):
        master, slave = pty.openpty()
        tty.setraw(slave)
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        link = os.path.join(self.tmp, "port")
        proc = self.spawn("-r", "-m", "virtio-serial", "-p", link)
        time.sleep(1)
        self.assertIsNone(proc.poll())
        os.symlink(os.ttyname(slave), link)
        os.write(master, b'{"execute":"guest-sync","arguments":{"id":3}}')
        reply, deadline = b"", time.time() + 15
        while not reply.endswith(b"\n") and time.time() < deadline:
            reply += os.read(master, 4096)
        self.assertEqual(reply, b'{"return": 3}\n')


if __name__ == "__main__":
    unittest.main()


class DeviceDiscovery(unittest.TestCase):
    def test_device_without_a_port_says_where_it_looked_and_waits(self):
        host = qga_mini.Host("/")
        if qga_mini.find_virtio_port(host)[0] is not None:
            self.skipTest("this machine has a real guest agent port")
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        proc = subprocess.Popen([PYTHON, AGENT, "--device", "-t", tmp], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(stop_process, proc)
        line = proc.stderr.readline().decode()
        self.assertIn("virtio port org.qemu.guest_agent.0 not found (tried "
                      "/dev/virtio-ports/org.qemu.guest_agent.0, "
                      "/sys/class/virtio-ports/*/name); waiting for it", line)
        self.assertIsNone(proc.poll())
        proc.terminate()
        self.assertEqual(proc.wait(10), 0)
