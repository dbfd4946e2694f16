"""The packaging pieces in contrib/ and the VM test's scripts: syntax, lint and cheap behaviour.

Each check skips when the tool it needs is missing (dash, systemd-analyze, udevadm verify,
shellcheck).  The VM test (tests/vm/run.sh) exercises the init script, the fsfreeze hook and
the initramfs-tools hook again inside a real guest.
"""
import base64
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

from tests.support import PYTHON, STARTED_BY_WRAPPER, stop_process

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRIB = os.path.join(TOP, "contrib")
VM = os.path.join(TOP, "tests", "vm")
AGENT = os.path.join(TOP, "qga_mini.py")
LAUNCHER = os.path.join(CONTRIB, "qga-mini")
WRAPPED = "the image tools copy and re-run sys.executable, which only its root's loader can start"

POSIX_SCRIPTS = [
    "contrib/fsfreeze-hook",
    "contrib/init.d/qga-mini",
    "contrib/openrc/qga-mini",
    "contrib/initramfs-tools/hooks/qga-mini",
    "contrib/initramfs-tools/scripts/init-top/qga-mini",
    "contrib/initramfs-tools/scripts/init-bottom/qga-mini",
    "contrib/dracut/99qga-mini/qga-mini-start.sh",
    "contrib/dracut/99qga-mini/qga-mini-stop.sh",
    "contrib/demo.sh",
    "contrib/qga-mini",
    "contrib/debian/build-deb",
    "contrib/debian/postinst",
    "contrib/debian/prerm",
    "contrib/debian/postrm",
    "tests/vm/guest/rcS",
    "tests/vm/guest/chpasswd",
    "tests/vm/guest/hook-record",
]
BASH_SCRIPTS = ["contrib/dracut/99qga-mini/module-setup.sh", "tests/vm/run.sh", "tests/vm/run-distro.sh"]


def run(argv, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("timeout", 60)
    return subprocess.run(argv, universal_newlines=True, **kw)


def read(path):
    with open(path) as f:
        return f.read()


def need(tool):
    path = shutil.which(tool)
    if not path:
        raise unittest.SkipTest("%s is not installed" % tool)
    return path


class ShellSyntax(unittest.TestCase):
    def test_posix_scripts_parse_in_dash(self):
        dash = need("dash")  # stricter than bash about POSIX syntax
        for rel in POSIX_SCRIPTS:
            with self.subTest(script=rel):
                p = run([dash, "-n", os.path.join(TOP, rel)])
                self.assertEqual(p.returncode, 0, p.stderr)

    def test_bash_scripts_parse(self):
        bash = need("bash")
        for rel in BASH_SCRIPTS:
            with self.subTest(script=rel):
                p = run([bash, "-n", os.path.join(TOP, rel)])
                self.assertEqual(p.returncode, 0, p.stderr)

    def test_shellcheck(self):
        shellcheck = need("shellcheck")
        for rel in POSIX_SCRIPTS + BASH_SCRIPTS:
            with self.subTest(script=rel):
                p = run([shellcheck, "-S", "warning", os.path.join(TOP, rel)])
                self.assertEqual(p.returncode, 0, p.stdout)

    def test_scripts_are_executable(self):
        for rel in POSIX_SCRIPTS + ["contrib/dracut/99qga-mini/module-setup.sh", "contrib/qga-mini-deps"]:
            with self.subTest(script=rel):
                self.assertTrue(os.access(os.path.join(TOP, rel), os.X_OK))


class SystemdUnit(unittest.TestCase):
    UNIT = os.path.join(CONTRIB, "systemd", "qemu-guest-agent.service")

    def test_systemd_analyze_verify(self):
        analyze = need("systemd-analyze")
        p = run([analyze, "verify", self.UNIT])
        # verify reports unknown keys on stderr but still exits 0: want silence.
        self.assertEqual((p.returncode, p.stdout + p.stderr), (0, ""))

    def test_bound_to_the_port_and_runs_the_agent(self):
        text = read(self.UNIT)
        device = r"dev-virtio\x2dports-org.qemu.guest_agent.0.device"
        self.assertIn("BindsTo=" + device, text)
        self.assertIn("After=" + device, text)
        self.assertRegex(text, r"(?m)^ExecStart=-?/usr/lib/qga-mini/qga-mini ")


class UdevRule(unittest.TestCase):
    RULE = os.path.join(CONTRIB, "udev", "99-qga-mini.rules")
    # KEY, KEY{attr}, operator, "value" -- udev's rule grammar in one pattern
    PAIR = re.compile(r'\s*([A-Z_]+)(\{[^}]+\})?\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(,|$)')

    def rules(self):
        with open(self.RULE) as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]

    def test_syntax(self):
        for line in self.rules():
            pos, pairs = 0, []
            while pos < len(line):
                m = self.PAIR.match(line, pos)
                self.assertIsNotNone(m, "bad rule syntax at %r" % line[pos:])
                pairs.append(m.groups()[:4])
                pos = m.end()
            keys = {(k, a, op) for k, a, op, _v in pairs}
            self.assertIn(("SUBSYSTEM", None, "=="), keys)
            self.assertIn(("ATTR", "{name}", "=="), keys)

    def test_starts_the_shipped_unit(self):
        text = " ".join(self.rules())
        self.assertIn('ATTR{name}=="org.qemu.guest_agent.0"', text)
        self.assertIn('TAG+="systemd"', text)
        self.assertRegex(text, r'ENV\{SYSTEMD_WANTS\}\+?="qemu-guest-agent\.service"')

    def test_udevadm_verify(self):
        udevadm = need("udevadm")
        if run([udevadm, "verify", "--help"]).returncode != 0:
            self.skipTest("udevadm has no verify (systemd < 254)")
        p = run([udevadm, "verify", self.RULE])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


