"""Channels without a VM: stdio, unix-listen, a pty as isa-serial or virtio-serial, discovery."""
import errno
import io
import os
import pty
import shutil
import socket
import subprocess
import tempfile
import termios
import threading
import time
import tty
import unittest
from unittest import mock

from tests.procstat import cpu_seconds
from tests.support import (AGENT, PYTHON, AgentProcess, LineClient, connect_unix, qga_mini,
                           stop_process)


class Stdio(unittest.TestCase):
    def test_requests_on_stdin_replies_on_stdout(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        out = subprocess.run([PYTHON, AGENT, "-m", "stdio", "-t", tmp],
                             input=b'{"execute":"guest-ping"}{"execute":"guest-sync",'
                                   b'"arguments":{"id":4}}\n', stdout=subprocess.PIPE,
                             timeout=30).stdout
        self.assertEqual(out, b'{"return": {}}\n{"return": 4}\n')


class UnixListen(unittest.TestCase):
    def test_second_client_is_served_after_the_first_leaves(self):
        with AgentProcess() as agent:
            first = agent.connect()
            self.assertEqual(first.call("guest-ping"), {})
            second = agent.connect()
            second.send(b'{"execute":"guest-sync","arguments":{"id":2}}')
            second.expect_silence(0.3)
            self.assertEqual(first.call("guest-sync", id=1), 1)     # the first is undisturbed
            first.sock.close()
            self.assertEqual(second.read_reply(), {"return": 2})

    def test_request_and_hang_up_in_one_go(self):
        # Proxmox's exchange, with the write side shut at once: the request and the EOF may
        # be read together or apart; every reply comes, then the hang-up, every time.
        request = (b'\xff{"execute":"guest-sync-delimited","arguments":{"id":%d}}'
                   b'{"execute":"guest-ping"}')
        with AgentProcess() as agent:
            for i in range(100):
                sock = socket.socket(socket.AF_UNIX)
                sock.settimeout(10)
                sock.connect(agent.path)
                sock.sendall(request % i)
                if i % 2:
                    sock.shutdown(socket.SHUT_WR)
                replies = LineClient(sock)
                self.assertEqual(replies.read_reply()["error"]["desc"],
                                 "JSON parse error, stray '\ufffd'")
                self.assertEqual(replies.read_reply(), {"return": i})   # after its 0xFF
                self.assertEqual(replies.read_reply(), {"return": {}})
                if i % 2:
                    self.assertEqual(sock.recv(10), b"")
                sock.close()
            self.assertEqual(agent.connect().call("guest-ping"), {})

    def test_many_connect_disconnect_cycles(self):
        with AgentProcess() as agent:
            for i in range(200):
                sock = connect_unix(agent.path)     # the first may come between bind and listen
                if i % 2:
                    sock.sendall(b'{"execute":"guest-ping"}')
                    self.assertEqual(LineClient(sock).read_reply(), {"return": {}})
                sock.close()
            self.assertEqual(agent.connect().call("guest-ping"), {})
            fds = len(os.listdir("/proc/%d/fd" % agent.proc.pid))
            self.assertLess(fds, 16)


class SerialOverPty(unittest.TestCase):
    """A pty stands in for the serial port; the test holds the host (master) side."""

    def start(self, method):
        master, slave = pty.openpty()
        if method == "virtio-serial":
            tty.setraw(slave)                   # a virtio port has no line discipline
        path = os.ttyname(slave)
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        proc = subprocess.Popen([PYTHON, AGENT, "-m", method, "-p", path, "-t", tmp],
                                stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(stop_process, proc)
        if method == "isa-serial":              # the agent flushes input when it sets raw mode
            deadline = time.time() + 10
            while termios.tcgetattr(slave)[3] & termios.ICANON and time.time() < deadline:
                time.sleep(0.01)
        return master, slave, proc

    def talk(self, master, data):
        os.write(master, data)
        reply, deadline = b"", time.time() + 10
        while not reply.endswith(b"\n") and time.time() < deadline:
            reply += os.read(master, 4096)
        return reply

    def test_isa_serial_sets_raw_mode_and_serves(self):
        master, slave, proc = self.start("isa-serial")
        self.assertEqual(self.talk(master, b'{"execute":"guest-sync","arguments":{"id":5}}'),
                         b'{"return": 5}\n')
        iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(slave)
        self.assertFalse(iflag & (termios.ICRNL | termios.IXON))
        self.assertFalse(lflag & (termios.ICANON | termios.ECHO | termios.ISIG))
        self.assertFalse(oflag & termios.OPOST)
        vmin = cc[termios.VMIN]                 # an int, or under PyPy a 1-byte string
        self.assertEqual(vmin if isinstance(vmin, int) else ord(vmin), 1)
        self.assertEqual(ospeed, termios.B38400)

    def test_host_hangup_costs_no_cpu(self):
        # After the host side closes, the port reports hang-up for ever; qemu-ga polls it at
        # 10 Hz.  We must sleep instead of spinning.
        master, slave, proc = self.start("virtio-serial")
        self.assertEqual(self.talk(master, b'{"execute":"guest-ping"}'), b'{"return": {}}\n')
        os.close(slave)
        os.close(master)
        time.sleep(0.3)
        before = cpu_seconds(proc.pid)
        time.sleep(1.5)
        self.assertLess(cpu_seconds(proc.pid) - before, 0.1)
        self.assertIsNone(proc.poll())


class VirtioDiscovery(unittest.TestCase):
    def tree(self, ports, udev_link=False):
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root)
        os.makedirs(os.path.join(root, "dev"))
        for port, name in ports.items():
            d = os.path.join(root, "sys/class/virtio-ports", port)
            os.makedirs(d)
            with open(os.path.join(d, "name"), "w") as f:
                f.write(name + "\n")
            open(os.path.join(root, "dev", port), "w").close()
        if udev_link:
            os.makedirs(os.path.join(root, "dev/virtio-ports"))
            os.symlink("../vport0p1", os.path.join(root, "dev/virtio-ports", udev_link))
        return qga_mini.Host(root)

    def test_udev_link_wins(self):
        host = self.tree({"vport0p1": qga_mini.VIRTIO_PORT_NAME},
                         udev_link=qga_mini.VIRTIO_PORT_NAME)
        self.assertEqual(qga_mini.find_virtio_port(host)[0],
                         "/dev/virtio-ports/org.qemu.guest_agent.0")

    def test_sysfs_scan_without_udev(self):
        host = self.tree({"vport0p1": "org.qemu.spice", "vport0p2": qga_mini.VIRTIO_PORT_NAME})
        path, tried = qga_mini.find_virtio_port(host)
        self.assertEqual(path, "/dev/vport0p2")
        self.assertIn("/sys/class/virtio-ports/*/name", tried)

    def test_absent_port_says_where_it_looked(self):
        path, tried = qga_mini.find_virtio_port(self.tree({"vport0p1": "org.qemu.spice"}))
        self.assertIsNone(path)
        self.assertEqual(tried, ["/dev/virtio-ports/org.qemu.guest_agent.0",
                                 "/sys/class/virtio-ports/*/name"])

    def test_waits_for_a_hotplugged_port(self):
        host = self.tree({})
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        config = qga_mini.Config()
        config.statedir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, config.statedir)
        log = qga_mini.Log(open(os.devnull, "w"))
        self.addCleanup(log.stream.close)
        agent = qga_mini.Agent(config, host=host, log=log)
        server = qga_mini.Server(agent, qga_mini.Channel(config, host, log))
        saved = qga_mini.PORT_RESCAN_INTERVAL, qga_mini.BUSY_RETRY_INTERVAL
        qga_mini.PORT_RESCAN_INTERVAL = qga_mini.BUSY_RETRY_INTERVAL = 0.1
        self.addCleanup(setattr, qga_mini, "PORT_RESCAN_INTERVAL", saved[0])
        self.addCleanup(setattr, qga_mini, "BUSY_RETRY_INTERVAL", saved[1])
        thread = threading.Thread(target=server.run_serial, daemon=True)
        thread.start()
        time.sleep(0.3)
        d = os.path.join(host.root, "sys/class/virtio-ports/vport1p1")
        os.makedirs(d)
        with open(os.path.join(d, "name"), "w") as f:
            f.write(qga_mini.VIRTIO_PORT_NAME)
        tty.setraw(slave)
        os.symlink(os.ttyname(slave), os.path.join(host.root, "dev/vport1p1"))
        self.addCleanup(os.close, slave)
        os.write(master, b'{"execute":"guest-sync","arguments":{"id":77}}')
        reply, deadline = b"", time.time() + 10
        while not reply.endswith(b"\n") and time.time() < deadline:
            reply += os.read(master, 4096)
        self.assertEqual(reply, b'{"return": 77}\n')
        server.stop()
        thread.join(5)
        server.close()


