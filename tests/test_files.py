"""guest-file-open, -close, -read, -write, -seek, -flush.

Every expectation here was checked against qemu-ga 7.2 side by side (tests/test_oracle_files.py
repeats the comparison where qemu-ga is installed); the few deliberate differences are named
in the test that pins them.
"""
import base64
import errno
import fcntl
import hashlib
import os
import random
import shutil
import stat
import tempfile
import time
import unittest

from tests.support import RSS_BOUNDS_HOLD, AgentHarness, AgentProcess, qga_mini

HELLO = b"Hello World!\n\x00"                  # test-qga's payload, trailing NUL included
HELLO_B64 = base64.b64encode(HELLO).decode()
MIB = 1 << 20


def b64(data):
    return base64.b64encode(data).decode()


O_ACCMODE = getattr(os, "O_ACCMODE", 3)     # PyPy's os lacks it; 3 on every Linux port


class FileTestCase(unittest.TestCase):
    def setUp(self):
        self.agent = AgentHarness()
        self.dir = tempfile.mkdtemp(prefix="qga-files-")

    def tearDown(self):
        self.agent.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def make(self, name, data):
        with open(self.path(name), "wb") as f:
            f.write(data)
        return self.path(name)

    def open(self, name, mode=None):
        args = {"path": self.path(name)}
        if mode is not None:
            args["mode"] = mode
        return self.agent.call("guest-file-open", args)

    def read(self, handle, count=None):
        args = {"handle": handle}
        if count is not None:
            args["count"] = count
        return self.agent.call("guest-file-read", args)

    def write(self, handle, data, count=None):
        args = {"handle": handle, "buf-b64": b64(data) if isinstance(data, bytes) else data}
        if count is not None:
            args["count"] = count
        return self.agent.call("guest-file-write", args)

    def seek(self, handle, offset, whence):
        return self.agent.call("guest-file-seek", handle=handle, offset=offset, whence=whence)

    def close(self, handle):
        return self.agent.call("guest-file-close", handle=handle)


class TestQgaSequences(FileTestCase):
    """test-qga's /qga/file-ops and /qga/file-write-read, step by step."""

    def test_file_ops(self):
        cwd = os.getcwd()
        os.chdir(self.dir)                  # test-qga opens the relative path "foo"
        try:
            handle = self.agent.call("guest-file-open", path="foo", mode="w+")
            self.assertEqual(self.write(handle, HELLO_B64), {"count": 14, "eof": False})
            self.assertEqual(self.agent.call("guest-file-flush", handle=handle), {})
            self.assertEqual(self.close(handle), {})
            with open(self.path("foo"), "rb") as f:
                self.assertEqual(f.read(), HELLO)
            handle = self.agent.call("guest-file-open", path="foo", mode="r")
        finally:
            os.chdir(cwd)
        self.assertEqual(self.read(handle), {"count": 14, "buf-b64": HELLO_B64, "eof": True})
        self.assertEqual(self.read(handle), {"count": 0, "buf-b64": "", "eof": True})
        self.assertEqual(self.seek(handle, 6, "set"), {"position": 6, "eof": False})
        reply = self.read(handle)
        self.assertEqual((reply["count"], reply["eof"]), (8, True))
        self.assertEqual(base64.b64decode(reply["buf-b64"]), HELLO[6:])
        self.close(handle)

    def test_file_write_read(self):
        handle = self.open("foo", "w+")
        self.assertEqual(self.write(handle, HELLO_B64), {"count": 14, "eof": False})
        # Reading right after writing: the position is at the end of what was written.
        self.assertEqual(self.read(handle), {"count": 0, "buf-b64": "", "eof": True})
        self.assertEqual(self.seek(handle, 0, "set"), {"position": 0, "eof": False})
        self.assertEqual(self.read(handle), {"count": 14, "buf-b64": HELLO_B64, "eof": True})
        self.close(handle)


