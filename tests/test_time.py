"""guest-get-time, guest-set-time, and the helper-program runner they introduce.

set-time never reaches this machine's clock or RTC: the agent's host root is a temporary
tree (its /dev/rtc0 is a plain file, its hwclock a recording stand-in), and the clock and
RTC-ioctl functions are replaced for the whole module (see tests/guestroot.py).
"""
import calendar
import os
import struct
import time
import unittest
from unittest import mock

from tests.guestroot import GuestRoot, allow_machine_changes, forbid_machine_changes
from tests.support import PYTHON, AgentHarness, process_exited, qga_mini

_patchers = []


def setUpModule():
    _patchers.extend(forbid_machine_changes())


def tearDownModule():
    allow_machine_changes(_patchers)


class Recorder(object):
    """Stands in for set_system_clock / rtc_ioctl; remembers its calls."""

    def __init__(self, result=None, error=None):
        self.calls, self.result, self.error = [], result, error

    def __call__(self, *args):
        self.calls.append(args)
        if self.error:
            raise self.error
        return self.result


def rtc_time(year, mon, mday, hour, minute, sec):
    return struct.pack(qga_mini.RTC_TIME_FORMAT, sec, minute, hour, mday, mon - 1,
                       year - 1900, 0, 0, 0)


class GetTime(unittest.TestCase):
    def test_nanoseconds_at_microsecond_precision_like_qemu_ga(self):
        with AgentHarness() as h:
            before = time.time()
            value = h.call("guest-get-time")
            after = time.time()
        self.assertEqual(value % 1000, 0)
        self.assertGreaterEqual(value, int(before * 1e6) * 1000)
        self.assertLessEqual(value, int(after * 1e6 + 1) * 1000)


class SplitTime(unittest.TestCase):
    def test_truncates_toward_zero_as_c_does(self):
        self.assertEqual(qga_mini.split_time_ns(-1), (0, 0))
        self.assertEqual(qga_mini.split_time_ns(-1500), (0, -1))
        self.assertEqual(qga_mini.split_time_ns(-2500000000), (-2, -500000))
        self.assertEqual(qga_mini.split_time_ns(1795292715306352999), (1795292715, 306352))


