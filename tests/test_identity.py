"""guest-get-host-name, -timezone, -osinfo, -users and guest-set-user-password.

The os-release cases were answered by qemu-ga 7.2.22 (QGA_OS_RELEASE pointing at each
text); a live side-by-side comparison runs too when qemu-ga is installed.  Password changes
only ever touch a temporary guest root (its chpasswd is a recording stand-in, its
/etc/shadow a copy of tests/fixtures/identity/shadow).
"""
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import warnings
from unittest import mock

from tests.guestroot import GuestRoot, allow_machine_changes, forbid_machine_changes
from tests.support import (FIXTURES, PYTHON, AgentHarness, AgentProcess, connect_unix,
                           needs_root, qga_mini, stop_process)
from tests.system_support import ORACLE_STOP_GRACE

IDENTITY = os.path.join(FIXTURES, "identity")
TEST_QGA_OS_RELEASE = os.path.join(IDENTITY, "test-qga-os-release")
_patchers = []


def setUpModule():
    _patchers.extend(forbid_machine_changes())


def tearDownModule():
    allow_machine_changes(_patchers)


def fixture(name, binary=False):
    with open(os.path.join(IDENTITY, name), "rb" if binary else "r") as f:
        return f.read()


class HostName(unittest.TestCase):
    def test_the_kernels_host_name(self):
        with AgentHarness() as h:
            self.assertEqual(h.call("guest-get-host-name"), {"host-name": socket.gethostname()})


class Timezone(unittest.TestCase):
    def zone(self, tz):
        with mock.patch.dict(os.environ, {"TZ": tz}):
            try:
                with AgentHarness() as h:
                    return h.call("guest-get-timezone")
            finally:
                os.environ.pop("TZ")
                time.tzset()

    def test_abbreviation_and_offset_east_of_utc(self):
        self.assertEqual(self.zone("UTC"), {"zone": "UTC", "offset": 0})
        self.assertEqual(self.zone("<+0530>-5:30"), {"zone": "+0530", "offset": 19800})
        self.assertEqual(self.zone("EST5"), {"zone": "EST", "offset": -18000})

    def test_daylight_saving_time_follows_the_date(self):
        summer = time.localtime().tm_mon in range(4, 10)
        self.assertEqual(self.zone("CET-1CEST,M3.5.0,M10.5.0/3"),
                         {"zone": "CEST", "offset": 7200} if summer
                         else {"zone": "CET", "offset": 3600})


# (os-release text, what qemu-ga 7.2 answered), the uname members left out.
QEMU_GA_OS_RELEASE_ANSWERS = [
    (b'ID=a\nID=b\n', {'id': 'b'}),
    (b'  ID = spaced value \nNAME\t=\tx\n', {'name': 'x', 'id': 'spaced'}),
    (b'ID=a\n[other]\nNAME=b\n[os-release]\nVERSION=c\n', {'version': 'c', 'id': 'a'}),
    (b'ID=a\nthis line is bad\nNAME=b\n', {}),
    (b'ID=a\n=novalue\n', {}),
    (b'ID=a\r\nNAME="x y"\r\n', {'name': 'x y', 'id': 'a'}),
    (b'ID=a\nNAME [de]=x\n', {}),
    (b'ID=a\nNAME[de]=x\nNAME=y\n', {'name': 'y', 'id': 'a'}),
    (b'ID=a\n[]\nNAME=b\n', {}),
    (b'ID=a\nEncoding=latin1\n', {}),
    (b'ID=\xff\n', {}),
    (b'ID=a\n# comment\n   # indented comment\n\n\t\nNAME=b', {'name': 'b', 'id': 'a'}),
    (b'ID=a\x00NAME=b\n', {'id': 'a'}),
    (b'ID=a\n[x\n', {}),
    (b'ID=a\n [sec] \nNAME=b\n', {'id': 'a'}),
    (b'ID=a\nNA]ME=b\n', {}),
    (b'ID=a\nNAME=""\nVARIANT=\n', {'name': '', 'variant': '', 'id': 'a'}),
    (b'ID=\\"a\\"\nNAME="a\\"b"c"\n', {'name': 'a"b', 'id': '\\"a\\"'}),
    (b'ID=a\nNAME[]=x\nVERSION[de_DE.UTF-8@euro]=y\n', {'id': 'a'}),
    (b'ID=a\n[os-release]\n[os-release]\nNAME=b\n', {'name': 'b', 'id': 'a'}),
    (b'ID=a\n[se[c]\nNAME=b\n', {}),
    (b'ID=a\n[sec]x\nNAME=b\n', {}),
    (b'ID=\t\ttabbed\t\nNAME="  lead"\n', {'name': '  lead', 'id': 'tabbed\t'}),
    (b'VERSION=a;b c\nVARIANT="a\\nb\\\\"\n', {'version': 'a', 'variant': 'a\\nb\\'}),
]