class TestOpen(FileTestCase):
    def test_handles_start_at_1000_and_are_never_reused(self):
        self.make("f", b"x")
        first = self.open("f")
        self.assertEqual(first, 1000)
        self.close(first)
        self.assertEqual(self.open("f"), 1001)
        self.assertEqual(self.open("f"), 1002)

    def test_counter_is_committed_to_the_state_file_before_the_reply(self):
        self.make("f", b"x")
        state = os.path.join(self.agent.statedir, "qga.state")
        handle = self.open("f")
        with open(state) as f:
            self.assertEqual(f.read(), "[global]\nfd_counter=%d\n" % (handle + 1))

    def test_counter_continues_from_the_state_file(self):
        self.agent.agent.state.write_counter(5000)
        self.make("f", b"x")
        self.assertEqual(self.open("f"), 5000)

    def test_state_commit_failure_closes_the_file_and_burns_the_number(self):
        self.make("f", b"x")
        self.assertEqual(self.open("f"), 1000)
        shutil.rmtree(self.agent.statedir)
        self.assertEqual(self.agent.error("guest-file-open", path=self.path("f")),
                         ("GenericError", "failed to commit persistent state to disk"))
        self.assertEqual(list(self.agent.agent.file_handles), [1000])
        os.makedirs(self.agent.statedir)
        self.assertEqual(self.open("f"), 1002)

    def test_every_mode_qemu_ga_accepts(self):
        expected = {"r": os.O_RDONLY, "w": os.O_WRONLY, "a": os.O_WRONLY,
                    "r+": os.O_RDWR, "w+": os.O_RDWR, "a+": os.O_RDWR}
        for mode in ("r", "rb", "w", "wb", "a", "ab", "r+", "rb+", "r+b", "w+", "wb+", "w+b",
                     "a+", "ab+", "a+b"):
            self.make("f", b"data")
            handle = self.open("f", mode)
            fd = self.agent.agent.file_handles[handle]
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            self.assertEqual(flags & O_ACCMODE, expected[mode.replace("b", "")], mode)
            self.assertEqual(bool(flags & os.O_APPEND), mode.startswith("a"), mode)
            self.assertTrue(flags & os.O_NONBLOCK, mode)
            self.assertTrue(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, mode)
            self.assertEqual(os.path.getsize(self.path("f")), 0 if mode[0] == "w" else 4, mode)
            self.close(handle)

    def test_mode_defaults_to_r(self):
        self.make("f", b"data")
        handle = self.open("f")
        self.assertEqual(self.write(handle, b""), {"count": 0, "eof": False})
        self.assertEqual(self.agent.error("guest-file-write", handle=handle, **{"buf-b64": "YQ=="}),
                         ("GenericError", "failed to write to file: Bad file descriptor"))

    def test_any_other_mode_is_refused_before_touching_the_path(self):
        for mode in ("rw", "wx", "x", "R", "r ", "br", "+r", "rbb", "", "r+bb", "w+x", "rt"):
            self.assertEqual(self.agent.error("guest-file-open", path=self.path("m"), mode=mode),
                             ("GenericError", "invalid file open mode '%s'" % mode))
        self.assertFalse(os.path.exists(self.path("m")))

    def test_creating_modes_create_and_r_modes_do_not(self):
        for mode in ("w", "a", "w+", "a+"):
            handle = self.open("new-" + mode.replace("+", "p"), mode)
            self.close(handle)
            self.assertTrue(os.path.exists(self.path("new-" + mode.replace("+", "p"))))
        for mode in ("r", "r+"):
            path = self.path("missing")
            self.assertEqual(self.agent.error("guest-file-open", path=path, mode=mode),
                             ("GenericError", "failed to open file '%s' (mode: '%s'): "
                              "No such file or directory" % (path, mode)))

    def test_new_files_honour_the_umask(self):
        # Deliberate difference: qemu-ga fchmods new files to 0666 whatever the umask.
        for umask, expected in ((0o022, 0o644), (0o077, 0o600), (0o000, 0o666)):
            old = os.umask(umask)
            try:
                handle = self.open("u%o" % umask, "w")
            finally:
                os.umask(old)
            self.close(handle)
            self.assertEqual(stat.S_IMODE(os.stat(self.path("u%o" % umask)).st_mode), expected)

    def test_an_existing_file_keeps_its_mode(self):
        path = self.make("f", b"old")
        os.chmod(path, 0o640)
        self.close(self.open("f", "w"))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        self.assertEqual(os.path.getsize(path), 0)

    def test_a_directory_opens_for_reading_and_reading_it_fails(self):
        handle = self.agent.call("guest-file-open", path=self.dir)
        self.assertEqual(self.agent.error("guest-file-read", handle=handle),
                         ("GenericError", "failed to read file: Is a directory"))
        self.assertEqual(self.agent.error("guest-file-open", path=self.dir, mode="w"),
                         ("GenericError", "failed to open file '%s' (mode: 'w'): Is a directory"
                          % self.dir))

    def test_a_fifo_never_hangs_the_agent(self):
        fifo = self.path("fifo")
        os.mkfifo(fifo)
        # No reader: opening for writing fails at once instead of blocking.
        self.assertEqual(self.agent.error("guest-file-open", path=fifo, mode="w"),
                         ("GenericError", "failed to open file '%s' (mode: 'w'): No such device "
                          "or address" % fifo))
        handle = self.open("fifo", "r")
        # No writer: end of file.
        self.assertEqual(self.read(handle), {"count": 0, "buf-b64": "", "eof": True})
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            # A writer but no data: EAGAIN, reported, not waited for.
            self.assertEqual(self.agent.error("guest-file-read", handle=handle),
                             ("GenericError", "failed to read file: Resource temporarily "
                              "unavailable"))
            # Some data, then the pipe runs dry: the data is returned.  (Deliberate
            # difference: qemu-ga reports EAGAIN here and the three bytes are lost.)
            os.write(writer, b"abc")
            self.assertEqual(self.read(handle), {"count": 3, "buf-b64": "YWJj", "eof": False})
            self.assertEqual(self.agent.error("guest-file-seek", handle=handle, offset=0,
                                              whence="cur"),
                             ("GenericError", "failed to seek file: Illegal seek"))
        finally:
            os.close(writer)
        self.assertEqual(self.read(handle), {"count": 0, "buf-b64": "", "eof": True})

    def test_path_errors(self):
        self.assertEqual(self.agent.error("guest-file-open", path=""),
                         ("GenericError", "failed to open file '' (mode: 'r'): "
                          "No such file or directory"))
        self.assertEqual(self.agent.error("guest-file-open", path="a\x00b"),
                         ("GenericError", "failed to open file 'a\x00b' (mode: 'r'): "
                          "Invalid argument"))
        self.assertEqual(self.agent.error("guest-file-open", path=self.path("nodir/f"),
                                          mode="w"),
                         ("GenericError", "failed to open file '%s' (mode: 'w'): "
                          "No such file or directory" % self.path("nodir/f")))

    def test_argument_types(self):
        self.assertEqual(self.agent.error("guest-file-open"),
                         ("GenericError", "Parameter 'path' is missing"))
        self.assertEqual(self.agent.error("guest-file-open", path=1),
                         ("GenericError", "Invalid parameter type for 'path', expected: string"))
        self.assertEqual(self.agent.error("guest-file-open", path="x", mode=None),
                         ("GenericError", "Invalid parameter type for 'mode', expected: string"))

    def test_file_commands_are_disabled_while_frozen(self):
        self.agent.agent.set_frozen(True)
        try:
            for name in ("guest-file-open", "guest-file-read", "guest-file-close"):
                self.assertEqual(self.agent.error(name, path="x", handle=1000)[1],
                                 "Command %s has been disabled: the agent is in frozen state"
                                 % name)
        finally:
            self.agent.agent.set_frozen(False)


