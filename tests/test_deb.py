"""The Debian package (make deb): built from the repository, then inspected.

Builds qga-mini_<version>_all.deb with contrib/debian/build-deb into a temporary
directory and checks what dpkg-deb -c / -I / -x show: the files, their modes and
owners, the control fields, the maintainer scripts (sh -n), that the extracted
/usr/sbin/qemu-ga runs the agent and that postinst's compile step writes bytecode
the launcher uses.  lintian runs when installed.  Installing, swapping out
qemu-guest-agent and purging happen in a real guest: make vm-test-distro.
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from tests.support import PYTHON

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN = os.path.join(TOP, "contrib", "debian")
BUILD = os.path.join(DEBIAN, "build-deb")


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=kw.pop("timeout", 120), **kw)


def project_version():
    with open(os.path.join(TOP, "qga_mini.py")) as f:
        return re.search(r'^__project_version__ = "([^"]+)"', f.read(), re.M).group(1)


# path -> (type and mode as dpkg-deb -c prints them, link target or None)
EXPECTED = {
    "./usr/lib/qga-mini/qga_mini.py": ("-rw-r--r--", None),
    "./usr/lib/qga-mini/qga-mini": ("-rwxr-xr-x", None),
    "./usr/lib/qga-mini/qga-mini-deps": ("-rwxr-xr-x", None),
    "./usr/sbin/qemu-ga": ("lrwxrwxrwx", "../lib/qga-mini/qga-mini"),
    "./lib/systemd/system/qemu-guest-agent.service": ("-rw-r--r--", None),
    "./lib/udev/rules.d/99-qga-mini.rules": ("-rw-r--r--", None),
    "./etc/qemu/fsfreeze-hook": ("-rwxr-xr-x", None),
    "./etc/qemu/fsfreeze-hook.d/": ("drwxr-xr-x", None),
    "./etc/default/qga-mini": ("-rw-r--r--", None),
    "./usr/share/doc/qga-mini/copyright": ("-rw-r--r--", None),
    "./usr/share/doc/qga-mini/changelog.gz": ("-rw-r--r--", None),
    "./usr/share/lintian/overrides/qga-mini": ("-rw-r--r--", None),
}


@unittest.skipUnless(shutil.which("dpkg-deb"), "dpkg-deb is not installed")
class DebPackage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="qga-deb-")
        p = run(["sh", BUILD, cls.dir])
        if p.returncode != 0:
            shutil.rmtree(cls.dir)
            raise AssertionError("build-deb failed: " + p.stderr)
        cls.deb = p.stdout.strip()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_name_carries_the_agents_version(self):
        self.assertEqual(os.path.basename(self.deb), "qga-mini_%s_all.deb" % project_version())

    def test_files_modes_and_owners(self):
        listing = run(["dpkg-deb", "-c", self.deb]).stdout.splitlines()
        seen = {}
        for line in listing:
            fields = line.split()
            perms, owner, path = fields[0], fields[1], fields[5]
            self.assertEqual(owner, "root/root", line)
            seen[path] = (perms, fields[7] if len(fields) > 7 and fields[6] == "->" else None)
        for path, want in EXPECTED.items():
            self.assertEqual(seen.get(path), want, path)
        # Nothing the package does not mean to ship (no bytecode, no build leftovers).
        dirs = {p for p in seen if p.endswith("/")}
        self.assertEqual(set(seen) - dirs - set(EXPECTED), set())

    def test_control_fields(self):
        control = run(["dpkg-deb", "-f", self.deb]).stdout
        fields = dict(re.findall(r"^(\S+): (.*)$", control, re.M))
        self.assertEqual(fields["Package"], "qga-mini")
        self.assertEqual(fields["Version"], project_version())
        self.assertEqual(fields["Architecture"], "all")
        self.assertEqual(fields["Depends"], "python3 (>= 3.6)")
        for key in ("Provides", "Conflicts", "Replaces"):
            self.assertEqual(fields[key], "qemu-guest-agent", key)
        self.assertRegex(fields["Installed-Size"], r"^\d+$")

    def test_control_members_and_scripts(self):
        info = run(["dpkg-deb", "-I", self.deb]).stdout
        for member in ("control", "md5sums", "conffiles", "postinst", "prerm", "postrm"):
            self.assertRegex(info, r"\n\s+\d+ bytes,\s+\d+ lines\s+\*?\s+%s\b" % member)
        work = os.path.join(self.dir, "control")
        run(["dpkg-deb", "-e", self.deb, work])
        with open(os.path.join(work, "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/default/qga-mini", "/etc/qemu/fsfreeze-hook"])
        shells = [s for s in ("sh", "dash") if shutil.which(s)]
        for script in ("postinst", "prerm", "postrm"):
            path = os.path.join(work, script)
            self.assertTrue(os.access(path, os.X_OK), script)
            for shell in shells:
                p = run([shell, "-n", path])
                self.assertEqual(p.returncode, 0, "%s -n %s: %s" % (shell, script, p.stderr))
        with open(os.path.join(work, "postinst")) as f:
            self.assertIn("--compile", f.read())
        with open(os.path.join(work, "prerm")) as f:
            self.assertIn("rm -rf /usr/lib/qga-mini/__pycache__", f.read())

    def test_unit_runs_the_launcher_with_the_default_options(self):
        root = os.path.join(self.dir, "x1")
        run(["dpkg-deb", "-x", self.deb, root])
        with open(os.path.join(root, "lib/systemd/system/qemu-guest-agent.service")) as f:
            unit = f.read()
        self.assertIn("EnvironmentFile=-/etc/default/qga-mini", unit)
        self.assertRegex(unit, r"(?m)^ExecStart=-/usr/lib/qga-mini/qga-mini .*\$QGA_MINI_ARGS$")
        with open(os.path.join(root, "etc/default/qga-mini")) as f:
            self.assertRegex(f.read(), r'(?m)^QGA_MINI_ARGS="-F"$')

    def test_qemu_ga_path_runs_the_agent_from_postinsts_bytecode(self):
        root = os.path.join(self.dir, "x2")
        run(["dpkg-deb", "-x", self.deb, root])
        lib = os.path.join(root, "usr/lib/qga-mini")
        # postinst's compile step, pointed at the extracted tree
        p = run([PYTHON, os.path.join(lib, "qga-mini-deps"), "--compile",
                 os.path.join(lib, "qga_mini.py"), "/usr/lib/qga-mini/qga_mini.py"])
        self.assertEqual(p.returncode, 0, p.stderr)
        env = dict(os.environ, QGA_MINI_PYTHON=PYTHON, PYTHONVERBOSE="1")
        p = run([os.path.join(root, "usr/sbin/qemu-ga"), "--version"], env=env)
        self.assertEqual(p.returncode, 0, p.stderr[-500:])
        self.assertRegex(p.stdout, r"^QEMU Guest Agent \S+ \(qga-mini %s\)" % re.escape(project_version()))
        # python -v names the cached file it used for the agent
        used = re.search(r"qga-mini/__pycache__/qga_mini\.\S+\.pyc matches \S+/qga_mini\.py", p.stderr)
        self.assertTrue(used, "the agent was not loaded from its bytecode")

    def test_lintian_clean_apart_from_documented_overrides(self):
        if not shutil.which("lintian"):
            self.skipTest("lintian is not installed")
        p = run(["lintian", "--display-info", "--pedantic", self.deb], timeout=300)
        tags = [line for line in p.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
        self.assertEqual(tags, [])
        with open(os.path.join(DEBIAN, "lintian-overrides")) as f:
            text = f.read()
        # every override follows a comment that gives its reason
        for block in text.split("\n\n"):
            lines = block.strip().splitlines()
            if any(not line.startswith("#") for line in lines):
                self.assertTrue(lines[0].startswith("#"), "override without reason: %r" % block)


if __name__ == "__main__":
    unittest.main()