class FsfreezeHook(unittest.TestCase):
    """The hook.d runner: order, ignored names, failures, reverse order on thaw, scripts
    others could write.  Run by /bin/sh here; the subclasses run it under dash, busybox sh
    and bash (QEMU 10.0's sample hook breaks under dash)."""

    SHELL = ["sh"]

    def hook_run(self, action):
        return run(self.SHELL + [self.hook, action])

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.log = os.path.join(self.dir, "hook.log")
        with open(os.path.join(CONTRIB, "fsfreeze-hook")) as f:
            text = f.read().replace("LOGFILE=/var/log/qga-fsfreeze-hook.log", "LOGFILE=" + self.log)
        self.hook = os.path.join(self.dir, "fsfreeze-hook")
        with open(self.hook, "w") as f:
            f.write(text)
        os.mkdir(os.path.join(self.dir, "fsfreeze-hook.d"))

    def script(self, name, status=0, executable=True):
        path = os.path.join(self.dir, "fsfreeze-hook.d", name)
        with open(path, "w") as f:
            f.write('#!/bin/sh\necho "%s $1" >>"%s/calls"\nexit %d\n' % (name, self.dir, status))
        os.chmod(path, 0o755 if executable else 0o644)

    def calls(self):
        try:
            with open(os.path.join(self.dir, "calls")) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def test_runs_scripts_in_order_and_reverse_on_thaw(self):
        for name in ("10-db", "20 with space", "30-app"):
            self.script(name)
        self.assertEqual(self.hook_run("freeze").returncode, 0)
        self.assertEqual(self.hook_run("thaw").returncode, 0)
        self.assertEqual(self.calls(), ["10-db freeze", "20 with space freeze", "30-app freeze",
                                        "30-app thaw", "20 with space thaw", "10-db thaw"])
        self.assertIn("finished successfully", read(self.log))

    def test_skips_backups_package_leftovers_and_non_executables(self):
        self.script("10-run")
        for name in ("a~", "b.bak", "c.orig", "d.rpmnew", "e.rpmorig", "f.rpmsave", "g.sample",
                     "h.dpkg-old", "i.dpkg-dist"):
            self.script(name)
        self.script("j-not-executable", executable=False)
        self.assertEqual(self.hook_run("freeze").returncode, 0)
        self.assertEqual(self.calls(), ["10-run freeze"])

    def test_a_failing_script_fails_the_hook_but_the_others_run(self):
        self.script("10-fails", status=3)
        self.script("20-ok")
        p = self.hook_run("freeze")
        self.assertEqual(p.returncode, 3)
        self.assertEqual(self.calls(), ["10-fails freeze", "20-ok freeze"])
        self.assertIn("error: ", read(self.log))

    def test_scripts_others_could_write_are_skipped_and_logged(self):
        for name, mode in (("10-group-writable", 0o775), ("20-world-writable", 0o757),
                           ("30-ok", 0o750)):
            self.script(name)
            os.chmod(os.path.join(self.dir, "fsfreeze-hook.d", name), mode)
        self.assertEqual(self.hook_run("freeze").returncode, 0)
        self.assertEqual(self.hook_run("thaw").returncode, 0)
        self.assertEqual(self.calls(), ["30-ok freeze", "30-ok thaw"])
        log = read(self.log)
        for name, mode in (("10-group-writable", "-rwxrwxr-x"),
                           ("20-world-writable", "-rwxr-xrwx")):
            self.assertIn("skipping %s/fsfreeze-hook.d/%s: mode %s lets other users write it"
                          % (self.dir, name, mode), log)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to give a file to another user")
    def test_scripts_of_another_user_are_skipped_and_logged(self):
        self.script("10-alice")
        self.script("20-root")
        os.chown(os.path.join(self.dir, "fsfreeze-hook.d", "10-alice"), 4242, 4242)
        self.assertEqual(self.hook_run("freeze").returncode, 0)
        self.assertEqual(self.calls(), ["20-root freeze"])
        self.assertIn("skipping %s/fsfreeze-hook.d/10-alice: it is owned by uid 4242 (mode "
                      "-rwxr-xr-x), neither root nor uid 0" % self.dir, read(self.log))

    def test_no_hook_dir_is_success(self):
        os.rmdir(os.path.join(self.dir, "fsfreeze-hook.d"))
        self.assertEqual(self.hook_run("freeze").returncode, 0)