class TestUnknownHandles(FileTestCase):
    def test_every_command_reports_an_unknown_handle(self):
        calls = {"guest-file-close": {}, "guest-file-flush": {}, "guest-file-read": {},
                 "guest-file-write": {"buf-b64": "YQ=="},
                 "guest-file-seek": {"offset": 0, "whence": 0}}
        for name, args in calls.items():
            self.assertEqual(self.agent.error(name, dict(args, handle=999999)),
                             ("GenericError", "handle '999999' has not been found"), name)

    def test_a_closed_handle_is_gone(self):
        self.make("f", b"x")
        handle = self.open("f")
        self.assertEqual(self.close(handle), {})
        self.assertEqual(self.agent.error("guest-file-close", handle=handle),
                         ("GenericError", "handle '%d' has not been found" % handle))
        self.assertEqual(self.agent.error("guest-file-read", handle=handle),
                         ("GenericError", "handle '%d' has not been found" % handle))

    def test_the_handle_is_checked_before_count(self):
        self.assertEqual(self.agent.error("guest-file-read", handle=5, count=-1),
                         ("GenericError", "handle '5' has not been found"))


class TestRead(FileTestCase):
    def test_count_defaults_to_4096(self):
        self.make("f", b"z" * 5000)
        handle = self.open("f")
        reply = self.read(handle)
        self.assertEqual((reply["count"], reply["eof"]), (4096, False))
        reply = self.read(handle)
        self.assertEqual((reply["count"], reply["eof"]), (904, True))

    def test_exact_remaining_bytes_are_not_eof_until_the_next_read(self):
        self.make("f", b"0123456789")
        handle = self.open("f")
        self.assertEqual(self.read(handle, 4), {"count": 4, "buf-b64": b64(b"0123"),
                                                "eof": False})
        self.assertEqual(self.read(handle, 6), {"count": 6, "buf-b64": b64(b"456789"),
                                                "eof": False})
        self.assertEqual(self.read(handle, 6), {"count": 0, "buf-b64": "", "eof": True})

    def test_count_zero_is_not_eof(self):
        self.make("f", b"")
        handle = self.open("f")
        self.assertEqual(self.read(handle, 0), {"count": 0, "buf-b64": "", "eof": False})
        self.assertEqual(self.read(handle, 1), {"count": 0, "buf-b64": "", "eof": True})
        self.assertEqual(self.read(handle, 0), {"count": 0, "buf-b64": "", "eof": False})

    def test_eof_is_not_sticky(self):
        # qemu-ga clears the stdio error and eof flags after every call.
        path = self.make("f", b"ab")
        handle = self.open("f")
        self.assertEqual(self.read(handle)["eof"], True)
        with open(path, "ab") as f:
            f.write(b"cd")
        self.assertEqual(self.read(handle), {"count": 2, "buf-b64": b64(b"cd"), "eof": True})

    def test_count_bounds(self):
        self.make("f", b"x")
        handle = self.open("f")
        for count in (-1, qga_mini.MAX_READ_COUNT + 1, 1 << 62, qga_mini.INT64_MAX):
            self.assertEqual(self.agent.error("guest-file-read", handle=handle, count=count),
                             ("GenericError", "value '%d' is invalid for argument count"
                              % count))
        reply = self.read(handle, qga_mini.MAX_READ_COUNT)
        self.assertEqual((reply["count"], reply["eof"]), (1, True))

    def test_count_type(self):
        self.assertEqual(self.agent.error("guest-file-read", handle=1000, count="1"),
                         ("GenericError", "Invalid parameter type for 'count', expected: "
                          "integer"))

    def test_a_write_only_handle_cannot_read(self):
        for mode in ("w", "a"):
            handle = self.open("wo", mode)
            self.assertEqual(self.agent.error("guest-file-read", handle=handle),
                             ("GenericError", "failed to read file: Bad file descriptor"))

    def test_binary_data_round_trips(self):
        data = bytes(range(256)) * 1000
        self.make("bin", data)
        handle = self.open("bin", "rb")
        reply = self.read(handle, len(data) + 1)
        self.assertEqual(base64.b64decode(reply["buf-b64"]), data)
        self.assertEqual((reply["count"], reply["eof"]), (len(data), True))

    def test_the_reply_keeps_qemu_ga_key_order(self):
        self.make("f", b"ab")
        handle = self.open("f")
        self.agent.send({"execute": "guest-file-read", "arguments": {"handle": handle}})
        self.assertEqual(self.agent.read_line(),
                         b'{"return": {"count": 2, "buf-b64": "YWI=", "eof": true}}')
        self.agent.send({"execute": "guest-file-seek",
                         "arguments": {"handle": handle, "offset": 1, "whence": 0}})
        self.assertEqual(self.agent.read_line(), b'{"return": {"eof": false, "position": 1}}')


