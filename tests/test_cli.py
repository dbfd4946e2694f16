"""The command line, the config file, --dump-conf, the state dir, daemon mode, signals."""
import os
import signal
import subprocess
import tempfile
import time
import unittest

from tests.support import AGENT, PYTHON, AgentProcess, qga_mini, stop_process
from tests.system_support import QEMU_GA

TEST_QGA_CONFIG = """[general]
daemon=false
method=virtio-serial
path=/path/to/org.qemu.guest_agent.0
pidfile=/var/foo/qemu-ga.pid
statedir=/var/state
verbose=true
block-rpcs=guest-ping;guest-get-time
"""


def agent(*args, env=None):
    """Run qga_mini.py to completion; (exit status, stdout, stderr)."""
    proc = subprocess.run([PYTHON, AGENT] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, timeout=30, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


class Options(unittest.TestCase):
    def test_version(self):
        status, out, _ = agent("--version")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("QEMU Guest Agent 7.2.22"))
        self.assertEqual(agent("-V")[1], out)

    def test_help(self):
        status, out, _ = agent("-h")
        self.assertEqual(status, 0)
        for option in ("--method", "--block-rpcs", "--fsfreeze-hook", "--dump-conf"):
            self.assertIn(option, out)

    def test_block_help_lists_commands_in_registration_order(self):
        status, out, _ = agent("-b", "help")
        self.assertEqual(status, 0)
        self.assertEqual(out.split(), [c.name for c in qga_mini.registered_commands()])
        self.assertEqual(agent("-a", "?")[1], out)

    def test_bad_option_is_one_line_and_exit_1(self):
        for args, text in ((["-Z"], "invalid option -- 'Z'"),
                           (["--bogus"], "unrecognized option '--bogus'"),
                           (["-m"], "option requires an argument -- 'm'"),
                           (["-m", "unix-listen"], "must specify a path for this channel"),
                           (["-m", "carrier-pigeon", "-p", "x"],
                            "unsupported channel method/type: carrier-pigeon")):
            status, out, err = agent(*args)
            self.assertEqual(status, 1, args)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn(text, err)
            self.assertNotIn("Traceback", err)

    def test_long_option_prefixes_and_attached_values(self):
        status, out, _ = agent("--meth=unix-listen", "--path", "/x", "--fsfreeze-hook=/h", "-D")
        self.assertEqual(status, 0)
        self.assertIn("method=unix-listen\npath=/x\n", out)
        self.assertIn("fsfreeze-hook=/h\n", out)

    def test_F_takes_only_an_attached_argument(self):
        out = agent("-F", "/ignored", "-D")[1]
        self.assertIn("fsfreeze-hook=/etc/qemu/fsfreeze-hook\n", out)
        self.assertIn("fsfreeze-hook=/my/hook\n", agent("-F/my/hook", "-D")[1])


