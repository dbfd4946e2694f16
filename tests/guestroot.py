"""A throw-away guest file system for tests of commands that change the machine.

``GuestRoot`` is a temporary directory used as the agent's host root: the commands find
their helper programs (poweroff, chpasswd, hwclock, ...) and their files (/etc/shadow,
/sys/power/state, /dev/rtc0, ...) inside it, never on the machine running the tests.
``standin()`` puts a recording shell script where a helper program would be.

``forbid_machine_changes()`` replaces the module functions that would reach the real
kernel (clock, RTC ioctl, reboot(2)) with ones that fail the test; every test module that
exercises such a command calls it in setUpModule, and tests that expect a call patch the
function again with a recorder.
"""
import os
import shutil
import stat
import tempfile
from unittest import mock

from tests.support import qga_mini

DANGEROUS_FUNCTIONS = ("set_system_clock", "rtc_ioctl", "kernel_reboot")


def _forbidden(name):
    def fail(*args):
        raise AssertionError("a test reached the real %s%r" % (name, args))
    return fail


def forbid_machine_changes():
    """Patch every machine-changing function with one that fails; returns the patchers."""
    patchers = [mock.patch.object(qga_mini, name, _forbidden(name))
                for name in DANGEROUS_FUNCTIONS]
    for patcher in patchers:
        patcher.start()
    return patchers


def allow_machine_changes(patchers):
    for patcher in patchers:
        patcher.stop()


class GuestRoot(object):
    """A temporary guest root directory with helpers to fill it."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="qga-guest-")
        self.record = self.path("/record.log")

    def path(self, guest_path):
        return self.root + guest_path

    def write(self, guest_path, content, mode=None):
        real = self.path(guest_path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        with open(real, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
        if mode is not None:
            os.chmod(real, mode)
        return real

    def read(self, guest_path, binary=False):
        with open(self.path(guest_path), "rb" if binary else "r") as f:
            return f.read()

    def mkdir(self, guest_path, mode=0o755):
        real = self.path(guest_path)
        os.makedirs(real, exist_ok=True)
        os.chmod(real, mode)
        return real

    def standin(self, guest_path, status=0, stdin=False, script=""):
        """A helper program that records "<name> <args>" (and its stdin) and exits
        ``status``; ``script`` is extra shell run before exiting."""
        body = ['#!/bin/sh',
                'printf "%%s\\n" "$(basename "$0") $*" >> "%s"' % self.record]
        if stdin:
            body.append('printf "stdin:" >> "%s"; cat >> "%s"' % (self.record, self.record))
        body += [script, "exit %d" % status, ""]
        return self.write(guest_path, "\n".join(body), 0o755)

    def calls(self):
        """The recorded helper calls, one string per line."""
        try:
            with open(self.record) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def is_fifo(self, guest_path):
        return stat.S_ISFIFO(os.lstat(self.path(guest_path)).st_mode)

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)
