"""The whole suite under every Python we can run here: ``make test-pythons``.

``python -m tests`` (unit tests, property tests, the fuzz-corpus replay and the subprocess and
oracle tests) runs once per interpreter, one interpreter at a time:

- CPython 3.9 from a Debian 11 (bullseye) root and CPython 3.13 from a Debian 13 (trixie) root.
  Each root holds the interpreter's package and its dependencies, extracted by
  ``mmdebstrap --variant=extract`` (no maintainer scripts, no chroot) from the Debian mirror
  apt is configured with, and cached under /var/tmp/qga-mini-pythons/<suite>_<packages>/
  (rebuilt when missing or broken).  The interpreter is started on THIS host by the root's own
  dynamic loader with the root's library directories, so it uses the root's libc and
  standard library (its prefix is found next to the binary) while the tests still see this
  machine: its /proc, /sys, loop devices and the qemu-ga oracle.  A wrapper script per root does
  that, and QGA_MINI_TEST_PYTHON names it so that every agent process a test starts runs under
  the same interpreter as the test.
- this machine's /usr/bin/python3;
- Debian's pypy3 (PyPy, Python 3.9).

Every run has PYTHONWARNINGS=error::DeprecationWarning, inherited by the agent processes, so
an API a newer Python deprecates fails here first.  Each run's full output goes to
CACHE/logs/<name>.log; failures and skip reasons are echoed.  The summary has one line per
interpreter with its version and counts; the exit status is 1 when any interpreter failed or
could not be set up.

    /usr/bin/python3 -m tests.pythons [--only bullseye,pypy3] [--cache DIR] [--mirror URL]
"""
import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = "/var/tmp/qga-mini-pythons"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
RUN_TIMEOUT = 1200          # one interpreter's whole suite; a hung run is killed
SETUP_TIMEOUT = 600         # one root's download and extraction
WARNINGS = "error::DeprecationWarning"
COUNTS = re.compile(r"^tests: (\d+) passed, (\d+) failed, (\d+) skipped$", re.M)


class Root(object):
    """A Debian suite's interpreter, extracted into a cached root."""

    def __init__(self, name, suite, binary, packages):
        self.name, self.suite, self.binary, self.packages = name, suite, binary, packages
        self.origin = "Debian %s root" % suite

    def directory(self, cache):
        return os.path.join(cache, "%s_%s" % (self.suite, "+".join(self.packages)))

    def prepare(self, cache, mirror):
        """The wrapper's path, building the root first when the cache has none that works."""
        top = self.directory(cache)
        wrapper = os.path.join(top, "python")
        if os.path.exists(wrapper) and check_interpreter(wrapper, os.path.join(top, "root")):
            return wrapper
        shutil.rmtree(top, ignore_errors=True)
        building = "%s.building-%d" % (top, os.getpid())
        shutil.rmtree(building, ignore_errors=True)
        try:
            self.build(building, mirror)
            write_wrapper(os.path.join(building, "python"), os.path.join(top, "root"),
                          self.binary, os.path.join(building, "root"))
            try:
                os.rename(building, top)
            except OSError:
                if not os.path.isdir(top):      # else another run has just put it there
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
        if not check_interpreter(wrapper, os.path.join(top, "root")):
            raise SetupError("the %s interpreter does not start from %s" % (self.suite, top))
        # Debian compiles the standard library when it installs the package; extraction
        # does not, so do it once here rather than in every agent start.
        run_bounded([wrapper, "-m", "compileall", "-q", "-j", "1", "-x", r"/(test|tests)/",
                     os.path.join(top, "root", "usr", "lib", os.path.basename(self.binary))],
                    SETUP_TIMEOUT)
        return wrapper

    def build(self, directory, mirror):
        if not shutil.which("mmdebstrap"):
            raise SetupError("mmdebstrap is not installed (apt-get install mmdebstrap)")
        os.makedirs(directory)
        cmd = ["mmdebstrap", "--quiet", "--variant=extract", "--skip=check/empty",
               "--include=" + ",".join(self.packages), self.suite,
               os.path.join(directory, "root"), "deb %s %s main" % (mirror, self.suite)]
        status, output = run_bounded(cmd, SETUP_TIMEOUT)
        if status != 0:
            raise SetupError("mmdebstrap %s from %s failed: %s"
                             % (self.suite, mirror, output.strip().splitlines()[-1:]))


class Installed(object):
    """An interpreter this machine has."""

    def __init__(self, name, path, origin, package):
        self.name, self.path, self.origin, self.package = name, path, origin, package

    def prepare(self, cache, mirror):
        if not os.path.exists(self.path):
            raise SetupError("%s is missing (apt-get install %s)" % (self.path, self.package))
        return self.path


INTERPRETERS = [
    Root("bullseye", "bullseye", "/usr/bin/python3.9", ["python3.9"]),
    Installed("host", "/usr/bin/python3", "this host", "python3"),
    Root("trixie", "trixie", "/usr/bin/python3.13", ["python3.13"]),
    Installed("pypy3", "/usr/bin/pypy3", "Debian 12 package", "pypy3"),
]


class SetupError(Exception):
    """An interpreter that cannot be made ready: one line for the summary."""


