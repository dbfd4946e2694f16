"""guest-shutdown and guest-suspend-disk/ram/hybrid, against a temporary guest root.

Every agent here has a GuestRoot as its host root, so /sbin/poweroff, systemctl,
/sys/power/state and /proc/sysrq-trigger are the tree's stand-ins, and reboot(2) is replaced
for the whole module: nothing here can power this machine off or suspend it.
"""
import errno
import os
import unittest
from unittest import mock

from tests.guestroot import GuestRoot, allow_machine_changes, forbid_machine_changes
from tests.support import AgentHarness, qga_mini

_patchers = []


def setUpModule():
    _patchers.extend(forbid_machine_changes())


def tearDownModule():
    allow_machine_changes(_patchers)


class PowerTest(unittest.TestCase):
    def setUp(self):
        self.guest = GuestRoot()
        self.addCleanup(self.guest.close)
        self.reboots = []
        patcher = mock.patch.object(qga_mini, "kernel_reboot", self.reboot)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.reboot_error = None

    def reboot(self, command):
        self.reboots.append(command)
        if self.reboot_error:
            raise self.reboot_error

    def agent(self):
        self.assertNotEqual(self.guest.root, "/")
        h = AgentHarness(host_root=self.guest.root, environ={"PATH": "/usr/bin:/bin"})
        self.addCleanup(h.close)
        return h

    def no_reply(self, h, name, **args):
        """Run a success-response:false command that must succeed: nothing comes back.

        The agent answers in order, so the guest-sync reply being the next line proves the
        command sent none.
        """
        h.send({"execute": name, "arguments": args, "id": 7})
        self.assertEqual(h.call("guest-sync", id=9), 9)


class Shutdown(PowerTest):
    def test_an_invalid_mode_is_refused_before_anything_runs(self):
        self.guest.standin("/sbin/poweroff")
        h = self.agent()
        self.assertEqual(h.error("guest-shutdown", mode="bogus"),
                         ("GenericError",
                          "mode is invalid (valid values are: halt|powerdown|reboot"))
        self.assertEqual(h.error("guest-shutdown", mode=1)[1],
                         "Invalid parameter type for 'mode', expected: string")
        self.assertEqual(self.guest.calls(), [])
        self.assertEqual(self.reboots, [])

    def test_each_mode_runs_its_own_program_and_gets_no_reply(self):
        for program in ("poweroff", "halt", "reboot"):
            self.guest.standin("/sbin/" + program)
        h = self.agent()
        self.no_reply(h, "guest-shutdown")
        self.no_reply(h, "guest-shutdown", mode="powerdown")
        self.no_reply(h, "guest-shutdown", mode="halt")
        self.no_reply(h, "guest-shutdown", mode="reboot")
        self.assertEqual(self.guest.calls(), ["poweroff ", "poweroff ", "halt ", "reboot "])

    def test_shutdown_with_qemu_ga_7_2s_arguments_when_there_is_no_poweroff(self):
        self.guest.standin("/sbin/shutdown")
        h = self.agent()
        for mode in ("powerdown", "halt", "reboot"):
            self.no_reply(h, "guest-shutdown", mode=mode)
        self.assertEqual(self.guest.calls(), [
            "shutdown -h -P +0 hypervisor initiated shutdown",
            "shutdown -h -H +0 hypervisor initiated shutdown",
            "shutdown -h -r +0 hypervisor initiated shutdown"])

    def test_then_systemctl_then_busybox(self):
        self.guest.standin("/usr/bin/systemctl")
        self.guest.standin("/bin/busybox")
        h = self.agent()
        self.no_reply(h, "guest-shutdown", mode="reboot")
        os.unlink(self.guest.path("/usr/bin/systemctl"))
        self.no_reply(h, "guest-shutdown", mode="halt")
        self.assertEqual(self.guest.calls(), ["systemctl reboot", "busybox halt"])
        self.assertEqual(self.reboots, [])

    def test_a_failing_program_is_reported_and_nothing_else_is_tried(self):
        self.guest.standin("/sbin/poweroff", status=1)
        self.guest.standin("/sbin/shutdown")
        h = self.agent()
        h.send({"execute": "guest-shutdown", "id": "x"})
        self.assertEqual(h.read_reply(), {"id": "x", "error": {
            "class": "GenericError", "desc": "child process has failed to shutdown"}})
        self.assertEqual(self.guest.calls(), ["poweroff "])
        self.assertEqual(self.reboots, [])

    def test_a_program_killed_by_a_signal_terminated_abnormally(self):
        self.guest.standin("/sbin/reboot", script="kill -9 $$")
        self.assertEqual(self.agent().error("guest-shutdown", mode="reboot")[1],
                         "child process has terminated abnormally")

    def test_a_program_ended_by_sigterm_is_the_shutdown_under_way(self):
        # systemd stops the agent's unit at shutdown: SIGTERM reaches the helper too
        self.guest.standin("/sbin/reboot", script="kill -TERM $$")
        self.guest.standin("/sbin/shutdown")
        h = self.agent()
        self.no_reply(h, "guest-shutdown", mode="reboot")
        self.assertEqual(self.guest.calls(), ["reboot "])
        self.assertEqual(self.reboots, [])

    def test_with_no_program_at_all_the_kernel_does_it(self):
        h = self.agent()
        with mock.patch.object(qga_mini.os, "sync") as sync:
            self.no_reply(h, "guest-shutdown")
            self.no_reply(h, "guest-shutdown", mode="halt")
            self.no_reply(h, "guest-shutdown", mode="reboot")
        self.assertEqual(sync.call_count, 3)
        self.assertEqual(self.reboots, [0x4321FEDC, 0xCDEF0123, 0x01234567])

    def test_sysrq_when_reboot_2_is_refused(self):
        self.guest.write("/proc/sysrq-trigger", "")
        self.reboot_error = OSError(errno.EPERM, "Operation not permitted")
        h = self.agent()
        self.no_reply(h, "guest-shutdown", mode="reboot")
        self.assertEqual(self.guest.read("/proc/sysrq-trigger"), "b")
        self.no_reply(h, "guest-shutdown")
        self.assertEqual(self.guest.read("/proc/sysrq-trigger"), "o")

    def test_when_the_kernel_refuses_too_the_error_says_so(self):
        self.reboot_error = OSError(errno.EPERM, "Operation not permitted")
        h = self.agent()
        self.assertEqual(h.error("guest-shutdown")[1], "no shutdown program found and the "
                         "kernel refused to poweroff: Operation not permitted")
        self.guest.write("/proc/sysrq-trigger", "")
        self.assertEqual(h.error("guest-shutdown", mode="halt")[1], "no shutdown program found "
                         "and the kernel refused to halt: Operation not permitted")
        self.assertEqual(self.guest.read("/proc/sysrq-trigger"), "", "sysrq cannot halt")


