"""qga_mini and the real qemu-ga 7.2, side by side, on the protocol itself.

Runs only where /usr/sbin/qemu-ga is installed.  Each case is a byte string sent on a fresh
connection to each agent; the reply bytes must be identical.  Cases where qga-mini differs on
purpose (README: a fresh framer per client, one error for an oversized message) are pinned in
tests/test_framer.py and tests/test_protocol.py instead.
"""
import os
import socket
import threading
import unittest

from tests.test_oracle_files import QEMU_GA, RawAgent
from tests.support import AGENT, PYTHON

PING = b'{"execute":"guest-ping"}'
HUGE = b"9" * 5000
# Integer tokens at the edges of qemu's int64 / uint64 / double reading, and past them.
EDGE_NUMBERS = [b"9223372036854775807", b"9223372036854775808", b"18446744073709551615",
                b"18446744073709551616", b"18446744073709551617", b"-9223372036854775808",
                b"-9223372036854775809", b"1e308", b"1e309", b"-1e309", b"-0", b"-0.0",
                HUGE, b"-" + HUGE, b"1" + b"0" * 400]
# Those that no int64 argument takes: commands that change the machine get only these.
NOT_INT64 = [n for n in EDGE_NUMBERS if n not in (b"9223372036854775807",
                                                   b"-9223372036854775808", b"-0")]


def argument_cases(command, template, values):
    """One case per value: the command with the value put into its arguments."""
    return [b'{"execute":"%s","arguments":%s}' % (command.encode(), template % value)
            for value in values]