class SetTime(unittest.TestCase):
    def setUp(self):
        self.guest = GuestRoot()
        self.addCleanup(self.guest.close)
        self.clock = Recorder()
        patcher = mock.patch.object(qga_mini, "set_system_clock", self.clock)
        patcher.start()
        self.addCleanup(patcher.stop)

    def agent(self):
        h = AgentHarness(host_root=self.guest.root)
        self.addCleanup(h.close)
        return h

    def with_rtc(self, ioctl):
        self.guest.write("/dev/rtc0", "")
        patcher = mock.patch.object(qga_mini, "rtc_ioctl", ioctl)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_without_rtc_and_hwclock_it_is_unsupported_and_changes_nothing(self):
        h = self.agent()
        self.assertEqual(h.error("guest-set-time", time=1700000000 * 10**9),
                         ("GenericError", "this feature or command is not currently supported"))
        self.assertEqual(h.error("guest-set-time")[1], qga_mini.UNSUPPORTED_TEXT)
        self.assertEqual(self.clock.calls, [])

    def test_years_outside_1970_to_2069_are_invalid_as_in_qemu_ga(self):
        self.guest.standin("/sbin/hwclock")
        h = self.agent()
        for ns in (3155760000 * 10**9, -10**9, qga_mini.INT64_MAX, qga_mini.INT64_MIN):
            with self.subTest(ns=ns):
                self.assertEqual(h.error("guest-set-time", time=ns),
                                 ("GenericError", "Invalid time"))
        self.assertEqual(self.clock.calls, [])
        self.assertEqual(self.guest.calls(), [])

    def test_a_clock_failure_is_reported_with_strerror(self):
        self.guest.standin("/sbin/hwclock")
        self.clock.error = OSError(1, "Operation not permitted")
        self.assertEqual(self.agent().error("guest-set-time", time=1700000000 * 10**9)[1],
                         "Failed to set time to guest: Operation not permitted")
        self.assertEqual(self.guest.calls(), [])

    def test_time_sets_the_clock_then_writes_the_rtc_with_an_ioctl(self):
        ioctl = Recorder()
        self.with_rtc(ioctl)
        self.guest.standin("/sbin/hwclock")
        self.assertEqual(self.agent().call("guest-set-time", time=1700000000123456789), {})
        self.assertEqual(self.clock.calls, [(1700000000.123456,)])
        (fd, request, buf), = ioctl.calls
        self.assertEqual(request, qga_mini.RTC_SET_TIME)
        sec, minute, hour, mday, mon, year = struct.unpack(qga_mini.RTC_TIME_FORMAT, buf)[:6]
        written = calendar.timegm((year + 1900, mon + 1, mday, hour, minute, sec))
        self.assertLessEqual(abs(written - time.time()), 2)     # system time, in UTC
        self.assertEqual(self.guest.calls(), [], "hwclock must not run when the ioctl works")

    def test_rtc_keeping_local_time_per_adjtime_is_written_in_local_time(self):
        ioctl = Recorder()
        self.with_rtc(ioctl)
        self.guest.write("/etc/adjtime", "0.0 0 0.0\n0\nLOCAL\n")
        with mock.patch.dict(os.environ, {"TZ": "<+0530>-5:30"}):
            time.tzset()
            try:
                self.agent().call("guest-set-time", time=1700000000 * 10**9)
            finally:
                os.environ.pop("TZ")
                time.tzset()
        sec, minute, hour, mday, mon, year = struct.unpack(qga_mini.RTC_TIME_FORMAT,
                                                           ioctl.calls[0][2])[:6]
        written = calendar.timegm((year + 1900, mon + 1, mday, hour, minute, sec))
        self.assertLessEqual(abs(written - 19800 - time.time()), 2)

    def test_without_time_the_clock_is_set_from_the_rtc(self):
        ioctl = Recorder(result=rtc_time(2024, 1, 2, 3, 4, 5))
        self.with_rtc(ioctl)
        self.assertEqual(self.agent().call("guest-set-time"), {})
        self.assertEqual(ioctl.calls[0][1], qga_mini.RTC_RD_TIME)
        self.assertEqual(self.clock.calls, [(calendar.timegm((2024, 1, 2, 3, 4, 5)),)])

    def test_an_rtc_with_garbage_falls_back_to_hwclock(self):
        self.with_rtc(Recorder(result=rtc_time(2024, 14, 40, 3, 4, 5)))
        self.guest.standin("/sbin/hwclock")
        self.agent().call("guest-set-time")
        self.assertEqual(self.clock.calls, [])
        self.assertEqual(self.guest.calls(), ["hwclock -s"])

    def test_hwclock_is_the_fallback_when_the_ioctl_fails(self):
        self.with_rtc(Recorder(error=OSError(25, "Inappropriate ioctl for device")))
        self.guest.standin("/usr/sbin/hwclock")
        self.agent().call("guest-set-time", time=1700000000 * 10**9)
        self.assertEqual(self.guest.calls(), ["hwclock -w"])

    def test_hwclock_alone_without_an_rtc_device(self):
        self.guest.standin("/sbin/hwclock")
        self.agent().call("guest-set-time")
        self.assertEqual(self.guest.calls(), ["hwclock -s"])
        self.assertEqual(self.clock.calls, [])

    def test_both_failing_gives_qemu_ga_7_2s_text(self):
        self.with_rtc(Recorder(error=OSError(25, "Inappropriate ioctl for device")))
        self.guest.standin("/sbin/hwclock", status=1)
        self.assertEqual(self.agent().error("guest-set-time"),
                         ("GenericError", "hwclock failed to set hardware clock to system time"))

    def test_an_rtc_failure_without_hwclock_is_an_error(self):
        self.with_rtc(Recorder(error=OSError(22, "Invalid argument")))
        self.assertEqual(self.agent().error("guest-set-time")[1],
                         "hwclock failed to set hardware clock to system time")


class AdjtimeParser(unittest.TestCase):
    def test_third_line_decides(self):
        self.assertTrue(qga_mini.parse_adjtime_local("0.0 0 0.0\n0\nLOCAL\n"))
        self.assertFalse(qga_mini.parse_adjtime_local("0.0 0 0.0\n0\nUTC\n"))
        self.assertFalse(qga_mini.parse_adjtime_local("0.0 0 0.0\n"))
        self.assertFalse(qga_mini.parse_adjtime_local(None))


