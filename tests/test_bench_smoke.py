"""Smoke test of bench/bench.py: a quick ping figure against qga_mini.py alone (no qemu-ga).

It checks that the harness runs, reports a number, exits 0 and leaves no temporary files. It is
skipped when qga_mini.py cannot start and answer guest-ping over unix-listen yet.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from tests.support import PYTHON, stop_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "bench.py")
AGENT = os.path.join(ROOT, "qga_mini.py")


def agent_cannot_start(timeout=5.0):
    """Return None if qga_mini.py answers guest-ping over unix-listen, else the reason."""
    if not os.path.exists(AGENT):
        return "qga_mini.py does not exist yet"
    workdir = tempfile.mkdtemp(prefix="bench-smoke-")
    sock_path = os.path.join(workdir, "q.sock")
    proc = subprocess.Popen([PYTHON, AGENT, "-m", "unix-listen", "-p", sock_path,
                             "-t", os.path.join(workdir, "state")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                return "qga_mini.py exited with status %s" % proc.returncode
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(sock_path)
                s.sendall(b'{"execute":"guest-ping"}\n')
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                return None if b'"return"' in reply else "guest-ping got %r" % reply[:100]
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    return "qga_mini.py did not listen within %.0f s" % timeout
                time.sleep(0.01)
            except OSError as e:
                return "qga_mini.py did not answer guest-ping: %s" % e
            finally:
                s.close()
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def run_bench(args, tmpdir, timeout=60):
    env = dict(os.environ, TMPDIR=tmpdir)
    return subprocess.run([PYTHON, BENCH, "--python", PYTHON] + args, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          timeout=timeout, cwd=ROOT)


class BenchSmokeTest(unittest.TestCase):

    def setUp(self):
        self.tmpdir = tempfile.mkdtemp(prefix="bench-smoke-tmp-")
        self.addCleanup(shutil.rmtree, self.tmpdir, True)

    def test_missing_agent_is_reported_not_a_failure(self):
        result = run_bench(["--quick", "--only", "ping", "--no-qemu-ga", "-q",
                            "--agent", os.path.join(self.tmpdir, "absent.py")], self.tmpdir)
        self.assertEqual(result.returncode, 0, result.stderr.decode(errors="replace"))
        self.assertIn(b"n/a (no absent.py)", result.stdout)

    def test_quick_ping_against_our_agent(self):
        reason = agent_cannot_start()
        if reason:
            self.skipTest(reason)
        out_json = os.path.join(self.tmpdir, "bench.json")
        result = run_bench(["--quick", "--only", "ping", "--no-qemu-ga", "-q",
                            "--json", out_json], self.tmpdir)
        self.assertEqual(result.returncode, 0, result.stderr.decode(errors="replace"))
        self.assertIn(b"sequential ping round trips", result.stdout)
        with open(out_json) as f:
            cell = json.load(f)["raw"]["ping_rps"]["qga-mini"]
        self.assertIsNone(cell["status"])
        self.assertTrue(cell["values"] and all(v > 0 for v in cell["values"]), cell)
        # The bench removed its own temporary directory: only our json file is left.
        self.assertEqual(os.listdir(self.tmpdir), ["bench.json"])

    def test_host_patterns_and_launcher_rows(self):
        reason = agent_cannot_start()
        if reason:
            self.skipTest(reason)
        out_json = os.path.join(self.tmpdir, "bench.json")
        result = run_bench(["--quick", "--rounds", "1", "--only", "hosts,startup",
                            "--no-qemu-ga", "-q", "--json", out_json], self.tmpdir, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr.decode(errors="replace"))
        with open(out_json) as f:
            raw = json.load(f)["raw"]
        for key in ("sync_rps", "proxmox_pps", "libvirt_pps", "startup_ms", "idle_rss",
                    "first_ms", "first_rss", "cached_ms", "cached_rss"):
            cell = raw[key]["qga-mini"]
            self.assertIsNone(cell["status"], key)
            self.assertTrue(cell["values"] and all(v > 0 for v in cell["values"]), (key, cell))


if __name__ == "__main__":
    unittest.main()
