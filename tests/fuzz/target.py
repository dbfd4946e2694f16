"""The fuzz target: bytes in, through the framer and the dispatcher of one in-process agent.

``FuzzTarget.one_input(data)`` feeds ``data`` to ``Agent.handle_bytes`` and then holds the
agent to its promises: every reply is one line with one JSON object (tests.hostile), nothing
escapes as an exception, the input is handled within ``INPUT_BUDGET`` seconds, and afterwards
``\\xff`` + guest-ping is answered.  The agent is rooted in a fixture guest with every command
that could change this machine blocked (tests.hostile.MACHINE_COMMANDS) and the kernel hooks
forbidden, so no input can reach the machine.  One guest-file handle on a temporary file is
kept open, so the read/write/seek/close paths run on real data.

Used by tests/fuzz/run.py (atheris, ``make fuzz``) and by tests/test_fuzz_corpus.py, which
replays the seed corpus and every crash reproducer in CI.
"""
import os
import shutil
import tempfile
import time

from tests.guestroot import allow_machine_changes
from tests.hostile import agent_for_hostile_input, check_reply_lines, fixture_guest, BadReply
from tests.support import qga_mini

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS_DIR = os.path.join(HERE, "corpus")
CRASHES_DIR = os.path.join(HERE, "crashes")
INPUT_BUDGET = 5.0                  # seconds for one input of at most a few hundred KiB
PING = b'\xff{"execute":"guest-ping","id":"fuzz-ping"}'
FILE_HANDLE = 77                    # kept open on a temp file; the agent's own start at 1000
FILE_CAP = 1 << 20                  # the temp file is emptied when it grows past this


class FuzzTarget(object):
    def __init__(self):
        self.guest = fixture_guest()
        self.agent, self.statedir, self.patchers = agent_for_hostile_input(self.guest)
        self.framer = qga_mini.Framer()
        self.scratch = tempfile.mkdtemp(prefix="qga-fuzz-file-")
        self.file_path = os.path.join(self.scratch, "data")
        with open(self.file_path, "wb") as f:
            f.write(b"qga-mini fuzz data\n" * 64)
        self.inputs = 0

    def _keep_file_handle(self):
        fd = self.agent.file_handles.get(FILE_HANDLE)
        if fd is None:
            fd = os.open(self.file_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self.agent.file_handles[FILE_HANDLE] = fd
        if os.fstat(fd).st_size > FILE_CAP:
            os.ftruncate(fd, 0)

    def one_input(self, data):
        """Run one input; BadReply (an AssertionError) when the agent broke a promise."""
        self.inputs += 1
        self._keep_file_handle()
        started = time.monotonic()
        check_reply_lines(self.agent.handle_bytes(self.framer, data))
        replies = check_reply_lines(self.agent.handle_bytes(self.framer, PING))
        elapsed = time.monotonic() - started
        if elapsed > INPUT_BUDGET:
            raise BadReply("one input took %.1f s" % elapsed)
        if not replies or replies[-1] != {"return": {}, "id": "fuzz-ping"}:
            raise BadReply("guest-ping after the input was not answered: %r" % replies[-3:])
        if any("id" in r and r["id"] == "fuzz-ping" for r in replies[:-1]):
            raise BadReply("more than one reply to guest-ping: %r" % replies)
        if self.agent.reply_prefix:
            raise BadReply("a 0xFF prefix was left for the next reply")
        if set(self.agent.file_handles) - {FILE_HANDLE} or self.agent.exec_children:
            raise BadReply("the input opened handles or started processes: %r %r"
                           % (self.agent.file_handles, self.agent.exec_children))

    def close(self):
        allow_machine_changes(self.patchers)
        self.agent.shutdown()
        for fd in self.agent.file_handles.values():
            os.close(fd)
        for path in (self.statedir, self.scratch):
            shutil.rmtree(path, ignore_errors=True)
        self.guest.close()


def corpus_files(*dirs):
    """[(path, bytes)] of every file of the given directories, sorted by path."""
    files = []
    for directory in dirs:
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
            with open(os.path.join(directory, name), "rb") as f:
                files.append((os.path.join(directory, name), f.read()))
    return files