CASES = [
    PING,
    b'{"execute":"guest-ping","id":1.5}{"execute":"guest-ping","id":null}'
    b'{"execute":"guest-ping","id":[1,{"a":null}]}',
    b'{"execute":"guest-ping","id":18446744073709551615}\n'
    b'{"execute":"guest-ping","id":18446744073709551616}\n',
    b'{"execute":"guest-ping","id":1E400}\n',
    b'{"execute":"guest-ping","id":1e5}{"execute":"guest-ping","id":-0}'
    b'{"execute":"guest-ping","id":0.1}',
    b'[]\n"x"\n42\ntrue\nnull\n',
    b'{}', b'{"execute":1}',
    b'{"execute":"guest-ping","arguments":[]}{"execute":"guest-ping","arguments":null}',
    b'{"execute":"guest-ping","foo":1}',
    b'{"exec-oob":"guest-ping"}{"execute":"guest-ping","exec-oob":"guest-ping"}',
    b'{"execute":" guest-ping"}',
    b'{"execute":"guest-sync"}{"execute":"guest-sync","arguments":{"id":"x"}}'
    b'{"execute":"guest-sync","arguments":{"id":1.0}}'
    b'{"execute":"guest-sync","arguments":{"id":9223372036854775808}}'
    b'{"execute":"guest-sync","arguments":{"id":-9223372036854775808}}',
    b'{"execute":"guest-sync","arguments":{"id":1,"x":2}}',
    b'\xff{"execute":"guest-sync-delimited","arguments":{"id":7}}',
    b'{"execute":\xff{"execute":"guest-ping"}',
    b'{"execute":"guest-pi\xff"}',
    b'{"execute":"guest-ping"}}',
    b'{"a":1,}', b'{"a":1,"a":2}', b'{"execute":"guest-ping",}', b'{"execute" "guest-ping"}',
    b'{"execute":"guest-ping" "x":1}', b'[1 2]', b'{1:2}', b'{"a":nul}', b'{"a":TRUE}',
    b'{"a":01}', b'{"a":1.}', b'{"a":-}', b'{"a":.5}', b'{"a":"\\x"}', b'{"a":"\\ud800"}',
    b'{"a":"\\uzzzz"}', b'{"a":"\\ud83d\\ude00","execute":"guest-ping"}',
    b'{"execute":"guest-ping","id":"\\u00e9\\ud83d\\ude00\x7f"}',
    b'{"execute":"guest-ping","id":"\xc3\xa9"}', b'{"execute":"guest-ping","id":"\xc3"}',
    b'{"execute":"guest-ping","id":"\xed\xa0\x80"}', b'{"execute":"guest-ping","id":"\xc0\x80"}',
    b'{"execute":"guest-ping","id":"a\tb"}', b'{"execute":"guest-ping","id":"\\u0000"}',
    b"{'execute':'guest-ping','id':'a\"b\\''}",
    b'{"execute":"guest-ping"X}{"execute":"guest-ping"}', b'X{"execute":"guest-ping"}',
    b'{"execute":"guest-ping"}\n\r\n\t  \n', b'{"a":[1,2,]}', b'{"a"}', b'{"a":}', b'{]', b']',
    b'{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":true}}',
    b'{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":"bogus"}}',
    b'{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":1.5}}',
    b'{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":0}]}}',
    b'{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":0,"online":1}]}}',
    b'{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":0,"online":true,'
    b'"x":1}]}}',
    b'{"execute":"guest-set-memory-blocks","arguments":{"mem-blks":[{"phys-index":"1",'
    b'"online":true}]}}',
    b'{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":[1]}}',
    b'{"execute":"guest-shutdown","arguments":{"mode":"x"}}',
    b'{"execute":"guest-ping","arguments":{"x":null}}',
    b'{"execute":"guest-ping","id":' + b"[" * 1023 + b"]" * 1023 + b"}",
    b'\xfe', b'\xff\xff',
    # Numbers: in the id, in an argument, in a message with qemu's extensions, in a pipeline.
    b"".join(b'{"execute":"guest-ping","id":%s}' % n for n in EDGE_NUMBERS),
    b"".join(b'{"execute":"guest-ping","id":[%s,{"n":%s}]}\n' % (n, n) for n in EDGE_NUMBERS),
    b"".join(b"{'execute':'guest-ping','id':%s}" % n for n in EDGE_NUMBERS),
    b"".join(b'{"execute":"guest-sync","arguments":{"id":%s}}' % n for n in EDGE_NUMBERS),
    b"".join(b"{'execute':'guest-sync-delimited','arguments':{'id':%s}}" % n
             for n in EDGE_NUMBERS),
    b'{"execute":"guest-ping","id":1' + b"0" * 20000 + b'.5e-20001}',
    b'{"execute":"guest-ping","id":[' + b",".join([HUGE] * 100) + b"]}",
] + argument_cases("guest-file-read", b'{"handle":1,"count":%s}', EDGE_NUMBERS) + \
    argument_cases("guest-exec-status", b'{"pid":%s}', EDGE_NUMBERS) + \
    argument_cases("guest-set-time", b'{"time":%s}', NOT_INT64) + \
    argument_cases("guest-file-seek", b'{"handle":1,"offset":%s,"whence":"set"}', EDGE_NUMBERS) + \
    argument_cases("guest-file-seek", b'{"handle":1,"offset":0,"whence":%s}', EDGE_NUMBERS) + \
    argument_cases("guest-fstrim", b'{"minimum":%s}', NOT_INT64) + \
    argument_cases("guest-set-memory-blocks", b'{"mem-blks":[{"phys-index":%s,"online":true}]}',
                   [b"-1", b"18446744073709551615", b"18446744073709551616", b"1.0", b"1e309",
                    b"-0.0", HUGE, b"-9223372036854775809"]) + [
    # Unicode noncharacters: qemu refuses them, escaped or raw.
    b'{"execute":"guest-ping","id":"\\ufffe"}', b'{"execute":"guest-ping","id":"\\uFDD0"}',
    b'{"execute":"guest-ping","id":"\\udbff\\udfff"}', b'{"execute":"guest-ping","id":"\xef\xbf\xbf"}',
    b'{"execute":"guest-ping","id":"\xef\xb7\xaf"}' + PING,
    PING + b'{"execute":"guest-ping","id":"\xf4\x8f\xbf\xbe"}' + PING,
    b'{"execute":"guest-ping","id":"\xf4\x8f\xbf\xbd\\ufdcf\\ufdf0\\ufffd"}',
] + [b'{"execute":"guest-ping","id":"%s"}' % body for body in (
    # A string is read left to right: the first bad escape or bad byte is the error, and \u
    # takes four bytes, whatever they are.
    b"\\x\xc3", b"\\ufffe\xef\xbf\xbe", b"\xc3\\x", b"\\u00\xc3", b"\\u\xc3", b"\\\xc3",
    b"\\ud83d\\ude0\xc3", b"\\ud83d\xc3", b"a\\ud800\xed\xa0\x80", b"\\u00", b"\\uzz", b"\\u12345",
    b"\\ud83d\\u", b"\\ud83d\\ude00\\ud83d", b"\\udc00", b"\\ud83d\\ud83d",
    b"\xc0\x80\\u0000\\\\\xc0\x80", b"\\\xc0\x80", b"x\\u00e9\\ufffd\\/\\'")]