def os_fields(values):
    if values is None:
        return {}
    return {member: qga_mini.os_release_value(values[key])
            for member, key in qga_mini.OS_RELEASE_FIELDS if key in values}


class OsReleaseParser(unittest.TestCase):
    def test_the_answers_qemu_ga_gave(self):
        for text, answer in QEMU_GA_OS_RELEASE_ANSWERS:
            with self.subTest(text=text):
                self.assertEqual(os_fields(qga_mini.parse_os_release(text)), answer)

    def test_quoting_bugs_of_qemu_ga_are_not_copied(self):
        # qemu-ga answers "'single", "unterminatedd", and '"' for the last one.
        value = qga_mini.os_release_value
        self.assertEqual(value("'single quoted'"), "single quoted")
        self.assertEqual(value("'no end"), "no end")
        self.assertEqual(value('"unterminated'), "unterminated")
        self.assertEqual(value('"'), "")

    def test_unquoted_value_ends_at_a_space_or_semicolon_without_warnings(self):
        # Python 3.13 deprecates re.split's positional maxsplit: under -W error the
        # command failed there.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            self.assertEqual(qga_mini.os_release_value("a b;c"), "a")
            self.assertEqual(qga_mini.os_release_value("a;b c"), "a")


class OsInfo(unittest.TestCase):
    def setUp(self):
        self.guest = GuestRoot()
        self.addCleanup(self.guest.close)
        uname = os.uname()
        self.kernel = {"kernel-release": uname.release, "kernel-version": uname.version,
                       "machine": uname.machine}

    def osinfo(self, environ=None):
        with AgentHarness(host_root=self.guest.root, environ=environ) as h:
            return h.call("guest-get-osinfo")

    def test_test_qga_os_release_file(self):
        with AgentHarness(environ={"QGA_OS_RELEASE": TEST_QGA_OS_RELEASE}) as h:
            info = h.call("guest-get-osinfo")
        self.assertEqual(info, dict(self.kernel, **{
            "id": "qemu-ga-test", "name": "QEMU-GA", "pretty-name": "QEMU Guest Agent test",
            "version": "Test 1", "version-id": "1", "variant": "Unit test \"'$`\\ and \\\\ etc.",
            "variant-id": "unit-test"}))

    def test_etc_then_usr_lib(self):
        self.guest.write("/usr/lib/os-release", "ID=usrlib\n")
        self.assertEqual(self.osinfo(), dict(self.kernel, id="usrlib"))
        self.guest.write("/etc/os-release", "ID=etc\nNAME=Etc\n")
        self.assertEqual(self.osinfo(), dict(self.kernel, id="etc", name="Etc"))
        self.guest.write("/etc/os-release", "not key-file text\n")
        self.assertEqual(self.osinfo(), dict(self.kernel, id="usrlib"))

    def test_only_the_kernel_fields_without_a_file(self):
        self.assertEqual(self.osinfo(), self.kernel)

    def test_qga_os_release_is_the_only_file_read_when_set(self):
        self.guest.write("/etc/os-release", "ID=etc\n")
        self.guest.write("/custom", "ID=custom\n")
        self.assertEqual(self.osinfo({"QGA_OS_RELEASE": "/custom"}),
                         dict(self.kernel, id="custom"))
        self.assertEqual(self.osinfo({"QGA_OS_RELEASE": "/missing"}), self.kernel)

    def test_members_in_qemu_ga_s_order(self):
        with AgentHarness(environ={"QGA_OS_RELEASE": TEST_QGA_OS_RELEASE}) as h:
            h.send({"execute": "guest-get-osinfo"})
            line = h.read_line().decode()
        self.assertEqual(list(json.loads(line)["return"]), list(qga_mini.OSINFO_MEMBER_ORDER))