class VsockListen(unittest.TestCase):
    def test_address_parsing(self):
        self.assertEqual(qga_mini.parse_vsock_address("4294967295:1234"), (4294967295, 1234))
        for bad in ("3", "3:x", "x:3", "4294967296:1", None):
            with self.assertRaises(qga_mini.ChannelError):
                qga_mini.parse_vsock_address(bad)

    def test_serves_on_vsock_where_the_kernel_has_it(self):
        family = getattr(socket, "AF_VSOCK", None)
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
            probe.bind((socket.VMADDR_CID_ANY, 0))
            probe.close()
        except (OSError, TypeError):
            self.skipTest("no vsock transport in this kernel")
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        port = 40000 + os.getpid() % 20000
        proc = subprocess.Popen([PYTHON, AGENT, "-m", "vsock-listen", "-p",
                                 "%d:%d" % (socket.VMADDR_CID_ANY, port), "-t", tmp])
        try:
            deadline = time.time() + 2
            while True:
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.connect((1, port))       # VMADDR_CID_LOCAL
                    break
                except OSError:
                    sock.close()
                    if time.time() > deadline:
                        self.skipTest("vsock loopback is not available here")
                    time.sleep(0.05)
            self.assertEqual(LineClient(sock).call("guest-ping"), {})
            sock.close()
        finally:
            stop_process(proc)