class ConfigFile(unittest.TestCase):
    def write(self, text):
        fd, path = tempfile.mkstemp()
        os.write(fd, text.encode())
        os.close(fd)
        self.addCleanup(os.unlink, path)
        return path

    def test_upstream_config_test(self):
        # test-qga's /qga/config: only QGA_CONF in the environment, nothing on stderr.
        status, out, err = agent("-D", env={"QGA_CONF": self.write(TEST_QGA_CONFIG)})
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "[general]\ndaemon=false\nmethod=virtio-serial\n"
                              "path=/path/to/org.qemu.guest_agent.0\n"
                              "pidfile=/var/foo/qemu-ga.pid\nstatedir=/var/state\n"
                              "verbose=true\nretry-path=false\n"
                              "block-rpcs=guest-ping;guest-get-time\n")

    def test_default_dump(self):
        out = agent("-D", env={"QGA_CONF": self.write("")})[1]
        self.assertEqual(out, "[general]\ndaemon=false\nmethod=virtio-serial\n"
                              "path=/dev/virtio-ports/org.qemu.guest_agent.0\n"
                              "pidfile=/var/run/qemu-ga.pid\nstatedir=/var/run\n"
                              "verbose=false\nretry-path=false\nblock-rpcs=\n")

    def test_command_line_wins_and_lists_accumulate(self):
        conf = self.write("[general]\nmethod=isa-serial\nblock-rpcs=guest-sync\n")
        out = agent("-m", "unix-listen", "-p", "/s", "-b", "a,b", "-b", "c", "-D",
                    env={"QGA_CONF": conf})[1]
        self.assertIn("method=unix-listen\n", out)
        self.assertIn("block-rpcs=guest-sync,b,a,c\n", out)

    def test_semicolon_list_blocks_nothing(self):
        conf = self.write("[general]\nblock-rpcs=guest-ping;guest-info\n")
        config, _ = qga_mini.build_config(["-m", "unix-listen", "-p", "/s"],
                                          {"QGA_CONF": conf}, qga_mini.Log())
        self.assertEqual(config.block_rpcs, ["guest-ping;guest-info"])

    def test_syntax_error_and_missing_file(self):
        status, _, err = agent("-D", env={"QGA_CONF": self.write("[general]\nnot a pair\n")})
        self.assertEqual(status, 1)
        self.assertIn("error loading configuration from path", err)
        status, _, err = agent("-c", "/nonexistent/qga.conf", "-D")
        self.assertEqual(status, 1)
        self.assertIn("No such file or directory", err)
        status, _, err = agent("-D", env={"QGA_CONF": self.write("[general]\ndaemon=maybe\n")})
        self.assertEqual(status, 1)

    def test_missing_QGA_CONF_file_is_ignored_as_qemu_ga_7_2(self):
        # Only -c (qemu-ga 10.x) makes the file required; -c also wins over $QGA_CONF.
        env = {"QGA_CONF": "/nonexistent/qga.conf"}
        status, out, err = agent("-D", env=env)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, agent("-D", env={"QGA_CONF": self.write("")})[1])
        if QEMU_GA:
            oracle = subprocess.run([QEMU_GA, "-D"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    timeout=30)
            self.assertEqual((oracle.returncode, oracle.stdout.decode(), oracle.stderr),
                             (0, out, b""))
        conf = self.write("[general]\nmethod=isa-serial\n")
        self.assertIn("method=isa-serial\n", agent("-c", conf, "-D", env=env)[1])
        status, _, err = agent("-c", "/nonexistent/other.conf", "-D", env={"QGA_CONF": conf})
        self.assertEqual(status, 1)
        self.assertIn("error loading configuration from path: /nonexistent/other.conf, No such "
                      "file or directory", err)

    def test_config_others_can_write_is_refused_in_one_line(self):
        for mode in (0o666, 0o620, 0o602):
            with self.subTest(mode=oct(mode)):
                conf = self.write("[general]\nmethod=isa-serial\n")
                os.chmod(conf, mode)
                for env, args in (({"QGA_CONF": conf}, ["-D"]), ({}, ["-c", conf, "-D"])):
                    status, out, err = agent(*args, env=env)
                    self.assertEqual((status, out), (1, ""))
                    self.assertEqual(err, "qga_mini.py: refusing configuration file '%s': mode "
                                     "%04o lets other users write it\n" % (conf, mode))

    @unittest.skipUnless(os.geteuid() == 0, "needs root to give a file to another user")
    def test_config_of_another_user_is_refused(self):
        conf = self.write("[general]\n")
        os.chown(conf, 4242, 4242)
        status, out, err = agent("-D", env={"QGA_CONF": conf})
        self.assertEqual(status, 1)
        self.assertEqual(err, "qga_mini.py: refusing configuration file '%s': it is owned by "
                         "uid 4242 (mode 0600), neither root nor the agent's user\n" % conf)
        self.assertEqual(agent("-D", env={"QGA_CONF": "/dev/null"})[0], 0)   # not judged

    def test_fsfreeze_hook_timeout_option_key_and_dump(self):
        self.assertNotIn("fsfreeze-hook-timeout", agent("-D", "-F")[1])     # the default, 60
        out = agent("--fsfreeze-hook-timeout", "0", "-D")[1]
        self.assertTrue(out.endswith("block-rpcs=\nfsfreeze-hook-timeout=0\n"), out)
        conf = self.write("[general]\nfsfreeze-hook-timeout=2.5\n")
        self.assertIn("fsfreeze-hook-timeout=2.5\n", agent("-D", env={"QGA_CONF": conf})[1])
        self.assertIn("fsfreeze-hook-timeout=7\n",
                      agent("--fsfreeze-hook-t=7", "-D", env={"QGA_CONF": conf})[1])
        for bad in ("-1", "abc", "inf", "nan"):
            status, out, err = agent("--fsfreeze-hook-timeout", bad, "-D")
            self.assertEqual((status, out), (1, ""))
            self.assertEqual(err, "qga_mini.py: invalid --fsfreeze-hook-timeout '%s': a number "
                             "of seconds, 0 or more\n" % bad)
        # --fsfreeze stays qemu-ga's --fsfreeze-hook, not an ambiguous abbreviation
        self.assertIn("fsfreeze-hook=/etc/qemu/fsfreeze-hook\n", agent("--fsfreeze", "-D")[1])

    def test_deprecated_blacklist_key_replaces_block_rpcs(self):
        conf = self.write("[general]\nblock-rpcs=guest-info\nblacklist=guest-ping\n")
        status, out, err = agent("-D", env={"QGA_CONF": conf})
        self.assertIn("block-rpcs=guest-ping\n", out)
        self.assertIn("deprecated 'blacklist' key", err)


class Running(unittest.TestCase):
    def test_block_and_allow_lists(self):
        # test-qga's /qga/blockedrpcs and /qga/allowedrpcs
        with AgentProcess("-b", "guest-ping,guest-sync") as proc:
            client = proc.connect()
            cls, desc = client.error("guest-ping")
            self.assertEqual(cls, "CommandNotFound")
            self.assertIn("has been disabled", desc)
            self.assertEqual(client.call("guest-info")["version"], qga_mini.__version__)
        with AgentProcess("-a", "guest-ping,guest-sync") as proc:
            client = proc.connect()
            self.assertEqual(client.call("guest-ping"), {})
            self.assertIn("has been disabled", client.error("guest-info")[1])

    def test_sigterm_exits_0_and_removes_the_socket(self):
        proc = AgentProcess()
        try:
            proc.connect().call("guest-ping")
            proc.proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.proc.wait(10), 0)
            self.assertFalse(os.path.exists(proc.path))
        finally:
            proc.close()

    def test_state_dir_is_created_with_the_handle_counter(self):
        with AgentProcess() as proc:
            proc.connect().call("guest-ping")
            with open(os.path.join(proc.statedir, "qga.state")) as f:
                self.assertEqual(f.read(), "[global]\nfd_counter=1000\n")

    def test_starts_frozen_when_the_marker_exists(self):
        statedir = tempfile.mkdtemp()
        open(os.path.join(statedir, "qga.state.isfrozen"), "w").close()
        with AgentProcess("-v", statedir=statedir) as proc:
            proc.connect().call("guest-ping")
            self.assertFalse(os.path.exists(os.path.join(statedir, "qga.state")))
            self.assertIn("previous instance appears to have exited with frozen filesystems",
                          proc.read_stderr())
        os.unlink(os.path.join(statedir, "qga.state.isfrozen"))
        os.rmdir(statedir)

    def test_daemonize_pidfile_lock_and_cleanup(self):
        tmp = tempfile.mkdtemp()
        sock, pidfile = os.path.join(tmp, "s"), os.path.join(tmp, "pid")
        args = [PYTHON, AGENT, "-d", "-m", "unix-listen", "-p", sock, "-f", pidfile,
                "-t", os.path.join(tmp, "state")]
        self.assertEqual(subprocess.call(args, timeout=60), 0)
        deadline = time.time() + 10
        while not (os.path.exists(pidfile) and os.path.getsize(pidfile)):
            self.assertLess(time.time(), deadline)
            time.sleep(0.02)
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(stop_process, pid)
        self.assertEqual(os.stat(pidfile).st_mode & 0o777, 0o600)
        with open("/proc/%d/status" % pid) as f:
            self.assertIn("Umask:\t0077", f.read())
        second = subprocess.run(args[:6] + [sock + "2"] + args[7:], stderr=subprocess.PIPE,
                                timeout=20)
        self.assertIn(b"Cannot lock pid file", second.stderr)
        os.kill(pid, signal.SIGTERM)
        while os.path.exists("/proc/%d" % pid) and time.time() < deadline + 10:
            time.sleep(0.02)
        self.assertFalse(os.path.exists(pidfile))


class SocketActivation(unittest.TestCase):
    def test_listen_fds(self):
        import socket
        tmp = tempfile.mkdtemp()
        path = os.path.join(tmp, "activated.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(1)
        duplicated = listener.fileno() != 3
        if duplicated:
            os.dup2(listener.fileno(), 3)
        script = 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"'
        proc = subprocess.Popen(["sh", "-c", script, PYTHON, AGENT, "-t",
                                 os.path.join(tmp, "state")], pass_fds=(3,),
                                stdin=subprocess.DEVNULL)
        try:
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(10)
            client.connect(path)
            client.sendall(b'{"execute":"guest-sync","arguments":{"id":9}}')
            self.assertEqual(client.recv(100), b'{"return": 9}\n')
            client.close()
        finally:
            stop_process(proc)
            listener.close()
            if duplicated:
                os.close(3)


if __name__ == "__main__":
    unittest.main()