def process_gone(pid, wait=10.0):
    """True once ``pid`` has exited (gone, or a zombie waiting for init), within ``wait``."""
    deadline = time.monotonic() + wait
    while not process_exited(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return process_exited(pid)


def release_fifo(path):
    """Let a process blocked opening FIFO ``path`` for reading go on (none there: nothing)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.write(fd, b"go\n")
    os.close(fd)


class Helpers(unittest.TestCase):
    """find_helper() and run_helper(): how every helper program is found and run."""

    def setUp(self):
        self.guest = GuestRoot()
        self.addCleanup(self.guest.close)

    def host(self, path="/bin:/usr/bin"):
        return qga_mini.Host(self.guest.root, {"PATH": path})

    def test_search_follows_path_then_the_standard_directories(self):
        first = self.guest.standin("/opt/bin/tool")
        self.guest.standin("/usr/sbin/tool")
        self.assertEqual(qga_mini.find_helper(self.host("/opt/bin:/usr/bin"), "tool"), first)
        self.assertEqual(qga_mini.find_helper(self.host("/bin"), "tool"),
                         self.guest.path("/usr/sbin/tool"))

    def test_relative_path_entries_and_non_executables_are_skipped(self):
        self.guest.write("/usr/bin/tool", "#!/bin/sh\n", 0o644)
        self.assertIsNone(qga_mini.find_helper(self.host("."), "tool"))
        self.assertIsNone(qga_mini.find_helper(self.host(), "missing"))

    def test_status_output_and_stdin(self):
        self.guest.standin("/bin/tool", status=3, stdin=True, script="echo out; echo err >&2")
        status, output = qga_mini.run_helper(self.host(), ["tool", "-e"], b"user:pass\n")
        self.assertEqual(status, 3)
        self.assertEqual(output, "out\nerr\n")
        self.assertEqual(self.guest.calls(), ["tool -e", "stdin:user:pass"])

    def test_output_comes_through_a_pipe_and_only_its_head_is_kept(self):
        # 10 MiB: read as it comes, so the helper never blocks on a full pipe; no temporary
        # file is written.
        self.guest.standin("/bin/tool", status=4,
                           script="echo out; head -c 10485760 /dev/zero | tr '\\0' x")
        status, output = qga_mini.run_helper(self.host(), ["tool"])
        self.assertEqual(status, 4)
        self.assertEqual(output, "out\n" + "x" * (qga_mini.HELPER_OUTPUT_KEPT - 4))

    def test_output_is_read_until_the_helper_exits_not_until_end_of_file(self):
        # The helper leaves a child holding the pipe, blocked until the test opens a FIFO:
        # run_helper returns with what the helper printed, without waiting for the child.
        fifo, done = self.guest.path("/release"), self.guest.path("/child-done")
        os.mkfifo(fifo)
        self.addCleanup(release_fifo, fifo)
        self.guest.standin("/bin/tool", script="(read x <%s; echo late; touch %s) & echo early"
                           % (fifo, done))
        with mock.patch.object(qga_mini, "HELPER_TIMEOUT", 10):
            self.assertEqual(qga_mini.run_helper(self.host(), ["tool"]), (0, "early\n"))
        self.assertFalse(os.path.exists(done))

    def test_stdin_larger_than_a_pipe_to_a_helper_that_does_not_read_it(self):
        self.guest.standin("/bin/tool", status=5)
        self.assertEqual(qga_mini.run_helper(self.host(), ["tool"], b"x" * (4 << 20)), (5, ""))

    def test_a_timeout_kills_the_whole_process_group(self):
        pidfile = self.guest.path("/sleeper.pid")
        tool = self.guest.standin("/bin/tool", script="sleep 300 & echo $! >%s; echo started; wait"
                                  % pidfile)
        with self.assertRaises(qga_mini.ProgramTimeout) as caught:
            qga_mini.run_program(tool, ["tool"], timeout=3)
        self.assertTrue(caught.exception.died)
        self.assertEqual(caught.exception.output, "started\n")
        self.assertTrue(process_gone(int(self.guest.read("/sleeper.pid"))), "the sleeper lives")

    def test_a_missing_helper_is_none(self):
        self.assertIsNone(qga_mini.run_helper(self.host(), ["missing"]))

    def test_a_signal_gives_a_negative_status(self):
        self.guest.standin("/bin/tool", script="kill -9 $$")
        self.assertEqual(qga_mini.run_helper(self.host(), ["tool"])[0], -9)

    def test_a_helper_that_cannot_start_gives_127(self):
        self.guest.write("/bin/tool", "not a program\x00", 0o755)
        status, output = qga_mini.run_helper(self.host(), ["tool"])
        self.assertEqual(status, 127)
        self.assertIn("Exec format error", output)

    def test_child_runs_in_its_own_session_without_agent_fds(self):
        report = self.guest.path("/report")
        self.guest.write("/bin/tool", "#!%s\nimport os\nfds = os.listdir('/proc/self/fd')\n"
                         "open(%r, 'w').write(repr((os.getsid(0), sorted(map(int, fds)))))\n"
                         % (PYTHON, report), 0o755)
        keep = os.open(os.devnull, os.O_RDONLY)         # an fd a careless spawn would leak
        os.set_inheritable(keep, True)
        try:
            self.assertEqual(qga_mini.run_helper(self.host(), ["tool"]), (0, ""))
        finally:
            os.close(keep)
        sid, fds = eval(self.guest.read("/report"))
        self.assertNotEqual(sid, os.getsid(0))
        self.assertEqual(fds, [0, 1, 2, 3])            # 3: the listing itself

    def test_a_hung_helper_is_killed_and_a_lingering_daemon_does_not_block(self):
        self.guest.standin("/bin/hang", script="sleep 30")
        self.guest.standin("/bin/forks", script="(sleep 3 &) ; true")
        with mock.patch.object(qga_mini, "HELPER_TIMEOUT", 0.5):
            started = time.time()
            self.assertEqual(qga_mini.run_helper(self.host(), ["hang"])[0], -9)
            self.assertEqual(qga_mini.run_helper(self.host(), ["forks"])[0], 0)
        self.assertLess(time.time() - started, 5)


class HelpersWithoutPidfd(Helpers):
    """The same on Python < 3.9 or Linux < 5.3: no pidfd, the exit is polled for."""

    def setUp(self):
        Helpers.setUp(self)
        patcher = mock.patch.object(qga_mini, "_pidfd_open", None)
        patcher.start()
        self.addCleanup(patcher.stop)


if __name__ == "__main__":
    unittest.main()