if __name__ == "__main__":
    unittest.main()


class OneBufferPerRead(unittest.TestCase):
    """A virtio port hands out one queued buffer per read(), like a SOCK_SEQPACKET socket."""

    def test_requests_split_over_queued_buffers_are_all_read(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.addCleanup(theirs.close)
        request = b'{"execute":"guest-sync","arguments":{"id":%d}}'
        for piece in (request % 1)[:10], (request % 1)[10:], request % 2:
            theirs.send(piece)              # all queued before the agent reads anything
        config = qga_mini.Config()
        config.statedir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, config.statedir)
        log = qga_mini.Log(open(os.devnull, "w"))
        self.addCleanup(log.stream.close)
        agent = qga_mini.Agent(config, log=log)
        server = qga_mini.Server(agent, qga_mini.Channel(config, agent.host, log))
        server.attach(ours.fileno(), sock=ours)
        thread = threading.Thread(target=server.run_loop, daemon=True)
        thread.start()
        theirs.settimeout(5)
        self.assertEqual(theirs.recv(100) + theirs.recv(100), b'{"return": 1}\n{"return": 2}\n')
        server.stop()
        thread.join(5)
        server.close()


class WithoutWritev(unittest.TestCase):
    """PyPy's os has no writev: the agent binds a joined os.write at import instead."""

    def test_agent_answers_where_os_has_no_writev(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        path = os.path.join(tmp, "qga.sock")
        start = ("import os, runpy, sys; vars(os).pop('writev', None); sys.argv[0] = %r; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')" % AGENT)
        proc = subprocess.Popen([PYTHON, "-c", start, "-m", "unix-listen", "-p", path,
                                 "-t", tmp], stdin=subprocess.DEVNULL)
        self.addCleanup(proc.wait, 10)
        self.addCleanup(proc.terminate)
        client = LineClient(connect_unix(path, wait=30))
        self.addCleanup(client.sock.close)
        client.send(b'{"execute":"guest-ping"}' + b"".join(
            b'{"execute":"guest-sync","arguments":{"id":%d}}' % i for i in range(200)))
        self.assertEqual(client.read_reply(), {"return": {}})
        self.assertEqual([client.read_reply() for i in range(200)],
                         [{"return": i} for i in range(200)])

    def test_small_chunks_are_joined_and_a_big_one_written_alone(self):
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        big = memoryview(b"c" * qga_mini.READ_CHUNK)
        self.assertEqual(qga_mini._write_joined(write_end, [b"a" * 10, b"b" * 20, big]), 30)
        self.assertEqual(os.read(read_end, 100), b"a" * 10 + b"b" * 20)
        self.assertEqual(qga_mini._write_joined(write_end, [big, b"d"]), len(big))
        self.assertEqual(os.read(read_end, len(big) + 1), bytes(big))
        # PyPy copies all it is handed: a big reply goes READ_CHUNK bytes per write.
        huge = memoryview(b"e" * (3 * qga_mini.READ_CHUNK))
        with mock.patch.object(qga_mini.os, "write", side_effect=lambda fd, data: len(data)):
            self.assertEqual(qga_mini._write_joined(write_end, [huge]), qga_mini.READ_CHUNK)


class BusyPort(unittest.TestCase):
    def test_busy_port_is_reported_once_and_retried(self):
        config = qga_mini.Config()
        config.path = "/dev/vport9p9"
        stream = io.StringIO()
        channel = qga_mini.Channel(config, qga_mini.Host("/"), qga_mini.Log(stream))
        busy = OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        with mock.patch.object(qga_mini.os, "open", side_effect=busy):
            self.assertIsNone(channel.open_serial(waiting=False))
            self.assertIsNone(channel.open_serial(waiting=True))
        self.assertEqual(stream.getvalue().count("is busy (opened by another process)"), 1)