CASES += [
    # A 0xFF or 0xFE ends a number or keyword first (a whole one may complete a message), then
    # is reported alone; an incomplete number is quoted with it.  The newline ends qemu-ga's
    # error recovery, which outlives the connection.
    data + b"\n" + PING for data in (
        b"1\xff", b"-0\xff", b"tru\xff", b"nul\xfe", b"01\xff", b"00\xff", b"-\xff", b"1.\xff",
        b"1e\xff", b"1e+\xff", b"1.5\xfe", b"1-\xff", b"1.5.\xff", b'{"a":1\xff',
        b'{"a":[1,true\xff', b'{"a":1.5e3\xff}', b'{"a":[-\xff]}',
        b'{"execute":"guest-ping","id":12\xff{"execute":"guest-ping","id":3}',
        # Invalid UTF-8 quoted in a stray token: one U+FFFD per bad sequence, as qemu-ga's
        # reply encoder shows it.
        b'"\xed\xa0\x80\xc1\x81\xe2\x82a\xf5\x80\x80\x80\xc0\x80b\xff',
        b'"\xef\xbf\xbf\xf8\x88\x80\x80\x80\xfc\x84\x80\x80\x80\x80x\xfe',
        b'"a\xc3\xff', b'"\xf0\x9f\x98\x80\xf0\x9f\x98\xff', b'{"a":"\xc3\x01"}',
        b"{'a':'\xe2\x82\xfe")] + [
    # A bad \u escape quotes the four bytes it took, shown the same way.
    b'{"execute":"guest-ping","id":"%s"}' % body for body in (
        b"\\u12", b"\\u\xed\xa0\x80", b"\\u1\xf0\x9f\x98\x80", b"\\ud800\\u\xc1\x81")]


def exchange(path, data, quiet=0.15):
    """Send ``data`` on a new connection; everything that comes back until a quiet spell."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    sock.sendall(data)
    sock.settimeout(quiet)
    out = b""
    try:
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    sock.close()
    return out


@unittest.skipUnless(os.access(QEMU_GA, os.X_OK), "qemu-ga is not installed")
class SideBySide(unittest.TestCase):
    def setUp(self):
        self.agents = [RawAgent([QEMU_GA]), RawAgent([PYTHON, AGENT])]
        for agent in self.agents:
            agent.sock.close()
            self.addCleanup(agent.close)

    def test_every_case_gets_the_same_bytes(self):
        for data in CASES:
            replies = [None, None]

            def ask(i):
                replies[i] = exchange(os.path.join(self.agents[i].dir, "sock"), data)
            threads = [threading.Thread(target=ask, args=(i,)) for i in (0, 1)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            self.assertTrue(replies[0], data)
            self.assertEqual(replies[1], replies[0], data)


if __name__ == "__main__":
    unittest.main()
