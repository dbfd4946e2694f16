"""Soak: a real ``qga_mini.py -m unix-listen`` process under a long run of mixed requests on
one connection (file open/read/close of a temp file and exec of /bin/true among them) and
under many connect/disconnect cycles.  RSS, open fds and threads must stay flat (the fitted
slope is printed and bounded) and no child may be left a zombie.

CI runs the short form (10^5 requests, 10^3 cycles, about 10 s); ``make soak`` sets
QGA_SOAK=long for 10^6 requests and 10^4 cycles (QGA_SOAK_REQUESTS / QGA_SOAK_CYCLES
override either).
"""
import os
import shutil
import sys
import tempfile
import time
import unittest

from tests.hostile import MACHINE_COMMANDS, parse_reply_line
from tests.procstat import fd_count, rss_kib, slope, status_field, zombies
from tests.support import RSS_BOUNDS_HOLD, AgentProcess, LineClient, connect_unix

LONG = os.environ.get("QGA_SOAK") == "long"
REQUESTS = int(os.environ.get("QGA_SOAK_REQUESTS", 1000000 if LONG else 100000))
CYCLES = int(os.environ.get("QGA_SOAK_CYCLES", 10000 if LONG else 1000))
# Everything that could change the machine is blocked, except the two the soak exercises
# on a temp file and /bin/true.
BLOCKED = ",".join(name for name in MACHINE_COMMANDS if name not in ("guest-exec",
                                                                      "guest-file-open"))

# Requests answered with exactly one line each and needing nothing from an earlier reply.
STATELESS = [
    b'{"execute":"guest-ping"}', b'{"execute":"guest-sync","arguments":{"id":12345}}',
    b'{"execute":"guest-sync-delimited","arguments":{"id":7}}', b'{"execute":"guest-info"}',
    b'{"execute":"guest-get-time"}', b'{"execute":"guest-get-host-name"}',
    b'{"execute":"guest-get-timezone"}', b'{"execute":"guest-get-load"}',
    b'{"execute":"guest-get-cpustats"}', b'{"execute":"guest-get-vcpus"}',
    b'{"execute":"guest-get-osinfo"}', b'{"execute":"guest-network-get-interfaces"}',
    b'{"execute":"guest-network-get-route"}', b'{"execute":"guest-get-users"}',
    b'{"execute":"guest-no-such-command","id":[1,{"a":null}]}',
    b'{"execute":"guest-file-read","arguments":{"handle":"x"}}',
    b'{"execute":"guest-exec-status","arguments":{"pid":-1}}',
    b'{"execute":"guest-shutdown"}',                       # blocked: an error, never a reply
    b"}", b"\xff", b'{"execute":"guest-ping","id":nul}',
]
BATCH = 100


def report(what, samples, unit):
    """Print the fitted slope of ``samples`` and return it."""
    rate = slope(samples)
    sys.stderr.write("\n  soak %s: %d samples, %s..%s, slope %+.3f %s\n"
                     % (what, len(samples), samples[0][1], samples[-1][1], rate, unit))
    return rate


class Soak(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="qga-soak-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.file = os.path.join(self.tmp, "data")
        with open(self.file, "wb") as f:
            f.write(os.urandom(10000))
        self.agent = AgentProcess("-b", BLOCKED)
        self.addCleanup(self.agent.close)
        self.pid = self.agent.proc.pid

    def sample(self):
        return rss_kib(self.pid), fd_count(self.pid), status_field(self.pid, "Threads")

    def exchange(self, client, requests):
        """Send requests in one write; one checked reply line per request."""
        client.send(b"".join(requests))
        return [parse_reply_line(client.read_line()) for _ in requests]

    def file_round(self, client):
        handle = client.call("guest-file-open", path=self.file)
        self.assertEqual(client.call("guest-file-read", handle=handle, count=4096)["count"],
                         4096)
        client.call("guest-file-close", handle=handle)
        return 3

    def exec_round(self, client):
        pid = client.call("guest-exec", path="/bin/true")["pid"]
        calls = 1
        deadline = time.time() + 30
        while True:
            calls += 1
            status = client.call("guest-exec-status", pid=pid)
            if status["exited"]:
                self.assertEqual(status["exitcode"], 0)
                return calls
            self.assertLess(time.time(), deadline, "/bin/true did not exit")
            time.sleep(0.001)

    def test_mixed_requests_on_one_connection(self):
        client = self.agent.connect()
        done, batches, samples = 0, 0, []
        while done < REQUESTS:
            requests = [STATELESS[(batches + i) % len(STATELESS)] for i in range(BATCH)]
            self.exchange(client, requests)
            done += len(requests) + self.file_round(client) + self.exec_round(client)
            batches += 1
            if batches % 10 == 0:
                samples.append((done,) + self.sample())
        self.assertEqual(client.call("guest-ping"), {})
        steady = samples[len(samples) // 5:]          # after the allocator has warmed up
        rss = report("RSS", [(n, r) for n, r, _, _ in steady], "KiB per request")
        fds = report("fds", [(n, f) for n, _, f, _ in steady], "fds per request")
        threads = report("threads", [(n, t) for n, _, _, t in steady], "per request")
        sys.stderr.write("  soak: %d requests on one connection\n" % done)
        if RSS_BOUNDS_HOLD:
            self.assertLess(rss * 100000, 8 * 1024, "RSS grows by >8 MiB per 10^5 requests")
        self.assertLess(abs(fds) * 100000, 1)
        self.assertLess(abs(threads) * 100000, 1)
        self.assertEqual(zombies(self.pid), [])

    def test_connect_disconnect_cycles(self):
        samples = []
        for cycle in range(CYCLES):
            sock = connect_unix(self.agent.path)    # the first may come between bind and listen
            kind = cycle % 5
            if kind == 1:
                self.assertEqual(LineClient(sock).call("guest-ping"), {})
            elif kind == 2:
                sock.sendall(b'{"execute":"guest-sync","arguments":{"id":')   # mid-request
            elif kind == 3:
                sock.sendall(b'{"execute":"guest-info"}' * 50)     # replies left unread
            elif kind == 4:
                client = LineClient(sock)
                client.call("guest-file-close", handle=client.call(
                    "guest-file-open", path=self.file))
            sock.close()
            if cycle % 25 == 24:
                client = self.agent.connect()           # waits its turn behind the last one
                self.assertEqual(client.call("guest-ping"), {})
                samples.append((cycle + 1,) + self.sample())    # while it is connected
                client.sock.close()
        steady = samples[len(samples) // 5:]
        rss = report("RSS", [(n, r) for n, r, _, _ in steady], "KiB per cycle")
        fds = report("fds", [(n, f) for n, _, f, _ in steady], "fds per cycle")
        sys.stderr.write("  soak: %d connect/disconnect cycles\n" % CYCLES)
        if RSS_BOUNDS_HOLD:
            self.assertLess(rss * 1000, 4 * 1024, "RSS grows by >4 MiB per 10^3 cycles")
        self.assertLess(abs(fds) * 1000, 1)
        self.assertEqual(zombies(self.pid), [])


if __name__ == "__main__":
    unittest.main()