class FsfreezeHookDash(FsfreezeHook):
    def setUp(self):
        self.SHELL = [need("dash")]
        FsfreezeHook.setUp(self)


class FsfreezeHookBusybox(FsfreezeHook):
    def setUp(self):
        self.SHELL = [need("busybox"), "sh"]
        FsfreezeHook.setUp(self)


class FsfreezeHookBash(FsfreezeHook):
    def setUp(self):
        self.SHELL = [need("bash"), "--posix"]
        FsfreezeHook.setUp(self)


class InitScript(unittest.TestCase):
    SCRIPT = os.path.join(CONTRIB, "init.d", "qga-mini")

    def test_status_without_agent_and_usage(self):
        p = run(["sh", self.SCRIPT, "status"])
        self.assertEqual(p.returncode, 3)
        self.assertIn("not running", p.stdout)
        self.assertEqual(run(["sh", self.SCRIPT, "bogus"]).returncode, 2)


class Demo(unittest.TestCase):
    def test_demo_runs_the_agent_and_the_client_and_cleans_up(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        sock, state = os.path.join(tmp, "s"), os.path.join(tmp, "state")
        p = run(["sh", os.path.join(CONTRIB, "demo.sh")],
                env=dict(os.environ, QGA_DEMO_SOCK=sock, QGA_DEMO_STATE=state))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        for text in ("client %s guest-get-osinfo" % sock, '"host-name": ', '"version": ',
                     "(exit status 1: an error reply)"):
            self.assertIn(text, p.stdout)
        self.assertIn("failed to lookup user 'nobody-here'", p.stderr)
        self.assertFalse(os.path.exists(sock) or os.path.exists(state))


@unittest.skipUnless(sys.platform.startswith("linux"), "Linux image tools")
class ImageBuilders(unittest.TestCase):
    """The initramfs-tools hook (standalone mode) and the dracut module with stand-in dracut."""

    @unittest.skipIf(STARTED_BY_WRAPPER, WRAPPED)
    def test_deps_lists_the_stdlib_the_agent_needs(self):
        p = run([PYTHON, os.path.join(CONTRIB, "qga-mini-deps"), AGENT])
        self.assertEqual(p.returncode, 0, p.stderr)
        files = p.stdout.split()
        names = {os.path.basename(f) for f in files}
        for name in ("os.py", "encodings", "json"):
            self.assertTrue(any(n.startswith(name) for n in names) or
                            any("/%s/" % name in f for f in files), name)
        self.assertFalse([f for f in files if "sitecustomize" in f or "site-packages" in f])

    @unittest.skipIf(STARTED_BY_WRAPPER, WRAPPED)
    def test_initramfs_tools_hook_standalone_tree_runs_the_agent(self):
        need("ldd")
        dest = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, dest)
        python = os.path.realpath(sys.executable)
        env = dict(os.environ, DESTDIR=dest, QGA_MINI_STANDALONE="1", QGA_MINI_AGENT=AGENT,
                   QGA_MINI_LAUNCHER=LAUNCHER, QGA_MINI_PYTHON=python,
                   QGA_MINI_DEPS=os.path.join(CONTRIB, "qga-mini-deps"))
        p = run(["sh", os.path.join(CONTRIB, "initramfs-tools", "hooks", "qga-mini")], env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        agent = os.path.join(dest, "usr/lib/qga-mini/qga_mini.py")
        self.assertTrue(os.path.exists(agent))
        # The copied interpreter finds its prefix next to itself, so it runs on the
        # copied standard library only: the agent must start from that subset.
        py = os.path.join(dest, "usr/bin/python3")
        p = run([py, "-c", "import sys; print(sys.prefix)"])
        self.assertEqual(p.stdout.strip(), os.path.join(dest, "usr"), p.stderr)
        p = run([py, agent, "--version"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("QEMU Guest Agent", p.stdout)
        # The launcher imports the agent from the bytecode the hook compiled.
        p = run([os.path.join(dest, "usr/lib/qga-mini/qga-mini"), "--version"],
                env=dict(os.environ, QGA_MINI_PYTHON=py, PYTHONVERBOSE="1"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("QEMU Guest Agent", p.stdout)
        self.assertIn("__pycache__/qga_mini.%s.pyc matches " % sys.implementation.cache_tag,
                      p.stderr)

    def test_every_start_script_runs_the_launcher(self):
        for rel in ("contrib/init.d/qga-mini", "contrib/openrc/qga-mini",
                    "contrib/systemd/qemu-guest-agent.service",
                    "contrib/initramfs-tools/scripts/init-top/qga-mini",
                    "contrib/dracut/99qga-mini/qga-mini-start.sh", "tests/vm/guest/rcS"):
            with self.subTest(script=rel):
                text = read(os.path.join(TOP, rel))
                self.assertIn("/usr/lib/qga-mini/qga-mini", text)
                self.assertNotRegex(text, r"python3 \S*qga_mini\.py")


class Launcher(unittest.TestCase):
    """contrib/qga-mini, run beside a copy of the agent."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        for path in (LAUNCHER, AGENT):
            shutil.copy2(path, self.dir)
        self.launcher = os.path.join(self.dir, "qga-mini")

    def test_options_reach_the_agent_which_names_itself(self):
        p = run([self.launcher, "--bogus"])
        self.assertEqual(p.returncode, 1)
        self.assertTrue(p.stderr.startswith("qga_mini.py: unrecognized option '--bogus'"),
                        p.stderr)
        self.assertIn("client SOCKET COMMAND", run([self.launcher, "--help"]).stdout)

    def test_a_symlink_to_the_launcher_finds_the_agent(self):
        # the .deb's /usr/sbin/qemu-ga is such a link
        sbin = os.path.join(self.dir, "sbin")
        os.mkdir(sbin)
        os.symlink("../qga-mini", os.path.join(sbin, "qemu-ga"))
        p = run([os.path.join(sbin, "qemu-ga"), "--version"],
                env=dict(os.environ, QGA_MINI_PYTHON=PYTHON))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("(qga-mini ", p.stdout)

    def test_children_do_not_inherit_the_fixed_hash_seed(self):
        env = dict(os.environ, QGA_MINI_PYTHON=PYTHON)
        env.pop("PYTHONHASHSEED", None)
        agent = subprocess.Popen([self.launcher, "-m", "stdio", "-t", self.dir], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.addCleanup(stop_process, agent)
        self.addCleanup(agent.stdin.close)         # end of input: the agent exits by itself

        def call(name, **arguments):
            agent.stdin.write(json.dumps({"execute": name, "arguments": arguments}).encode())
            agent.stdin.flush()
            return json.loads(agent.stdout.readline().decode())["return"]

        pid = call("guest-exec", path="/bin/sh", arg=["-c", 'echo "${PYTHONHASHSEED-unset}"'],
                   **{"capture-output": True})["pid"]
        deadline = time.time() + 10
        status = call("guest-exec-status", pid=pid)
        while not status["exited"] and time.time() < deadline:
            time.sleep(0.05)
            status = call("guest-exec-status", pid=pid)
        self.assertEqual(base64.b64decode(status["out-data"]), b"unset\n")


@unittest.skipUnless(sys.platform.startswith("linux"), "Linux image tools")
class DracutModule(unittest.TestCase):
    def test_dracut_module_installs_agent_python_and_hooks(self):
        bash = need("bash")
        moddir = os.path.join(CONTRIB, "dracut", "99qga-mini")
        initdir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, initdir)
        # Stand-ins for dracut's functions that log their calls.
        script = r"""
            require_binaries() { command -v "$@" >/dev/null; }
            inst_binary() { echo "binary $*"; }
            inst_simple() { echo "simple $*"; [ -z "$2" ] || { mkdir -p "$initdir${2%%/*}"; cp "$1" "$initdir$2"; }; }
            inst_library() { echo "library $*"; }
            inst_hook() { echo "hook $*"; }
            instmods() { echo "mods $*"; }
            moddir=%s
            initdir=%s
            . "$moddir/module-setup.sh"
            check; echo "check $?"
            installkernel
            install
        """ % (moddir, initdir)
        env = dict(os.environ, QGA_MINI_AGENT=AGENT, QGA_MINI_LAUNCHER=LAUNCHER,
                   QGA_MINI_DEPS=os.path.join(CONTRIB, "qga-mini-deps"))
        p = run([bash, "-c", script], env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout.splitlines()
        self.assertIn("check 255", out)  # only when asked for
        self.assertIn("mods virtio_console", out)
        self.assertIn("binary python3 /usr/bin/python3", out)
        self.assertIn("simple %s /usr/lib/qga-mini/qga_mini.py" % AGENT, out)
        self.assertIn("simple %s /usr/lib/qga-mini/qga-mini" % LAUNCHER, out)
        self.assertTrue(any(line.startswith("simple ") and line.endswith("/os.py") for line in out))
        self.assertTrue(any(line.startswith("hook pre-udev 90 ") for line in out))
        self.assertTrue(any(line.startswith("hook cleanup 90 ") for line in out))
        # The agent's bytecode, compiled in the image for the launcher's import (by the
        # image's python3, which need not be the one running the tests).
        self.assertTrue(glob.glob(os.path.join(initdir, "usr/lib/qga-mini/__pycache__/"
                                               "qga_mini.*.pyc")))


if __name__ == "__main__":
    unittest.main()