class TestWrite(FileTestCase):
    def test_count_selects_a_prefix(self):
        handle = self.open("f", "w")
        self.assertEqual(self.write(handle, b"abcdef", 3), {"count": 3, "eof": False})
        self.assertEqual(self.write(handle, b"xyz", 0), {"count": 0, "eof": False})
        self.close(handle)
        with open(self.path("f"), "rb") as f:
            self.assertEqual(f.read(), b"abc")

    def test_count_bounds(self):
        handle = self.open("f", "w")
        for count in (-1, 4, qga_mini.INT64_MAX):
            self.assertEqual(self.agent.error("guest-file-write", handle=handle, count=count,
                                              **{"buf-b64": b64(b"abc")}),
                             ("GenericError", "value '%d' is invalid for argument count"
                              % count))

    def test_empty_data(self):
        handle = self.open("f", "w")
        self.assertEqual(self.write(handle, ""), {"count": 0, "eof": False})

    def test_a_read_only_handle_cannot_write(self):
        self.make("f", b"data")
        handle = self.open("f", "r")
        self.assertEqual(self.agent.error("guest-file-write", handle=handle,
                                          **{"buf-b64": "YQ=="}),
                         ("GenericError", "failed to write to file: Bad file descriptor"))
        self.assertEqual(self.agent.call("guest-file-flush", handle=handle), {})
        self.assertEqual(self.read(handle, 4)["count"], 4)

    def test_invalid_base64_is_refused_and_nothing_is_written(self):
        handle = self.open("f", "w+")
        for text in ("Y Q==", "YQ==\r\n", "a\u00e9", "YQ\x00==", "YQ-=", "YQ_=", "\t"):
            self.assertEqual(self.agent.error("guest-file-write", handle=handle,
                                              **{"buf-b64": text}),
                             ("GenericError", "Base64 data contains invalid characters"))
        self.assertEqual(os.path.getsize(self.path("f")), 0)

    def test_lenient_decoding_matches_glib(self):
        # Every case observed with qemu-ga 7.2 (reference 5.4) plus a few more.
        cases = {"YWJ": b"", "YQ": b"", "YQ=": b"", "YQ==": b"a", "YWJjZA": b"abc",
                 "YWJjZA==": b"abcd", "YQ==YWJj": b"aabc", "====": b"\x00",
                 "Y\nWJj": b"abc", "Y===": b"\x60", "=YQ=": b"\x01\x84", "YR==": b"a",
                 "YWI=": b"ab", "\n": b"", "YQ==\n": b"a", "": b"", "YW=j": b"a#",
                 "YQ==YQ==": b"aa", "Y\nQ\n=\n=\n": b"a", "========": b"\x00\x00",
                 "YWJj\nZGVm\n": b"abcdef", "YWJjZ": b"abc"}
        for text, expected in cases.items():
            self.assertEqual(qga_mini.decode_base64(text), expected, repr(text))
        handle = self.open("f", "w+")
        for text, expected in cases.items():
            self.seek(handle, 0, "set")
            os.truncate(self.path("f"), 0)
            self.assertEqual(self.write(handle, text), {"count": len(expected), "eof": False},
                             repr(text))
            with open(self.path("f"), "rb") as f:
                self.assertEqual(f.read(), expected, repr(text))

    def test_any_mix_of_padding_decodes_like_glib(self):
        rng = random.Random(7)
        alphabet = "AQZaz09+/==\n"
        for _ in range(3000):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
            self.assertEqual(qga_mini.decode_base64(text), glib_base64_decode(text), repr(text))

    def test_padding_everywhere_decodes_in_linear_time(self):
        started = time.time()
        self.assertEqual(qga_mini.decode_base64("====" * (4 << 20)), b"\x00" * (4 << 20))
        data = qga_mini.decode_base64("YQ==" + "YWJj" * (4 << 20))
        self.assertEqual((data[:4], len(data)), (b"aabc", 1 + 3 * (4 << 20)))
        self.assertLess(time.time() - started, 5)

    def test_canonical_base64_decodes_like_the_standard_library(self):
        for size in range(0, 70):
            data = os.urandom(size)
            self.assertEqual(qga_mini.decode_base64(b64(data)), data)
            self.assertEqual(qga_mini.decode_base64(base64.encodebytes(data).decode()), data)

    def test_append_mode_writes_at_the_end_whatever_the_position(self):
        path = self.make("f", b"0123456789")
        handle = self.open("f", "a")
        self.assertEqual(self.seek(handle, 0, "cur"), {"position": 0, "eof": False})
        self.write(handle, b"a")
        self.assertEqual(self.seek(handle, 0, "cur"), {"position": 11, "eof": False})
        self.seek(handle, 2, "set")
        self.write(handle, b"b")
        self.assertEqual(self.seek(handle, 0, "cur"), {"position": 12, "eof": False})
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"0123456789ab")

    def test_read_then_write_in_a_plus_mode(self):
        path = self.make("f", b"0123456789")
        handle = self.open("f", "a+")
        self.assertEqual(self.read(handle, 3), {"count": 3, "buf-b64": b64(b"012"),
                                                "eof": False})
        self.write(handle, b"c")
        self.assertEqual(self.seek(handle, 0, "cur"), {"position": 11, "eof": False})
        self.assertEqual(self.read(handle, 3), {"count": 0, "buf-b64": "", "eof": True})
        self.seek(handle, 0, "set")
        self.assertEqual(self.read(handle, 100)["buf-b64"], b64(b"0123456789c"))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"0123456789c")

    def test_r_plus_overwrites_in_place(self):
        path = self.make("f", b"0123456789")
        handle = self.open("f", "r+")
        self.read(handle, 2)
        self.write(handle, b"XY")
        self.assertEqual(self.read(handle, 2), {"count": 2, "buf-b64": b64(b"45"),
                                                "eof": False})
        self.close(handle)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"01XY456789")

    def test_written_data_is_in_the_file_at_once(self):
        # Deliberate difference: qemu-ga keeps it in a stdio buffer until flush/seek/close.
        handle = self.open("f", "w")
        self.write(handle, b"now")
        with open(self.path("f"), "rb") as f:
            self.assertEqual(f.read(), b"now")
        self.assertEqual(self.agent.call("guest-file-flush", handle=handle), {})

    def test_a_full_pipe_reports_what_went_in(self):
        read_end, write_end = os.pipe()
        try:
            fifo_path = "/proc/self/fd/%d" % write_end
            handle = self.agent.call("guest-file-open", path=fifo_path, mode="w")
            chunk = b"p" * (1 << 20)
            reply = self.write(handle, chunk)
            self.assertGreater(reply["count"], 0)
            self.assertLess(reply["count"], len(chunk))
            self.assertEqual(self.agent.error("guest-file-write", handle=handle,
                                              **{"buf-b64": b64(chunk)}),
                             ("GenericError", "failed to write to file: Resource temporarily "
                              "unavailable"))
            self.assertEqual(self.agent.call("guest-ping"), {})
        finally:
            os.close(read_end)
            os.close(write_end)