def utmp_record(ut_type, user, seconds, micros):
    """A glibc x86-64 struct utmp, laid out independently of the agent's own format."""
    record = bytearray(b"\xaa" * 384)              # junk in the fields the agent skips
    struct.pack_into("=h", record, 0, ut_type)
    record[44:76] = user.ljust(32, b"\0")
    struct.pack_into("=ii", record, 340, seconds, micros)
    return bytes(record)


X86_64_UTMP = qga_mini.UTMP_RECORD.size == 384


class Users(unittest.TestCase):
    def setUp(self):
        self.guest = GuestRoot()
        self.addCleanup(self.guest.close)

    def users(self):
        with AgentHarness(host_root=self.guest.root) as h:
            return h.call("guest-get-users")

    def sessions(self):
        self.guest.mkdir("/run/systemd/sessions")
        for name in os.listdir(os.path.join(IDENTITY, "sessions")):
            shutil.copy(os.path.join(IDENTITY, "sessions", name),
                        self.guest.path("/run/systemd/sessions/" + name))
        os.mkfifo(self.guest.path("/run/systemd/sessions/3.ref"))   # reading it would hang

    @unittest.skipUnless(X86_64_UTMP, "the fixture records use the 384-byte utmp layout")
    def test_utmp_earliest_login_per_user_in_order_of_appearance(self):
        self.guest.write("/var/run/utmp", b"".join([
            utmp_record(7, b"alice", 1700000300, 654321),
            utmp_record(8, b"dead", 1600000000, 0),           # DEAD_PROCESS
            utmp_record(6, b"LOGIN", 1600000000, 0),          # LOGIN_PROCESS
            utmp_record(7, b"bob", 1700000200, 1),
            utmp_record(7, b"alice", 1700000100, 123456),
            utmp_record(7, b"x" * 32, 1700000400, 0),         # a name filling ut_user
        ]) + b"\0" * 100)                                    # a torn last record is ignored
        self.assertEqual(self.users(), [
            {"user": "alice", "login-time": 1700000100.123456},
            {"user": "bob", "login-time": 1700000200.000001},
            {"user": "x" * 32, "login-time": 1700000400.0}])

    @unittest.skipUnless(shutil.which("utmpdump") and X86_64_UTMP, "needs utmpdump")
    def test_a_utmp_written_by_util_linux(self):
        text = ("[7] [01234] [ts/0] [alice   ] [pts/0       ] [192.0.2.1           ] "
                "[192.0.2.1      ] [2023-11-14T22:13:20,123456+00:00]\n"
                "[8] [01235] [ts/1] [bob     ] [pts/1       ] [                    ] "
                "[0.0.0.0        ] [2023-11-14T22:15:00,000000+00:00]\n")
        data = subprocess.run(["utmpdump", "-r"], input=text.encode(), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL).stdout
        self.assertEqual(qga_mini.parse_utmp(data), [("alice", 1700000000.123456)])

    def test_an_existing_utmp_is_the_whole_answer(self):
        self.guest.write("/var/run/utmp", b"")
        self.sessions()
        self.assertEqual(self.users(), [])

    def test_logind_sessions_when_there_is_no_utmp(self):
        self.sessions()
        self.assertEqual(self.users(), [
            {"user": "alice", "login-time": 1700000100.123456},
            {"user": "bob", "login-time": 1700000200.000001}])

    def test_nothing_at_all_is_an_empty_list(self):
        self.assertEqual(self.users(), [])

    def test_session_parser_keeps_only_users_logins(self):
        parse = qga_mini.parse_logind_session
        self.assertEqual(parse(fixture("sessions/3")), ("alice", 1700000300.654321))
        for name in ("c1", "4", "5"):
            self.assertIsNone(parse(fixture("sessions/" + name)), name)
        self.assertIsNone(parse("USER=a\nREALTIME=\n"))
        self.assertEqual(parse("USER=a\nREALTIME=5\n"), ("a", 5e-06))