class SleepModes(unittest.TestCase):
    def test_kernel_support_from_sysfs(self):
        parse = qga_mini.parse_sleep_modes
        self.assertEqual(parse("freeze mem disk", "[platform] shutdown reboot suspend", None),
                         {"ram", "disk", "hybrid"})
        self.assertEqual(parse("freeze mem disk", "[platform] shutdown reboot", "s2idle [deep]"),
                         {"ram", "disk"})
        self.assertEqual(parse("freeze mem disk", "[disabled]", None), {"ram"})
        self.assertEqual(parse("freeze", None, None), {"ram"})
        self.assertEqual(parse("mem", None, ""), set())
        self.assertEqual(parse("disk", "[shutdown] suspend", None), {"disk"})
        self.assertEqual(parse("", None, None), set())
        self.assertEqual(parse(None, None, None), set())


class Suspend(PowerTest):
    def sysfs(self, state="freeze mem disk", disk="[platform] shutdown reboot suspend"):
        self.guest.write("/sys/power/state", state + "\n")
        if disk is not None:
            self.guest.write("/sys/power/disk", disk + "\n")

    def systemd(self, status_code=3, verb_code=0):
        self.guest.mkdir("/run/systemd/system")
        self.guest.standin("/usr/bin/systemctl", script='[ "$1" = status ] && exit %d\nexit %d'
                           % (status_code, verb_code))

    def test_unsupported_modes_get_qemu_ga_s_text_and_nothing_runs(self):
        self.sysfs(state="freeze mem", disk=None)
        self.systemd()
        h = self.agent()
        for name in ("guest-suspend-disk", "guest-suspend-hybrid"):
            self.assertEqual(h.error(name), ("GenericError", qga_mini.SUSPEND_UNSUPPORTED))
        self.assertEqual(self.guest.calls(), [])

    def test_a_guest_without_sysfs_power_supports_nothing(self):
        h = self.agent()
        for name in ("guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid"):
            self.assertEqual(h.error(name)[1], qga_mini.SUSPEND_UNSUPPORTED)

    def test_systemd_first(self):
        self.sysfs()
        self.systemd()
        h = self.agent()
        self.no_reply(h, "guest-suspend-ram")
        self.no_reply(h, "guest-suspend-disk")
        self.no_reply(h, "guest-suspend-hybrid")
        self.assertEqual(self.guest.calls(), [
            "systemctl status systemd-suspend", "systemctl suspend",
            "systemctl status systemd-hibernate", "systemctl hibernate",
            "systemctl status systemd-hybrid-sleep", "systemctl hybrid-sleep"])
        self.assertEqual(self.guest.read("/sys/power/state"), "freeze mem disk\n")

    def test_systemctl_without_systemd_running_is_not_used(self):
        self.sysfs()
        self.guest.standin("/usr/bin/systemctl")
        self.no_reply(self.agent(), "guest-suspend-ram")
        self.assertEqual(self.guest.calls(), [])
        self.assertEqual(self.guest.read("/sys/power/state"), "mem")

    def test_an_unknown_systemd_unit_means_no_systemd_support(self):
        self.sysfs()
        self.systemd(status_code=4)
        self.no_reply(self.agent(), "guest-suspend-ram")
        self.assertEqual(self.guest.calls(), ["systemctl status systemd-suspend"])
        self.assertEqual(self.guest.read("/sys/power/state"), "mem")

    def test_pm_utils_second(self):
        self.sysfs()
        self.guest.standin("/usr/bin/pm-is-supported")
        self.guest.standin("/usr/sbin/pm-hibernate")
        self.no_reply(self.agent(), "guest-suspend-disk")
        self.assertEqual(self.guest.calls(), ["pm-is-supported --hibernate", "pm-hibernate "])

    def test_sysfs_last_and_hybrid_restores_the_hibernation_mode(self):
        self.sysfs()
        h = self.agent()
        self.no_reply(h, "guest-suspend-ram")
        self.assertEqual(self.guest.read("/sys/power/state"), "mem")
        self.sysfs()
        self.no_reply(h, "guest-suspend-disk")
        self.assertEqual(self.guest.read("/sys/power/state"), "disk")
        self.sysfs()
        writes = []
        real_write = qga_mini.write_kernel_file
        with mock.patch.object(qga_mini, "write_kernel_file",
                               lambda host, path, value: (writes.append((path, value)),
                                                          real_write(host, path, value))):
            self.no_reply(h, "guest-suspend-hybrid")
        self.assertEqual(writes, [("/sys/power/disk", "suspend"), ("/sys/power/state", "disk"),
                                  ("/sys/power/disk", "platform")])

    def test_freeze_when_the_kernel_has_no_mem_state(self):
        self.sysfs(state="freeze", disk=None)
        self.no_reply(self.agent(), "guest-suspend-ram")
        self.assertEqual(self.guest.read("/sys/power/state"), "freeze")

    def test_a_failure_is_reported_even_when_no_later_way_exists(self):
        # qemu-ga drops systemd's error here and sends nothing at all.
        self.sysfs()
        self.systemd(verb_code=1)
        refuse = mock.patch.object(qga_mini, "write_kernel_file",
                                   side_effect=OSError(errno.EBUSY, "Device or resource busy"))
        h = self.agent()
        with refuse:
            self.assertEqual(h.error("guest-suspend-ram"), ("GenericError",
                             "the helper program 'systemctl suspend' returned an unexpected "
                             "exit status code (1)"))
        self.sysfs()
        os.unlink(self.guest.path("/usr/bin/systemctl"))
        with refuse:
            self.assertEqual(h.error("guest-suspend-ram")[1],
                             "suspend: cannot write to '/sys/power/state': "
                             "Device or resource busy")

    def test_a_later_way_still_works_after_a_failure(self):
        self.sysfs()
        self.systemd(verb_code=1)
        self.guest.standin("/usr/bin/pm-is-supported")
        self.guest.standin("/usr/bin/pm-suspend", status=2)
        self.no_reply(self.agent(), "guest-suspend-ram")
        self.assertEqual(self.guest.read("/sys/power/state"), "mem")
        self.assertEqual(self.guest.calls()[-1], "pm-suspend ")


if __name__ == "__main__":
    unittest.main()