class TestSeek(FileTestCase):
    def setUp(self):
        FileTestCase.setUp(self)
        self.make("f", b"0123456789")
        self.handle = self.open("f")

    def test_names_and_numbers(self):
        for whence, offset, position in (("set", 3, 3), ("cur", 2, 5), ("end", -1, 9),
                                         (0, 1, 1), (1, 1, 2), (2, 0, 10)):
            self.assertEqual(self.seek(self.handle, offset, whence),
                             {"position": position, "eof": False})

    def test_past_the_end_is_allowed(self):
        self.assertEqual(self.seek(self.handle, 100, "cur"), {"position": 100, "eof": False})
        self.assertEqual(self.read(self.handle), {"count": 0, "buf-b64": "", "eof": True})

    def test_seeking_clears_eof(self):
        self.read(self.handle, 100)
        self.assertEqual(self.seek(self.handle, 0, "end"), {"position": 10, "eof": False})

    def test_errors(self):
        error = lambda **a: self.agent.error("guest-file-seek", dict(a, handle=self.handle))
        self.assertEqual(error(offset=-5, whence="set"),
                         ("GenericError", "failed to seek file: Invalid argument"))
        self.assertEqual(error(offset=0, whence=3),
                         ("GenericError", "invalid whence code 3"))
        self.assertEqual(error(offset=0, whence=-1),
                         ("GenericError", "invalid whence code -1"))
        self.assertEqual(error(offset=0, whence="bogus"),
                         ("GenericError", "Parameter 'whence' does not accept value 'bogus'"))
        self.assertEqual(error(offset=0, whence=True),
                         ("GenericError", "Invalid parameter type for 'whence', expected: "
                          "GuestFileWhence"))
        self.assertEqual(error(offset=0, whence=1.5),
                         ("GenericError", "Invalid parameter type for 'whence', expected: "
                          "integer"))
        self.assertEqual(error(offset=0),
                         ("GenericError", "Parameter 'whence' is missing"))
        self.assertEqual(error(offset="0", whence=0),
                         ("GenericError", "Invalid parameter type for 'offset', expected: "
                          "integer"))