class PasswordFiles(unittest.TestCase):
    def test_password_field_replacement(self):
        shadow = fixture("shadow", binary=True)
        new = qga_mini.replace_password_field(shadow, b"alice", b"$6$new", 20000)
        self.assertEqual(new, shadow.replace(b"alice:$6$old$oldhash:19001:",
                                             b"alice:$6$new:20000:"))
        self.assertIsNone(qga_mini.replace_password_field(shadow, b"carol", b"x", 1))
        self.assertIsNone(qga_mini.replace_password_field(shadow, b"alic", b"x", 1))
        passwd = fixture("passwd", binary=True)
        self.assertIn(b"\nbob:$1$h:4244:4244::",
                      qga_mini.replace_password_field(passwd, b"bob", b"$1$h"))

    def test_passwd_lookup_in_a_fixture_root_and_on_this_machine(self):
        host = qga_mini.Host(IDENTITY.rsplit("/", 1)[0] + "/no-such-root")
        self.assertIsNone(qga_mini.lookup_user(host, "alice"))
        self.assertEqual(qga_mini.parse_passwd(fixture("passwd"), "alice"),
                         ("alice", 4242, 4243, "/home/alice"))
        self.assertIsNone(qga_mini.parse_passwd(fixture("passwd"), ""))
        self.assertEqual(qga_mini.lookup_user(qga_mini.Host("/"), "root")[:2], ("root", 0))
        self.assertIsNone(qga_mini.lookup_user(qga_mini.Host("/"), "no-such-user-qga"))
        self.assertIsNone(qga_mini.lookup_user(qga_mini.Host("/"), "root\0x"))


