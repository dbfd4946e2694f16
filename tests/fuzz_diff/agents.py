"""qga_mini.py and qemu-ga side by side, each on its own unix socket in a temp dir.

``AgentPair.exchange(chunks_per_agent)`` writes each agent its chunks (one write per chunk,
the two agents alternately), then 0xFF and a guest-ping with a fresh id, and reads each
agent's reply lines until that ping's reply: everything before it answers the input (plus
the 0xFF's lexer error).  One select() loop does the writing and reading of both agents, so
an agent that stops reading until its replies are read never deadlocks the fuzzer; every wait
has a deadline.  A reader that never rescans: each received byte is looked at once.
"""
import json
import os
import select
import sys
import time

from tests.hostile import BadReply, parse_reply_line
from tests.support import AGENT, PYTHON
from tests.test_oracle_files import QEMU_GA, RawAgent

sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))   # replies echo ids 1024 deep
REPLY_TIMEOUT = 30.0
PING_ID = "fuzz-diff-ping-%d"


class LineReader(object):
    """Bytes in, complete lines out; the buffer is scanned from where the last scan ended."""

    def __init__(self):
        self.buf = bytearray()
        self.scanned = 0

    def feed(self, data):
        self.buf += data
        lines, start = [], 0
        while True:
            nl = self.buf.find(b"\n", max(start, self.scanned))
            if nl < 0:
                break
            lines.append(bytes(self.buf[start:nl]))
            start = nl + 1
        del self.buf[:start]
        self.scanned = len(self.buf)
        return lines


class Side(object):
    """One agent process and what the exchange in progress has sent and received."""

    def __init__(self, name, argv):
        self.name = name
        self.agent = RawAgent(argv)
        self.sock = self.agent.sock
        self.sock.setblocking(False)
        self.reader = LineReader()
        with open(os.path.join(self.agent.work, "fuzz-file"), "wb") as f:
            f.write(b"fuzz file contents\n" * 100)

    def alive(self):
        return self.agent.proc.poll() is None

    def close(self):
        self.agent.close()


class Outcome(object):
    """What one agent did with one input: its reply lines, then "ok", "dead" or "timeout"."""

    def __init__(self):
        self.lines = []
        self.end = None

    def replies(self):
        out = []
        for line in self.lines:
            try:
                out.append(parse_reply_line(line))
            except BadReply as exc:
                out.append({"bad": str(exc)[:200]})
        return out


class AgentPair(object):
    def __init__(self):
        env_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        os.environ["PATH"] = env_path       # what both agents search guest-exec programs in
        self.sides = []
        try:
            self.sides.append(Side("qemu-ga", [QEMU_GA]))
            self.sides.append(Side("qga-mini", [PYTHON, AGENT]))
        except BaseException:
            self.close()
            raise
        self.pings = 0

    def close(self):
        for side in self.sides:
            side.close()
        self.sides = []

    def exchange(self, chunks_per_side, timeout=REPLY_TIMEOUT):
        """[Outcome per side] for the given writes; each input ends with 0xFF and a ping."""
        self.pings += 1
        ping_id = PING_ID % self.pings
        tail = b'\xff{"execute":"guest-ping","id":"%s"}' % ping_id.encode()
        queues = [list(chunks) + [tail] for chunks in chunks_per_side]
        outcomes = [Outcome() for _ in self.sides]
        deadline = time.monotonic() + timeout
        pending = set(range(len(self.sides)))
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                for i in pending:
                    outcomes[i].end = "timeout"
                break
            readers = [self.sides[i].sock for i in pending]
            writers = [self.sides[i].sock for i in pending if queues[i]]
            readable, writable, _ = select.select(readers, writers, [], min(left, 1.0))
            for i in list(pending):
                side, outcome = self.sides[i], outcomes[i]
                if side.sock in writable and queues[i]:
                    try:
                        sent = side.sock.send(queues[i][0])
                    except BlockingIOError:
                        sent = 0
                    except OSError:
                        outcome.end = "dead"
                        pending.discard(i)
                        continue
                    queues[i][0] = queues[i][0][sent:]
                    if not queues[i][0]:
                        queues[i].pop(0)
                if side.sock in readable:
                    try:
                        data = side.sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        outcome.end = "dead"
                        pending.discard(i)
                        continue
                    for line in side.reader.feed(data):
                        if _is_ping_reply(line, ping_id):
                            outcome.end = "ok"
                            pending.discard(i)
                            break
                        outcome.lines.append(line)
        return outcomes

    def request(self, message_per_side):
        """Replies (parsed) of one plain request per side; [] for a side that failed."""
        outcomes = self.exchange([[json.dumps(m).encode()] for m in message_per_side])
        result = []
        for outcome in outcomes:
            replies = outcome.replies() if outcome.end == "ok" else []
            result.append([r for r in replies if "desc" not in r.get("error", {})
                           or "stray" not in r["error"]["desc"]])
        return result


def _is_ping_reply(line, ping_id):
    if b"fuzz-diff-ping" not in line:
        return False
    try:
        reply = json.loads(line.decode("ascii"))
    except ValueError:
        return False
    return isinstance(reply, dict) and reply.get("id") == ping_id and "return" in reply