def run_bounded(cmd, timeout, **kw):
    """(status, combined output) of cmd; its whole process group is killed at the timeout."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, **kw)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -1, out.decode("utf-8", "replace") + "\n(killed after %d s)" % timeout
    return proc.returncode, out.decode("utf-8", "replace")


def parse_apt_sources(files):
    """The first Debian archive URI that serves ``main``, from the texts of
    /etc/apt/sources.list (one-line format) and sources.list.d/*.sources (deb822)."""
    for text in files:
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and "main" in \
                    fields.get("Components", "").split() and fields.get("Enabled") != "no":
                for suite in fields.get("Suites", "").split():
                    if not suite.endswith(("-security", "-updates", "-backports")):
                        return fields["URIs"].split()[0]
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 4 and words[0] == "deb" and "main" in words[3:] and \
                    not words[2].endswith(("-security", "-updates", "-backports")):
                return words[1]
    return None


def apt_mirror():
    texts = []
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list") +
                                                   glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            with open(path) as f:
                texts.append(f.read())
        except OSError:
            pass
    return parse_apt_sources(texts) or FALLBACK_MIRROR


def write_wrapper(path, root, binary, staged_root):
    """A shell script that starts ``root``'s interpreter with ``root``'s loader and libraries
    (written while the root is still at ``staged_root``; it names its final place)."""
    loaders = sorted(glob.glob(os.path.join(staged_root, "usr/lib/*/ld-linux*.so.*")) +
                     glob.glob(os.path.join(staged_root, "lib/*/ld-linux*.so.*")))
    loaders = [p for p in loaders if os.path.exists(p)]
    if not loaders:
        raise SetupError("no dynamic loader in %s" % staged_root)
    loader = os.path.relpath(loaders[0], staged_root)
    triplet = os.path.basename(os.path.dirname(loader))
    libs = ":".join("$root/%s/%s" % (d, triplet) for d in ("lib", "usr/lib")
                    if os.path.isdir(os.path.join(staged_root, d, triplet)))
    with open(path, "w") as f:
        f.write("#!/bin/sh\n# %s from a Debian root, with its own loader (tests/pythons.py)\n"
                'root=%s\nexec "$root/%s" --library-path "%s" "$root%s" "$@"\n'
                % (os.path.basename(binary), root, loader, libs, binary))
    os.chmod(path, 0o755)


def check_interpreter(python, root):
    """True when ``python`` starts and takes its standard library from ``root``."""
    status, out = run_bounded([python, "-c", "import sys, json; print(sys.prefix)"], 60)
    return status == 0 and out.strip() == os.path.join(root, "usr")


def describe(python):
    """'CPython 3.9.2' or 'PyPy 7.3.11 (Python 3.9.16)'."""
    code = ("import platform, sys; v = getattr(sys, 'pypy_version_info', None); "
            "print(platform.python_implementation(), platform.python_version() if v is None "
            "else '%d.%d.%d (Python %s)' % (v[:3] + (platform.python_version(),)))")
    status, out = run_bounded([python, "-c", code], 60)
    return out.strip() if status == 0 else "unknown version"


def run_suite(python, log_path):
    """(passed, failed, skipped) of ``python -m tests`` or None when it printed no counts."""
    env = dict(os.environ, QGA_MINI_TEST_PYTHON=python, PYTHONWARNINGS=WARNINGS)
    with open(log_path, "wb") as log:
        # Its own process group, to be killed whole; not its own session, which would let a
        # test's pty become the suite's controlling terminal (and its hang-up kill the suite).
        proc = subprocess.Popen([python, "-m", "tests"], cwd=TOP, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=os.setpgrp)
        deadline = time.monotonic() + RUN_TIMEOUT
        for line in proc.stdout:
            log.write(line)
            text = line.decode("utf-8", "replace").rstrip("\n")
            if not text.endswith(" ... ok"):
                print("    " + text, flush=True)
            if time.monotonic() > deadline:
                print("    (killed after %d s)" % RUN_TIMEOUT, flush=True)
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.stdout.close()
        proc.wait()
    with open(log_path, "rb") as log:
        found = COUNTS.findall(log.read().decode("utf-8", "replace"))
    if not found or proc.returncode not in (0, 1):
        return None
    return tuple(int(n) for n in found[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="a subset of: %s" % ", ".join(i.name for i in INTERPRETERS))
    p.add_argument("--cache", default=CACHE, help="where roots are kept (default %(default)s)")
    p.add_argument("--mirror", help="Debian mirror for the roots (default: apt's)")
    args = p.parse_args(argv)
    chosen = INTERPRETERS
    if args.only:
        names = args.only.split(",")
        chosen = [i for i in INTERPRETERS if i.name in names]
        unknown = set(names) - set(i.name for i in chosen)
        if unknown:
            p.error("unknown interpreter(s): %s" % ", ".join(sorted(unknown)))
    mirror = args.mirror or apt_mirror()
    logdir = os.path.join(args.cache, "logs")
    os.makedirs(logdir, exist_ok=True)
    summary, ok = [], True
    for interp in chosen:
        started = time.monotonic()
        try:
            python = interp.prepare(args.cache, mirror)
        except (SetupError, OSError) as exc:
            summary.append("%-8s %s: not run: %s" % (interp.name, interp.origin, exc))
            ok = False
            continue
        version = describe(python)
        log_path = os.path.join(logdir, interp.name + ".log")
        print("pythons: %s, %s (%s): python -m tests" % (version, interp.origin, python),
              flush=True)
        counts = run_suite(python, log_path)
        took = time.monotonic() - started
        if counts is None:
            summary.append("%-8s %s (%s): crashed, see %s" % (interp.name, version,
                                                               interp.origin, log_path))
            ok = False
            continue
        passed, failed, skipped = counts
        ok = ok and failed == 0 and passed > 0
        summary.append("%-8s %s (%s): %d passed, %d failed, %d skipped in %.0f s"
                       % (interp.name, version, interp.origin, passed, failed, skipped, took))
    print("pythons summary (logs in %s):" % logdir)
    for line in summary:
        print("  " + line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
