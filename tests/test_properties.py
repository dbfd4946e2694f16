"""Properties of the framer + dispatcher, checked on seeded random streams (no dependency).

- Any split of a request stream into reads gives byte-for-byte the replies of one read.
- A 0xFF (or 0xFE) at any position never wedges the framer: the request after it is answered.
- Random garbage followed by 0xFF + guest-sync-delimited always yields the sync reply.

Set QGA_PROPERTY_SEED to replay another seed; a failure message names the seed and round.
"""
import json
import os
import random
import shutil
import unittest

from tests.guestroot import allow_machine_changes
from tests.hostile import agent_for_hostile_input, check_reply_lines, fixture_guest
from tests.support import qga_mini

SEED = int(os.environ.get("QGA_PROPERTY_SEED", "6061"))


def random_id(rng, depth=0):
    """Any JSON value, as a host may use for ``id``."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.randrange(-1 << 63, 1 << 64)
    if kind == 1:
        return rng.choice([0, -1, 1.5, -2.25e-7, 1e300, True, False, None])
    if kind in (2, 3, 4, 5):
        alphabet = "abc \"\\/\n\t\x00\x7f\u00e9\u2603\U0001F600{}[]:,'"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind in (6, 7):
        return [random_id(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {"k%d" % i: random_id(rng, depth + 1) for i in range(rng.randrange(4))}


def random_request(rng):
    """One complete request (valid JSON) that every agent answers the same way."""
    name = rng.choice(["guest-ping", "guest-sync", "guest-sync-delimited", "guest-info",
                       "guest-no-such-command", "guest-file-read", "guest-shutdown"])
    request = {"execute": name}
    if name in ("guest-sync", "guest-sync-delimited"):
        request["arguments"] = {"id": rng.choice([rng.randrange(-1 << 63, 1 << 63), "bad"])}
    elif name == "guest-file-read":
        request["arguments"] = {"handle": rng.randrange(2000), "count": rng.randrange(-9, 9)}
    if rng.random() < 0.6:
        request["id"] = random_id(rng)
    separators = rng.choice([(",", ":"), (", ", ": "), (" ,\n", "\t:\r\n")])
    text = json.dumps(request, separators=separators, ensure_ascii=rng.random() < 0.5)
    return text.encode("utf-8") + rng.choice([b"", b"\n", b"\r\n", b"  "])


GARBAGE_PIECES = (b"}", b"]", b"[1,", b'{"a":', b'"unterminated', b"01", b"1.", b"-", b"nul",
                  b"TRUE", b"\x00", b"\x1f", b"\\u", b"'", b'"\\ud800"', b"\xc0\x80",
                  b"\xed\xa0\x80", b"{}", b"[]", b"42 ", b"1e400 ", b'"\\x"', b":", b",")


def random_stream(rng, requests, garbage=False):
    pieces = [random_request(rng) for _ in range(requests)]
    if garbage:
        pieces += [rng.choice(GARBAGE_PIECES) for _ in range(requests // 2)]
        rng.shuffle(pieces)
    return b"".join(pieces)


def random_garbage(rng):
    """Bytes a confused or hostile host might send before it resynchronises."""
    kind = rng.randrange(6)
    size = rng.randrange(1, 3000)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(size))
    if kind == 1:
        alphabet = b'{}[]:,"\'\\0123456789eE.-+ \t\r\nabcdefnrstuTX\x00\x01\x7f\x80\xc0\xed'
        return bytes(rng.choice(alphabet) for _ in range(size))
    if kind == 2:
        return rng.choice([b"[", b"{", b'{"a":[']) * rng.randrange(1000, 3000)
    if kind == 3:
        return b'{"execute":"guest-ping","id":"' + b"x" * rng.randrange(1, 200000)
    if kind == 4:
        return b"".join(rng.choice(GARBAGE_PIECES) for _ in range(rng.randrange(1, 100)))
    return random_stream(rng, rng.randrange(1, 6))[:-rng.randrange(1, 20)]


def random_split(rng, data):
    """``data`` cut at random places into reads (sometimes one byte per read)."""
    if rng.random() < 0.1:
        return [data[i:i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 40))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def sync_delimited(ident):
    return b'{"execute":"guest-sync-delimited","arguments":{"id":%d}}' % ident


class Properties(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.guest = fixture_guest()
        cls.agent, cls.statedir, cls.patchers = agent_for_hostile_input(cls.guest)

    @classmethod
    def tearDownClass(cls):
        allow_machine_changes(cls.patchers)
        cls.agent.shutdown()
        shutil.rmtree(cls.statedir, ignore_errors=True)
        cls.guest.close()

    def replies(self, reads):
        """The reply bytes of one new connection that receives ``reads``."""
        framer = qga_mini.Framer()
        chunks = []
        for data in reads:
            chunks += self.agent.handle_bytes(framer, data)
        check_reply_lines(chunks)
        return b"".join(chunks)

    def test_any_split_gives_the_replies_of_one_read(self):
        rng = random.Random(SEED)
        for round_ in range(150):
            stream = random_stream(rng, rng.randrange(1, 12), garbage=round_ % 3 == 0)
            whole = self.replies([stream])
            self.assertTrue(whole, "no replies at all (seed %d, round %d)" % (SEED, round_))
            for _ in range(4):
                reads = random_split(rng, stream)
                self.assertEqual(self.replies(reads), whole,
                                 "seed %d, round %d, reads %r" % (SEED, round_, reads))

    def test_0xff_at_any_position_never_wedges_the_framer(self):
        rng = random.Random(SEED + 1)
        for round_ in range(6):
            stream = random_stream(rng, 6, garbage=bool(round_ % 2))
            marker = b"\xfe" if round_ == 5 else b"\xff"
            for i in range(len(stream) + 1):
                for data in (stream[:i] + marker + sync_delimited(i),
                             stream[:i] + marker + stream[i:] + b"\xff" + sync_delimited(i)):
                    replies = self.replies([data])
                    self.assertTrue(replies.endswith(b'\xff{"return": %d}\n' % i),
                                    "seed %d, round %d: %r -> %r"
                                    % (SEED, round_, data, replies[-300:]))

    def test_garbage_then_resync_yields_the_sync_reply(self):
        rng = random.Random(SEED + 2)
        for round_ in range(300):
            garbage = random_garbage(rng)
            reads = random_split(rng, garbage) if len(garbage) < 5000 else [garbage]
            replies = self.replies(reads + [b"\xff" + sync_delimited(round_)])
            self.assertTrue(replies.endswith(b'\xff{"return": %d}\n' % round_),
                            "seed %d, round %d: %r -> %r"
                            % (SEED, round_, garbage[:300], replies[-300:]))

    def test_resync_after_each_message_limit(self):
        """Past the nesting, token and size limits the rest of the message is skipped, and
        0xFF + guest-sync-delimited is answered as always."""
        tokens = b"[" + b"1," * (qga_mini.MAX_MESSAGE_TOKENS // 2 + 8)
        size = b'["' + b"x" * (qga_mini.MAX_MESSAGE_BYTES + 16)
        nesting = b"{" * (qga_mini.MAX_NESTING + 1) + b'"k":1'
        cases = ((nesting, b""), (nesting, b'"'), (nesting, b"]]]"), (tokens, b"]"),
                 (size, b""), (size, b'"'))
        for ident, (garbage, tail) in enumerate(cases):
            replies = self.replies([garbage + tail, b"\xff" + sync_delimited(ident)])
            self.assertIn(b"limit exceeded", replies)
            self.assertTrue(replies.endswith(b'\xff{"return": %d}\n' % ident), replies[-300:])


if __name__ == "__main__":
    unittest.main()
