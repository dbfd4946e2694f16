"""Start-up of the plain `python3 qga_mini.py`: the script hands its compiled code to a fresh
interpreter in the same process (leaving the compiler's syntax tree behind), keeps the
interpreter's options, and runs on where no memory file can be made."""

import os
import subprocess
import shutil
import tempfile
import unittest

from tests.support import AGENT, PYTHON, AgentProcess, LineClient, connect_unix

BOOTSTRAP_MARK = b"marshal.loads"   # a word of the hand-over bootstrap on the command line
LOADER = "/lib64/ld-linux-x86-64.so.2"


def interpreter_facts():
    """(hands over, real program) of the interpreter the tests run the agent with: only
    CPython started as its own program (not through a loader, as tests/pythons.py's wrappers
    start other distributions' interpreters) hands over."""
    out = subprocess.run(
        [PYTHON, "-c", "import os, sys; print(sys.implementation.name == 'cpython' and "
         "os.path.samefile(sys.executable, '/proc/self/exe')); print(sys.executable)"],
        stdout=subprocess.PIPE, universal_newlines=True, timeout=60, check=True)
    hands_over, executable = out.stdout.split("\n")[:2]
    return hands_over == "True", executable


HANDS_OVER, EXECUTABLE = interpreter_facts()
needs_hand_over = unittest.skipUnless(
    HANDS_OVER, "%s does not hand over (not CPython, or started through a loader)" % PYTHON)


class Agent(object):
    """The agent started with the given interpreter argv on a unix socket; torn down."""

    def __init__(self, test, argv):
        self.tmp = tempfile.mkdtemp(prefix="qga-startup-")
        test.addCleanup(shutil.rmtree, self.tmp, True)
        self.path = os.path.join(self.tmp, "qga.sock")
        self.stderr = open(os.path.join(self.tmp, "stderr"), "wb")
        self.proc = subprocess.Popen(
            argv + ["-m", "unix-listen", "-p", self.path, "-t", self.tmp],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr)
        test.addCleanup(self.stop)
        self.sock = connect_unix(self.path, wait=15)
        test.addCleanup(self.sock.close)
        self.client = LineClient(self.sock)

    stop = AgentProcess.stop

    def cmdline(self):
        with open("/proc/%d/cmdline" % self.proc.pid, "rb") as f:
            return f.read().split(b"\0")

    def fd_targets(self):
        fds = "/proc/%d/fd" % self.proc.pid
        return [os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds)]


class HandOverTest(unittest.TestCase):

    @needs_hand_over
    def test_script_runs_on_in_a_fresh_interpreter_with_the_same_pid(self):
        agent = Agent(self, [PYTHON, AGENT])
        self.assertEqual(agent.client.call("guest-ping"), {})
        cmdline = agent.cmdline()
        self.assertTrue(any(BOOTSTRAP_MARK in arg for arg in cmdline), cmdline)
        self.assertIn(b"-S", cmdline)
        self.assertIn(AGENT.encode(), cmdline)   # still findable as qga_mini.py in ps
        # the memory file that carried the code is closed before the agent starts
        self.assertFalse([t for t in agent.fd_targets() if "qga-mini-code" in t])

    @needs_hand_over
    def test_interpreter_options_are_kept(self):
        agent = Agent(self, [PYTHON, "-O", "-W", "ignore::DeprecationWarning", AGENT])
        self.assertEqual(agent.client.call("guest-ping"), {})
        cmdline = agent.cmdline()
        self.assertTrue(any(BOOTSTRAP_MARK in arg for arg in cmdline), cmdline)
        self.assertIn(b"-O", cmdline)
        self.assertIn(b"ignore::DeprecationWarning", cmdline)

    @needs_hand_over
    def test_without_a_memory_file_the_agent_runs_on_in_the_first_interpreter(self):
        # The script run as usual, with memfd_create and O_TMPFILE taken away before it
        # starts (by a sitecustomize on PYTHONPATH).
        site = tempfile.mkdtemp(prefix="qga-startup-site-")
        self.addCleanup(shutil.rmtree, site, True)
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write("import os\n"
                    "for name in ('memfd_create', 'O_TMPFILE'):\n"
                    "    vars(os).pop(name, None)\n")
        os.environ["PYTHONPATH"] = site
        try:
            agent = Agent(self, [PYTHON, AGENT])
        finally:
            del os.environ["PYTHONPATH"]
        self.assertEqual(agent.client.call("guest-ping"), {})
        self.assertFalse(any(BOOTSTRAP_MARK in arg for arg in agent.cmdline()))

    @needs_hand_over
    def test_run_by_runpy_from_a_wrapper_the_wrappers_work_is_kept(self):
        # A wrapper that patches os before running the agent (as the tests of PyPy's missing
        # os.writev do) must not be undone by a fresh interpreter.
        code = ("import os, runpy, sys\n"
                "os.environ['QGA_WRAPPED'] = '1'\n"
                "sys.argv[0] = %r\n"
                "runpy.run_path(%r, run_name='__main__')\n" % (AGENT, AGENT))
        agent = Agent(self, [PYTHON, "-c", code])
        self.assertEqual(agent.client.call("guest-ping"), {})
        self.assertFalse(any(BOOTSTRAP_MARK in arg for arg in agent.cmdline()))

    @needs_hand_over
    @unittest.skipUnless(os.path.exists(LOADER), "no %s here" % LOADER)
    def test_started_through_the_dynamic_loader_the_agent_runs_on_in_the_first_interpreter(
            self):
        # Exec'ing sys.executable would lose the loader (and its --library-path): an
        # interpreter from another distribution's root would not even start.
        agent = Agent(self, [LOADER, EXECUTABLE, AGENT])
        self.assertEqual(agent.client.call("guest-ping"), {})
        self.assertFalse(any(BOOTSTRAP_MARK in arg for arg in agent.cmdline()))

    def test_client_and_help_work_through_the_hand_over(self):
        agent = Agent(self, [PYTHON, AGENT])
        agent.sock.close()   # one host at a time: make way for the client
        out = subprocess.run([PYTHON, AGENT, "client", agent.path, "guest-ping"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        out = subprocess.run([PYTHON, AGENT, "--help"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(b"qga_mini.py", out.stdout.split(b"\n")[0])


if __name__ == "__main__":
    unittest.main()
