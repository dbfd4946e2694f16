"""Helpers of the CPU, memory, network, device and statistics tests (test_cpus, ...).

- ``guest_tree(profile)``: a fresh copy of a fixture tree under a temp dir (commands that
  write, like guest-set-vcpus, write into the copy, never into the real /sys).
- ``QemuGa``: the real qemu-ga on a unix socket, to compare replies with, when installed.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from tests.support import (FIXTURES, AgentHarness, LineClient, connect_unix,  # noqa: F401
                           qga_mini)

SYSTEM = os.path.join(FIXTURES, "system", "cpus-net")
sys.path.insert(0, SYSTEM)
import make_guest  # noqa: E402

# Trees are written to a tmpfs when there is one: thousands of small files are slow on disk.
TREE_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
QEMU_GA = shutil.which("qemu-ga") or ("/usr/sbin/qemu-ga" if os.path.exists("/usr/sbin/qemu-ga")
                                      else None)


class GuestTree(object):
    """A temp copy of a captured tree (``this-machine``, ``bridges-veths``) or a generated
    one (``virtio-vm``, ``large``); ``.root`` is its path, ``.guest`` the description."""

    def __init__(self, profile):
        self.tmp = tempfile.mkdtemp(prefix="qga-sys-", dir=TREE_TMP)
        self.root = os.path.join(self.tmp, "root")
        self.guest = None
        if profile in make_guest.GUESTS:
            os.mkdir(self.root)
            self.guest = make_guest.build(self.root, profile)
        else:
            shutil.copytree(os.path.join(SYSTEM, profile), self.root, symlinks=True)
        assert self.root != "/" and self.root.startswith(self.tmp)

    def path(self, guest_path):
        return self.root + guest_path

    def read(self, guest_path):
        with open(self.path(guest_path)) as f:
            return f.read()

    def write(self, guest_path, text):
        with open(self.path(guest_path), "w") as f:
            f.write(text)

    def remove(self, guest_path):
        path = self.path(guest_path)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


class TreeCase(unittest.TestCase):
    """A test on a fresh copy of the ``profile`` tree, with an agent (``self.h``) on it."""
    profile = "large"

    def setUp(self):
        self.tree = GuestTree(self.profile)
        self.h = AgentHarness(host_root=self.tree.root)

    def tearDown(self):
        self.h.close()
        self.tree.close()


def call_on(profile, command, change=None):
    """(reply, description) of ``command`` on a fresh ``profile`` tree, after ``change(tree)``.

    An error reply is returned as ("error", class, desc)."""
    tree = GuestTree(profile)
    try:
        if change:
            change(tree)
        with AgentHarness(host_root=tree.root) as h:
            try:
                return h.call(command), tree.guest
            except Exception as exc:
                if not hasattr(exc, "desc"):
                    raise
                return ("error", exc.cls, exc.desc), tree.guest
    finally:
        tree.close()


def golden(profile, command):
    """qemu-ga 7.2's reply to ``command`` recorded when ``profile`` was captured."""
    with open(os.path.join(SYSTEM, profile, "qemu-ga-7.2-%s.json" % command)) as f:
        return f.read().rstrip("\n")


class QemuGa(object):
    """qemu-ga -m unix-listen in a temp dir; ``prefix`` runs it elsewhere (ip netns exec)."""

    def __init__(self, prefix=()):
        self.tmp = tempfile.mkdtemp(prefix="qga-oracle-")
        sock_path = os.path.join(self.tmp, "q.sock")
        os.mkdir(os.path.join(self.tmp, "state"))
        self.proc = subprocess.Popen(list(prefix) + [QEMU_GA, "-m", "unix-listen", "-p",
                                                     sock_path, "-t",
                                                     os.path.join(self.tmp, "state")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if self.proc.poll() is not None:
            raise RuntimeError("qemu-ga did not start")
        self.client = LineClient(connect_unix(sock_path))

    def raw(self, name):
        """The reply line to ``name``, as text."""
        self.client.send({"execute": name})
        return self.client.read_line().decode("ascii")

    def call(self, name):
        return json.loads(self.raw(name))["return"]

    def close(self):
        self.client.sock.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:   # seen twice under a full pypy3 run, in a netns
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)


def encode_return(value):
    """Our reply line for a return value (the agent's own encoder)."""
    return b"".join(qga_mini.encode_reply({"return": value})).decode("ascii").rstrip("\n")
