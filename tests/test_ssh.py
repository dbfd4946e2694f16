"""guest-ssh-get/add/remove-authorized-keys, in a temporary guest root.

The root's /etc/passwd (tests/fixtures/identity/passwd) has alice (uid 4242, gid 4243,
home /home/alice); the agent is pointed at the root, so no real user's keys are touched.
The test-qga cases (qga/commands-posix-ssh.c's unit tests) come first, then ownership,
modes, atomic replacement and the links a user could plant.
"""
import os
import stat
import unittest

from tests.guestroot import GuestRoot
from tests.support import FIXTURES, AgentHarness, needs_root

ALICE_UID, ALICE_GID = 4242, 4243
KEYS = "/home/alice/.ssh/authorized_keys"


@needs_root
class SshKeys(unittest.TestCase):
    def setUp(self):
        self.guest = GuestRoot()
        self.addCleanup(self.guest.close)
        with open(os.path.join(FIXTURES, "identity", "passwd")) as f:
            self.guest.write("/etc/passwd", f.read())
        home = self.guest.mkdir("/home/alice", 0o755)
        os.chown(home, ALICE_UID, ALICE_GID)
        self.h = AgentHarness(host_root=self.guest.root)
        self.addCleanup(self.h.close)

    def add(self, keys, **args):
        return self.h.call("guest-ssh-add-authorized-keys", username="alice", keys=keys, **args)

    def remove(self, keys):
        return self.h.call("guest-ssh-remove-authorized-keys", username="alice", keys=keys)

    def get(self):
        return self.h.call("guest-ssh-get-authorized-keys", username="alice")["keys"]

    def file(self):
        return self.guest.read(KEYS)

    def set_file(self, content, uid=ALICE_UID):
        ssh = self.guest.mkdir("/home/alice/.ssh", 0o700)
        os.chown(ssh, ALICE_UID, ALICE_GID)
        real = self.guest.write(KEYS, content, 0o600)
        os.chown(real, uid, ALICE_GID)
        return real

    # -- test-qga's cases -------------------------------------------------------------------

    def test_invalid_user(self):
        for name in ("guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys"):
            self.assertEqual(self.h.error(name, username="", keys=[]),
                             ("GenericError", "failed to lookup user '': No such user"))

    def test_invalid_key(self):
        for name in ("guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys"):
            self.assertEqual(self.h.error(name, username="alice", keys=["not a valid\nkey"])[1],
                             "invalid OpenSSH public key: 'not a valid\nkey'")

    def test_add_keys(self):
        self.add(["algo key2 comments"])
        self.assertEqual(self.file(), "algo key2 comments")
        self.add(["algo key1 comments", "algo key2 comments"])
        self.assertEqual(self.file(), "algo key2 comments\nalgo key1 comments")

    def test_add_reset_keys(self):
        self.add(["algo key1 comments", "algo key2 comments"])
        self.assertEqual(self.file(), "algo key1 comments\nalgo key2 comments")
        self.add(["algo key2 comments"], reset=True)
        self.assertEqual(self.file(), "algo key2 comments")
        self.add([], reset=True)
        self.assertEqual(self.file(), "")

    def test_remove_keys(self):
        content = ("algo key1 comments\nalgo key1 comments\n# a commented line\n"
                   "algo some-key another\n")
        self.set_file(content)
        self.remove(["algo key2 comments"])
        self.assertEqual(self.file(), content)
        self.remove(["algo key1 comments", "algo key2 comments"])
        self.assertEqual(self.file(), "# a commented line\nalgo some-key another\n")

    def test_get_keys(self):
        self.set_file("algo key1 comments\n# a commented line\nalgo some-key another\n")
        self.assertEqual(self.get(), ["algo some-key another", "algo key1 comments"])

    # -- qemu-ga's other semantics (each checked against qemu-ga 7.2) ------------------------

    def test_get_reverses_strips_and_keeps_duplicates(self):
        self.set_file(b"  k1  \n\t# c\n\nk1\n\xff\xfebin\nlast")
        self.assertEqual(self.get(), ["last", "\ufffd\ufffdbin", "k1", "k1"])

    def test_add_skips_duplicates_within_the_request_and_appends_after_a_newline(self):
        self.set_file("a\nb\n")
        self.add(["c", "", "c"])
        self.assertEqual(self.file(), "a\nb\n\nc")
        self.set_file("")
        self.add(["k1", "k2", "k1"])
        self.assertEqual(self.file(), "k1\nk2")

    def test_remove_matches_whole_lines_only_and_keeps_unreadable_bytes(self):
        self.set_file(b" k1\nk1\n\xff\nk1 \nk2")
        self.remove(["k1"])
        self.assertEqual(self.guest.read(KEYS, binary=True), b" k1\n\xff\nk1 \nk2")

    def test_missing_file(self):
        self.assertEqual(self.h.error("guest-ssh-get-authorized-keys", username="alice")[1],
                         "failed to read '%s': Failed to open file \u201c%s\u201d: "
                         "No such file or directory" % (KEYS, KEYS))
        self.assertEqual(self.remove(["k"]), {})
        self.assertFalse(os.path.exists(self.guest.path("/home/alice/.ssh")))

    def test_a_user_without_a_home(self):
        self.assertEqual(self.h.error("guest-ssh-add-authorized-keys", username="nohome",
                                      keys=["k"])[1],
                         "failed to create directory '/nonexistent/.ssh': "
                         "No such file or directory")
        self.assertEqual(self.h.call("guest-ssh-remove-authorized-keys", username="nohome",
                                     keys=["k"]), {})

    def test_keys_are_checked_before_the_user(self):
        self.assertEqual(self.h.error("guest-ssh-add-authorized-keys", username="nosuch",
                                      keys=["#comment"])[1],
                         "invalid OpenSSH public key: '#comment'")
        self.assertEqual(self.h.error("guest-ssh-add-authorized-keys", username="alice",
                                      keys=["a\0b"])[1], "invalid OpenSSH public key: 'a\0b'")

    # -- ownership, modes, atomic replacement -----------------------------------------------

    def test_new_ssh_dir_and_file_belong_to_the_user(self):
        self.add(["k"])
        ssh = os.stat(self.guest.path("/home/alice/.ssh"))
        keys = os.stat(self.guest.path(KEYS))
        self.assertEqual((stat.S_IMODE(ssh.st_mode), ssh.st_uid, ssh.st_gid),
                         (0o700, ALICE_UID, ALICE_GID))
        self.assertEqual((stat.S_IMODE(keys.st_mode), keys.st_uid, keys.st_gid),
                         (0o600, ALICE_UID, ALICE_GID))

    def test_an_existing_ssh_dir_keeps_its_mode_and_the_file_is_replaced_whole(self):
        real = self.set_file("old", uid=0)
        os.chmod(self.guest.path("/home/alice/.ssh"), 0o755)
        os.chmod(real, 0o644)
        inode = os.stat(real).st_ino
        self.add(["new"])
        after = os.stat(real)
        self.assertNotEqual(after.st_ino, inode)
        self.assertEqual((stat.S_IMODE(after.st_mode), after.st_uid), (0o600, ALICE_UID))
        self.assertEqual(stat.S_IMODE(os.stat(self.guest.path("/home/alice/.ssh")).st_mode),
                         0o755)
        self.assertEqual(os.listdir(self.guest.path("/home/alice/.ssh")), ["authorized_keys"])

    def test_a_regular_file_in_place_of_ssh(self):
        self.guest.write("/home/alice/.ssh", "x")
        self.assertEqual(self.h.error("guest-ssh-add-authorized-keys", username="alice",
                                      keys=["k"])[1],
                         "failed to create directory '/home/alice/.ssh': File exists")

    # -- what a user could plant -------------------------------------------------------------

    def secret(self):
        return self.guest.write("/etc/secret", "root only\n", 0o600)

    def test_a_linked_authorized_keys_is_never_followed(self):
        secret = self.secret()
        self.set_file("")
        os.unlink(self.guest.path(KEYS))
        os.symlink(secret, self.guest.path(KEYS))
        refusal = "refusing to use '%s': it is a symbolic link" % KEYS
        self.assertEqual(self.h.error("guest-ssh-add-authorized-keys", username="alice",
                                      keys=["k"])[1], refusal)
        self.assertEqual(self.h.error("guest-ssh-remove-authorized-keys", username="alice",
                                      keys=["k"])[1], refusal)
        self.assertEqual(self.h.error("guest-ssh-get-authorized-keys", username="alice")[1],
                         refusal)
        self.assertEqual(self.guest.read("/etc/secret"), "root only\n")
        self.assertTrue(os.path.islink(self.guest.path(KEYS)))

    def test_a_linked_ssh_dir_is_never_followed(self):
        elsewhere = self.guest.mkdir("/etc/elsewhere", 0o755)
        os.symlink(elsewhere, self.guest.path("/home/alice/.ssh"))
        self.assertEqual(self.h.error("guest-ssh-add-authorized-keys", username="alice",
                                      keys=["k"], reset=True)[1],
                         "refusing to use '/home/alice/.ssh': it is a symbolic link")
        self.assertEqual(os.listdir(elsewhere), [])

    def test_a_hard_link_or_a_file_of_another_user_is_refused(self):
        secret = self.secret()
        self.set_file("")
        os.unlink(self.guest.path(KEYS))
        os.link(secret, self.guest.path(KEYS))
        self.assertEqual(self.h.error("guest-ssh-add-authorized-keys", username="alice",
                                      keys=["k"])[1],
                         "refusing to use '%s': it has 2 hard links" % KEYS)
        self.assertEqual(self.guest.read("/etc/secret"), "root only\n")
        os.unlink(self.guest.path(KEYS))
        self.set_file("k0", uid=4244)
        self.assertEqual(self.h.error("guest-ssh-get-authorized-keys", username="alice")[1],
                         "refusing to use '%s': it belongs to uid 4244, not to alice" % KEYS)

    def test_a_fifo_does_not_hang_the_agent(self):
        self.set_file("")
        os.unlink(self.guest.path(KEYS))
        os.mkfifo(self.guest.path(KEYS))
        self.assertEqual(self.h.error("guest-ssh-get-authorized-keys", username="alice")[1],
                         "refusing to use '%s': it is not a regular file" % KEYS)

    def test_an_ssh_dir_of_another_user_is_refused(self):
        ssh = self.guest.mkdir("/home/alice/.ssh", 0o700)
        os.chown(ssh, 4244, 4244)
        self.assertEqual(self.h.error("guest-ssh-add-authorized-keys", username="alice",
                                      keys=["k"])[1],
                         "refusing to use '/home/alice/.ssh': it belongs to uid 4244, "
                         "not to alice")


if __name__ == "__main__":
    unittest.main()
