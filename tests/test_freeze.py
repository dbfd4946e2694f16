"""guest-fsfreeze-*, guest-fstrim and the freeze hook on real file systems.

SAFETY: these tests freeze only ext4 and xfs file systems on loop devices they mount
themselves.  The in-process agent's host root is a scratch tree whose proc/self/mountinfo lists
only those loop mounts (mounted inside the tree), so a full freeze cannot reach the machine's
real file systems; the agent also refuses a mount point whose device is not the one the table
names.  Tests of the real process use guest-fsfreeze-freeze-list with the loop mount points.
Every loop file system is thawed with FITHAW by the test itself before it is unmounted.
"""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import unittest.mock

from tests.support import (AGENT, PYTHON, AgentHarness, AgentProcess, process_exited, qga_mini,
                           stop_process)

FROZEN = "Command %s has been disabled: the agent is in frozen state"


class LoopFs(object):
    """A file system on a loop device, mounted at ``root + guest_path``."""

    def __init__(self, workdir, root, guest_path, fstype, size_mb):
        self.guest_path = guest_path
        self.path = root + guest_path
        self.fstype = fstype
        self.image = os.path.join(workdir, fstype + ".img")
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        mkfs = ["mkfs.ext4", "-q", "-F"] if fstype == "ext4" else ["mkfs.xfs", "-q", "-f"]
        if shutil.which(mkfs[0]) is None:
            raise unittest.SkipTest("%s is not installed" % mkfs[0])
        self.run(mkfs + [self.image])
        os.makedirs(self.path)
        self.run(["mount", "-o", "loop", self.image, self.path])
        # The mount must be there before anything freezes this path: the bare directory
        # belongs to the machine's root file system.
        st = os.stat(self.path)
        if not os.path.ismount(self.path) or st.st_dev == os.stat(root).st_dev:
            raise AssertionError("%s is not mounted" % self.path)
        self.major, self.minor = os.major(st.st_dev), os.minor(st.st_dev)
        self.writers = []

    @staticmethod
    def run(argv):
        try:
            subprocess.check_output(argv, stderr=subprocess.STDOUT, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise unittest.SkipTest("cannot set up a loop file system (%s): %s"
                                    % (" ".join(argv), getattr(exc, "output", exc)))

    def mountinfo_line(self, mount_id):
        return ("%d 1 %d:%d / %s rw,relatime - %s /dev/loop%d rw"
                % (mount_id, self.major, self.minor, self.guest_path, self.fstype, self.minor))

    def thaw(self):
        """FITHAW until it fails: whatever a test did, the file system ends up thawed."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while True:
                fcntl.ioctl(fd, qga_mini.FITHAW, 0)
        except OSError:
            pass
        finally:
            os.close(fd)

    def close(self):
        self.thaw()
        for writer in self.writers:        # thawed: nothing can keep them from exiting now
            stop_process(writer)
        subprocess.call(["umount", self.path], timeout=60)

    def writer(self, name="probe"):
        """A child process that creates and fsyncs a file here (it blocks while frozen)."""
        code = ("import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
                "os.write(fd, b'data')\nos.fsync(fd)\n")
        writer = subprocess.Popen([PYTHON, "-c", code, os.path.join(self.path, name)])
        self.writers.append(writer)
        return writer

    def assert_writable(self, test):
        child = self.writer("writable")
        test.assertEqual(wait_for(child, 10), 0, "%s is not writable" % self.path)


def wait_for(child, seconds):
    """The child's exit status, or None if it is still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return child.poll()


@unittest.skipUnless(os.geteuid() == 0, "needs root (loop devices, mount, FIFREEZE)")
class FreezeTest(unittest.TestCase):
    """ext4 and xfs on loop devices, seen by an agent whose host root lists only them."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="qga-freeze-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.root = os.path.join(self.tmp, "root")
        os.makedirs(self.root + "/proc/self")
        self.ext4 = LoopFs(self.tmp, self.root, "/mnt/ext4", "ext4", 32)
        self.addCleanup(self.ext4.close)
        self.xfs = LoopFs(self.tmp, self.root, "/mnt/xfs", "xfs", 320)
        self.addCleanup(self.xfs.close)
        self.write_mountinfo([self.ext4.mountinfo_line(40), self.xfs.mountinfo_line(41)])
        self.hook_log = os.path.join(self.tmp, "hook.log")

    def write_mountinfo(self, lines):
        with open(self.root + "/proc/self/mountinfo", "w") as f:
            f.write("22 1 0:21 / /proc rw - proc proc rw\n" + "\n".join(lines) + "\n")

    def harness(self, **settings):
        h = AgentHarness(host_root=self.root, **settings)
        self.addCleanup(h.close)
        return h

    def hook(self, script_body):
        """A hook script that logs its argument and whether the ext4 fs took a write: "0", or
        "blocked" if the write hung (in the background, so that the hook itself never hangs
        on a frozen file system and deadlocks the agent that waits for it)."""
        path = os.path.join(self.tmp, "hook.sh")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n"
                    "touch %s/hook-$1 & writer=$!\n"
                    "i=0; while kill -0 $writer 2>/dev/null && [ $i -lt 50 ]; do\n"
                    "    sleep 0.1; i=$((i + 1)); done\n"
                    "if kill -0 $writer 2>/dev/null; then r=blocked; else r=0; fi\n"
                    "echo \"$1 $r\" >> %s\n%s\n"
                    % (self.ext4.path, self.hook_log, script_body))
        os.chmod(path, 0o755)
        return path

    def hook_calls(self):
        try:
            with open(self.hook_log) as f:
                return f.read().split("\n")[:-1]
        except IOError:
            return []

    # -- freeze and thaw ----------------------------------------------------------------------

    def test_freeze_blocks_writes_until_thaw(self):
        h = self.harness()
        self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.assertEqual(h.call("guest-fsfreeze-freeze"), 2)
        self.assertEqual(h.call("guest-fsfreeze-status"), "frozen")
        self.assertTrue(os.path.exists(os.path.join(h.statedir, "qga.state.isfrozen")))
        writers = [self.ext4.writer(), self.xfs.writer()]
        time.sleep(1.0)
        self.assertEqual([w.poll() for w in writers], [None, None])   # blocked
        self.assertEqual(h.call("guest-fsfreeze-thaw"), 2)
        self.assertEqual([wait_for(w, 10) for w in writers], [0, 0])
        self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.assertFalse(os.path.exists(os.path.join(h.statedir, "qga.state.isfrozen")))
        self.assertEqual(h.call("guest-fsfreeze-thaw"), 0)          # nothing left to thaw

    def test_freeze_list_only_the_named_mount_points(self):
        h = self.harness()
        self.assertEqual(h.call("guest-fsfreeze-freeze-list",
                                mountpoints=["/mnt/xfs", "/not/mounted", "/mnt/xfs/"]), 1)
        self.xfs_writer = self.xfs.writer()
        self.ext4.assert_writable(self)
        self.assertIsNone(wait_for(self.xfs_writer, 0.5))
        self.assertEqual(h.call("guest-fsfreeze-thaw"), 1)
        self.assertEqual(wait_for(self.xfs_writer, 10), 0)

    def test_freeze_list_of_nothing_known_leaves_the_agent_thawed(self):
        h = self.harness(fsfreeze_hook=self.hook("exit 0"))
        self.assertEqual(h.call("guest-fsfreeze-freeze-list", mountpoints=["/elsewhere"]), 0)
        self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.assertEqual(h.call("guest-fsfreeze-freeze-list", mountpoints=[]), 0)
        self.assertEqual(self.hook_calls(), ["freeze 0", "freeze 0"])   # no thaw hook

    def test_frozen_state_refuses_other_commands(self):
        h = self.harness()
        h.call("guest-fsfreeze-freeze-list", mountpoints=["/mnt/ext4"])
        for name in ("guest-get-fsinfo", "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list",
                     "guest-fstrim", "guest-get-disks", "guest-get-diskstats"):
            self.assertEqual(h.error(name), ("CommandNotFound", FROZEN % name))
        h.call("guest-ping")
        h.call("guest-info")
        self.assertEqual(h.call("guest-sync", id=7), 7)
        self.assertEqual(h.call("guest-fsfreeze-thaw"), 1)
        h.call("guest-get-fsinfo")

    def test_error_thaws_everything_already_frozen(self):
        # Reverse mount order: xfs and ext4 are frozen before the missing mount point fails.
        self.write_mountinfo(["39 1 7:250 / /mnt/missing rw - ext4 /dev/loop250 rw",
                              self.ext4.mountinfo_line(40), self.xfs.mountinfo_line(41)])
        h = self.harness(fsfreeze_hook=self.hook("exit 0"))
        self.assertEqual(h.error("guest-fsfreeze-freeze"),
                         ("GenericError",
                          "failed to open /mnt/missing: No such file or directory"))
        self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.ext4.assert_writable(self)
        self.xfs.assert_writable(self)
        self.assertEqual(self.hook_calls(), ["freeze 0", "thaw 0"])

    def test_stale_mount_table_entry_is_not_frozen(self):
        # The table says /mnt/xfs holds device 7:250; the directory holds another file
        # system now.  qemu-ga would freeze whatever is there; we leave it alone.
        line = self.xfs.mountinfo_line(41).replace("%d:%d" % (self.xfs.major, self.xfs.minor),
                                                   "7:250")
        self.write_mountinfo([self.ext4.mountinfo_line(40), line])
        h = self.harness()
        self.assertEqual(h.call("guest-fsfreeze-freeze"), 1)
        self.xfs.assert_writable(self)
        self.assertEqual(h.call("guest-fsfreeze-thaw"), 1)

    # -- the hook ---------------------------------------------------------------------------

    def test_hook_runs_before_freezing_and_after_thawing(self):
        h = self.harness(fsfreeze_hook=self.hook("exit 0"))
        self.assertEqual(h.call("guest-fsfreeze-freeze"), 2)
        self.assertEqual(self.hook_calls(), ["freeze 0"])      # its write went through
        self.assertEqual(h.call("guest-fsfreeze-thaw"), 2)
        self.assertEqual(self.hook_calls(), ["freeze 0", "thaw 0"])

    def test_failing_freeze_hook_aborts_the_freeze(self):
        h = self.harness(fsfreeze_hook=self.hook('[ "$1" = freeze ] && exit 3; exit 0'))
        self.assertEqual(h.error("guest-fsfreeze-freeze"),
                         ("GenericError", "fsfreeze hook has failed with status 3"))
        self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.ext4.assert_writable(self)
        self.assertEqual(self.hook_calls(), ["freeze 0"])

    def test_failing_thaw_hook_is_reported_after_the_thaw(self):
        h = self.harness(fsfreeze_hook=self.hook('[ "$1" = thaw ] && exit 2; exit 0'))
        self.assertEqual(h.call("guest-fsfreeze-freeze"), 2)
        self.assertEqual(h.error("guest-fsfreeze-thaw"),
                         ("GenericError", "fsfreeze hook has failed with status 2"))
        self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.ext4.assert_writable(self)

    def test_hook_killed_by_a_signal(self):
        h = self.harness(fsfreeze_hook=self.hook("kill -KILL $$"))
        self.assertEqual(h.error("guest-fsfreeze-freeze"),
                         ("GenericError", "fsfreeze hook has terminated abnormally"))

    def test_hook_that_cannot_be_run(self):
        path = os.path.join(self.tmp, "not-executable")
        open(path, "w").close()
        h = self.harness(fsfreeze_hook=path)
        self.assertEqual(h.error("guest-fsfreeze-freeze"),
                         ("GenericError",
                          "can't access fsfreeze hook '%s': Permission denied" % path))
        missing = os.path.join(self.tmp, "missing")
        h2 = self.harness(fsfreeze_hook=missing)
        self.assertEqual(h2.error("guest-fsfreeze-freeze"),
                         ("GenericError", "can't access fsfreeze hook '%s': No such file or "
                          "directory" % missing))
        self.assertEqual(h2.call("guest-fsfreeze-status"), "thawed")

    # -- the hook's time limit --------------------------------------------------------------

    def sleeper(self, when):
        """Hook code that, on ``when`` (freeze or thaw), starts a sleeper in the background
        (holding the hook's stdout), writes its pid to sleeper.pid and waits for it."""
        self.pidfile = os.path.join(self.tmp, "sleeper.pid")
        self.addCleanup(self.kill_sleeper)
        return ('[ "$1" = %s ] && { sleep 300 & echo $! >%s; wait; }; exit 0'
                % (when, self.pidfile))

    def kill_sleeper(self):
        try:
            with open(self.pidfile) as f:
                pid = int(f.read())
        except (IOError, ValueError):
            return
        stop_process(pid)

    def assert_sleeper_killed(self):
        with open(self.pidfile) as f:
            pid = int(f.read())
        deadline = time.monotonic() + 10
        while not process_exited(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertTrue(process_exited(pid), "the hook's child survived the timeout")

    def test_hook_that_hangs_on_freeze_is_killed_and_nothing_stays_frozen(self):
        hook = self.hook(self.sleeper("freeze"))
        h = self.harness(fsfreeze_hook=hook, fsfreeze_hook_timeout=2)
        self.assertEqual(h.error("guest-fsfreeze-freeze"), (
            "GenericError", "fsfreeze hook '%s' did not finish 'freeze' within 2 seconds and "
            "was killed with its process group; no file system was frozen and its 'thaw' was "
            "run" % hook))
        self.assert_sleeper_killed()
        self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.ext4.assert_writable(self)
        self.xfs.assert_writable(self)
        self.assertEqual(self.hook_calls(), ["freeze 0", "thaw 0"])
        self.assertEqual(h.call("guest-ping"), {})

    def test_hook_that_hangs_on_freeze_and_on_thaw(self):
        hook = self.hook("sleep 300")
        h = self.harness(fsfreeze_hook=hook, fsfreeze_hook_timeout=1)
        self.assertEqual(h.error("guest-fsfreeze-freeze-list", mountpoints=["/mnt/ext4"]), (
            "GenericError", "fsfreeze hook '%s' did not finish 'freeze' within 1 seconds and "
            "was killed with its process group; no file system was frozen and running its "
            "'thaw' failed too: fsfreeze hook '%s' did not finish 'thaw' within 1 seconds and "
            "was killed with its process group" % (hook, hook)))
        self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.ext4.assert_writable(self)

    def test_hook_that_hangs_on_thaw_is_killed_after_the_thaw(self):
        hook = self.hook(self.sleeper("thaw"))
        h = self.harness(fsfreeze_hook=hook, fsfreeze_hook_timeout=2)
        self.assertEqual(h.call("guest-fsfreeze-freeze"), 2)
        self.assertEqual(h.error("guest-fsfreeze-thaw"), (
            "GenericError", "fsfreeze hook '%s' did not finish 'thaw' within 2 seconds and "
            "was killed with its process group; the file systems were thawed before it ran"
            % hook))
        self.assert_sleeper_killed()
        self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.ext4.assert_writable(self)
        self.xfs.assert_writable(self)
        self.assertEqual(self.hook_calls(), ["freeze 0", "thaw 0"])

    def test_hook_leaving_a_child_that_holds_its_output(self):
        # The hook exits at once; its child keeps stdout open for 300 s.  The agent reads
        # until the hook exits, not until end of file (the client gives up after 10 s).
        self.pidfile = os.path.join(self.tmp, "sleeper.pid")
        self.addCleanup(self.kill_sleeper)
        hook = self.hook("sleep 300 & echo $! >%s; exit 0" % self.pidfile)
        h = self.harness(fsfreeze_hook=hook, fsfreeze_hook_timeout=0)
        self.assertEqual(h.call("guest-fsfreeze-freeze"), 2)
        self.assertEqual(h.call("guest-fsfreeze-thaw"), 2)
        self.assertEqual(self.hook_calls(), ["freeze 0", "thaw 0"])
        with open(self.pidfile) as f:
            self.assertFalse(process_exited(int(f.read())))      # left alone

    def test_hook_printing_10_mib(self):
        h = self.harness(fsfreeze_hook=self.hook("head -c 10485760 /dev/zero"))
        self.assertEqual(h.call("guest-fsfreeze-freeze"), 2)
        self.assertEqual(h.call("guest-fsfreeze-thaw"), 2)
        self.assertEqual(self.hook_calls(), ["freeze 0", "thaw 0"])

    def test_hook_stuck_on_a_frozen_file_system_does_not_hang_the_agent(self):
        # Its write to the xfs, frozen behind the agent's back (not in its mount table), sleeps
        # in the kernel where SIGKILL cannot reach it: the agent waits HELPER_KILL_WAIT for it
        # to die, then reports it and goes on.
        self.write_mountinfo([self.ext4.mountinfo_line(40)])
        hook = self.hook('[ "$1" = thaw ] && echo x >%s/stuck; exit 0' % self.xfs.path)
        h = self.harness(fsfreeze_hook=hook, fsfreeze_hook_timeout=1)
        self.assertEqual(h.call("guest-fsfreeze-freeze-list", mountpoints=["/mnt/ext4"]), 1)
        fd = os.open(self.xfs.path, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, qga_mini.FIFREEZE, 0)    # frozen behind the agent's back
        finally:
            os.close(fd)
        with unittest.mock.patch.object(qga_mini, "HELPER_KILL_WAIT", 1):
            self.assertEqual(h.error("guest-fsfreeze-thaw"), (
                "GenericError", "fsfreeze hook '%s' did not finish 'thaw' within 1 seconds and "
                "was killed with its process group (it is stuck in the kernel and has not died "
                "yet); the file systems were thawed before it ran" % hook))
        self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.xfs.thaw()

    # -- the watchdog ------------------------------------------------------------------------

    def test_no_watchdog_by_default(self):
        h = self.harness()
        h.call("guest-fsfreeze-freeze")
        self.assertEqual((h.agent.timers, h.agent.freeze_watchdog), ([], None))
        h.call("guest-fsfreeze-thaw")

    def test_watchdog_thaws_when_the_host_does_not(self):
        h = self.harness(freeze_timeout=0.5, fsfreeze_hook=self.hook("exit 0"))
        self.assertEqual(h.call("guest-fsfreeze-freeze"), 2)
        writer = self.ext4.writer()
        deadline = time.monotonic() + 10
        while h.call("guest-fsfreeze-status") == "frozen" and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.assertEqual(wait_for(writer, 10), 0)
        self.assertEqual(self.hook_calls(), ["freeze 0", "thaw 0"])

    def test_watchdog_is_cancelled_by_a_thaw(self):
        h = self.harness(freeze_timeout=0.3)
        h.call("guest-fsfreeze-freeze")
        h.call("guest-fsfreeze-thaw")
        self.assertEqual(h.agent.timers, [])
        h.call("guest-fsfreeze-freeze-list", mountpoints=["/mnt/ext4"])
        self.assertEqual(len(h.agent.timers), 1)
        h.call("guest-fsfreeze-thaw")

    # -- fstrim --------------------------------------------------------------------------------

    def test_fstrim_reports_trimmed_bytes_per_path_in_reverse_mount_order(self):
        h = self.harness()
        paths = h.call("guest-fstrim")["paths"]
        self.assertEqual([p["path"] for p in paths], ["/mnt/xfs", "/mnt/ext4"])
        for result in paths:
            self.assertNotIn("error", result)
            self.assertGreater(result["trimmed"], 0)
            self.assertGreaterEqual(result["minimum"], 0)
        self.assertEqual(list(paths[0]), ["minimum", "path", "trimmed"])

    def test_fstrim_errors_are_per_path(self):
        self.write_mountinfo(["39 1 7:250 / /mnt/missing rw - ext4 /dev/loop250 rw",
                              self.ext4.mountinfo_line(40)])
        h = self.harness()
        paths = h.call("guest-fstrim", minimum=1 << 40)["paths"]
        self.assertEqual(paths, [
            {"path": "/mnt/ext4", "error": "failed to trim: Invalid argument"},
            {"path": "/mnt/missing", "error": "failed to open: No such file or directory"}])
        paths = h.call("guest-fstrim", minimum=4096)["paths"]
        self.assertIn("trimmed", paths[0])


@unittest.skipUnless(os.geteuid() == 0, "needs root (loop devices, mount, FIFREEZE)")
class FrozenProcessTest(unittest.TestCase):
    """The real agent process: signals, restarts and exit while frozen (freeze-list only)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="qga-freeze-proc-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.fs = LoopFs(self.tmp, self.tmp, "/mnt", "ext4", 32)
        self.addCleanup(self.fs.close)
        self.statedir = os.path.join(self.tmp, "state")
        self.marker = os.path.join(self.statedir, "qga.state.isfrozen")

    def agent(self):
        proc = AgentProcess(statedir=self.statedir)
        self.addCleanup(proc.close)
        return proc

    def test_sigterm_ignored_while_frozen_and_restart_comes_up_frozen(self):
        first = self.agent()
        client = first.connect()
        self.assertEqual(client.call("guest-fsfreeze-freeze-list", mountpoints=[self.fs.path]), 1)
        first.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertIsNone(first.proc.poll(), "the agent died holding a freeze")
        first.proc.kill()                          # dies frozen: the marker stays
        first.proc.wait(10)
        self.assertTrue(os.path.exists(self.marker))
        os.unlink(os.path.join(self.statedir, "qga.state"))

        second = self.agent()
        client = second.connect()
        self.assertEqual(client.call("guest-fsfreeze-status"), "frozen")
        self.assertEqual(client.error("guest-get-fsinfo"),
                         ("CommandNotFound", FROZEN % "guest-get-fsinfo"))
        self.assertFalse(os.path.exists(os.path.join(self.statedir, "qga.state")))
        writer = self.fs.writer()
        self.assertIsNone(wait_for(writer, 0.5))   # still frozen from the first agent
        self.assertEqual(client.call("guest-fsfreeze-thaw"), 1)
        self.assertEqual(wait_for(writer, 10), 0)
        self.assertFalse(os.path.exists(self.marker))
        client.call("guest-get-fsinfo")
        self.assertEqual(second.stop(), 0)         # and SIGTERM works again

    def test_watchdog_covers_a_freeze_inherited_at_start_up(self):
        fd = os.open(self.fs.path, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, qga_mini.FIFREEZE, 0)      # as a previous agent left it
        finally:
            os.close(fd)
        os.makedirs(self.statedir)
        open(self.marker, "w").close()
        writer = self.fs.writer()
        agent = AgentProcess("--freeze-timeout", "1.5", statedir=self.statedir)
        self.addCleanup(agent.close)
        client = agent.connect()
        self.assertEqual(client.call("guest-fsfreeze-status"), "frozen")
        self.assertEqual(wait_for(writer, 10), 0)
        self.assertEqual(client.call("guest-fsfreeze-status"), "thawed")
        self.assertFalse(os.path.exists(self.marker))

    def test_exit_while_frozen_thaws(self):
        # stdio: EOF on stdin ends the agent, still frozen; its exit cleanup must thaw.
        proc = subprocess.Popen([PYTHON, AGENT, "-m", "stdio", "-t", self.statedir],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        self.addCleanup(stop_process, proc)
        request = {"execute": "guest-fsfreeze-freeze-list",
                   "arguments": {"mountpoints": [self.fs.path]}}
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        proc.stdin.flush()
        self.assertEqual(json.loads(proc.stdout.readline().decode()), {"return": 1})
        writer = self.fs.writer()
        self.assertIsNone(wait_for(writer, 0.5))
        proc.stdin.close()
        self.assertEqual(proc.wait(10), 0)
        self.assertEqual(wait_for(writer, 10), 0)
        self.assertFalse(os.path.exists(self.marker))


class FreezeWithoutFilesystemsTest(unittest.TestCase):
    """Paths that need no root: nothing on the mount list can be opened or frozen."""

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="qga-freeze-fixture-")
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        os.makedirs(self.root + "/proc/self")
        with open(self.root + "/proc/self/mountinfo", "w") as f:
            f.write("30 1 7:250 / /absent rw - ext4 /dev/loop250 rw\n")

    def test_freeze_error_and_thaw_of_nothing(self):
        with AgentHarness(host_root=self.root) as h:
            self.assertEqual(h.error("guest-fsfreeze-freeze"),
                             ("GenericError", "failed to open /absent: No such file or "
                              "directory"))
            self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
            self.assertEqual(h.call("guest-fsfreeze-thaw"), 0)
            self.assertEqual(h.call("guest-fsfreeze-freeze-list", mountpoints=["/x"]), 0)
            self.assertEqual(h.error("guest-fsfreeze-freeze-list", mountpoints=[1]),
                             ("GenericError", "Invalid parameter type for 'mountpoints[0]', "
                              "expected: string"))

    def test_no_mount_table(self):
        os.unlink(self.root + "/proc/self/mountinfo")
        with AgentHarness(host_root=self.root) as h:
            for name in ("guest-fsfreeze-freeze", "guest-fsfreeze-thaw", "guest-fstrim"):
                self.assertEqual(h.error(name), ("GenericError", "failed to open mtab file: "
                                                 "'/proc/self/mounts'"))
            self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")

    def test_hook_that_cannot_be_executed_fails_with_status_1(self):
        # access(X_OK) passes for a directory; the exec then fails, and qemu-ga's child
        # exits 1.  Nothing is frozen: the freeze hook runs first.
        with AgentHarness(host_root=self.root, fsfreeze_hook=self.root) as h:
            self.assertEqual(h.error("guest-fsfreeze-freeze"),
                             ("GenericError", "fsfreeze hook has failed with status 1"))
            self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")

    def write_hook(self, mode, uid=None):
        path = os.path.join(self.root, "hook")
        with open(path, "w") as f:
            f.write("#!/bin/sh\necho ran >>%s/hook-ran\n" % self.root)
        os.chmod(path, mode)
        if uid is not None:
            os.chown(path, uid, uid)
        return path

    def test_hook_others_can_write_is_refused(self):
        for mode in (0o777, 0o775, 0o757):
            with self.subTest(mode=oct(mode)):
                hook = self.write_hook(mode)
                with AgentHarness(host_root=self.root, fsfreeze_hook=hook) as h:
                    self.assertEqual(h.error("guest-fsfreeze-freeze"), (
                        "GenericError", "refusing fsfreeze hook '%s': mode %04o lets other "
                        "users write it" % (hook, mode)))
                    self.assertEqual(h.call("guest-fsfreeze-status"), "thawed")
        self.assertFalse(os.path.exists(os.path.join(self.root, "hook-ran")))

    @unittest.skipUnless(os.geteuid() == 0, "needs root to give a file to another user")
    def test_hook_of_another_user_is_refused(self):
        hook = self.write_hook(0o755, uid=4242)
        with AgentHarness(host_root=self.root, fsfreeze_hook=hook) as h:
            self.assertEqual(h.error("guest-fsfreeze-freeze"), (
                "GenericError", "refusing fsfreeze hook '%s': it is owned by uid 4242 (mode "
                "0755), neither root nor the agent's user" % hook))
        self.assertFalse(os.path.exists(os.path.join(self.root, "hook-ran")))

    def test_fstrim_open_error(self):
        with AgentHarness(host_root=self.root) as h:
            self.assertEqual(h.call("guest-fstrim"), {"paths": [
                {"path": "/absent", "error": "failed to open: No such file or directory"}]})


if __name__ == "__main__":
    unittest.main()