class TestLifetime(FileTestCase):
    def test_handles_are_closed_when_the_agent_exits(self):
        self.make("f", b"x")
        handle = self.open("f")
        fd = self.agent.agent.file_handles[handle]
        self.agent.agent.shutdown()
        self.assertEqual(self.agent.agent.file_handles, {})
        with self.assertRaises(OSError) as caught:
            os.fstat(fd)
        self.assertEqual(caught.exception.errno, errno.EBADF)

    def test_cleanup_is_registered_once(self):
        self.make("f", b"x")
        before = len(self.agent.agent.cleanups)
        for _ in range(5):
            self.close(self.open("f"))
        self.assertEqual(len(self.agent.agent.cleanups), before + 1)


class TestRealProcess(unittest.TestCase):
    """Handles across reconnects and restarts, and a 48 MiB read, with qga_mini.py itself."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="qga-files-proc-")
        self.statedir = os.path.join(self.dir, "state")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_handles_survive_reconnects_and_stay_unique_across_restarts(self):
        path = os.path.join(self.dir, "f")
        with open(path, "wb") as f:
            f.write(b"persist")
        with AgentProcess(statedir=self.statedir) as agent:
            client = agent.connect()
            self.assertEqual(client.call("guest-file-open", path=path), 1000)
            handle = client.call("guest-file-open", path=path)
            self.assertEqual(handle, 1001)
            client.sock.close()
            client = agent.connect()
            self.assertEqual(client.call("guest-file-read", handle=handle)["count"], 7)
            client.sock.close()
        with AgentProcess(statedir=self.statedir) as agent:
            client = agent.connect()
            self.assertEqual(client.error("guest-file-read", handle=1001),
                             ("GenericError", "handle '1001' has not been found"))
            self.assertEqual(client.call("guest-file-open", path=path), 1002)
            client.sock.close()
        with open(os.path.join(self.statedir, "qga.state")) as f:
            self.assertEqual(f.read(), "[global]\nfd_counter=1003\n")

    def test_a_48_mib_read_in_one_call_within_3x_the_payload(self):
        size = qga_mini.MAX_READ_COUNT
        path = os.path.join(self.dir, "big")
        block = os.urandom(MIB)
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            for i in range(size // MIB):
                chunk = block[i:] + block[:i]
                f.write(chunk)
                digest.update(chunk)
        with AgentProcess(statedir=self.statedir) as agent:
            client = agent.connect(timeout=60)
            handle = client.call("guest-file-open", path=path)
            baseline = vm_hwm(agent.proc.pid)
            client.send({"execute": "guest-file-read",
                         "arguments": {"handle": handle, "count": size}})
            line = read_long_line(client.sock)
            peak = vm_hwm(agent.proc.pid)
            client.sock.close()
        head = b'{"return": {"count": %d, "buf-b64": "' % size
        tail = b'", "eof": false}}'
        self.assertEqual(line[:len(head)], head)
        self.assertEqual(line[-len(tail):], tail)
        data = base64.b64decode(memoryview(line)[len(head):-len(tail)])
        self.assertEqual(hashlib.sha256(data).hexdigest(), digest.hexdigest())
        if RSS_BOUNDS_HOLD:
            self.assertLess(peak - baseline, 3 * size, "peak RSS grew by %d MiB" %
                            ((peak - baseline) // MIB))


def glib_base64_decode(text):
    """GLib's g_base64_decode_step, transcribed character by character (after qemu's check
    that only the alphabet, '=' and newlines occur)."""
    rank = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                       "0123456789+/")}
    rank["="] = 0
    out, value, count, last = bytearray(), 0, 0, ["", ""]
    for c in text:
        if c not in rank:
            continue
        last = [c, last[0]]
        value = (value << 6 | rank[c]) & 0xFFFFFF
        count += 1
        if count == 4:
            out.append(value >> 16)
            if last[1] != "=":
                out.append(value >> 8 & 0xFF)
            if last[0] != "=":
                out.append(value & 0xFF)
            count = 0
    return bytes(out)


def vm_hwm(pid):
    """A process's peak resident set size in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def read_long_line(sock):
    """One reply line of any size, read without quadratic copying."""
    buf = bytearray()
    while True:
        chunk = sock.recv(4 * MIB)
        if not chunk:
            raise EOFError("agent closed the connection")
        buf += chunk
        if buf.endswith(b"\n"):
            return bytes(buf[:-1])


if __name__ == "__main__":
    unittest.main()
