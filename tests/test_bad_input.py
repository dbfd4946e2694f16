"""Every argument of every command given bad values: the wrong JSON type, huge, negative,
empty, with an embedded NUL or newline, a lone surrogate, and path traversal where the
argument names a path or a user.

The cases come from the command table (tests.hostile.argument_cases), so a command added
later is covered as soon as it is registered.  Each reply must be one well-formed JSON line:
a QAPI error, or a success listed in DOCUMENTED_SUCCESSES (checked against schema.json); the
agent must answer guest-sync afterwards; and nothing outside the temporary directories may
change.  The agent is rooted in a fixture guest (users, CPUs, memory blocks, shadow) with the
kernel hooks forbidden; the file system commands' bodies (freeze, thaw, trim) are replaced by
a stub, since their ioctls would act on the disk holding the fixture tree.
"""
import base64
import os
import shutil
import tempfile
import time
import unittest
from unittest import mock

from tests.guestroot import allow_machine_changes, forbid_machine_changes
from tests.hostile import (NEVER_RUN_COMMANDS, argument_cases, fixture_guest, parse_reply_line,
                           valid_value)
from tests.support import SCHEMA, AgentHarness, qga_mini

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBadInputMatrixKeyForQgaMiniTests qga@test"
ANY = "any bad value"

# (command, argument path) -> the variants that may succeed, and why.  Anything else that
# succeeds fails the test, so a change of behaviour is seen and written down here.
DOCUMENTED_SUCCESSES = {
    ("guest-sync", "id"): (ANY, "echoes any int64/uint64 id"),
    ("guest-sync-delimited", "id"): (ANY, "echoes any int64/uint64 id"),
    ("guest-file-open", "path"): (("traversal 0", "traversal 1", "traversal 2", "traversal 3"),
                                  "opens any path that exists, read-only here: the host is "
                                  "root (README)"),
    ("guest-file-read", "count"): (("zero",), "a read of 0 bytes"),
    ("guest-file-write", "buf-b64"): (("empty string", "huge string", "embedded newline"),
                                      "valid base64 (newlines are skipped, as GLib does)"),
    ("guest-file-write", "count"): (("zero",), "a write of 0 bytes"),
    ("guest-file-seek", "offset"): (("zero", "huge int64"),
                                    "lseek() accepts it (a sparse position)"),
    ("guest-file-seek", "whence"): (("zero",), "0 is SEEK_SET"),
    ("guest-exec", "path"): (("traversal 0", "traversal 1", "traversal 2", "traversal 3"),
                             "a relative path is searched as GLib does; runs nothing here"),
    ("guest-exec", "arg"): (("empty list", "huge list"), "argv is the host's to choose"),
    ("guest-exec", "arg[0]"): (("empty string", "embedded newline", "lone surrogate",
                                "non-ASCII"), "argv is the host's to choose"),
    ("guest-exec", "env"): (("empty list", "huge list"), "the environment is the host's"),
    ("guest-exec", "env[0]"): (("empty string", "embedded newline", "embedded NUL",
                                "lone surrogate", "non-ASCII", "huge string"),
                               "entries without '=' are skipped"),
    ("guest-exec", "input-data"): (("empty string", "huge string", "embedded newline"),
                                   "valid base64 goes to the child's stdin"),
    ("guest-ssh-add-authorized-keys", "keys"): (("empty list", "huge list"),
                                                "adds nothing / one key once"),
    ("guest-ssh-add-authorized-keys", "keys[0]"): (
        ("empty string", "huge string", "lone surrogate", "non-ASCII", "traversal 0",
         "traversal 1", "traversal 2", "traversal 3"), "a key is text, not checked (qemu-ga)"),
    ("guest-ssh-remove-authorized-keys", "keys"): (("empty list", "huge list"),
                                                   "removes nothing"),
    ("guest-ssh-remove-authorized-keys", "keys[0]"): (
        ("empty string", "huge string", "lone surrogate", "non-ASCII", "traversal 0",
         "traversal 1", "traversal 2", "traversal 3"), "removes nothing"),
    ("guest-set-user-password", "password"): (("empty string", "huge string",
                                               "embedded newline"),
                                              "valid base64; the crypted text is stored"),
    ("guest-set-vcpus", "vcpus"): (("empty list", "huge list"),
                                   "0 CPUs changed (qemu-ga too) / the same CPU 4096 times"),
    ("guest-set-vcpus", "vcpus[0].logical-id"): (("zero",), "cpu0 exists and is online"),
    ("guest-set-memory-blocks", "mem-blks"): (ANY, "one response per block, errors inside"),
    ("guest-set-memory-blocks", "mem-blks[0].phys-index"): (ANY, "a not-found response"),
}


def _stub(name, calls):
    def stub(agent, **arguments):
        calls.append((name, arguments))
    return stub


def _watched_state():
    """What a command must never change on this machine: account files, root's keys, the
    top-level directories, and the clock (against the monotonic clock)."""
    state = {"clock": round(time.time() - time.monotonic())}
    for path in ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/.pwd.lock", "/etc/adjtime",
                 "/root/.ssh/authorized_keys", "/home/alice"):
        try:
            st = os.lstat(path)
            state[path] = (st.st_mtime_ns, st.st_size, st.st_mode)
        except OSError:
            state[path] = None
    for directory in ("/", "/etc", "/root", "/root/.ssh", "/home", "/bin", "/usr/bin"):
        try:
            state[directory + "/"] = sorted(os.listdir(directory))
        except OSError:
            state[directory + "/"] = None
    return state