class SetUserPassword(unittest.TestCase):
    def setUp(self):
        self.guest = GuestRoot()
        self.addCleanup(self.guest.close)
        self.guest.write("/etc/passwd", fixture("passwd"))

    def agent(self):
        h = AgentHarness(host_root=self.guest.root, environ={"PATH": "/usr/bin:/bin"})
        self.addCleanup(h.close)
        return h

    def shadow(self, mode=0o640, gid=42):
        real = self.guest.write("/etc/shadow", fixture("shadow"), mode)
        os.chown(real, 0, gid)
        return real

    def test_validation_as_qemu_ga_and_before_anything_runs(self):
        self.guest.standin("/usr/sbin/chpasswd")
        h = self.agent()
        cases = [
            (("alice", "!!!", False), "Base64 data contains invalid characters"),
            (("a\nb", "!!!", False), "Base64 data contains invalid characters"),
            (("a:b", "eAp4", False), "forbidden characters in raw password"),   # "x\nx"
            (("a:b", "eA==", False), "forbidden characters in username"),
            (("a\nb", "eA==", True), "forbidden characters in username"),
            (("a\0b", "eA==", False), "forbidden characters in username"),
            (("alice", "JDYkYTpi", True), "forbidden characters in crypted password"),
        ]
        for (user, password, crypted), text in cases:
            with self.subTest(user=user, password=password):
                self.assertEqual(h.error("guest-set-user-password", username=user,
                                         password=password, crypted=crypted),
                                 ("GenericError", text))
        self.assertEqual(self.guest.calls(), [])

    def test_chpasswd_is_fed_on_stdin(self):
        self.guest.standin("/usr/sbin/chpasswd", stdin=True)
        h = self.agent()
        h.call("guest-set-user-password", username="alice", password="czNjcjN0OiB4", crypted=False)
        h.call("guest-set-user-password", username="alice", password="JDYkYWJj", crypted=True)
        h.call("guest-set-user-password", username="bob", password="YQBi", crypted=False)
        self.assertEqual(self.guest.calls(), ["chpasswd ", "stdin:alice:s3cr3t: x",
                                              "chpasswd -e", "stdin:alice:$6$abc",
                                              "chpasswd ", "stdin:bob:a"])

    def test_a_chpasswd_failure_is_qemu_ga_s_text(self):
        self.guest.standin("/usr/sbin/chpasswd", status=1)
        h = self.agent()
        self.assertEqual(h.error("guest-set-user-password", username="nosuch", password="eA==",
                                 crypted=False)[1],
                         "child process has failed to set user password")
        self.guest.standin("/usr/sbin/chpasswd", script="kill -9 $$")
        self.assertEqual(h.error("guest-set-user-password", username="alice", password="eA==",
                                 crypted=False)[1], "child process has terminated abnormally")

    def test_a_raw_password_needs_chpasswd(self):
        self.shadow()
        self.assertEqual(self.agent().error("guest-set-user-password", username="alice",
                                            password="eA==", crypted=False)[1],
                         "cannot find 'chpasswd' program in PATH: only a crypted password "
                         "can be set without it")
        self.assertEqual(self.guest.read("/etc/shadow"), fixture("shadow"))

    @needs_root
    def test_without_chpasswd_a_crypted_password_goes_into_shadow(self):
        real = self.shadow()
        before = os.stat(real)
        self.agent().call("guest-set-user-password", username="alice",
                          password="JDYkbmV3JG5ld2hhc2g=", crypted=True)     # $6$new$newhash
        after = os.stat(real)
        today = int(time.time() // 86400)
        self.assertEqual(self.guest.read("/etc/shadow"), fixture("shadow").replace(
            "alice:$6$old$oldhash:19001:", "alice:$6$new$newhash:%d:" % today))
        self.assertNotEqual(after.st_ino, before.st_ino, "replaced by a rename")
        self.assertEqual((after.st_mode, after.st_uid, after.st_gid),
                         (before.st_mode, before.st_uid, before.st_gid))
        self.assertEqual(sorted(os.listdir(self.guest.path("/etc"))),
                         [".pwd.lock", "passwd", "shadow"])

    def test_without_shadow_the_passwd_file_holds_it(self):
        self.agent().call("guest-set-user-password", username="bob", password="JDEkaA==",
                          crypted=True)
        self.assertEqual(self.guest.read("/etc/passwd"),
                         fixture("passwd").replace("bob:x:4244:", "bob:$1$h:4244:"))

    def test_an_unknown_user_leaves_shadow_alone(self):
        self.shadow()
        self.assertEqual(self.agent().error("guest-set-user-password", username="carol",
                                            password="JDEkaA==", crypted=True)[1],
                         "failed to set user password: no user 'carol' in /etc/shadow")
        self.assertEqual(self.guest.read("/etc/shadow"), fixture("shadow"))

    def test_the_account_tools_lock_is_respected(self):
        self.shadow()
        lock = self.guest.path("/etc/.pwd.lock")
        holder = subprocess.Popen([PYTHON, "-c",
                                   "import fcntl, os, sys, time\n"
                                   "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n"
                                   "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
                                   "print('locked', flush=True)\ntime.sleep(30)\n", lock],
                                  stdout=subprocess.PIPE)
        self.addCleanup(stop_process, holder)
        self.assertEqual(holder.stdout.readline(), b"locked\n")
        h = self.agent()
        with mock.patch.object(qga_mini, "PASSWD_LOCK_TIMEOUT", 0.3):
            self.assertEqual(h.error("guest-set-user-password", username="alice",
                                     password="JDEkaA==", crypted=True)[1],
                             "failed to set user password in /etc/shadow: "
                             "Resource temporarily unavailable")
        self.assertEqual(self.guest.read("/etc/shadow"), fixture("shadow"))


@unittest.skipUnless(shutil.which("qemu-ga"), "qemu-ga is not installed")
class SideBySideWithQemuGa(unittest.TestCase):
    """The read-only commands of this group, asked of qemu-ga and of qga_mini."""

    def answers(self, requests, environ):
        tmp = tempfile.mkdtemp(prefix="qga-oracle-")
        self.addCleanup(shutil.rmtree, tmp, True)
        sock_path = os.path.join(tmp, "sock")
        oracle = subprocess.Popen(["qemu-ga", "-m", "unix-listen", "-p", sock_path, "-t", tmp],
                                  env=environ, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        self.addCleanup(stop_process, oracle, grace=ORACLE_STOP_GRACE)
        ours = AgentProcess(env=environ)
        self.addCleanup(ours.close)
        deadline = time.time() + 10
        while not os.path.exists(sock_path) and time.time() < deadline:
            time.sleep(0.05)
        result = []
        for path in (sock_path, ours.path):
            sock = connect_unix(path)       # the file exists from bind(), before listen()
            sock.settimeout(10)
            with sock, sock.makefile("rb") as replies:
                lines = []
                for request in requests:
                    sock.sendall(json.dumps(request).encode())
                    lines.append(replies.readline())
            result.append(lines)
        return result

    def test_same_replies(self):
        requests = [{"execute": "guest-get-host-name"}, {"execute": "guest-get-timezone"},
                    {"execute": "guest-get-osinfo"}, {"execute": "guest-get-users"},
                    {"execute": "guest-shutdown", "arguments": {"mode": "sideways"}},
                    {"execute": "guest-set-user-password",
                     "arguments": {"username": "a:b", "password": "eA==", "crypted": False}},
                    {"execute": "guest-ssh-add-authorized-keys",
                     "arguments": {"username": "root", "keys": ["# comment"]}}]
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "Europe/Berlin",
                   "QGA_OS_RELEASE": TEST_QGA_OS_RELEASE}
        theirs, ours = self.answers(requests, environ)
        self.assertEqual(ours, theirs)


if __name__ == "__main__":
    unittest.main()