class BadArguments(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.guest = fixture_guest()
        cls.guest.write("/etc/.pwd.lock", b"")
        cls.cwd = os.getcwd()
        cls.scratch = tempfile.mkdtemp(prefix="qga-bad-input-")
        os.chdir(cls.scratch)           # relative paths (file-open, exec) land in here
        cls.before = _watched_state()
        cls.patchers = forbid_machine_changes()
        cls.stub_calls = []
        stubs = {name: qga_mini.COMMANDS[name]._replace(func=_stub(name, cls.stub_calls))
                 for name in NEVER_RUN_COMMANDS if name in qga_mini.COMMANDS}
        cls.patchers.append(mock.patch.dict(qga_mini.COMMANDS, stubs))
        cls.patchers[-1].start()
        cls.h = AgentHarness(host_root=cls.guest.root, environ={"PATH": "/usr/bin:/bin"})
        cls.h.agent.log._syslog = False
        cls.data_file = os.path.join(cls.scratch, "data")
        with open(cls.data_file, "wb") as f:
            f.write(b"bad input matrix\n" * 100)
        cls.handle = cls.h.call("guest-file-open", path=cls.data_file, mode="r+")
        cls.sync = 0

    @classmethod
    def tearDownClass(cls):
        cls.h.close()
        allow_machine_changes(cls.patchers)
        os.chdir(cls.cwd)
        shutil.rmtree(cls.scratch, ignore_errors=True)
        cls.guest.close()

    # -- one case ---------------------------------------------------------------------------------

    def base_arguments(self, name, cmd):
        """Valid values for the required arguments, made real where a value must name
        something that exists (an open handle, a fixture user, a program)."""
        overrides = {"handle": self.handle, "username": "alice", "keys": [KEY],
                     "password": base64.b64encode(b"$6$salt$hash").decode(), "crypted": True,
                     "vcpus": [{"logical-id": 1, "online": True}],
                     "mem-blks": [{"phys-index": 0, "online": True}],
                     "path": self.data_file if name == "guest-file-open" else "/bin/true"}
        return {spec: overrides.get(spec, valid_value(typ))
                for spec, typ in cmd.data.items() if not spec.startswith("*")}

    def run_case(self, name, arguments):
        """The reply to one request, checked as a line; then guest-sync must answer."""
        self.h.send({"execute": name, "arguments": arguments})
        reply = parse_reply_line(self.h.read_line())
        self.cleanup_after(name, reply)
        BadArguments.sync += 1
        self.assertEqual(self.h.call("guest-sync", id=self.sync), self.sync,
                         "the agent stopped answering after %s %r" % (name, arguments))
        return reply

    def cleanup_after(self, name, reply):
        """Close what a successful case opened and collect what it started."""
        result = reply.get("return")
        if name == "guest-file-open" and isinstance(result, int):
            self.h.call("guest-file-close", handle=result)
        elif name == "guest-exec" and isinstance(result, dict):
            deadline = time.time() + 10
            while not self.h.call("guest-exec-status", pid=result["pid"])["exited"]:
                self.assertLess(time.time(), deadline, "guest-exec child did not exit")
                time.sleep(0.005)

    def allowed_success(self, name, path, variant):
        documented = DOCUMENTED_SUCCESSES.get((name, path))
        return documented is not None and (documented[0] == ANY or variant in documented[0])

    # -- the matrix -------------------------------------------------------------------------------

    def test_every_argument_of_every_command(self):
        cases = 0
        for name in sorted(qga_mini.COMMANDS):
            cmd = qga_mini.COMMANDS[name]
            for path, variant, arguments, must_fail in argument_cases(
                    cmd.data, self.base_arguments(name, cmd)):
                cases += 1
                with self.subTest(command=name, argument=path, variant=variant):
                    reply = self.run_case(name, arguments)
                    if "error" in reply:
                        continue
                    self.assertFalse(must_fail, "accepted a value of the wrong type")
                    if name in NEVER_RUN_COMMANDS:
                        continue            # the stub answered: the checker let it through
                    self.assertTrue(self.allowed_success(name, path, variant),
                                    "undocumented success: %r" % (reply,))
                    SCHEMA.check_return(name, reply["return"])
        self.assertGreater(cases, 500)
        self.assertEqual(_watched_state(), self.before, "something outside the temporary "
                         "directories changed")
        self.assertEqual(sorted(os.listdir(self.scratch)), ["data"])

    def test_type_errors_never_reach_a_command_body(self):
        """Wrong JSON types are refused by the argument checker, before the body runs."""
        for name in NEVER_RUN_COMMANDS:
            cmd = qga_mini.COMMANDS.get(name)
            if cmd is None:
                continue
            del self.stub_calls[:]
            for _, _, arguments, must_fail in argument_cases(cmd.data,
                                                              self.base_arguments(name, cmd)):
                if must_fail:
                    self.assertIn("error", self.run_case(name, arguments))
            self.assertEqual(self.stub_calls, [])

    def test_the_handle_still_works_after_the_matrix(self):
        self.h.call("guest-file-seek", handle=self.handle, offset=0, whence="set")
        self.assertEqual(self.h.call("guest-file-read", handle=self.handle, count=4)["count"], 4)


if __name__ == "__main__":
    unittest.main()
