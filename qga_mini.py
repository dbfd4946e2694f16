#!/usr/bin/env python3
"""qga-mini: a QEMU guest agent for Linux guests in one standard-library Python file.

A host (libvirt, Proxmox, OpenStack, QEMU's qemu-ga-client) cannot tell it from the real
``qemu-ga``: it speaks the same JSON protocol over the same channels, answers the same
commands with the same shapes, and fails with the same error classes and texts.

Running it
    python3 qga_mini.py                    # virtio-serial, finds org.qemu.guest_agent.0 itself
    python3 qga_mini.py --device           # the same, spelled out
    python3 qga_mini.py -m unix-listen -p /tmp/qga.sock -t /tmp/qga-state
    python3 qga_mini.py -m isa-serial -p /dev/ttyS1
    python3 qga_mini.py -m vsock-listen -p 4294967295:1234   # VMADDR_CID_ANY:port
    python3 qga_mini.py -m stdio           # one client on stdin/stdout (inetd style, tests)
    python3 qga_mini.py --help             # every option; qemu-ga's flags and config file work
    python3 qga_mini.py --self-test        # every read-only command here, as a table
    python3 qga_mini.py client SOCKET guest-info      # a host-side client for operators

    Images start it with contrib/qga-mini (beside qga_mini.py; same options), which imports
    it so that its compiled bytecode is used and keeps python3 from waiting for the kernel's
    random pool at boot: up to 2 s less to the first reply in a slow guest.

The options and the config file (``/etc/qemu/qemu-ga.conf``, ``$QGA_CONF`` or ``-c``) are
qemu-ga's; ``-D`` prints the effective configuration in qemu-ga's format.

Security
    Every command runs as the agent's user, normally root: whoever controls the host end of the
    channel can read and write any file, run any program and change passwords in the guest.
    That is what a guest agent is for; restrict it with ``-b/--block-rpcs`` or
    ``-a/--allow-rpcs`` where the host is not fully trusted.  A config file or fsfreeze hook
    that other users can write (or own) is refused, as sshd refuses such keys.

Limits (each enforced with a clear error; see the constants below)
    one JSON message        64 MiB, 2 Mi tokens, nesting depth 1024
    guest-file-read count   48 MiB per call
    guest-file handles      1024 open at once
    guest-exec output       16 MiB per stream, 256 MiB held for all children; then
                            ``*-truncated``
    guest-exec children     256 running or not yet collected
    fsfreeze hook           60 s per run (--fsfreeze-hook-timeout), then killed with its
                            process group; helpers (hwclock, chpasswd, ...) 120 s

Tested with (tests/vm, in a busybox initramfs under QEMU 7.2): libvirt's virsh, a
Proxmox-style client, a libvirt-style client and QEMU's qemu.qmp as qemu-ga-client uses it;
side by side with qemu-ga 7.2 byte for byte on the protocol and the file and exec commands.

Python 3.6 or newer, Linux, nothing outside the standard library.
"""

__version__ = "7.2.22"   # the qemu-ga release whose behaviour this agent reproduces
__project_version__ = "0.1.0"


# ==============================================================================================
# Start-up: leave the compiler's memory behind
# ==============================================================================================
# `python3 qga_mini.py` compiles this file before its first line runs, and CPython keeps the
# syntax tree of a script alive until the script ends: ~12 MiB that an agent running for months
# would carry.  (An imported module's tree is freed as soon as it is compiled: that is why
# contrib/qga-mini imports the agent.)  So the script hands its own compiled code, already in
# memory, to a fresh interpreter in the same process (exec keeps the PID): marshalled into an
# anonymous memory file that the interpreter reads back and closes before anything else runs.
# No file is left anywhere, so there is no cache to go stale or be tampered with and no
# writable directory is needed; where no memory file can be made, the agent runs on here.
# It costs a second interpreter start (~6 ms here, -S) and ~1 ms of marshal; no module below
# has been imported yet.  Only for the script itself under CPython, not under a tracer or a
# profiler (they would lose the agent), not for `client`.

import os   # (os and sys only: the imports below are left to the new interpreter)
import sys

HANDOVER_BOOTSTRAP = """\
import marshal, os, sys
fd = int(sys.argv.pop(1))
chunks = []
while not chunks or chunks[-1]:
    chunks.append(os.read(fd, 1 << 20))
os.close(fd)
code = marshal.loads(b"".join(chunks))
del chunks
del sys.argv[0]
sys.path[0] = os.path.dirname(os.path.realpath(sys.argv[0]))
main = type(sys)("__main__")
main.__file__, main.__spec__, main.__handed_over__ = sys.argv[0], None, True
sys.modules["__main__"] = main
exec(code, main.__dict__)
"""
HANDOVER_TMPFILE_DIRS = ("/dev/shm", "/tmp")   # O_TMPFILE where memfd_create is missing


def interpreter_options():
    """The options python3 itself was started with (-O, -X dev, -W ...), for the new one."""
    if hasattr(sys, "orig_argv"):    # 3.10+: exactly as given
        return sys.orig_argv[1:len(sys.orig_argv) - len(sys.argv)]  # novermin (3.10+, guarded)
    flags = sys.flags
    options = ["-O"] * flags.optimize + ["-b"] * flags.bytes_warning + ["-v"] * flags.verbose
    options += [option for option, on in (("-B", flags.dont_write_bytecode),
                                          ("-E", flags.ignore_environment),
                                          ("-s", flags.no_user_site),
                                          ("-I", getattr(flags, "isolated", 0))) if on]
    options += ["-W" + warning for warning in sys.warnoptions]
    options += ["-X%s" % (k if v is True else "%s=%s" % (k, v))
                for k, v in getattr(sys, "_xoptions", {}).items()]
    return options


def anonymous_file():
    """A file descriptor of a file in memory that no other process can open, or None."""
    if hasattr(os, "memfd_create"):
        try:
            return os.memfd_create("qga-mini-code")  # novermin (3.8+, guarded)
        except OSError:
            pass
    for directory in HANDOVER_TMPFILE_DIRS:
        try:
            return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        except (OSError, AttributeError):
            pass
    return None


def runs_as_sys_executable():
    """Whether this process's program is sys.executable: not so when python3 was started
    through a dynamic loader (ld.so --library-path ... python3), whose interpreter cannot
    be exec'd on its own; nor without /proc to tell."""
    try:
        exe, own = os.stat(sys.executable), os.stat("/proc/self/exe")
    except OSError:
        return False
    return (exe.st_dev, exe.st_ino) == (own.st_dev, own.st_ino)


def hand_over_to_fresh_interpreter(module_code):
    """Exec a new interpreter that runs module_code (this script's, compiled); return if not."""
    import marshal
    fd = anonymous_file()
    if fd is None:
        return
    try:
        data = memoryview(marshal.dumps(module_code))
        while data:
            data = data[os.write(fd, data):]
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        os.execv(sys.executable, [sys.executable] + interpreter_options()
                 + ["-S", "-c", HANDOVER_BOOTSTRAP, str(fd)] + sys.argv)
    except (OSError, ValueError):
        os.close(fd)


# The script itself: run by the interpreter, whose bottom frame it is (not by runpy or a
# wrapper's exec, whose own work a fresh interpreter would lose).
if (__name__ == "__main__" and __spec__ is None and "__handed_over__" not in globals()
        and sys._getframe().f_back is None
        and sys.implementation.name == "cpython" and sys.executable and runs_as_sys_executable()
        and sys.gettrace() is None and sys.getprofile() is None and not sys.flags.inspect
        and sys.argv[1:2] != ["client"]):
    hand_over_to_fresh_interpreter(sys._getframe().f_code)

import base64
import binascii
import errno
import fcntl
import json
import os
import re
import select
import signal
import socket
import stat
import struct
import sys
import time
from collections import OrderedDict, deque, namedtuple

# ==============================================================================================
# Constants and limits
# ==============================================================================================

# Wire protocol (qemu-ga's JSON streamer limits; a message over them is answered with one error).
MAX_MESSAGE_BYTES = 64 << 20       # bytes of one request; large enough for a 48 MiB base64 write
MAX_MESSAGE_TOKENS = 2 << 20       # tokens of one request
MAX_NESTING = 1024                 # open braces + brackets of one request
READ_CHUNK = 65536                 # bytes per read(); qemu-ga uses 4096, more is fewer syscalls
MAX_PENDING_OUTPUT = 1 << 20       # stop reading and answering while this much reply waits
JOINED_REPLY_MAX = 65536           # replies shorter are joined: one chunk to queue and write
ERROR_TOKEN_ECHO = 64              # bytes of a bad token quoted back in a lexer error

# Channels.
VIRTIO_PORT_NAME = "org.qemu.guest_agent.0"
DEFAULT_VIRTIO_PATH = "/dev/virtio-ports/" + VIRTIO_PORT_NAME
DEFAULT_SERIAL_PATH = "/dev/ttyS0"
RETRY_INTERVAL = 5.0               # seconds between channel re-opens with -r (qemu-ga's value)
BUSY_RETRY_INTERVAL = 1.0          # seconds between opens of a port another process holds
PORT_RESCAN_INTERVAL = 5.0         # seconds between sysfs scans while waiting for a hotplug
LISTEN_BACKLOG = 8                 # clients queue in the kernel and are served one at a time

# Files, state and configuration.
DEFAULT_CONFIG_PATH = "/etc/qemu/qemu-ga.conf"
DEFAULT_STATEDIR = "/var/run"
DEFAULT_PIDFILE = "/var/run/qemu-ga.pid"
DEFAULT_FSFREEZE_HOOK = "/etc/qemu/fsfreeze-hook"
DEFAULT_FSFREEZE_HOOK_TIMEOUT = 60.0   # seconds per hook run, then it is killed with its
                                       # process group (0: no limit, as qemu-ga)
STATE_FILE = "qga.state"
FROZEN_MARKER = "qga.state.isfrozen"
FIRST_FILE_HANDLE = 1000           # guest-file handles start here and are never reused
FD_RESERVE = 64                    # fds beyond the handle and exec caps: channel, log, helpers

# Helper programs.
# Helper programs (shutdown, hwclock, chpasswd, ...) are searched in the agent's PATH, then
# here, so an agent started with a short PATH (an initramfs, a minimal init) still finds them.
HELPER_SEARCH_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin",
                      "/bin")
HELPER_TIMEOUT = 120.0             # seconds before a hung helper is killed (qemu-ga waits forever)
HELPER_OUTPUT_KEPT = 4096          # bytes of a helper's output kept for the log
HELPER_READ_CHUNK = 65536          # bytes per read of a helper's output pipe
HELPER_KILL_WAIT = 5.0             # seconds a killed helper gets to die (one stuck in the kernel
                                   # on a frozen file system cannot: it is left to finish later)
HELPER_POLL_INTERVAL = 0.05        # seconds between exit checks where there are no pidfds
HELPER_DRAIN_READS = 16            # reads of what the pipe holds once the helper has exited
                                   # (1 MiB, the largest pipe); a daemon it left may write on

# Time: guest-get-time, guest-set-time.
UNSUPPORTED_TEXT = "this feature or command is not currently supported"   # qemu-ga 7.2's text
RTC_DEVICES = ("/dev/rtc0", "/dev/rtc", "/dev/misc/rtc")   # hwclock's search order
RTC_TIME_FORMAT = "9i"             # struct rtc_time: sec min hour mday mon year wday yday isdst
_RTC_IOC_ALTERNATE = os.uname()[4].startswith(("ppc", "powerpc", "mips", "sparc", "alpha"))
RTC_RD_TIME = 0x40247009 if _RTC_IOC_ALTERNATE else 0x80247009    # _IOR('p', 9, rtc_time)
RTC_SET_TIME = 0x8024700A if _RTC_IOC_ALTERNATE else 0x4024700A   # _IOW('p', 10, rtc_time)
ADJTIME_PATH = "/etc/adjtime"      # its third line says whether the RTC keeps UTC or LOCAL
MIN_SET_YEAR, MAX_SET_YEAR = 1970, 2069   # guest-set-time's accepted range (qemu-ga's)

# Files: guest-file-*.
DEFAULT_READ_COUNT = 4096          # guest-file-read count when absent (qemu-ga's default)
MAX_READ_COUNT = 48 << 20          # per guest-file-read (CVE-2018-12617): base64 fits 64 MiB
MAX_FILE_HANDLES = 1024            # open guest-file handles; qemu-ga opens until EMFILE
NEW_FILE_MODE = 0o666              # files guest-file-open creates, less the umask (see README)
# guest-file-open modes, exactly the strings qemu-ga accepts, and their open(2) flags.
FILE_OPEN_MODES = {
    "r": os.O_RDONLY, "rb": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "r+": os.O_RDWR, "rb+": os.O_RDWR, "r+b": os.O_RDWR,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC, "wb+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "w+b": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND, "ab+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "a+b": os.O_RDWR | os.O_CREAT | os.O_APPEND,
}
# Added to every mode: no controlling tty, never block the agent (FIFOs), not inherited.
FILE_OPEN_EXTRA_FLAGS = os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
SEEK_WHENCE = {"set": os.SEEK_SET, "cur": os.SEEK_CUR, "end": os.SEEK_END}

# Exec: guest-exec, guest-exec-status.
EXEC_OUTPUT_CAP = 16 << 20         # bytes kept per captured stream; the rest is read and dropped
EXEC_OUTPUT_TOTAL_CAP = 256 << 20  # ...and for all uncollected children together (not 8 GiB)
EXEC_READ_CHUNK = 65536            # bytes per read of a child's output pipe
EXEC_WRITE_CHUNK = 65536           # bytes per write of input-data into a child's stdin
MAX_EXEC_PROCESSES = 256           # children tracked at once (running or not yet collected)
EXEC_REAP_INTERVAL = 1.0           # seconds between reap attempts while a grandchild holds a pipe
DEFAULT_EXEC_SEARCH_PATH = "/bin:/usr/bin:."   # GLib's PATH when neither env nor agent has one

# Power: guest-shutdown, guest-suspend-*.
SHUTDOWN_MESSAGE = "hypervisor initiated shutdown"
# mode -> (its own program, shutdown(8) flag, reboot(2) command, /proc/sysrq-trigger key)
SHUTDOWN_MODES = {
    "powerdown": ("poweroff", "-P", 0x4321FEDC, "o"),   # LINUX_REBOOT_CMD_POWER_OFF
    "halt": ("halt", "-H", 0xCDEF0123, None),            # LINUX_REBOOT_CMD_HALT; no sysrq key
    "reboot": ("reboot", "-r", 0x01234567, "b"),         # LINUX_REBOOT_CMD_RESTART
}
SYSRQ_TRIGGER = "/proc/sysrq-trigger"
SYSTEMD_RUNNING = "/run/systemd/system"   # exists when systemd is PID 1 (sd_booted())
POWER_STATE = "/sys/power/state"          # the sleep states the kernel offers; written to sleep
POWER_DISK = "/sys/power/disk"            # hibernation modes, "[disabled]" when locked down
POWER_MEM_SLEEP = "/sys/power/mem_sleep"  # what "mem" means (s2idle, shallow, deep)
# suspend mode -> (systemd unit, systemctl verb, pm-is-supported flag, pm-utils program)
SUSPEND_MODES = {
    "disk": ("systemd-hibernate", "hibernate", "--hibernate", "pm-hibernate"),
    "ram": ("systemd-suspend", "suspend", "--suspend", "pm-suspend"),
    "hybrid": ("systemd-hybrid-sleep", "hybrid-sleep", "--suspend-hybrid", "pm-suspend-hybrid"),
}
SUSPEND_UNSUPPORTED = "the requested suspend mode is not supported by the guest"

# Freeze and trim: guest-fsfreeze-*, guest-fstrim.
MOUNTINFO_PATH = "/proc/self/mountinfo"   # the mount table qemu-ga reads first
MOUNTS_PATH = "/proc/self/mounts"         # its fallback when mountinfo cannot be opened
FIFREEZE = 0xC0045877                     # _IOWR('X', 119, int): freeze a file system
FITHAW = 0xC0045878                       # _IOWR('X', 120, int): thaw it (once per freeze)
FITRIM = 0xC0185879                       # _IOWR('X', 121, struct fstrim_range)
FSTRIM_RANGE = struct.Struct("=QQQ")      # struct fstrim_range: start, len, minlen (u64)

# Filesystems and disks: guest-get-fsinfo, guest-get-disks, guest-get-diskstats.
DISKSTATS_PATH = "/proc/diskstats"
SYS_BLOCK = "/sys/block"
UDEV_DATA = "/run/udev/data"              # udev's database: E:ID_SERIAL=, E:DM_NAME= lines
VIRTUAL_BLOCK_MARK = "/devices/virtual/block/"   # dm, md, loop: look through slaves/
# PCI drivers of disk controllers, and the bus each one means (as qemu-ga walks the PCI path).
DISK_CONTROLLER_BUS = {"ata_piix": "ide", "sym53c8xx": "scsi", "virtio-pci": "virtio",
                       "ahci": "sata", "nvme": "nvme", "xhci_hcd": "usb", "ehci-pci": "usb"}
NVME_IOCTL_ADMIN_CMD = 0xC0484E41         # _IOWR('N', 0x41, struct nvme_admin_cmd)
NVME_ADMIN_CMD = struct.Struct("<BBHIIIQQII6III")   # struct nvme_admin_cmd, 72 bytes
NVME_GET_LOG_PAGE = 0x02                  # admin opcode
NVME_NSID_ALL = 0xFFFFFFFF                # the log page of the whole controller
NVME_SMART_LOG_SIZE = 512                 # the SMART / health information log page
# cdw10: log id 2 (SMART), RAE (keep the async event pending), number of dwords - 1.
NVME_SMART_CDW10 = 0x02 | 1 << 15 | (NVME_SMART_LOG_SIZE // 4 - 1) << 16
NVME_SMART_HEAD = struct.Struct("<BHBBB26x")        # warning, temperature, spare, ... used
NVME_SMART_COUNTERS = ("data-units-read", "data-units-written", "host-read-commands",
                       "host-write-commands", "controller-busy-time", "power-cycles",
                       "power-on-hours", "unsafe-shutdowns", "media-errors",
                       "number-of-error-log-entries")   # 128-bit lo/hi pairs from byte 32
# guest-get-diskstats: the /proc/diskstats columns after the name, and whether qemu-ga reads
# each as a 32-bit (True) or a 64-bit value.
DISKSTATS_COLUMNS = (("read-ios", False), ("read-merges", False), ("read-sectors", False),
                     ("read-ticks", False), ("write-ios", False), ("write-merges", False),
                     ("write-sectors", False), ("write-ticks", True), ("ios-pgr", True),
                     ("total-ticks", True), ("weight-ticks", True), ("discard-ios", False),
                     ("discard-merges", False), ("discard-sectors", False),
                     ("discard-ticks", True), ("flush-ios", False), ("flush-ticks", True))
DISKSTATS_GROUPS = (11, 15, 17)           # columns present: base, + discard, + flush
# qemu-ga's key order on the wire (its hash order), kept so replies can be diffed byte-wise.
DISKSTATS_KEY_ORDER = ("discard-sectors", "write-ios", "discard-ios", "discard-ticks",
                       "weight-ticks", "read-ios", "flush-ios", "write-sectors",
                       "write-merges", "write-ticks", "ios-pgr", "read-sectors", "read-merges",
                       "total-ticks", "discard-merges", "flush-ticks", "read-ticks")
NVME_SMART_KEY_ORDER = (
    "available-spare", "host-write-commands-hi", "temperature", "power-on-hours-lo",
    "host-read-commands-hi", "host-read-commands-lo", "number-of-error-log-entries-hi",
    "unsafe-shutdowns-hi", "unsafe-shutdowns-lo", "host-write-commands-lo",
    "available-spare-threshold", "power-on-hours-hi", "controller-busy-time-hi",
    "controller-busy-time-lo", "data-units-read-hi", "data-units-read-lo", "power-cycles-hi",
    "power-cycles-lo", "media-errors-hi", "media-errors-lo", "data-units-written-hi",
    "data-units-written-lo", "type", "critical-warning", "percentage-used",
    "number-of-error-log-entries-lo")

# CPUs and memory blocks.
CPU_SYSFS_DIR = "/sys/devices/system/cpu"
MEMORY_SYSFS_DIR = "/sys/devices/system/memory/"   # qemu-ga names it with the slash in errors

# Network: interfaces and routes.
PROC_NET_DEV = "/proc/net/dev"
PROC_NET_ROUTE = "/proc/net/route"
PROC_NET_IPV6_ROUTE = "/proc/net/ipv6_route"
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 18, 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_ADDRESS, IFLA_IFNAME = 1, 3                 # rtattr types in RTM_NEWLINK
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL = 1, 2, 3      # rtattr types in RTM_NEWADDR
MAC_BYTES = 6                                    # qemu-ga prints 6 bytes of any link address

# Devices: guest-get-devices.
PCI_SYSFS_DIR = "/sys/bus/pci/devices"

# Users and identity: host name, timezone, OS info, users, passwords.
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")   # unless $QGA_OS_RELEASE is set
OS_RELEASE_MAX_BYTES = 1 << 20     # an os-release file is a few hundred bytes
# GuestOSInfo member <- os-release key
OS_RELEASE_FIELDS = (("id", "ID"), ("name", "NAME"), ("pretty-name", "PRETTY_NAME"),
                     ("version", "VERSION"), ("version-id", "VERSION_ID"),
                     ("variant", "VARIANT"), ("variant-id", "VARIANT_ID"))
OSINFO_MEMBER_ORDER = ("name", "kernel-release", "version", "variant", "pretty-name",
                       "version-id", "variant-id", "kernel-version", "machine", "id")  # qemu-ga's
UTMP_PATHS = ("/var/run/utmp", "/run/utmp")   # glibc's _PATH_UTMP, and where it points
USER_PROCESS = 7                   # ut_type of a logged-in user's record
# struct utmp, the fields read: ut_type @0, ut_user char[32] @44, ut_tv @340.  x86-64 and the
# 32-bit ABIs keep a 32-bit ut_tv (384 bytes); glibc's newer 64-bit ABIs use a long ut_session
# and a 64-bit timeval (400 bytes).
if struct.calcsize("l") == 8 and os.uname()[4] in ("aarch64", "riscv64", "loongarch64"):
    UTMP_RECORD = struct.Struct("=h42x32s268xqq40x")
else:
    UTMP_RECORD = struct.Struct("=h42x32s264xii36x")
LOGIND_SESSIONS = "/run/systemd/sessions"     # systemd-logind's session files, for no utmp
PASSWD_PATH = "/etc/passwd"
SHADOW_PATH = "/etc/shadow"
PASSWD_LOCK = "/etc/.pwd.lock"     # lckpwdf()'s lock file: every account tool takes it
PASSWD_LOCK_TIMEOUT = 15.0         # seconds, as lckpwdf() waits

# SSH keys.
SSH_DIR_MODE = 0o700
AUTHORIZED_KEYS_MODE = 0o600

# Statistics: guest-get-cpustats, guest-get-load.
PROC_STAT = "/proc/stat"
PROC_LOADAVG = "/proc/loadavg"

# The self-test and the host-side client.
# --self-test runs the commands that only read.  They are picked by their QAPI names, not
# listed: qemu-ga names every such command guest-ping, guest-info, guest-[<group>-]get-* or
# guest-<group>-status, and no command that changes the guest, so a read-only command added
# later (guest-get-disks, ...) is tested without a change here.
READ_ONLY_COMMAND = re.compile(r"guest-(?:ping|info|(?:[a-z]+-)?get-[a-z-]+|[a-z]+-status)\Z")
SELF_TEST_SUMMARY_WIDTH = 64       # characters of a reply shown in the self-test's table
CLIENT_TIMEOUT = 10.0              # seconds the client waits for a reply by default
CLIENT_BASE64_MEMBERS = ("buf-b64", "out-data", "err-data")   # what --decode decodes

# Integer ranges of the QAPI types.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
INT_TYPES = frozenset(("int", "int64", "int32", "int16", "int8"))     # read as an int64
UINT_TYPES = frozenset(("uint64", "size", "uint32", "uint16", "uint8"))  # read as a uint64
# The narrower ones, checked after the value was read as an int64 or a uint64.
NARROW_INT_RANGES = {"int8": (-1 << 7, (1 << 7) - 1), "int16": (-1 << 15, (1 << 15) - 1),
                     "int32": (-1 << 31, (1 << 31) - 1), "uint8": (0, (1 << 8) - 1),
                     "uint16": (0, (1 << 16) - 1), "uint32": (0, (1 << 32) - 1)}

# ==============================================================================================
# Errors
# ==============================================================================================

GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"


class QgaError(Exception):
    """A failure reported to the host as {"error": {"class": cls, "desc": desc}}."""

    def __init__(self, desc, cls=GENERIC_ERROR):
        Exception.__init__(self, desc)
        self.desc = desc
        self.cls = cls


def os_error_text(exc):
    """strerror of an OSError, as C's strerror() words it."""
    return exc.strerror or os.strerror(exc.errno or 0)


_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n"
_PAD_TO_DEL = bytes(0x7F if c == 0x3D else 0 for c in range(256))   # '=' -> 0x7F, rest -> 0


def decode_base64(text):
    """The bytes of a base64 argument, decoded exactly as qemu-ga decodes them.

    Only the alphabet, '=' and newlines are accepted.  Then GLib's lenient decoder runs:
    newlines are skipped, '=' counts as a zero digit wherever it stands, a group whose third
    or fourth character is '=' yields one byte less each, and an incomplete last group is
    dropped ("YQ==YWJj" is b"aabc", "====" is b"\\0", "YWJ" is b"").  Every step is a C-speed
    bytes operation, whatever the input: 16 MiB decodes in tens of milliseconds.
    """
    try:
        body = text.encode("ascii")
    except UnicodeEncodeError:
        body = None
    if body is None or body.translate(None, _BASE64_ALPHABET):
        raise QgaError("Base64 data contains invalid characters")
    if b"\n" in body:
        body = body.replace(b"\n", b"")
    body = body[:len(body) - len(body) % 4]
    first_pad = body.find(b"=")
    if first_pad < 0 or (first_pad >= len(body) - 2 and body.count(b"=") == len(body) - first_pad):
        return base64.b64decode(body)               # ordinary padding: the C decoder agrees
    # '=' inside the data: decode it as 'A' (zero bits), then drop the bytes GLib drops.  The
    # bytes go through hex so that the dropped ones can be marked, all at once, by OR-ing
    # 0x7F (never a hex digit) over their two digits, and deleted by translate().
    groups = len(body) // 4
    marks = bytearray(6 * groups)
    marks[2::6] = marks[3::6] = body[2::4].translate(_PAD_TO_DEL)     # 2nd byte of a group
    marks[4::6] = marks[5::6] = body[3::4].translate(_PAD_TO_DEL)     # 3rd byte of a group
    digits = base64.b64decode(body.replace(b"=", b"A")).hex().encode("ascii")
    marked = int.from_bytes(digits, "big") | int.from_bytes(marks, "big")
    kept = marked.to_bytes(len(digits), "big").translate(None, b"\x7f")
    return bytes.fromhex(kept.decode("ascii"))


# ==============================================================================================
# Host access: every path the agent reads goes through one object whose root tests can move
# ==============================================================================================

HOST_READ_SIZE = 1 << 16   # per read() of a /proc or /sys file: most fit in one, under malloc's
                           # mmap threshold (a bigger buffer costs an mmap and munmap each time)


class Host(object):
    """The guest's file system as the commands see it.

    ``Host("/")`` is the running system; tests pass a fixture tree, so every reader of
    /proc, /sys, /dev, /etc and /run is exercised on more than the machine it runs on.
    Environment-dependent values (os-release override, ...) are read through here too.
    """

    def __init__(self, root="/", environ=None):
        self.root = os.path.realpath(root)     # realpath() results must start with it
        self.environ = os.environ if environ is None else environ

    def path(self, path):
        """The real path of an absolute guest path."""
        return path if self.root == "/" else self.root + path

    def read_bytes(self, path, limit=-1):
        """A file's bytes (at most ``limit``) by open, read to the end and close: a Python
        file object would add fstat, ioctl and lseek calls to every /proc and /sys read."""
        fd = os.open(self.path(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while limit:
                chunk = os.read(fd, HOST_READ_SIZE if limit < 0 else min(limit, HOST_READ_SIZE))
                if not chunk:
                    break
                chunks.append(chunk)
                limit -= len(chunk) if limit > 0 else 0
            return b"".join(chunks)
        finally:
            os.close(fd)

    def read_text(self, path, default=None):
        """A file's text, or ``default`` if it cannot be read."""
        try:
            return self.read_bytes(path).decode("utf-8", "replace")
        except (OSError, IOError):
            return default

    def read_required(self, path):
        """A file's text; a QgaError in qemu-ga's words (``open("<path>"): <strerror>``) if
        it cannot be read."""
        try:
            return self.read_bytes(path).decode("utf-8", "replace")
        except (OSError, IOError) as exc:
            raise QgaError('open("%s"): %s' % (path, os_error_text(exc)))

    def read_attr(self, path, default=None):
        """A sysfs attribute: the file's text without the trailing newline."""
        text = self.read_text(path)
        return default if text is None else text.strip()

    def read_int(self, path, default=None, base=10):
        text = self.read_attr(path)
        try:
            return int(text, base)
        except (TypeError, ValueError):
            return default

    def listdir(self, path):
        """Names in a directory, sorted; empty if it cannot be read."""
        try:
            return sorted(os.listdir(self.path(path)))
        except OSError:
            return []

    def exists(self, path):
        return os.path.exists(self.path(path))

    def realpath(self, path):
        """Resolve links inside the root; the result is a guest path."""
        real = os.path.realpath(self.path(path))
        if self.root != "/" and real.startswith(self.root):
            real = real[len(self.root):] or "/"
        return real

    def rtnetlink_dumps(self, requests):
        """The raw replies to rtnetlink dump requests, ``[(msg_type, header), ...]``, made one
        after the other on one socket, as getifaddrs() does.

        The kernel's network state is not in any file, so a fixture tree keeps a captured
        dump as ``/rtnetlink/<msg_type>`` and that is read instead.  OSError on failure.
        """
        if self.root != "/":
            return [self.read_bytes("/rtnetlink/%d" % msg_type) for msg_type, _ in requests]
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            sock.bind((0, 0))
            return [rtnetlink_dump_on(sock, sequence, msg_type, header)
                    for sequence, (msg_type, header) in enumerate(requests, 1)]
        finally:
            sock.close()


def rtnetlink_dump_on(sock, sequence, msg_type, header):
    """Send one dump request on a bound netlink socket; its raw replies up to DONE or ERROR."""
    flags = 0x301                               # NLM_F_REQUEST | NLM_F_DUMP
    sock.sendall(struct.pack("=IHHII", 16 + len(header), msg_type, flags, sequence, 0) + header)
    chunks = []
    while True:
        data = sock.recv(1 << 16)               # the kernel fills at most 32 KiB
        if not data:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        chunks.append(data)
        offset = 0
        while offset + 16 <= len(data):         # the dump ends at DONE or ERROR
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind in (NLMSG_ERROR, NLMSG_DONE) or length < 16:
                return b"".join(chunks)
            offset += (length + 3) & ~3


# ==============================================================================================
# Wire protocol: the streaming framer, the JSON parser and the reply encoder
# ==============================================================================================
#
# The host writes a byte stream of JSON values.  A message is a complete top-level value; it
# may arrive over many reads, several may arrive in one read, and newlines mean nothing.  A
# 0xFF or 0xFE byte (never valid in JSON text) throws away whatever partial message came
# before it: clients send one before guest-sync-delimited to resynchronise.  qemu-ga answers
# each such byte with a "stray" lexer error, and so do we.
#
# The framer only finds where messages start and end.  It walks the stream token by token
# with regular expressions (C speed; a 64 MiB string is one search, never a Python loop per
# byte) and keeps its place, so bytes are scanned once however the stream is split.  Each
# complete message is then parsed by the json module; only a message json rejects, or one
# using qemu's extensions (single-quoted strings), goes through the slower parse_json_qemu()
# below, which reproduces qemu's parse errors.
#
# The token walk is a Python step per token, so it is kept for where it is needed.  At a
# message boundary the json module's own scanner reads the whole objects at the front of a
# read (or of what follows a 0xFF, or the end of a message an earlier read began) one after
# the other, and the walk takes over only at the first thing json cannot vouch for: a 0xFF,
# a partial message, qemu's extensions, an error, a limit (leading_json_objects() below).

_STRUCTURAL = b"{}[]:,"
_SPACE = re.compile(rb"[ \t\r\n]*")
_QUOTE_BYTES = {0x22: b'"', 0x27: b"'"}
_CONTROL_TO_NUL = bytes(0 if c < 0x20 else 1 for c in range(256))   # maps control bytes to 0
_NUMBER_CHARS = re.compile(rb"[0-9.eE+\-]*")
_KEYWORD_CHARS = re.compile(rb"[a-z]*")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_NUMBER_PREFIX = re.compile(rb"-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?)?")
_LEADING_ZERO = re.compile(rb"-?0\Z")
_RECOVERY_STOP = re.compile(rb"[\[\]{}:,\x00-\x08\x0a-\x1f\xfe\xff]")
_SPACE_TEXT = re.compile(r"[ \t\r\n]*")
# Characters that the json module reads differently from qemu: surrogate escapes (qemu pairs
# them itself, with its own errors) and Unicode noncharacters (U+FDD0..U+FDEF, U+xFFFE,
# U+xFFFF), which qemu refuses whether escaped or raw.  A message with any goes to
# parse_json_qemu(); a "\\\\ud800" in JSON text (an escaped backslash) only costs the slower
# parser.
_JSON_MODULE_DIFFERS = re.compile(
    rb"\\u(?:[dD][89a-fA-F]|[fF][dD][dDeE]|[fF]{3}[eEfF])"
    rb"|\xef(?:\xb7[\x90-\xaf]|\xbf[\xbe\xbf])|[\xf0-\xf4][\x8f\x9f\xaf\xbf]\xbf[\xbe\xbf]")
_JSON_MODULE_DIFFERS_LEADS = (b"\\u", b"\xef", b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")


def json_module_differs(data, start=0):
    """Where the first thing _JSON_MODULE_DIFFERS matches begins in ``data`` (from
    ``start``), or -1.  The bytes that can begin a match are looked for first with memchr: the
    regular expression alone steps through a 22 MiB base64 string byte by byte (~170 ms per
    16 MiB guest-file-write), the finds take a millisecond."""
    leads = [at for at in (data.find(lead, start) for lead in _JSON_MODULE_DIFFERS_LEADS)
             if at >= 0]
    if not leads:
        return -1
    match = _JSON_MODULE_DIFFERS.search(data, min(leads))
    return match.start() if match else -1


_NONCHARACTER = re.compile("[\ufdd0-\ufdef%s]" % "".join(
    chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17)))

_STRAY_MARKER = "JSON parse error, stray '\ufffd'"     # a lone 0xFF or 0xFE, as qemu-ga shows it

# Framer states.
_BETWEEN, _STRING, _NUMBER_TOKEN, _KEYWORD_TOKEN, _RECOVERY = range(5)


def _resync_points(data):
    """The positions of the 0xFF and 0xFE bytes of ``data``, in order.  memchr() scans that
    pass each byte once: a regular expression would cost ~50x more on a megabytes-long
    base64 string, and rescanning the rest after each marker is quadratic."""
    ff, fe = data.find(b"\xff"), data.find(b"\xfe")
    while ff >= 0 or fe >= 0:
        if fe < 0 or 0 <= ff < fe:
            yield ff
            ff = data.find(b"\xff", ff + 1)
        else:
            yield fe
            fe = data.find(b"\xfe", fe + 1)


_MIN_CODE_POINT = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)   # by sequence length 2..6


def _sequence_at(raw, pos):
    """The character of the (modified) UTF-8 sequence at ``raw[pos]`` as qemu's reply encoder
    reads it (its mod_utf8_codepoint()), or -1 when invalid; and where the next one starts.
    A lead byte takes the continuation bytes that follow, up to its length: a sequence that is
    cut short, overlong (but C0 80, a NUL), a surrogate, a noncharacter or over U+10FFFF is
    one invalid sequence."""
    byte = raw[pos]
    if byte < 0x80:
        return byte, pos + 1
    if byte >= 0xFE or not byte & 0x40:       # 0xFE, 0xFF, or a stray continuation byte
        return -1, pos + 1
    length = 8 - (byte ^ 0xFF).bit_length()   # the number of leading one bits: 2..6
    code = byte & ((0x80 >> length) - 1)
    for end in range(pos + 1, pos + length):
        if end >= len(raw) or raw[end] & 0xC0 != 0x80:
            return -1, end
        code = code << 6 | raw[end] & 0x3F
    end += 1
    if (code > 0x10FFFF or 0xD800 <= code <= 0xDFFF or _NONCHARACTER.match(chr(code))
            or code < _MIN_CODE_POINT[length - 2] and not (code == 0 and length == 2)):
        return -1, end
    return code, end


def qemu_shown_text(raw):
    """Bytes quoted in an error as qemu-ga's reply shows them: up to the first NUL (a C
    string), each invalid UTF-8 sequence one U+FFFD, C0 80 a NUL."""
    raw = raw.split(b"\x00", 1)[0]
    try:
        return _NONCHARACTER.sub("\ufffd", raw.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    chars, pos = [], 0
    while pos < len(raw):
        code, pos = _sequence_at(raw, pos)
        chars.append(chr(code) if code >= 0 else "\ufffd")
    return "".join(chars)


def _quote_token(raw):
    """A bad token as qemu quotes it in 'stray' errors (bytes shown as text, length capped)."""
    raw = raw.split(b"\x00", 1)[0]           # qemu's C string ends at a NUL
    if len(raw) > ERROR_TOKEN_ECHO:
        raw = raw[:ERROR_TOKEN_ECHO // 2] + b"..." + raw[-ERROR_TOKEN_ECHO // 2:]
    return qemu_shown_text(raw)


class Framer(object):
    """Bytes in, messages out.

    ``feed(data)`` returns a list of events: ``(raw_message_bytes, uses_extensions)`` for
    every complete message, or a ``QgaError`` for every lexer error and exceeded limit.  The
    objects that leading_json_objects() reads (the usual requests) come back already parsed,
    as dicts.  Unlike qemu-ga, a message over a limit is skipped to its end (its structure is
    followed without storing it), so one error is answered and the next request works.  Should
    the framer itself fail (a bug), it starts afresh and the exception is the last event.
    """

    def __init__(self):
        self.buf = bytearray()
        self.reset()

    def reset(self):
        """Forget any partial message (0xFF, a new client, a host hang-up)."""
        del self.buf[:]
        self.pos = 0            # scanning position in buf
        self.start = 0          # where the current message (or token) starts in buf
        self.state = _BETWEEN
        self.braces = self.brackets = 0
        self.tokens = 0
        self.quote = 0
        self.token_start = 0
        self.extensions = False  # a single-quoted string was seen
        self.discarding = False  # over a limit: follow the message to its end, keep nothing

    # -- public ---------------------------------------------------------------------------------

    def feed(self, data):
        events = []
        try:
            self._feed(data, events)
        except Exception as exc:        # a bug here must not wedge the stream: start afresh
            self.reset()
            events.append(exc)
        return events

    def _feed(self, data, events):
        start = 0
        for marker in _resync_points(data):
            self._feed_segment(data[start:marker], events, at_marker=True)
            partial = b""
            if self.state in (_STRING, _NUMBER_TOKEN, _KEYWORD_TOKEN):
                partial = bytes(self.buf[self.token_start:])
            if not self.discarding or self.state != _STRING:
                events.append(self._lexer_error(partial + b"\xff") if partial
                              else QgaError(_STRAY_MARKER))
            self.reset()
            self.state = _RECOVERY      # as after any lexer error: skip to a structural byte
            start = marker + 1
        self._feed_segment(data[start:] if start else data, events)
        self._compact()

    # -- scanning -------------------------------------------------------------------------------

    def _feed_segment(self, data, events, at_marker=False):
        """Bytes holding no 0xFF or 0xFE: the token walk finishes the message (or recovery) an
        earlier read left open, the json module reads the whole objects that follow, and the
        walk takes what json leaves, to the segment's end: json looks at each segment once at
        most, so even a read of garbage costs linear time.  ``at_marker``: a 0xFF or 0xFE
        follows, which ends a number or keyword as any other byte would."""
        if self.state == _RECOVERY and not self.buf:
            stop = _RECOVERY_STOP.search(data)
            if stop is None:
                return
            data = data[stop.start():]
            self.state = _BETWEEN
        if self.state != _BETWEEN or self.tokens:
            data = self._scan(data, events, until_boundary=True, at_marker=at_marker)
        if data and len(data) <= MAX_MESSAGE_TOKENS:   # so no message in it is over a limit
            taken = leading_json_objects(data, events)
            if taken:
                data = data[taken:]
        if data:
            self._scan(data, events, at_marker=at_marker)

    def _compact(self):
        """Drop consumed bytes; while discarding, keep nothing but a number or keyword."""
        keep = self.start
        if self.discarding:
            scalar = self.state in (_NUMBER_TOKEN, _KEYWORD_TOKEN)
            keep = self.start = self.token_start if scalar else self.pos
        if keep:
            del self.buf[:keep]
            self.pos -= keep
            self.start -= keep
            self.token_start -= keep

    def _scan(self, data, events, until_boundary=False, at_marker=False):
        """Walk ``data`` token by token; with ``until_boundary``, stop where the open message
        ends and return the bytes not walked (else b"").  With ``at_marker`` (a 0xFF or 0xFE
        comes next), a number or keyword at the end is ended as qemu's lexer ends it: a whole
        one is a token (it may complete a message) and the marker is reported alone; an
        incomplete number ("-", "1.", "1e") is left for the caller to quote with the marker."""
        buf = self.buf
        buf += data
        end = len(buf)
        while self.pos < end or at_marker and self.state in (_NUMBER_TOKEN, _KEYWORD_TOKEN):
            state = self.state
            if state == _BETWEEN:
                if until_boundary and not self.tokens:
                    rest = bytes(buf[self.pos:])
                    del buf[self.pos:]
                    return rest
                pos = _SPACE.match(buf, self.pos).end()
                if pos == end:
                    self.pos = pos
                    if not self.tokens:
                        self.start = pos
                    break
                c = buf[pos]
                if not self.tokens:
                    self.start = pos
                if c in _STRUCTURAL:
                    self.pos = pos + 1
                    if c == 0x7B:
                        self.braces += 1
                    elif c == 0x5B:
                        self.brackets += 1
                    elif c == 0x7D:
                        self.braces -= 1
                    elif c == 0x5D:
                        self.brackets -= 1
                    self._token_done(events)
                elif c == 0x22 or c == 0x27:
                    self.token_start, self.quote, self.state = pos, c, _STRING
                    self.pos = pos + 1
                    if c == 0x27:
                        self.extensions = True
                elif c == 0x2D or 0x30 <= c <= 0x39:
                    self.token_start, self.state, self.pos = pos, _NUMBER_TOKEN, pos
                elif 0x61 <= c <= 0x7A:
                    self.token_start, self.state, self.pos = pos, _KEYWORD_TOKEN, pos
                else:
                    self._fail(events, bytes(buf[pos:pos + 1]), pos + 1)
            elif state == _STRING:
                if not self._scan_string(events, end):
                    break
            elif state == _NUMBER_TOKEN or state == _KEYWORD_TOKEN:
                chars = _NUMBER_CHARS if state == _NUMBER_TOKEN else _KEYWORD_CHARS
                pos = chars.match(buf, self.pos).end()
                self.pos = pos
                if pos == end and not at_marker:    # the token may go on in the next read
                    self._check_size(events)
                    break
                if state == _NUMBER_TOKEN:
                    # Walk the number as qemu's lexer does: a complete number ends at the
                    # first byte that cannot continue it; an incomplete one ("1.", "-",
                    # "1e") or a digit after a leading zero is an error at that byte.
                    start = self.token_start
                    walked = _NUMBER_PREFIX.match(buf, start, pos).end()
                    after = buf[walked:walked + 1]
                    if (not _NUMBER.match(bytes(buf[start:walked]))
                            or after.isdigit() and _LEADING_ZERO.match(buf, start, walked)):
                        if walked == end:           # cut short by the marker
                            break
                        self._fail(events, bytes(buf[start:walked + 1]), walked + 1)
                        continue
                    self.pos = walked
                self.state = _BETWEEN
                self._token_done(events)
            else:                                   # _RECOVERY: skip to a structural byte
                stop = _RECOVERY_STOP.search(buf, self.pos)
                if stop is None:
                    self.pos = self.start = end
                    break
                self.pos = self.start = stop.start()
                self.state = _BETWEEN
        return b""

    def _scan_string(self, events, end):
        """Advance through a string token; False when more input is needed."""
        # bytes.find (memchr) and one translate are many times faster than a regular
        # expression over the long base64 strings of guest-file-write.
        buf, start = self.buf, self.pos
        pos = buf.find(_QUOTE_BYTES[self.quote], start)
        if pos < 0:
            pos = end
        backslash = buf.find(b"\\", start, pos)
        if backslash >= 0:
            pos = backslash
        control = buf[start:pos].translate(_CONTROL_TO_NUL).find(b"\x00")
        if control >= 0:
            pos = start + control
        if pos == end:
            self.pos = end
            self._check_size(events)
            return False
        c = buf[pos]
        if c == self.quote:
            self.pos = pos + 1
            self.state = _BETWEEN
            self._token_done(events)
        elif c == 0x5C:                             # backslash: an escape
            if pos + 1 >= end:
                self.pos = pos
                return False
            if buf[pos + 1] < 0x20:                 # the parser judges the escape itself
                self._fail(events, bytes(buf[self.token_start:pos + 2]), pos + 2)
            else:
                self.pos = pos + 2
        else:                                       # a raw control byte inside a string
            self._fail(events, bytes(buf[self.token_start:pos + 1]), pos + 1)
        return True

    def _token_done(self, events):
        """Count a finished token; emit the message when its nesting closes."""
        self.tokens += 1
        if self.discarding:
            pass
        elif self.braces + self.brackets > MAX_NESTING:
            self._over_limit(events, "JSON nesting depth limit exceeded")
        elif self.tokens > MAX_MESSAGE_TOKENS:
            self._over_limit(events, "JSON token count limit exceeded")
        elif self.pos - self.start > MAX_MESSAGE_BYTES:
            self._over_limit(events, "JSON token size limit exceeded")
        if (self.braces > 0 or self.brackets > 0) and self.braces >= 0 and self.brackets >= 0:
            return                  # qemu also ends a message on an unbalanced closer
        if not self.discarding:
            events.append((self._message_bytes(), self.extensions))
        self.braces = self.brackets = self.tokens = 0
        self.extensions = self.discarding = False
        self.start = self.pos

    def _message_bytes(self):
        """The current message, copied once (a bytearray slice would copy it twice)."""
        with memoryview(self.buf) as view:
            return bytes(view[self.start:self.pos])

    def _check_size(self, events):
        if not self.discarding and self.pos - self.start > MAX_MESSAGE_BYTES:
            self._over_limit(events, "JSON token size limit exceeded")

    def _over_limit(self, events, text):
        events.append(QgaError(text))
        self.discarding = True

    def _lexer_error(self, token):
        return QgaError("JSON parse error, stray '%s'" % _quote_token(token))

    def _fail(self, events, token, resume):
        """A lexer error: report it, drop the partial message, skip to a safe byte."""
        if not self.discarding:
            events.append(self._lexer_error(token))
        self.braces = self.brackets = self.tokens = 0
        self.extensions = self.discarding = False
        self.pos = self.start = resume
        self.state = _RECOVERY


class JsonError(ValueError):
    """A parse error, worded as qemu words it (without the 'JSON parse error, ' prefix)."""


def _no_duplicate_keys(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise JsonError("duplicate key")
    return obj


def _qemu_int(text):
    """An integer token as qemu's parser reads it: int64, else (not negative) uint64, else the
    double strtod() makes of it (inf beyond the doubles).  The token's length is looked at
    first, so int() never sees thousands of digits (3.11+ refuses them; it is quadratic)."""
    if len(text) < 19:                      # at most 18 digits: always an int64
        return int(text)
    if len(text) <= 20:                     # "-" and 19 digits, or 20 digits
        value = int(text)
        if INT64_MIN <= value <= UINT64_MAX:
            return value
    return float(text)


def _no_constants(name):
    raise JsonError("invalid keyword")        # NaN and Infinity are not JSON to qemu


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_int=_qemu_int,
                            parse_constant=_no_constants)
_SCAN_JSON_VALUE = _DECODER.scan_once       # (text, index) -> (value, end); the C scanner


def leading_json_objects(data, events):
    """Read the whole JSON objects at the front of ``data`` with the json module's C scanner,
    one after the other, appending each (a dict) to ``events``; return how many bytes they
    and the whitespace around them take.

    Standard JSON that the json module accepts is read the same way by qemu's lexer and
    parser, and a message that json reads whole ends where qemu's framer would end it, so
    these need no token walk.  It stops at the first thing it cannot vouch for, and the
    framer's walk takes it from there: anything but an object, bytes that are not UTF-8 (0xFF
    and 0xFE among them), _JSON_MODULE_DIFFERS, a partial message, an error or one of qemu's
    extensions (json refuses both), nesting over MAX_NESTING.  The caller keeps ``data`` under
    the token and size limits, so no message in it can be over them.
    """
    start = _SPACE.match(data).end()
    if data[start:start + 1] != b"{":
        return start
    end = json_module_differs(data, start)
    if end < 0:
        end = len(data)
    try:
        text = data[start:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        text = data[start:start + exc.start].decode("utf-8")
    pos = 0
    while text[pos:pos + 1] == "{":
        try:
            value, after = _SCAN_JSON_VALUE(text, pos)
        except (StopIteration, ValueError, RecursionError):
            break
        if (after - pos > MAX_NESTING
                and text.count("{", pos, after) + text.count("[", pos, after) > MAX_NESTING):
            break
        events.append(value)
        pos = after if text.startswith("{", after) else _SPACE_TEXT.match(text, after).end()
    if pos == len(text) and end - start == pos:     # all of it, and only ASCII
        return end
    return start + len(text[:pos].encode("utf-8"))


def parse_message(raw, uses_extensions=False):
    """The value of one framed message; JsonError with qemu's wording if it is not JSON."""
    if not uses_extensions and json_module_differs(raw) < 0:
        try:
            return _DECODER.decode(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            pass                    # let the exact parser say what is wrong
    return parse_json_qemu(raw)


_TOKEN = re.compile(rb"""[ \t\r\n]*(?:
      (?P<punct>[{}\[\]:,])
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<number>-?(?:0|[1-9][0-9]*)(?P<frac>\.[0-9]+)?(?P<exp>[eE][+-]?[0-9]+)?)
    | (?P<keyword>[a-z]+)
    )""", re.X | re.S)
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "/": "/", "\\": "\\",
            '"': '"', "'": "'"}
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}\Z")


def _hex4(data):
    """The value of four hex digits, else -1 (qemu's cvt4hex())."""
    return int(data, 16) if _HEX4.match(data) else -1


def _text_run(data):
    """The bytes between a string's escapes as text.  qemu takes 0xC0 0x80 as U+0000 and
    refuses noncharacters as it refuses invalid UTF-8."""
    try:
        text = data.replace(b"\xc0\x80", b"\x00").decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or _NONCHARACTER.search(text):
        raise JsonError("invalid UTF-8 sequence in string")
    return text


def _escape(raw, start, pieces):
    """Append the character of the escape at ``raw[start]``; return where the escape ends.

    As in qemu, \\u takes the next four bytes whatever they are (the closing quote too), a
    leading surrogate pairs with the \\u escape right after it or fails, and the error quotes
    the bytes consumed."""
    kind = raw[start + 1:start + 2].decode("latin-1")
    if kind != "u":
        if kind not in _ESCAPES:
            raise JsonError("invalid escape sequence in string")
        pieces.append(_ESCAPES[kind])
        return start + 2
    end = start + 6
    code = _hex4(raw[start + 2:end])
    if 0xD800 <= code <= 0xDBFF and raw[end:end + 2] == b"\\u":
        low = _hex4(raw[end + 2:end + 6])
        if 0xDC00 <= low <= 0xDFFF:
            code, end = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00), end + 6
        else:
            code = -1
    char = chr(code) if code >= 0 and not 0xD800 <= code <= 0xDFFF else None
    if char is None or _NONCHARACTER.match(char):
        raise JsonError("%s is not a valid Unicode character"
                        % qemu_shown_text(raw[start:end]))
    pieces.append(char)
    return end


def _string_value(raw):
    """A string token's value, read left to right as qemu's parse_string() reads it, so that
    the first bad escape or bad byte is the one reported."""
    end = len(raw) - 1                      # the closing quote
    backslash = raw.find(b"\\", 1, end)
    if backslash < 0:
        return _text_run(raw[1:end])
    pieces, pos = [], 1
    while backslash >= 0:
        pieces.append(_text_run(raw[pos:backslash]))
        pos = _escape(raw, backslash, pieces)
        backslash = raw.find(b"\\", pos, end)
    pieces.append(_text_run(raw[pos:end]))
    return "".join(pieces)


def _lex(raw):
    """The tokens of one message, one at a time; JsonError at a byte that starts none."""
    pos, end = 0, len(raw)
    while True:
        pos = _SPACE.match(raw, pos).end()
        if pos >= end:
            return
        m = _TOKEN.match(raw, pos)
        if m is None:
            raise JsonError("stray '%s'" % _quote_token(raw[pos:pos + 1]))
        yield m
        pos = m.end()


def parse_json_qemu(raw):
    """Parse one message exactly as qemu's JSON parser does, errors included.

    Iterative (no recursion limit to hit at depth 1024); the first error found is the one
    reported, as in qemu.  qemu lexes the whole message before parsing it, so the tokens are
    walked twice rather than kept: a list of 2 Mi match objects would take half a gigabyte.
    """
    for _ in _lex(raw):
        pass                # a lexer error anywhere comes before any parser error
    tokens = _lex(raw)

    # An explicit stack instead of recursion: depth 1024 must not hit Python's limit.
    stack = []          # frames: [container, expecting, pending key]
    while True:
        tok = next(tokens, None)
        if tok is None:
            raise JsonError("premature EOI")
        punct = tok.group("punct")
        frame = stack[-1] if stack else None
        expecting = frame[1] if frame else "value"
        if expecting == "colon":
            if punct != b":":
                raise JsonError("missing : in object pair")
            frame[1] = "value"
            continue
        if expecting == "separator":
            is_dict = isinstance(frame[0], dict)
            if punct == (b"}" if is_dict else b"]"):
                value = stack.pop()[0]
            elif punct == b",":
                frame[1] = "key" if is_dict else "value"
                continue
            else:
                raise JsonError("expected separator in %s" % ("dict" if is_dict else "list"))
        elif expecting == "first-key" and punct == b"}" or expecting == "first" and punct == b"]":
            value = stack.pop()[0]
        elif expecting in ("key", "first-key"):
            if punct and punct not in b"{[":
                raise JsonError("expecting value")
            if punct or tok.lastgroup != "string":
                raise JsonError("key is not a string in object")
            frame[2], frame[1] = _string_value(tok.group("string")), "colon"
            continue
        elif punct == b"{":
            stack.append([OrderedDict(), "first-key", None])
            continue
        elif punct == b"[":
            stack.append([[], "first", None])
            continue
        elif punct:
            raise JsonError("expecting value")
        else:
            value = _literal(tok)
        # A value is complete: put it into its container, or it is the message.
        if not stack:
            return value
        parent = stack[-1]
        if isinstance(parent[0], dict):
            if parent[2] in parent[0]:
                raise JsonError("duplicate key")
            parent[0][parent[2]] = value
        else:
            parent[0].append(value)
        parent[1] = "separator"


def _literal(tok):
    """The value of a string, number or keyword token."""
    kind = tok.lastgroup
    if kind == "string":
        return _string_value(tok.group("string"))
    if kind == "keyword":
        word = tok.group("keyword")
        if word in _KEYWORDS:
            return _KEYWORDS[word]
        raise JsonError("invalid keyword '%s'" % word.decode())
    text = tok.group("number")
    if tok.group("frac") or tok.group("exp"):
        return float(text)
    return _qemu_int(text)


_KEYWORDS = {b"true": True, b"false": False, b"null": None}


# -- Encoding replies --------------------------------------------------------------------------

_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": "))
_LOWER_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-f]{4})")
_SPLICE_MARK = "@@qga-mini-splice@@"    # never produced by a command


def _upper_escape(match):
    return match.group(1) + "\\u" + match.group(2).upper()


def _qemu_escapes(text):
    """JSON text from the ASCII encoder with qemu's escapes: upper-case hex, 0x7F escaped."""
    if "\\u" in text:
        text = _LOWER_ESCAPE.sub(_upper_escape, text)
    if "\x7f" in text:
        text = text.replace("\x7f", "\\u007F")
    return text


def _has_double(text):
    """Whether JSON text written by _ENCODER holds a double.  Outside its strings there are
    only punctuation, true, false, null and numbers, and only a double's repr has a '.' or an
    'e', or is Infinity or NaN.  A few C-speed passes, not a walk of the value."""
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")     # no quote left is escaped
    outside = "".join(text.split('"')[::2])
    if "e" in outside:
        outside = outside.replace("true", "").replace("false", "")
    return "." in outside or "e" in outside or "I" in outside or "N" in outside


def _encode_qemu(value):
    """JSON text pieces with doubles printed as qemu prints them (printf %.17g, inf)."""
    if isinstance(value, float):
        yield "%.17g" % value
    elif isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield (", " if i else "") + _ENCODER.encode(key) + ": "
            for piece in _encode_qemu(item):
                yield piece
        yield "}"
    elif isinstance(value, list):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ", "
            for piece in _encode_qemu(item):
                yield piece
        yield "]"
    else:
        yield _ENCODER.encode(value)


_EMPTY_RETURN = {"return": {}}
_EMPTY_RETURN_LINE = b'{"return": {}}\n'


def encode_reply(reply):
    """One reply as a list of byte chunks forming a single compact ASCII line.

    qemu writes ``\\u00E9`` (upper-case hex) and escapes 0x7F; we do the same.  ``bytes``
    values directly inside ``reply["return"]`` (base64 payloads, which need no escaping) are
    spliced in as JSON strings without being copied through the encoder, so a 48 MiB read or
    a 16 MiB exec output costs no extra copies.
    """
    if reply == _EMPTY_RETURN:
        return [_EMPTY_RETURN_LINE]         # guest-ping, guest-file-close, ... : most replies
    ret = reply.get("return")
    if type(ret) is int:                    # guest-sync, guest-file-open, ...: print them
        if len(reply) == 1:
            return [b'{"return": %d}\n' % ret]
        ident = reply.get("id")
        if type(ident) is int and len(reply) == 2 and next(iter(reply)) == "return":
            return [b'{"return": %d, "id": %d}\n' % (ret, ident)]
    spliced = []
    if isinstance(ret, dict):
        for key, value in ret.items():
            if isinstance(value, (bytes, bytearray)):
                spliced.append(value)
        if spliced:
            marked = OrderedDict((key, _SPLICE_MARK if isinstance(value, (bytes, bytearray))
                                  else value) for key, value in ret.items())
            reply = dict(reply, **{"return": marked})
    text = _ENCODER.encode(reply)
    if _has_double(text):
        text = "".join(_encode_qemu(reply))
    text = _qemu_escapes(text)
    if not spliced:
        return [text.encode("ascii") + b"\n"]
    pieces = text.split(json.dumps(_SPLICE_MARK))
    chunks = [(pieces[0] + '"').encode("ascii")]
    for payload, piece in zip(spliced, pieces[1:-1]):
        chunks += [payload, ('"' + piece + '"').encode("ascii")]
    chunks += [spliced[-1], ('"' + pieces[-1] + "\n").encode("ascii")]
    return chunks


_ENCODE_STRING = json.encoder.encode_basestring_ascii    # what _ENCODER writes strings with


def encode_error(error, request=None):
    """The reply chunks for a QgaError; the request's id comes first, as in qemu.  Without an
    id (every framing and parse error: one per 0xFF a host sends) the line is made directly."""
    if isinstance(request, dict) and "id" in request:
        return encode_reply({"id": request["id"],
                             "error": {"class": error.cls, "desc": error.desc}})
    return [('{"error": {"class": "%s", "desc": %s}}\n' % (
        error.cls, _qemu_escapes(_ENCODE_STRING(error.desc)))).encode("ascii")]


def last_resort_error_line(desc, request=None):
    """An error reply line made with the json module alone, for when encode_reply() fails."""
    body = '"error": {"class": "%s", "desc": %s}' % (GENERIC_ERROR, json.dumps(desc))
    try:
        body = '"id": %s, %s' % (json.dumps(request["id"]), body)
    except Exception:                       # no request, no id, or an id json cannot write
        pass
    return ("{%s}\n" % body).encode("ascii")


# ==============================================================================================
# Command registry and argument checking
# ==============================================================================================
#
# A command is one function plus one @command(...) line recording its QAPI definition in the
# schema's own notation: ``data`` maps argument names to types ("*name" when optional),
# ``returns`` names the result type.  The dispatcher checks arguments against ``data`` before
# the function runs, so a command body only sees well-typed values.  guest-info, -b help and
# the tests all read this one table; tests/test_schema.py holds it against schema.json.

# qemu-ga's registration order (the schema's declaration order).  guest-info lists commands in
# the reverse of it, and -b help in it.
COMMAND_ORDER = (
    "guest-sync-delimited", "guest-sync", "guest-ping", "guest-get-time", "guest-set-time",
    "guest-info", "guest-shutdown", "guest-file-open", "guest-file-close", "guest-file-read",
    "guest-file-write", "guest-file-seek", "guest-file-flush", "guest-fsfreeze-status",
    "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw",
    "guest-fstrim", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid",
    "guest-network-get-interfaces", "guest-get-vcpus", "guest-set-vcpus", "guest-get-disks",
    "guest-get-fsinfo", "guest-set-user-password", "guest-get-memory-blocks",
    "guest-set-memory-blocks", "guest-get-memory-block-info", "guest-exec-status",
    "guest-exec", "guest-get-host-name", "guest-get-users", "guest-get-timezone",
    "guest-get-osinfo", "guest-get-devices", "guest-ssh-get-authorized-keys",
    "guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys",
    "guest-get-diskstats", "guest-get-cpustats", "guest-get-load", "guest-network-get-route",
)

# The complex types that appear in command arguments, in QAPI notation.
ARGUMENT_TYPES = {
    "QGASeek": {"enum": ["set", "cur", "end"]},
    "GuestFileWhence": {"alternate": {"value": "int", "name": "QGASeek"}},
    "GuestLogicalProcessor": {"struct": {"logical-id": "int", "online": "bool",
                                         "*can-offline": "bool"}},
    "GuestMemoryBlock": {"struct": {"phys-index": "uint64", "online": "bool",
                                    "*can-offline": "bool"}},
    "GuestExecCaptureOutputMode": {"enum": ["none", "stdout", "stderr", "separated",
                                            "merged"]},
    "GuestExecCaptureOutput": {"alternate": {"flag": "bool",
                                             "mode": "GuestExecCaptureOutputMode"}},
}

Command = namedtuple("Command", "name func data returns success_response frozen_ok")
COMMANDS = {}

# The commands qemu-ga still runs while file systems are frozen.
FREEZE_SAFE_COMMANDS = frozenset(("guest-ping", "guest-info", "guest-sync",
                                  "guest-sync-delimited", "guest-fsfreeze-status",
                                  "guest-fsfreeze-thaw"))


def command(name, data=None, returns=None, success_response=True):
    """Register ``func(agent, **arguments)`` as the QAPI command ``name``.

    Argument names reach the function with '-' turned into '_'; absent optional arguments are
    not passed, so the function's defaults apply.
    """
    def register(func):
        COMMANDS[name] = Command(name, func, OrderedDict(data or {}), returns,
                                 success_response, name in FREEZE_SAFE_COMMANDS)
        return func
    return register


def registered_commands():
    """The registered commands in qemu-ga's registration order."""
    rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
    return sorted(COMMANDS.values(), key=lambda c: rank.get(c.name, len(rank)))


def _type_error(path, expected):
    return QgaError("Invalid parameter type for '%s', expected: %s" % (path, expected))


def _check_narrow_int(value, typ, path):
    """qemu's visit_type_intN/uintN range check: its error names the bare member ("null" for
    a list element), not the path."""
    low, high = NARROW_INT_RANGES[typ]
    if not low <= value <= high:
        name = "null" if path.endswith("]") else path.rpartition(".")[2]
        raise QgaError("Parameter '%s' expects %s_t" % (name, typ))
    return value


_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean"}


def check_value(value, typ, path):
    """``value`` checked against QAPI type ``typ``; returns it as the command gets it."""
    if isinstance(typ, list):
        if not isinstance(value, list):
            raise _type_error(path, "array")
        return [check_value(v, typ[0], "%s[%d]" % (path, i)) for i, v in enumerate(value)]
    # Integers as qemu's QObject input visitor reads them: the parser made every integer
    # token an int64 or a uint64 (else a double), "int" types take an int64 only, "uint"
    # types and "size" take both (a negative int64 wraps), then the narrow ones check ranges.
    if typ in INT_TYPES:
        if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
            raise _type_error(path, "integer")
        return _check_narrow_int(value, typ, path) if typ in NARROW_INT_RANGES else value
    if typ in UINT_TYPES:
        if type(value) is not int or not INT64_MIN <= value <= UINT64_MAX:
            raise QgaError("Parameter '%s' expects uint64" % path)
        value &= UINT64_MAX
        return _check_narrow_int(value, typ, path) if typ in NARROW_INT_RANGES else value
    if typ == "number":
        if type(value) not in (int, float):
            raise _type_error(path, "number")
        return float(value)
    if typ == "str" or typ == "bool":
        expected = str if typ == "str" else bool
        if type(value) is not expected:
            raise _type_error(path, _JSON_TYPE_NAMES[expected])
        return value
    definition = ARGUMENT_TYPES[typ]
    if "struct" in definition:
        if not isinstance(value, dict):
            raise _type_error(path, "object")
        return check_members(value, definition["struct"], path + ".")
    if "enum" in definition:
        if not isinstance(value, str):
            raise _type_error(path, "string")
        if value not in definition["enum"]:
            raise QgaError("Parameter '%s' does not accept value '%s'" % (path, value))
        return value
    for branch in definition["alternate"].values():   # chosen by the JSON type of the value
        kind = ARGUMENT_TYPES.get(branch)
        if (kind and "enum" in kind and isinstance(value, str)
                or branch == "int" and type(value) in (int, float)   # a number picks int
                or branch == "bool" and type(value) is bool):
            return check_value(value, branch, path)
    raise _type_error(path, typ)


def check_members(obj, members, prefix=""):
    """An object's members checked against a QAPI ``data`` dict, in schema order."""
    checked = {}
    for spec, typ in members.items():
        name = spec.lstrip("*")
        if name in obj:
            checked[name] = check_value(obj[name], typ, prefix + name)
        elif not spec.startswith("*"):
            raise QgaError("Parameter '%s' is missing" % (prefix + name))
    if len(checked) != len(obj):
        name = next(name for name in obj if name not in checked)
        raise QgaError("Parameter '%s' is unexpected" % (prefix + name))
    return checked


# ==============================================================================================
# Agent state: configuration, the state directory, logging, the freeze flag, dispatch
# ==============================================================================================

class Log(object):
    """qemu-ga's log: ``<sec>.<usec>: <level>: <message>`` to stderr or the -l file.

    Nothing is written while file systems are frozen (a write could block on them).
    Audit lines ("guest-ping called", ...) go to syslog, as qemu-ga's slog() does.
    """

    LEVELS = ("error", "critical", "warning", "message", "info", "debug")

    def __init__(self, stream=None, verbose=False):
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.muted = False
        self._syslog = None
        self._syslog_checked = -1.0
        self._syslog_present = False

    def write(self, level, text):
        if self.muted or (not self.verbose and level not in ("error", "critical")):
            return
        now = time.time()
        try:
            self.stream.write("%d.%d: %s: %s\n" % (int(now), int(now % 1 * 1e6), level, text))
            self.stream.flush()
        except (OSError, IOError, ValueError):
            pass

    def error(self, text):
        self.write("error", text)

    def warning(self, text):
        self.write("warning", text)

    def info(self, text):
        self.write("info", text)

    def debug(self, text):
        self.write("debug", text)

    def audit(self, text):
        """An accounting line for syslog (qemu-ga's slog)."""
        if self.muted:
            return
        now = time.monotonic()
        if now >= self._syslog_checked + 1.0:
            # Without a syslog daemon every syslog() call retries the connect: skip it then,
            # looking again at most once a second.
            self._syslog_checked = now
            self._syslog_present = os.path.exists("/dev/log")
        if self._syslog is None and self._syslog_present:
            try:
                import syslog
                syslog.openlog("qemu-ga", 0, syslog.LOG_DAEMON)
                self._syslog = syslog
            except ImportError:
                self._syslog = False
        if self._syslog and self._syslog_present:
            self._syslog.syslog(self._syslog.LOG_INFO, "info: " + text)
        self.debug(text)


class StateDir(object):
    """The -t directory: the guest-file handle counter and the frozen marker."""

    def __init__(self, path):
        self.path = path
        self.state_file = os.path.join(path, STATE_FILE)
        self.frozen_marker = os.path.join(path, FROZEN_MARKER)

    def ensure(self):
        """Create the directory and qga.state if missing (qemu-ga does so at start-up)."""
        if not os.path.isdir(self.path):
            os.makedirs(self.path, 0o755)
        if not os.path.exists(self.state_file):
            self.write_counter(FIRST_FILE_HANDLE)

    def read_counter(self):
        """The next guest-file handle (GLib keyfile ``[global] fd_counter=N``)."""
        try:
            with open(self.state_file) as f:
                text = f.read()
        except (OSError, IOError) as exc:
            if exc.errno == errno.ENOENT:
                return FIRST_FILE_HANDLE
            raise
        section = None
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "global" and line.startswith("fd_counter="):
                return int(line.split("=", 1)[1])
        return FIRST_FILE_HANDLE

    def write_counter(self, value):
        """Replace qga.state atomically (temp file + rename, as GLib does)."""
        tmp = "%s.%d.tmp" % (self.state_file, os.getpid())
        try:
            with open(tmp, "w") as f:
                f.write("[global]\nfd_counter=%d\n" % value)
            os.rename(tmp, self.state_file)
        except (OSError, IOError):
            try:
                os.unlink(tmp)              # a full disk must not leave litter behind
            except OSError:
                pass
            raise

    def is_frozen(self):
        return os.path.exists(self.frozen_marker)

    def set_frozen(self, frozen):
        if frozen:
            os.close(os.open(self.frozen_marker, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        else:
            try:
                os.unlink(self.frozen_marker)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise


class Agent(object):
    """Everything that outlives one request: configuration, state, handles, children.

    Handles, exec children and the freeze are global, as in qemu-ga: they survive host
    reconnects.  ``dispatch(request)`` turns one parsed request into one reply (or none).
    """

    def __init__(self, config, host=None, log=None):
        self.config = config
        self.host = host or Host("/")
        # Requests may nest 1024 deep (an echoed id, say); checking and encoding them
        # recurses once per level.
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * MAX_NESTING))
        self.log = log or Log(verbose=config.verbose)
        self.state = StateDir(config.statedir)
        self.frozen = False
        self.reply_prefix = b""      # set by guest-sync-delimited for its own reply
        self.file_handles = {}       # guest-file handle -> open file
        self.next_file_handle = None  # loaded from qga.state by the first guest-file-open
        self.exec_children = {}      # guest-exec pid -> child record
        self.cleanups = []           # callables run once when the agent exits
        self.timers = []             # [deadline, callable], run by the event loop
        self.freeze_watchdog = None  # cancels the --freeze-timeout auto-thaw timer

    # -- frozen state ---------------------------------------------------------------------------

    def set_frozen(self, frozen):
        """Enter or leave the frozen state: marker file, command filter, logging."""
        if frozen == self.frozen:
            return
        if frozen:
            self.log.warning("disabling logging due to filesystem freeze")
            self.log.muted = True
            self.state.set_frozen(True)
        else:
            self.state.set_frozen(False)
            self.log.muted = False
            self.log.warning("logging re-enabled due to filesystem unfreeze")
        self.frozen = frozen

    # -- command filter -------------------------------------------------------------------------

    def disabled_reason(self, name):
        """Why ``name`` may not run now (qemu-ga 7.2's texts), or None."""
        config = self.config
        if name in config.block_rpcs or (config.allow_rpcs and name not in config.allow_rpcs):
            return "Command %s has been disabled" % name
        if self.frozen and name not in FREEZE_SAFE_COMMANDS:
            return "Command %s has been disabled: the agent is in frozen state" % name
        return None

    def is_enabled(self, name):
        return self.disabled_reason(name) is None

    # -- timers ---------------------------------------------------------------------------------

    def call_later(self, seconds, func):
        """Run ``func()`` from the event loop after ``seconds``; returns a cancel function."""
        timer = [time.monotonic() + seconds, func]
        self.timers.append(timer)
        return lambda: timer in self.timers and self.timers.remove(timer)

    def run_due_timers(self):
        if not self.timers:
            return
        now = time.monotonic()
        for timer in [t for t in self.timers if t[0] <= now]:
            if timer in self.timers:
                self.timers.remove(timer)
                self._guarded(timer[1])

    def next_timer_delay(self):
        if not self.timers:
            return None
        return max(0.0, min(t[0] for t in self.timers) - time.monotonic())

    def _guarded(self, func):
        try:
            func()
        except Exception as exc:        # a background task must never kill the agent
            self.log.error("internal error in %s: %r" % (getattr(func, "__name__", func), exc))

    def shutdown(self):
        """Run the exit cleanups once (thaw, kill children, ...)."""
        cleanups, self.cleanups = self.cleanups, []
        for func in reversed(cleanups):
            self._guarded(func)

    # -- dispatch -------------------------------------------------------------------------------

    def dispatch(self, request):
        """The reply to one parsed request as byte chunks, or [] when there is none.

        A QgaError is answered here; any other exception (a bug) goes up to reply_to().
        """
        try:
            if not isinstance(request, dict):
                raise QgaError("QMP input must be a JSON object")
            name, arguments = self._check_request(request)
            cmd = COMMANDS.get(name)
            if cmd is None:
                raise QgaError("The command %s has not been found" % name, COMMAND_NOT_FOUND)
            reason = self.disabled_reason(name)
            if reason:
                raise QgaError(reason, COMMAND_NOT_FOUND)
            kwargs = check_members(arguments, cmd.data) if arguments or cmd.data else None
            if kwargs:
                result = cmd.func(self, **{k.replace("-", "_"): v for k, v in kwargs.items()})
            else:
                result = cmd.func(self)
        except QgaError as exc:
            self.reply_prefix = b""
            return encode_error(exc, request)
        prefix, self.reply_prefix = self.reply_prefix, b""
        if not cmd.success_response:
            return []
        reply = {"return": {} if result is None else result}
        if "id" in request:
            reply["id"] = request["id"]
        chunks = encode_reply(reply)
        return [prefix] + chunks if prefix else chunks

    @staticmethod
    def _check_request(request):
        name, arguments = request.get("execute"), request.get("arguments", {})
        if (type(name) is str and type(arguments) is dict
                and len(request) == 1 + ("arguments" in request) + ("id" in request)):
            return name, arguments              # the usual request: nothing to complain of
        name, arguments = None, {}
        for key, value in request.items():
            if key == "execute":
                if not isinstance(value, str):
                    raise QgaError("QMP input member 'execute' must be a string")
                name = value
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise QgaError("QMP input member 'arguments' must be an object")
                arguments = value
            elif key != "id":
                raise QgaError("QMP input member '%s' is unexpected" % key)
        if name is None:
            raise QgaError("QMP input lacks member 'execute'")
        return name, arguments

    def handle_bytes(self, framer, data):
        """Feed received bytes; the reply chunks for every message they complete."""
        return self.answer(deque(framer.feed(data)))

    def answer(self, events, limit=None):
        """The reply chunks for framer events, taken from the front of the deque ``events``.

        With ``limit``, it stops once the replies reach ``limit`` bytes and leaves the rest
        in ``events``: one read can hold hundreds of requests for 64 MiB replies.
        """
        out, lines, size = [], [], 0
        while events and (limit is None or size < limit):
            chunks = self.reply_to(events.popleft())
            if len(chunks) == 1 and len(chunks[0]) < JOINED_REPLY_MAX:
                lines.append(chunks[0])
                size += len(chunks[0])
                continue
            if lines:
                out.append(b"".join(lines))
                lines = []
            out += chunks
            size += sum(map(len, chunks))
        if lines:
            out.append(b"".join(lines))
        return out

    def reply_to(self, event):
        """The reply chunks for one framer event: the one boundary around a message's life.

        Whatever fails on the way (the framer, parsing, checking, the command, encoding) is
        one GenericError reply, with the request's id when it is known, logged once; the agent
        goes on serving the same connection.
        """
        request = None
        try:
            if type(event) is not dict:             # not parsed by the framer already
                if isinstance(event, QgaError):
                    return encode_error(event)
                if isinstance(event, Exception):
                    raise event                     # the framer failed (and started afresh)
                try:
                    event = parse_message(*event)   # the message's bytes die with its parsing
                except JsonError as exc:
                    return encode_error(QgaError("JSON parse error, %s" % exc))
            request, event = event, None
            return self.dispatch(request)
        except Exception as exc:
            self.reply_prefix = b""
            self.log.error("internal error: %r" % (exc,))
            error = QgaError("internal error: %s" % (exc,))
            try:
                return encode_error(error, request)
            except Exception:                       # the encoder itself failed
                return [last_resort_error_line(error.desc, request)]


# -- Helper programs: the one way the agent runs a child to its end ---------------------------

def untrusted_file_reason(st):
    """Why a file (its stat) must not be trusted, as sshd judges its keys: its group or other
    users can write it, or a user other than root and the agent's own owns it.  None when it
    may be trusted.  Character devices (/dev/null) are not judged."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISCHR(st.st_mode):
        return None
    if mode & 0o022:
        return "mode %04o lets other users write it" % mode
    if st.st_uid not in (0, os.geteuid()):
        return ("it is owned by uid %d (mode %04o), neither root nor the agent's user"
                % (st.st_uid, mode))
    return None


def find_helper(host, name):
    """The real path of helper program ``name`` in the guest, or None if it is not there.

    A name with a slash is taken as it is; otherwise the agent's PATH is searched (absolute
    entries only), then HELPER_SEARCH_PATH.
    """
    if "/" in name:
        candidates = [name]
    else:
        dirs = [d for d in host.environ.get("PATH", "").split(":") if d.startswith("/")]
        dirs += [d for d in HELPER_SEARCH_PATH if d not in dirs]
        candidates = [d.rstrip("/") + "/" + name for d in dirs]
    for candidate in candidates:
        real = host.path(candidate)
        if os.path.isfile(real) and os.access(real, os.X_OK):
            return real
    return None


def run_helper(host, argv, stdin_data=None):
    """Run helper program ``argv[0]`` (looked up with find_helper) to its end.

    (status, output) as run_program gives them, (-9, output) when it was killed after
    HELPER_TIMEOUT, (127, why) when it could not be started, or None when it is missing.
    """
    path = find_helper(host, argv[0])
    if path is None:
        return None
    try:
        return run_program(path, [os.path.basename(argv[0])] + list(argv[1:]), host.environ,
                           stdin_data, timeout=HELPER_TIMEOUT)
    except ProgramTimeout as exc:
        return -signal.SIGKILL, exc.output
    except OSError as exc:
        return 127, "failed to execute '%s': %s" % (path, os_error_text(exc))


_pidfd_open = getattr(os, "pidfd_open", None)       # Python 3.9+ on Linux 5.3+


def open_pidfd(pid):
    """A file descriptor that polls readable when ``pid`` exits, or None where unsupported."""
    if _pidfd_open is None:
        return None
    try:
        return _pidfd_open(pid)
    except OSError:
        return None


class ProgramTimeout(Exception):
    """run_program's child ran past its time and was killed with its process group.

    ``output`` is what it printed until then; ``died`` is False when it was still there
    HELPER_KILL_WAIT seconds after SIGKILL (stuck in the kernel, e.g. on a frozen fs)."""

    def __init__(self, output, died):
        Exception.__init__(self, "timed out")
        self.output, self.died = output, died


def run_program(path, argv, environ=None, stdin_data=None, timeout=None):
    """Run the program at ``path`` to its end: (status, output); OSError if it cannot start.

    This is the one place the agent starts a helper (guest-exec children are apart: they run
    alongside the agent).  ``status`` is the exit status, or -N when signal N ended it.  The
    child runs in its own session with default signal dispositions, no agent fds and stdin
    on /dev/null or ``stdin_data``.  Its stdout and stderr share one pipe, read until the
    child exits, never until end of file: a daemon it leaves behind holding the pipe cannot
    hold the agent up.  The first HELPER_OUTPUT_KEPT bytes are kept, the rest read and
    dropped.  A child still running after ``timeout`` seconds (None: no limit) is killed
    with its whole process group and ProgramTimeout is raised.
    """
    import subprocess
    child = subprocess.Popen(
        argv, executable=path, env=None if environ is None else dict(environ),
        close_fds=True, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL if stdin_data is None else subprocess.PIPE)
    deadline = None if timeout is None else time.monotonic() + timeout
    kept = bytearray()
    try:
        finished = _follow_program(child, stdin_data, deadline, kept)
    finally:
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
    output = kept.decode("utf-8", "replace")
    if not finished:
        try:
            os.killpg(child.pid, signal.SIGKILL)    # not reaped yet: the pid is still its own
        except ProcessLookupError:                  # it left its process group
            child.kill()
        try:
            child.wait(HELPER_KILL_WAIT)
        except subprocess.TimeoutExpired:
            pass                    # subprocess reaps it once it is gone
        raise ProgramTimeout(output, child.returncode is not None)
    return child.returncode, output


def _follow_program(child, stdin_data, deadline, kept):
    """Feed ``stdin_data`` to ``child``, keep the head of its output in ``kept``, and wait
    until it exits (True) or ``deadline`` passes (False); whatever the output pipe already
    holds at the exit is read too, nothing more."""
    out = child.stdout.fileno()
    os.set_blocking(out, False)
    poller = select.poll()
    poller.register(out, select.POLLIN)
    stdin, pending = None, memoryview(stdin_data or b"")
    if child.stdin is not None:
        stdin = child.stdin.fileno()
        os.set_blocking(stdin, False)
        poller.register(stdin, select.POLLOUT)
    pidfd = open_pidfd(child.pid)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    reading = True
    try:
        while child.poll() is None:
            wait = None if pidfd is not None else HELPER_POLL_INTERVAL
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = left if wait is None else min(wait, left)
            for fd, _ in poller.poll(None if wait is None else wait * 1000 + 1):
                if fd == out:
                    if _read_program_output(out, kept) == 0:
                        poller.unregister(out)
                        reading = False
                elif fd == stdin:
                    pending = feed_child(poller, child, pending)
                    if not pending:
                        stdin = None
        for _ in range(HELPER_DRAIN_READS):
            if not reading or not _read_program_output(out, kept):
                break
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def feed_child(poller, child, pending):
    """One non-blocking write of the head of ``pending`` (a memoryview) into ``child``'s
    stdin; what is left to write.  Once nothing is (all written, or the child reads no more:
    EPIPE), the pipe is closed and ``poller`` stops watching it."""
    fd = child.stdin.fileno()
    try:
        pending = pending[os.write(fd, pending[:EXEC_WRITE_CHUNK]):]
    except BlockingIOError:
        return pending
    except OSError:
        pending = pending[:0]
    if not pending:
        poller.unregister(fd)
        child.stdin.close()
    return pending


def _read_program_output(fd, kept):
    """One read of a helper's output pipe, keeping its head in ``kept``: the number of bytes
    read (0 at end of file), or None when nothing is waiting."""
    try:
        data = os.read(fd, HELPER_READ_CHUNK)
    except BlockingIOError:
        return None
    except OSError:
        return 0
    kept += data[:max(0, HELPER_OUTPUT_KEPT - len(kept))]
    return len(data)


# ==============================================================================================
# Commands
# ==============================================================================================

# -- Session: sync, ping, info -----------------------------------------------------------------

@command("guest-sync-delimited", data={"id": "int"}, returns="int")
def guest_sync_delimited(agent, id):
    """guest-sync-delimited: echo ``id``; the reply is preceded by a 0xFF byte."""
    agent.reply_prefix = b"\xff"
    return id


@command("guest-sync", data={"id": "int"}, returns="int")
def guest_sync(agent, id):
    """guest-sync: echo ``id`` so the host can find its place in the stream."""
    return id


@command("guest-ping")
def guest_ping(agent):
    """guest-ping: answer {}."""
    agent.log.audit("guest-ping called")


@command("guest-info", returns="GuestAgentInfo")
def guest_info(agent):
    """guest-info: the version and every command, newest registration first (as qemu-ga)."""
    return {"version": __version__,
            "supported_commands": [
                {"enabled": agent.is_enabled(c.name), "name": c.name,
                 "success-response": c.success_response}
                for c in reversed(registered_commands())]}


# -- Time: guest-get-time, guest-set-time --------------------------------------------------
#
# hwclock, like shutdown, systemctl, chpasswd and pm-* further on, runs through run_helper()
# (above), which looks it up through agent.host: a test whose host root is a fixture tree runs
# recording stand-ins and can never reach the machine's real programs.  The kernel interfaces
# that change the machine (the clock, the RTC, reboot(2)) are module functions tests replace.

def set_system_clock(seconds):
    """Set the system clock (CLOCK_REALTIME).  Tests replace this function."""
    time.clock_settime(time.CLOCK_REALTIME, seconds)


def rtc_ioctl(fd, request, buf):
    """An ioctl on the RTC device.  Tests replace this function."""
    return fcntl.ioctl(fd, request, buf)


def parse_adjtime_local(text):
    """True if /etc/adjtime's third line says the RTC keeps local time (else it keeps UTC)."""
    lines = (text or "").splitlines()
    return len(lines) > 2 and lines[2].strip() == "LOCAL"


def _open_rtc(host):
    for device in RTC_DEVICES:
        try:
            return os.open(host.path(device), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
    raise OSError(errno.ENOENT, "no RTC device")


def rtc_from_system_clock(host):
    """What ``hwclock -w`` does: write the system time into the RTC, at a second's start."""
    local = parse_adjtime_local(host.read_text(ADJTIME_PATH))
    fd = _open_rtc(host)
    try:
        time.sleep(1.0 - time.time() % 1.0)      # the RTC counts whole seconds
        tm = (time.localtime if local else time.gmtime)(int(time.time() + 0.5))
        rtc_ioctl(fd, RTC_SET_TIME, struct.pack(
            RTC_TIME_FORMAT, tm.tm_sec, tm.tm_min, tm.tm_hour, tm.tm_mday, tm.tm_mon - 1,
            tm.tm_year - 1900, (tm.tm_wday + 1) % 7, tm.tm_yday - 1, 0))
    finally:
        os.close(fd)


def system_clock_from_rtc(host):
    """What ``hwclock -s`` does: set the system time from the RTC."""
    import calendar
    local = parse_adjtime_local(host.read_text(ADJTIME_PATH))
    fd = _open_rtc(host)
    try:
        raw = rtc_ioctl(fd, RTC_RD_TIME, bytes(struct.calcsize(RTC_TIME_FORMAT)))
    finally:
        os.close(fd)
    sec, minute, hour, mday, mon, year = struct.unpack(RTC_TIME_FORMAT, raw)[:6]
    fields = (year + 1900, mon + 1, mday, hour, minute, sec)
    try:
        seconds = time.mktime(fields + (0, 0, -1)) if local else calendar.timegm(fields)
    except (ValueError, OverflowError):
        raise OSError(errno.EINVAL, "the RTC holds an invalid time %r" % (fields,))
    set_system_clock(seconds)


def split_time_ns(ns):
    """(seconds, microseconds) of a nanosecond count, truncated toward zero as C does."""
    sign = -1 if ns < 0 else 1
    seconds, rest = divmod(abs(ns), 1000000000)
    return sign * seconds, sign * (rest // 1000)


def _year_in_range(seconds):
    try:
        return MIN_SET_YEAR <= time.localtime(seconds).tm_year <= MAX_SET_YEAR
    except (ValueError, OverflowError, OSError):
        return False


@command("guest-get-time", returns="int")
def guest_get_time(agent):
    """guest-get-time: nanoseconds since the epoch, at microsecond precision as qemu-ga."""
    return int(time.time() * 1000000) * 1000


@command("guest-set-time", data={"*time": "int"})
def guest_set_time(agent, time=None):
    """guest-set-time: set the clock to ``time`` (ns) and the RTC from it; without ``time``,
    set the clock from the RTC.

    The RTC is reached with ioctls on /dev/rtc0; hwclock is only the fallback, so a guest
    without it works.  Nothing changes unless one of the two is there.
    """
    host = agent.host
    has_rtc = any(host.exists(device) for device in RTC_DEVICES)
    if not has_rtc and not find_helper(host, "hwclock"):
        raise QgaError(UNSUPPORTED_TEXT)
    if time is not None:
        seconds, micros = split_time_ns(time)
        if not _year_in_range(seconds):
            raise QgaError("Invalid time")
        try:
            set_system_clock(seconds + micros / 1e6)
        except OSError as exc:
            raise QgaError("Failed to set time to guest: " + os_error_text(exc))
    if has_rtc:
        try:
            (rtc_from_system_clock if time is not None else system_clock_from_rtc)(host)
            return
        except OSError as exc:
            agent.log.warning("RTC: %s; trying hwclock" % os_error_text(exc))
    result = run_helper(host, ["hwclock", "-w" if time is not None else "-s"])
    if result is None or result[0] != 0:
        if result:
            agent.log.warning("hwclock: status %d: %s" % result)
        raise QgaError("hwclock failed to set hardware clock to system time")


# -- Files: guest-file-open, -close, -read, -write, -seek, -flush --------------------------
#
# qemu-ga wraps every handle in a stdio FILE.  We keep the bare file descriptor and give the
# host what it can see of stdio: a read returns fewer bytes than asked only at end of file or
# when a pipe runs dry; ``eof`` is true when that read met the end of the file; positions are
# the kernel's.  Writes reach the kernel at once instead of waiting in a stdio buffer for
# flush, seek, read or close: only a process reading the file behind the host's back could
# tell, and an error (a full disk) is reported by the write that caused it.


def guest_file(agent, handle):
    """The file descriptor behind a guest-file handle."""
    fd = agent.file_handles.get(handle)
    if fd is None:
        raise QgaError("handle '%d' has not been found" % handle)
    return fd


def close_guest_files(agent):
    """Close every guest-file handle (at exit; they are global, so reconnects keep them)."""
    handles, agent.file_handles = agent.file_handles, {}
    for fd in handles.values():
        try:
            os.close(fd)
        except OSError:
            pass


def take_file_handle(agent):
    """The next guest-file handle, committed to qga.state before anyone sees it.

    The counter is never rolled back, not even when the commit fails, so a handle number is
    used at most once across the agent's whole life, restarts included.
    """
    if agent.next_file_handle is None:
        try:
            agent.next_file_handle = agent.state.read_counter()
        except (OSError, IOError, ValueError):
            raise QgaError("failed to load persistent state")
        agent.cleanups.append(lambda: close_guest_files(agent))
    handle = agent.next_file_handle
    agent.next_file_handle += 1
    try:
        agent.state.write_counter(agent.next_file_handle)
    except (OSError, IOError):
        raise QgaError("failed to commit persistent state to disk")
    return handle


@command("guest-file-open", data={"path": "str", "*mode": "str"}, returns="int")
def guest_file_open(agent, path, mode="r"):
    """guest-file-open: open ``path`` with an fopen() mode; returns a new handle.

    New files get 0666 less the umask; qemu-ga forces 0666 (see README: a world-writable
    file created by a root agent is an invitation to every local user).
    """
    agent.log.audit("guest-file-open called, filepath: %s, mode: %s" % (path, mode))
    flags = FILE_OPEN_MODES.get(mode)
    if flags is None:
        raise QgaError("invalid file open mode '%s'" % mode)
    if len(agent.file_handles) >= MAX_FILE_HANDLES:
        raise QgaError("too many open guest-file handles: %d are open; close one with "
                       "guest-file-close" % MAX_FILE_HANDLES)
    try:
        fd = os.open(path, flags | FILE_OPEN_EXTRA_FLAGS, NEW_FILE_MODE)
    except (OSError, ValueError) as exc:     # ValueError: a NUL or lone surrogate in path
        why = os_error_text(exc) if isinstance(exc, OSError) else os.strerror(errno.EINVAL)
        raise QgaError("failed to open file '%s' (mode: '%s'): %s" % (path, mode, why))
    try:
        handle = take_file_handle(agent)
    except QgaError:
        os.close(fd)
        raise
    agent.file_handles[handle] = fd
    agent.log.audit("guest-file-open, handle: %d" % handle)
    return handle


@command("guest-file-close", data={"handle": "int"})
def guest_file_close(agent, handle):
    """guest-file-close: close a handle; its number is never given out again."""
    agent.log.audit("guest-file-close called, handle: %d" % handle)
    fd = guest_file(agent, handle)
    del agent.file_handles[handle]
    try:
        os.close(fd)
    except OSError as exc:
        raise QgaError("failed to close handle: %s" % os_error_text(exc))


@command("guest-file-read", data={"handle": "int", "*count": "int"}, returns="GuestFileRead")
def guest_file_read(agent, handle, count=DEFAULT_READ_COUNT):
    """guest-file-read: up to ``count`` bytes from the current position, base64-encoded.

    As fread() does, it reads until ``count`` bytes came or the file ended, and ``eof``
    says it ended.  A pipe that runs dry after some bytes returns them (qemu-ga reports
    EAGAIN and loses them).  Memory: the bytes read plus their base64, which the encoder
    writes out without another copy.
    """
    fd = guest_file(agent, handle)
    if not 0 <= count <= MAX_READ_COUNT:
        raise QgaError("value '%d' is invalid for argument count" % count)
    chunks, got, eof = [], 0, False
    while got < count:
        try:
            data = os.read(fd, count - got)
        except OSError as exc:
            if got and exc.errno == errno.EAGAIN:
                break
            raise QgaError("failed to read file: %s" % os_error_text(exc))
        if not data:
            eof = True
            break
        chunks.append(data)
        got += len(data)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    del chunks[:]
    return OrderedDict((("count", got), ("buf-b64", binascii.b2a_base64(data, newline=False)),
                        ("eof", eof)))


@command("guest-file-write", data={"handle": "int", "buf-b64": "str", "*count": "int"},
         returns="GuestFileWrite")
def guest_file_write(agent, handle, buf_b64, count=None):
    """guest-file-write: write the first ``count`` decoded bytes (all by default)."""
    fd = guest_file(agent, handle)
    data = decode_base64(buf_b64)
    if count is None:
        count = len(data)
    elif not 0 <= count <= len(data):
        raise QgaError("value '%d' is invalid for argument count" % count)
    view = memoryview(data)
    written = 0
    while written < count:
        try:
            done = os.write(fd, view[written:count])
        except OSError as exc:
            if written and exc.errno == errno.EAGAIN:
                break                       # a full pipe: report the part that went in
            raise QgaError("failed to write to file: %s" % os_error_text(exc))
        if not done:
            break
        written += done
    return OrderedDict((("count", written), ("eof", False)))


@command("guest-file-seek", data={"handle": "int", "offset": "int",
                                  "whence": "GuestFileWhence"}, returns="GuestFileSeek")
def guest_file_seek(agent, handle, offset, whence):
    """guest-file-seek: move the position; ``whence`` is 0/1/2 or set/cur/end."""
    fd = guest_file(agent, handle)
    if isinstance(whence, str):
        whence = SEEK_WHENCE[whence]
    elif whence not in SEEK_WHENCE.values():
        raise QgaError("invalid whence code %d" % whence)
    try:
        position = os.lseek(fd, offset, whence)
    except OSError as exc:
        raise QgaError("failed to seek file: %s" % os_error_text(exc))
    return OrderedDict((("eof", False), ("position", position)))


@command("guest-file-flush", data={"handle": "int"})
def guest_file_flush(agent, handle):
    """guest-file-flush: writes are never held back, so only the handle is checked."""
    guest_file(agent, handle)


# -- Exec: guest-exec, guest-exec-status ---------------------------------------------------
#
# Every child gets a watcher thread that feeds its stdin, drains its output pipes and reaps
# it, so a child never blocks on a full pipe and never stays a zombie, while the event loop
# goes on answering requests.  The loop only looks at ``finished`` and, once it is set, at
# the final fields.  The agent does not kill its children when it exits (neither does
# qemu-ga): a host may have started a long job, such as a package upgrade that restarts the
# agent itself.  They are reparented to init; a child still writing into a captured pipe then
# gets SIGPIPE, as under qemu-ga.

# capture-output -> where the child's stdout and stderr go.  ``true`` is "separated", as in
# qemu-ga; "merged" points stderr at the stdout pipe, so the order of the lines is kept.
EXEC_CAPTURE = {
    False: ("null", "null"), "none": ("null", "null"),
    True: ("pipe", "pipe"), "separated": ("pipe", "pipe"),
    "stdout": ("pipe", "null"), "stderr": ("null", "pipe"), "merged": ("pipe", "stdout"),
}

def find_program(name, env):
    """The file GLib's spawn runs for ``name``: ``name`` itself when it has a slash, else the
    first executable regular file along PATH (the child's ``env`` PATH, else the agent's)."""
    if "/" in name:
        return name
    search = env.get("PATH") if env is not None else None
    if search is None:
        search = os.environ.get("PATH", DEFAULT_EXEC_SEARCH_PATH)
    denied = False
    for directory in search.split(":") if name else ():
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        denied = denied or os.path.exists(candidate)
    code = errno.EACCES if denied else errno.ENOENT
    raise OSError(code, os.strerror(code))


def exec_environment(entries):
    """``env`` as a mapping: each "NAME=value" once (the first wins, as for getenv())."""
    if entries is None:
        return None
    environ = OrderedDict()
    for entry in entries:
        name, eq, value = entry.partition("=")
        if eq and name and name not in environ:
            environ[name] = value
    return environ


def spawn_child(argv, env, stdin, stdout, stderr):
    """Start ``argv`` as guest-exec does: PATH search, no agent fds, default signals, the
    agent's cwd and session.  A file without a #! line runs under /bin/sh, as with GLib.

    ``stdin``, ``stdout`` and ``stderr`` are "pipe", "null" or (stderr only) "stdout".
    """
    import subprocess
    where = {"pipe": subprocess.PIPE, "null": subprocess.DEVNULL, "stdout": subprocess.STDOUT}
    program = find_program(argv[0], env)
    options = dict(stdin=where[stdin], stdout=where[stdout], stderr=where[stderr], env=env,
                   bufsize=0, close_fds=True, restore_signals=True, start_new_session=False)
    try:
        return subprocess.Popen(argv, executable=program, **options)
    except OSError as exc:
        if exc.errno != errno.ENOEXEC:
            raise
    return subprocess.Popen(["/bin/sh", program] + argv[1:], **options)


class ExecChild(object):
    """A guest-exec child: the process, its captured output, and whether it is over.

    ``finished`` is set once the child has been reaped and every captured pipe has hit end
    of file (a grandchild holding stdout open keeps it unset, as in qemu-ga).
    """

    held = 0                # bytes of captured output all children hold together
    held_lock = None

    def __init__(self, proc, input_data):
        import threading
        if ExecChild.held_lock is None:
            ExecChild.held_lock = threading.Lock()
        self.proc = proc
        self.out = bytearray() if proc.stdout is not None else None
        self.err = bytearray() if proc.stderr is not None else None
        self.out_truncated = self.err_truncated = False
        self.finished = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(input_data,),
                                   name="guest-exec-%d" % proc.pid)
        watcher.daemon = True
        watcher.start()

    def _watch(self, input_data):
        proc = self.proc
        try:
            self._pump(input_data)
        finally:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
            self.finished.set()

    def _pump(self, input_data):
        """Feed stdin and drain stdout/stderr until the output pipes close."""
        proc = self.proc
        poller = select.poll()
        streams = {}                        # output fd -> "out" / "err"
        for pipe, name in ((proc.stdout, "out"), (proc.stderr, "err")):
            if pipe is not None:
                streams[pipe.fileno()] = name
                poller.register(pipe.fileno(), select.POLLIN)
        stdin, pending = None, memoryview(input_data or b"")
        if proc.stdin is not None:
            if pending:
                stdin = proc.stdin.fileno()
                os.set_blocking(stdin, False)
                poller.register(stdin, select.POLLOUT)
            else:
                proc.stdin.close()
        # The child may exit long before its pipes close (a grandchild holds them): a pidfd
        # says so at once and it is reaped at once; without one (Python < 3.9, PyPy) we look
        # after every wake-up, and every second while nothing else wakes us.
        pidfd = open_pidfd(proc.pid) if streams or stdin is not None else None
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        try:
            while streams or stdin is not None:
                if not streams and proc.poll() is not None:
                    break                   # only stdin is left and nobody will read it
                waiting = pidfd is None and proc.returncode is None
                events = poller.poll(EXEC_REAP_INTERVAL * 1000 if waiting else None)
                if waiting:
                    proc.poll()
                for fd, _ in events:
                    if fd == pidfd:
                        proc.poll()
                        poller.unregister(pidfd)
                        os.close(pidfd)
                        pidfd = None
                    elif fd == stdin:
                        pending = feed_child(poller, proc, pending)
                        if not pending:
                            stdin = None
                    else:
                        try:
                            data = os.read(fd, EXEC_READ_CHUNK)
                        except OSError:
                            data = b""
                        if data:
                            self._keep(streams[fd], data)
                        else:
                            poller.unregister(fd)
                            del streams[fd]
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _keep(self, name, data):
        """Store output up to the caps (per stream, and for all children together); past
        them, note the truncation and drop the bytes."""
        buf = self.out if name == "out" else self.err
        with ExecChild.held_lock:
            room = max(0, min(EXEC_OUTPUT_CAP - len(buf), EXEC_OUTPUT_TOTAL_CAP - ExecChild.held))
            if len(data) > room:
                setattr(self, name + "_truncated", True)
                data = data[:room]
            ExecChild.held += len(data)
        if data:
            buf += data

    def release(self):
        """Give the output back to the budget of all children: it has been collected."""
        with ExecChild.held_lock:
            ExecChild.held -= len(self.out or b"") + len(self.err or b"")

    def status(self):
        """GuestExecStatus in qemu-ga's key order, base64 as bytes for the encoder."""
        if not self.finished.is_set():
            return {"exited": False}
        code = self.proc.returncode
        result = OrderedDict()
        if code >= 0:
            result["exitcode"] = code
        if self.err:
            result["err-data"] = binascii.b2a_base64(self.err, newline=False)
        if self.out:
            result["out-data"] = binascii.b2a_base64(self.out, newline=False)
        if self.err:
            result["err-truncated"] = self.err_truncated
        if code < 0:
            result["signal"] = -code
        if self.out:
            result["out-truncated"] = self.out_truncated
        result["exited"] = True
        return result


@command("guest-exec", data={"path": "str", "*arg": ["str"], "*env": ["str"],
                             "*input-data": "str",
                             "*capture-output": "GuestExecCaptureOutput"},
         returns="GuestExec")
def guest_exec(agent, path, arg=(), env=None, input_data=None, capture_output=False):
    """guest-exec: start a program and return its pid; guest-exec-status follows it.

    ``env`` replaces the environment; ``input-data`` goes to stdin (else /dev/null);
    output that is not captured goes to /dev/null.
    """
    argv = [path] + list(arg)
    agent.log.audit('guest-exec called: "%s"' % " ".join(argv))
    if len(agent.exec_children) >= MAX_EXEC_PROCESSES:
        raise QgaError("too many guest-exec processes: %d are running or waiting for "
                       "guest-exec-status to collect them" % MAX_EXEC_PROCESSES)
    data = decode_base64(input_data) if input_data is not None else None
    stdout, stderr = EXEC_CAPTURE[capture_output]
    try:
        proc = spawn_child(argv, exec_environment(env), "null" if data is None else "pipe",
                           stdout, stderr)
    except (OSError, ValueError) as exc:     # ValueError: a NUL or lone surrogate
        why = os_error_text(exc) if isinstance(exc, OSError) else os.strerror(errno.EINVAL)
        raise QgaError("Guest agent command failed, error was 'Failed to execute child "
                       "process \u201c%s\u201d (%s)'" % (path, why))
    agent.exec_children[proc.pid] = ExecChild(proc, data)
    return {"pid": proc.pid}


@command("guest-exec-status", data={"pid": "int"}, returns="GuestExecStatus")
def guest_exec_status(agent, pid):
    """guest-exec-status: how a guest-exec child is doing; forgotten once reported over."""
    agent.log.audit("guest-exec-status called, pid: %d" % pid)
    child = agent.exec_children.get(pid)
    if child is None:
        raise QgaError("Invalid parameter 'pid'")
    result = child.status()
    if result["exited"]:
        del agent.exec_children[pid]
        child.release()
    return result


# -- Power: guest-shutdown, guest-suspend-disk, -ram, -hybrid ------------------------------

def kernel_reboot(command):
    """reboot(2) with a LINUX_REBOOT_CMD_* value.  Tests replace this function."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.reboot(ctypes.c_int(command)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def write_kernel_file(host, path, value):
    """Write a /sys or /proc control file, as ``echo value > path`` does."""
    fd = os.open(host.path(path), os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def shutdown_by_kernel(host, mode):
    """Power down, halt or reboot with no program at all: sync, then reboot(2), then sysrq.

    QgaError, naming the reboot(2) failure, when neither worked.
    """
    program, flag, command, sysrq_key = SHUTDOWN_MODES[mode]
    os.sync()
    try:
        kernel_reboot(command)
        return
    except OSError as exc:
        failure = exc
    if sysrq_key:
        try:
            write_kernel_file(host, SYSRQ_TRIGGER, sysrq_key)
            return
        except OSError:
            pass
    raise QgaError("no shutdown program found and the kernel refused to %s: %s"
                   % (program, os_error_text(failure)))


@command("guest-shutdown", data={"*mode": "str"}, success_response=False)
def guest_shutdown(agent, mode="powerdown"):
    """guest-shutdown: power down, halt or reboot the guest; no reply when that worked.

    The first program present does it: /sbin/poweroff|halt|reboot (as qemu-ga 10.2), else
    ``shutdown -h -P|-H|-r +0`` (as 7.2), systemctl, busybox.  With none (an initramfs), the
    kernel is asked directly.
    """
    if mode not in SHUTDOWN_MODES:
        raise QgaError("mode is invalid (valid values are: halt|powerdown|reboot")
    agent.log.audit("guest-shutdown called, mode: %s" % mode)
    program, flag = SHUTDOWN_MODES[mode][:2]
    for argv in (["/sbin/" + program],
                 ["/sbin/shutdown", "-h", flag, "+0", SHUTDOWN_MESSAGE],
                 ["systemctl", program],
                 ["busybox", program]):
        result = run_helper(agent.host, argv)
        if result is None:
            continue
        status, output = result
        if status == 0 or status == -signal.SIGTERM:
            # SIGTERM: systemd's shutdown stopping the agent's unit ends the helper (in the
            # unit's cgroup) before it exits; the guest is going down, as the host asked.
            return
        agent.log.warning("%s: status %d: %s" % (" ".join(argv), status, output))
        if status < 0:
            raise QgaError("child process has terminated abnormally")
        raise QgaError("child process has failed to shutdown")
    shutdown_by_kernel(agent.host, mode)


def parse_sleep_modes(state, disk, mem_sleep):
    """The suspend modes ("disk", "ram", "hybrid") the kernel offers, from the texts of
    /sys/power/state, /sys/power/disk and /sys/power/mem_sleep (None when unreadable)."""
    states = (state or "").split()
    hibernation = [choice.strip("[]") for choice in (disk or "").split()]
    modes = set()
    if ("mem" in states and (mem_sleep is None or mem_sleep.split())) or "freeze" in states:
        modes.add("ram")
    if "disk" in states and "disabled" not in hibernation:
        modes.add("disk")
        if "ram" in modes and "suspend" in hibernation:
            modes.add("hybrid")
    return modes


def _helper_outcome(host, argv):
    """'' when the helper program succeeded, else qemu-ga's text for how it failed."""
    result = run_helper(host, argv)
    if result is None:
        return "the helper program '%s' was not found" % " ".join(argv)
    if result[0] == 0:
        return ""
    return ("the helper program '%s' returned an unexpected exit status code (%d)"
            % (" ".join(argv), result[0]))


def _suspend_with_systemd(host, mode):
    """'' when systemd put the guest to sleep, an error text when it failed, None if absent."""
    unit, verb = SUSPEND_MODES[mode][:2]
    if not host.exists(SYSTEMD_RUNNING):
        return None
    probe = run_helper(host, ["systemctl", "status", unit])
    if probe is None or not 0 < probe[0] < 4:     # LSB codes; 4 means no such unit
        return None
    return _helper_outcome(host, ["systemctl", verb])


def _suspend_with_pm_utils(host, mode):
    """As _suspend_with_systemd, with pm-is-supported and pm-hibernate|suspend|suspend-hybrid."""
    flag, program = SUSPEND_MODES[mode][2:]
    probe = run_helper(host, ["pm-is-supported", flag])
    if probe is None or probe[0] != 0:
        return None
    return _helper_outcome(host, [program])


def _suspend_with_sysfs(host, mode):
    """Write /sys/power/state ourselves; hybrid sets /sys/power/disk to "suspend" first and
    restores it on resume (the write returns when the guest wakes up)."""
    states = host.read_attr(POWER_STATE, "").split()
    target = "disk" if mode != "ram" else ("mem" if "mem" in states else "freeze")
    previous = None
    try:
        if mode == "hybrid":
            previous = next((c.strip("[]") for c in host.read_attr(POWER_DISK, "").split()
                             if c.startswith("[")), None)
            write_kernel_file(host, POWER_DISK, "suspend")
        write_kernel_file(host, POWER_STATE, target)
        return ""
    except OSError as exc:
        return "suspend: cannot write to '%s': %s" % (POWER_STATE, os_error_text(exc))
    finally:
        if previous and previous != "suspend":
            try:
                write_kernel_file(host, POWER_DISK, previous)
            except OSError:
                pass


def guest_suspend(agent, mode):
    """Put the guest to sleep: systemd, then pm-utils, then sysfs, as qemu-ga.

    The kernel's support is checked first.  Unlike qemu-ga, an error of an earlier way is
    reported when no later way worked, instead of being dropped (qemu-ga then sends nothing).
    """
    host = agent.host
    supported = parse_sleep_modes(host.read_attr(POWER_STATE), host.read_attr(POWER_DISK),
                                  host.read_attr(POWER_MEM_SLEEP))
    if mode not in supported:
        raise QgaError(SUSPEND_UNSUPPORTED)
    first_error = None
    for attempt in (_suspend_with_systemd, _suspend_with_pm_utils, _suspend_with_sysfs):
        error = attempt(host, mode)
        if error == "":
            return
        first_error = first_error or error
    raise QgaError(first_error)


@command("guest-suspend-disk", success_response=False)
def guest_suspend_disk(agent):
    """guest-suspend-disk: hibernate; no reply when that worked."""
    guest_suspend(agent, "disk")


@command("guest-suspend-ram", success_response=False)
def guest_suspend_ram(agent):
    """guest-suspend-ram: suspend to RAM; no reply when that worked."""
    guest_suspend(agent, "ram")


@command("guest-suspend-hybrid", success_response=False)
def guest_suspend_hybrid(agent):
    """guest-suspend-hybrid: save to disk and suspend to RAM; no reply when that worked."""
    guest_suspend(agent, "hybrid")


# -- Freeze and trim: guest-fsfreeze-*, guest-fstrim ---------------------------------------
#
# Freeze, thaw, trim and guest-get-fsinfo share one mount list, built as qemu-ga builds it from
# /proc/self/mountinfo: only file systems on a block device (major 0 means none: tmpfs, proc,
# overlay, NFS, CIFS, FUSE, ...; btrfs is the exception, its source device is stat()ed), and
# each device once (the first mount wins; bind mounts and second mounts are skipped).  So no
# network file system is ever opened, frozen or statvfs()ed: a dead server cannot hang us.

MountInfoEntry = namedtuple("MountInfoEntry", "major minor dirname fstype source")

# A file system of the mount list.  ``dev`` is the st_dev its mount point must have when
# opened (None: not checked, as for btrfs, whose subvolumes have devices of their own).
Mount = namedtuple("Mount", "dirname fstype major minor dev")

_MOUNT_ESCAPE = re.compile(r"\\(?:\\|[0-3][0-7][0-7])")


def _unescape_mount_char(match):
    text = match.group()
    return "\\" if text == "\\\\" else chr(int(text[1:], 8))


def unescape_mount_field(text):
    """A mount table field with the kernel's octal escapes (``\\040`` is a space) decoded."""
    return _MOUNT_ESCAPE.sub(_unescape_mount_char, text) if "\\" in text else text


def parse_mountinfo(text):
    """Every entry of /proc/self/mountinfo, in file order; malformed lines are skipped."""
    entries = []
    for line in text.split("\n"):
        head, dash, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not dash or len(fields) < 5 or len(rest) < 2:
            continue
        major, colon, minor = fields[2].partition(":")
        if not (colon and major.isdigit() and minor.isdigit()):
            continue
        entries.append(MountInfoEntry(int(major), int(minor), unescape_mount_field(fields[4]),
                                      rest[0], unescape_mount_field(rest[1])))
    return entries


def parse_mounts(text):
    """Every entry of /proc/self/mounts (source, dir, type, ...), device numbers unknown."""
    entries = []
    for line in text.split("\n"):
        fields = line.split()
        if len(fields) >= 3:
            entries.append(MountInfoEntry(0, 0, unescape_mount_field(fields[1]), fields[2],
                                          unescape_mount_field(fields[0])))
    return entries


def select_local_mounts(entries, device_numbers):
    """The mount list from mountinfo entries.

    ``device_numbers(source)`` is ``(major, minor)`` for a block device node, "dir" for a
    directory and None otherwise; it is asked about btrfs sources only.
    """
    mounts, seen = [], set()
    for entry in entries:
        major, minor = entry.major, entry.minor
        dev = os.makedev(major, minor)
        if major == 0:
            numbers = device_numbers(entry.source) if entry.fstype == "btrfs" else None
            if not isinstance(numbers, tuple):
                continue
            (major, minor), dev = numbers, None
        if (major, minor) not in seen:
            seen.add((major, minor))
            mounts.append(Mount(entry.dirname, entry.fstype, major, minor, dev))
    return mounts


def select_mtab_mounts(entries, device_numbers):
    """The mount list from /proc/self/mounts entries (qemu-ga's getmntent fallback).

    A source that is not an absolute path is a pseudo or network file system; smbfs and cifs
    sources look like paths and are skipped by type; a directory source is a bind mount.
    """
    mounts, seen = [], set()
    for entry in entries:
        if not entry.source.startswith("/") or entry.fstype in ("smbfs", "cifs"):
            continue
        numbers = device_numbers(entry.source)
        if numbers == "dir":
            continue
        major, minor = numbers if isinstance(numbers, tuple) else (0, 0)
        if (major, minor) not in seen:
            seen.add((major, minor))
            dev = os.makedev(major, minor) if major else None
            mounts.append(Mount(entry.dirname, entry.fstype, major, minor, dev))
    return mounts


def _device_numbers(host, source):
    """What a mount source is: (major, minor) of a block device, "dir", or None."""
    if not source.startswith("/"):
        return None
    try:
        st = os.stat(host.path(source))
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISBLK(st.st_mode):
        return os.major(st.st_rdev), os.minor(st.st_rdev)
    return None


def build_mount_list(host):
    """The local block-device file systems, in mount order (QgaError as qemu-ga words it)."""
    def numbers(source):
        return _device_numbers(host, source)
    try:
        text = os.fsdecode(host.read_bytes(MOUNTINFO_PATH))
    except (OSError, IOError):
        try:
            text = os.fsdecode(host.read_bytes(MOUNTS_PATH))
        except (OSError, IOError):
            raise QgaError("failed to open mtab file: '%s'" % MOUNTS_PATH)
        return select_mtab_mounts(parse_mounts(text), numbers)
    return select_local_mounts(parse_mountinfo(text), numbers)


def display_path(path):
    """A path as JSON text: bytes that are not UTF-8 become U+FFFD, as qemu's writer does."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def open_mount_point(host, mount):
    """A read-only fd on a mount point; None if another file system is mounted there now.

    The check matters when the table is stale (an unmount since it was read): qemu-ga would
    then freeze or trim whatever file system holds the bare directory, usually the root.
    """
    fd = os.open(host.path(mount.dirname), os.O_RDONLY | os.O_CLOEXEC)
    if mount.dev is not None and os.fstat(fd).st_dev != mount.dev:
        os.close(fd)
        return None
    return fd


def freeze_mounts(host, mounts, mountpoints=None):
    """FIFREEZE the mounts, children before parents; the number frozen.

    With ``mountpoints`` only the mounts whose directory is in it exactly; others are ignored.
    EOPNOTSUPP (cannot be frozen) and EBUSY (already frozen, e.g. by a bind mount) are not
    errors and not counted; any other failure raises QgaError, leaving the caller to thaw.
    """
    wanted = None if mountpoints is None else set(mountpoints)
    count = 0
    for mount in reversed(mounts):
        if wanted is not None and mount.dirname not in wanted:
            continue
        try:
            fd = open_mount_point(host, mount)
        except OSError as exc:
            raise QgaError("failed to open %s: %s"
                           % (display_path(mount.dirname), os_error_text(exc)))
        if fd is None:
            continue
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
            count += 1
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EBUSY):
                raise QgaError("failed to freeze %s: %s"
                               % (display_path(mount.dirname), os_error_text(exc)))
        finally:
            os.close(fd)
    return count


def thaw_mounts(host, mounts):
    """FITHAW every mount until it fails (one freeze may be nested in another); the number of
    file systems at least one FITHAW succeeded on.  Mounts that cannot be opened are skipped."""
    count = 0
    for mount in mounts:
        try:
            fd = open_mount_point(host, mount)
        except OSError:
            continue
        if fd is None:
            continue
        thawed = False
        try:
            while True:
                fcntl.ioctl(fd, FITHAW, 0)
                thawed = True
        except OSError:
            pass
        finally:
            os.close(fd)
        count += thawed
    return count


class HookTimeout(QgaError):
    """The fsfreeze hook ran longer than --fsfreeze-hook-timeout and was killed."""


def run_fsfreeze_hook(agent, action):
    """Run the -F hook with ``freeze`` or ``thaw`` and wait for it, at most
    --fsfreeze-hook-timeout seconds (qemu-ga waits forever); then it is killed with its
    process group and HookTimeout is raised.

    The hook runs as every helper does (run_program); its failure is a QgaError in qemu-ga
    7.2's words.  A hook that another user could have written is not run.  Without -F
    nothing runs.
    """
    hook = agent.config.fsfreeze_hook
    if not hook:
        return
    if not os.access(hook, os.X_OK):
        try:
            os.stat(hook)
            code = errno.EACCES
        except OSError as exc:
            code = exc.errno
        raise QgaError("can't access fsfreeze hook '%s': %s" % (hook, os.strerror(code)))
    try:
        why = untrusted_file_reason(os.stat(hook))
    except OSError as exc:
        why = os_error_text(exc)
    if why:
        raise QgaError("refusing fsfreeze hook '%s': %s" % (hook, why))
    agent.log.audit("executing fsfreeze hook with arg '%s'" % action)
    timeout = agent.config.fsfreeze_hook_timeout or None
    try:
        # A bare name is a file in the current directory (execl), never a PATH search.
        status, output = run_program(os.path.abspath(hook), [hook, action], timeout=timeout)
    except ProgramTimeout as exc:
        agent.log.debug("fsfreeze hook output: %s" % exc.output)
        raise HookTimeout("fsfreeze hook '%s' did not finish '%s' within %g seconds and was "
                          "killed with its process group%s"
                          % (hook, action, timeout, "" if exc.died
                             else " (it is stuck in the kernel and has not died yet)"))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.ENOMEM):
            raise QgaError("failed to create child process: %s" % os_error_text(exc))
        status, output = 1, os_error_text(exc)  # the exec failed: qemu-ga's child exits 1
    if status:
        agent.log.debug("fsfreeze hook output: %s" % output)
    if status < 0:
        raise QgaError("fsfreeze hook has terminated abnormally")
    if status:
        raise QgaError("fsfreeze hook has failed with status %d" % status)


def run_freeze_hook(agent):
    """The hook's ``freeze``.  One that timed out was killed part-way: whatever it had
    frozen (a database lock, a script's own fsfreeze) is undone by running its ``thaw``, as
    qemu-ga thaws everything, hook included, when a freeze fails after the hook succeeded.
    A hook that failed by itself is trusted to have cleaned up, as in qemu-ga."""
    try:
        run_fsfreeze_hook(agent, "freeze")
    except HookTimeout as exc:
        try:
            run_fsfreeze_hook(agent, "thaw")
            undone = "its 'thaw' was run"
        except QgaError as thaw_error:
            undone = "running its 'thaw' failed too: " + thaw_error.desc
        raise QgaError("%s; no file system was frozen and %s" % (exc.desc, undone))


def freeze_filesystems(agent, mountpoints=None):
    """guest-fsfreeze-freeze(-list): hook, mount list, frozen state, then the ioctls."""
    agent.log.audit("guest-fsfreeze called")
    run_freeze_hook(agent)
    mounts = build_mount_list(agent.host)
    # Frozen before the first ioctl: from here on no log line or state write may touch a disk.
    agent.set_frozen(True)
    try:
        count = freeze_mounts(agent.host, mounts, mountpoints)
    except Exception:
        try:
            thaw_filesystems(agent)
        except QgaError:
            pass
        raise
    if count == 0:
        agent.set_frozen(False)      # nothing frozen: no thaw, and no thaw hook
    else:
        arm_freeze_watchdog(agent)
    return count


def thaw_filesystems(agent):
    """guest-fsfreeze-thaw: thaw every mount, leave the frozen state, run the thaw hook."""
    count = thaw_mounts(agent.host, build_mount_list(agent.host))
    if agent.freeze_watchdog is not None:
        agent.freeze_watchdog()
        agent.freeze_watchdog = None
    agent.set_frozen(False)
    agent.log.audit("guest-fsthaw called")
    try:
        run_fsfreeze_hook(agent, "thaw")
    except HookTimeout as exc:
        raise QgaError("%s; the file systems were thawed before it ran" % exc.desc)
    return count


def arm_freeze_watchdog(agent):
    """With --freeze-timeout: thaw by ourselves if the host has not thawed in time."""
    timeout = agent.config.freeze_timeout
    if not timeout or agent.freeze_watchdog is not None:
        return

    def auto_thaw():
        agent.freeze_watchdog = None
        if not agent.frozen:
            return
        try:
            count = thaw_filesystems(agent)
        except QgaError as exc:
            if agent.frozen:                 # no mount list: try again later
                agent.freeze_watchdog = agent.call_later(timeout, auto_thaw)
            agent.log.error("automatic thaw after %g seconds: %s" % (timeout, exc.desc))
            return
        agent.log.audit("file systems were frozen for %g seconds: thawed %d of them"
                        % (timeout, count))

    agent.freeze_watchdog = agent.call_later(timeout, auto_thaw)


def fsfreeze_start(agent):
    """At start-up: thaw at exit if still frozen, and watch a freeze inherited through the
    frozen marker as if it had just been made."""
    def thaw_at_exit():
        if agent.frozen:
            thaw_filesystems(agent)
    agent.cleanups.append(thaw_at_exit)
    if agent.frozen:
        arm_freeze_watchdog(agent)


@command("guest-fsfreeze-status", returns="GuestFsfreezeStatus")
def guest_fsfreeze_status(agent):
    """guest-fsfreeze-status: the agent's own freeze state."""
    return "frozen" if agent.frozen else "thawed"


@command("guest-fsfreeze-freeze", returns="int")
def guest_fsfreeze_freeze(agent):
    """guest-fsfreeze-freeze: freeze every local file system; the number frozen."""
    return freeze_filesystems(agent)


@command("guest-fsfreeze-freeze-list", data={"*mountpoints": ["str"]}, returns="int")
def guest_fsfreeze_freeze_list(agent, mountpoints=None):
    """guest-fsfreeze-freeze-list: freeze the named mount points (all without a list)."""
    return freeze_filesystems(agent, mountpoints)


@command("guest-fsfreeze-thaw", returns="int")
def guest_fsfreeze_thaw(agent):
    """guest-fsfreeze-thaw: thaw every file system; the number thawed."""
    return thaw_filesystems(agent)


def _int64(value):
    """A u64 the kernel returned, as the int64 QAPI member qemu-ga assigns it to."""
    return value - (1 << 64) if value > INT64_MAX else value


def trim_mount(host, mount, minimum):
    """One guest-fstrim result: FITRIM over the whole file system, or the error."""
    path = display_path(mount.dirname)
    try:
        fd = open_mount_point(host, mount)
    except OSError as exc:
        return OrderedDict([("path", path), ("error", "failed to open: %s" % os_error_text(exc))])
    if fd is None:
        return None
    trim_range = bytearray(FSTRIM_RANGE.pack(0, UINT64_MAX, minimum & UINT64_MAX))
    try:
        fcntl.ioctl(fd, FITRIM, trim_range, True)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP):
            error = "trim not supported"
        else:
            error = "failed to trim: %s" % os_error_text(exc)
        return OrderedDict([("path", path), ("error", error)])
    finally:
        os.close(fd)
    _, trimmed, minimum = FSTRIM_RANGE.unpack(trim_range)
    return OrderedDict([("minimum", _int64(minimum)), ("path", path),
                        ("trimmed", _int64(trimmed))])


@command("guest-fstrim", data={"*minimum": "int"}, returns="GuestFilesystemTrimResponse")
def guest_fstrim(agent, minimum=0):
    """guest-fstrim: discard unused blocks of every file system; results in reverse mount
    order, a failure reported for its path only."""
    agent.log.audit("guest-fstrim called")
    results = [trim_mount(agent.host, mount, minimum) for mount in build_mount_list(agent.host)]
    return {"paths": [result for result in reversed(results) if result is not None]}


# -- Filesystems and disks: guest-get-fsinfo, guest-get-disks ------------------------------
#
# A file system's disks are found from /sys/dev/block/<major>:<minor>: a virtual device (dm,
# md: LVM, LUKS, RAID) is looked through, following its slaves/ links down to real disks; a
# real disk gets its controller address from its sysfs path, as qemu-ga reads it.  libvirt
# reads the address numbers as unsigned and matches them against the domain's disks, so a disk
# whose controller address cannot be worked out is left out rather than sent with -1s.

def parse_uevent(text):
    """A sysfs uevent file (``KEY=value`` lines) as a dict."""
    values = {}
    for line in text.split("\n"):
        key, eq, value = line.partition("=")
        if eq:
            values[key] = value
    return values


def parse_udev_properties(text):
    """The properties (``E:KEY=value`` lines) of a udev database entry, as a dict."""
    return parse_uevent("\n".join(line[2:] for line in text.split("\n")
                                  if line.startswith("E:")))


_PCI_TOP = re.compile(r"[0-9a-fA-F]+:[0-9a-fA-F]+/([0-9a-fA-F]+):([0-9a-fA-F]+):"
                      r"([0-9a-fA-F]+)\.([0-9a-fA-F]+)")
_PCI_NEXT = re.compile(r"/([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-9a-fA-F]+)")
_SCSI_TARGET = re.compile(r"[0-9]+:[0-9]+:[0-9]+/[0-9]+:([0-9]+):([0-9]+):([0-9]+)")
_CCW_DEVICE = re.compile(r"[0-9a-fA-F]+/([0-9a-fA-F]+)\.([0-9a-fA-F]+)\.([0-9a-fA-F]+)/"
                         r"[0-9a-fA-F]+\.[0-9a-fA-F]+\.([0-9a-fA-F]+)/")
_LEADING_DIGITS = re.compile(r"[0-9]+")


def scsi_target(syspath):
    """(channel, target, lun) from the first ``/targetH:C:T/H:C:T:L`` of a sysfs path."""
    at = syspath.find("/target")
    match = _SCSI_TARGET.match(syspath, at + 7) if at >= 0 else None
    return tuple(int(n) for n in match.groups()) if match else None


def disk_hardware(syspath, driver_of, port_numbers):
    """The controller address of a real disk from its sysfs path, or None if unknown.

    A dict with ``bus-type``, ``bus``, ``target``, ``unit`` and ``pci`` (domain, bus, slot,
    function) or ``ccw`` (cssid, ssid, subchno, devno).  ``driver_of(dir)`` names the driver
    bound to a sysfs device directory; ``port_numbers(dir, prefix)`` lists the numbers of its
    ``ata<N>`` or ``host<N>`` children, sorted.  Pure apart from those two.
    """
    found = {"bus-type": "unknown", "bus": 0, "target": 0, "unit": 0}
    target = scsi_target(syspath)
    at = syspath.find("/devices/pci")
    if at >= 0:
        match = _PCI_TOP.match(syspath, at + 12)
        # Walk down nested functions (bridges) to the first with a disk controller's driver.
        while match:
            end, pci = match.end(), tuple(int(n, 16) for n in match.groups())
            driver = driver_of(syspath[:end])
            if driver in DISK_CONTROLLER_BUS:
                break
            match = _PCI_NEXT.match(syspath, end)
        if not match:
            return None
        found["pci"] = pci
        bus_type = DISK_CONTROLLER_BUS[driver]
        if driver in ("ata_piix", "ahci"):
            # Which port of the controller: ata<N> (libata) or host<N>, by its rank.
            at = syspath.find("/ata")
            prefix = "ata" if at >= 0 else "host"
            if at < 0:
                at = syspath.find("/host")
            number = _LEADING_DIGITS.match(syspath, at + 1 + len(prefix)) if at >= 0 else None
            if number is None or target is None:
                return None
            ports = port_numbers(syspath[:at], prefix)
            if int(number.group()) not in ports:
                return None
            rank = ports.index(int(number.group()))
            if driver == "ata_piix":       # one host per IDE bus, target*:0:<unit>:0
                found["bus"], found["unit"] = rank, target[1]
            else:                          # AHCI: one host per unit
                found["unit"] = rank
        elif driver == "sym53c8xx":        # LSI SCSI: target*:0:<unit>:0
            if target is None:
                return None
            found["unit"] = target[1]
        elif driver == "virtio-pci" and target is not None:   # virtio-scsi: target*:0:0:<unit>
            bus_type, found["unit"] = "scsi", target[2]
        found["bus-type"] = bus_type
        return found
    at = syspath.find("/devices/css")
    if at >= 0:                            # s390x channel I/O
        match = _CCW_DEVICE.match(syspath, at + 12)
        if not match:
            return None
        found["ccw"] = tuple(int(n, 16) for n in match.groups())
        if "/virtio" in syspath[at:] and "/block" in syspath:
            if target is not None:         # virtio-scsi: target*:<bus>:<target>:<unit>
                found["bus-type"] = "scsi"
                found["bus"], found["target"], found["unit"] = target
            else:
                found["bus-type"] = "virtio"
        return found
    return None


def readdir(host, path):
    """Names in a directory in the kernel's order (qemu-ga lists in readdir order, so its
    replies come out in this order), or None if it cannot be read."""
    try:
        return os.listdir(host.path(path))
    except OSError:
        return None


def _sysfs_driver(host, path):
    try:
        return os.path.basename(os.readlink(host.path(path + "/driver")))
    except OSError:
        return None


def _port_numbers(host, path, prefix):
    pattern = re.compile(re.escape(prefix) + "([0-9]+)")
    return sorted(int(m.group(1)) for m in map(pattern.match, host.listdir(path)) if m)


def udev_properties(host, uevent):
    """udev's database entry of a block device, or None where udev keeps none."""
    text = host.read_text("%s/b%s:%s" % (UDEV_DATA, uevent.get("MAJOR"), uevent.get("MINOR")))
    return None if text is None else parse_udev_properties(text)


def disk_address(host, syspath):
    """The GuestDiskAddress of a real disk (or partition), or None if its address is unknown.

    ``dev`` is the node the kernel names in uevent (as libudev reports it); ``serial`` is udev's
    ID_SERIAL, or where there is no udev database the disk's own sysfs ``serial`` (virtio-blk
    has one; udev's ID_SERIAL for virtio is that same value).
    """
    hardware = disk_hardware(syspath, lambda path: _sysfs_driver(host, path),
                             lambda path, prefix: _port_numbers(host, path, prefix))
    if hardware is None:
        return None
    uevent = parse_uevent(host.read_text(syspath + "/uevent", ""))
    udev = udev_properties(host, uevent)
    if udev is not None:
        serial = udev.get("ID_SERIAL")
    else:
        disk = os.path.dirname(syspath) if host.exists(syspath + "/partition") else syspath
        serial = host.read_attr(disk + "/serial")
    pci = hardware.get("pci", (0, 0, 0, 0))    # CCW disks have no PCI controller: zeros
    address = OrderedDict()
    if "ccw" in hardware:
        address["ccw-address"] = OrderedDict(zip(("cssid", "ssid", "subchno", "devno"),
                                                 hardware["ccw"]))
    if serial:
        address["serial"] = serial
    address["bus-type"] = hardware["bus-type"]
    address["bus"] = hardware["bus"]
    address["unit"] = hardware["unit"]
    address["pci-controller"] = OrderedDict(zip(("bus", "slot", "domain", "function"),
                                                (pci[1], pci[2], pci[0], pci[3])))
    if uevent.get("DEVNAME"):
        address["dev"] = "/dev/" + uevent["DEVNAME"]
    address["target"] = hardware["target"]
    return address


def block_device_disks(host, devpath, addresses, seen=None):
    """Append the addresses of the real disks under a sysfs block device to ``addresses``;
    the device's resolved sysfs path, or None if it does not exist (containers)."""
    if not host.exists(devpath):
        return None
    syspath = host.realpath(devpath)
    seen = set() if seen is None else seen
    if syspath in seen:
        return syspath
    seen.add(syspath)
    if VIRTUAL_BLOCK_MARK in syspath:
        slaves = syspath + "/slaves"
        for name in readdir(host, slaves) or ():
            if os.path.islink(host.path(slaves + "/" + name)):
                block_device_disks(host, slaves + "/" + name, addresses, seen)
    else:
        address = disk_address(host, syspath)
        if address is not None:
            addresses.append(address)
    return syspath


def statvfs_usage(st):
    """(used, total for unprivileged users, total) bytes from a statvfs result, as qemu-ga."""
    used = st.f_blocks - st.f_bfree
    return used * st.f_frsize, (used + st.f_bavail) * st.f_frsize, st.f_blocks * st.f_frsize


def filesystem_info(host, mount):
    """One GuestFilesystemInfo."""
    devpath = "/sys/dev/block/%d:%d" % (mount.major, mount.minor)
    disks = []
    syspath = block_device_disks(host, devpath, disks)
    disks.reverse()                  # qemu-ga prepends each disk it finds
    info = OrderedDict([("name", os.path.basename(syspath or devpath))])
    try:
        usage = statvfs_usage(os.statvfs(host.path(mount.dirname)))
    except OSError:
        usage = None
    if usage:
        info["total-bytes"], info["total-bytes-privileged"] = usage[1], usage[2]
    info["mountpoint"] = display_path(mount.dirname)
    info["disk"] = disks
    if usage:
        info["used-bytes"] = usage[0]
    info["type"] = mount.fstype
    return info


@command("guest-get-fsinfo", returns=["GuestFilesystemInfo"])
def guest_get_fsinfo(agent):
    """guest-get-fsinfo: every local file system with its size and disks, last mount first."""
    infos = [filesystem_info(agent.host, mount) for mount in build_mount_list(agent.host)]
    infos.reverse()
    return infos


def parse_nvme_smart_log(data):
    """GuestNVMeSmart from a 512-byte NVMe SMART / health information log page."""
    warning, temperature, spare, threshold, used = NVME_SMART_HEAD.unpack_from(data)
    counters = struct.unpack_from("<%dQ" % (2 * len(NVME_SMART_COUNTERS)), data,
                                  NVME_SMART_HEAD.size)
    values = {"type": "nvme", "critical-warning": warning, "temperature": temperature,
              "available-spare": spare, "available-spare-threshold": threshold,
              "percentage-used": used}
    for i, name in enumerate(NVME_SMART_COUNTERS):
        values[name + "-lo"], values[name + "-hi"] = counters[2 * i], counters[2 * i + 1]
    return OrderedDict((key, values[key]) for key in NVME_SMART_KEY_ORDER)


def read_nvme_smart_log(path):
    """The SMART log page of an NVMe device through the admin-command ioctl (OSError if not)."""
    import array
    page = array.array("B", bytes(NVME_SMART_LOG_SIZE))
    command = bytearray(NVME_ADMIN_CMD.pack(
        NVME_GET_LOG_PAGE, 0, 0, NVME_NSID_ALL, 0, 0, 0, page.buffer_info()[0], 0,
        NVME_SMART_LOG_SIZE, NVME_SMART_CDW10, 0, 0, 0, 0, 0, 0, 0))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, NVME_IOCTL_ADMIN_CMD, command, True)
    finally:
        os.close(fd)
    return page.tobytes()


def uevent_node(uevent):
    """The /dev node a block device's parsed uevent names, or None."""
    name = uevent.get("DEVNAME")
    return "/dev/" + name if name else None


def block_device_node(host, sysdir):
    """The /dev node of a sysfs block device directory, or None."""
    return uevent_node(parse_uevent(host.read_text(sysdir + "/uevent", "")))


def is_partition_of(disk, name):
    """True if ``name`` is a partition directory of ``disk``: <disk><N> or <disk>p<N>."""
    if not name.startswith(disk):
        return False
    rest = name[len(disk):]
    return rest[:1].isdigit() or rest[:1] == "p" and rest[1:2].isdigit()


def disk_info(host, name):
    """The GuestDiskInfo entries of one /sys/block entry (the disk, then its partitions), or
    [] for an empty device (size 0: an unused loop or zram device) or one without a node."""
    sysdir = SYS_BLOCK + "/" + name
    uevent = parse_uevent(host.read_text(sysdir + "/uevent", ""))
    node = uevent_node(uevent)
    if host.read_text(sysdir + "/size") in (None, "0\n") or node is None:
        return []
    disk = OrderedDict([("name", node)])
    syspath = host.realpath(sysdir)
    address = None
    if VIRTUAL_BLOCK_MARK not in syspath:
        address = disk_address(host, syspath)
    if address is not None and address["bus-type"] == "nvme":
        try:
            disk["smart"] = parse_nvme_smart_log(read_nvme_smart_log(host.path(node)))
        except (OSError, IOError, struct.error):
            pass
    slaves = readdir(host, sysdir + "/slaves")
    if slaves is not None:
        nodes = [block_device_node(host, sysdir + "/slaves/" + slave) for slave in slaves]
        disk["dependencies"] = [dep for dep in reversed(nodes) if dep]
    disk["partition"] = False
    if address is not None:
        disk["address"] = address
    udev = udev_properties(host, uevent)
    alias = udev.get("DM_NAME") if udev is not None else host.read_attr(sysdir + "/dm/name")
    if alias:
        disk["alias"] = alias
    entries = [disk]
    for part in readdir(host, sysdir) or ():
        part_dir = sysdir + "/" + part
        if not is_partition_of(name, part) or not os.path.isdir(host.path(part_dir)) \
                or os.path.islink(host.path(part_dir)):
            continue
        part_node = block_device_node(host, part_dir)
        if part_node:
            entries.append(OrderedDict([("name", part_node), ("dependencies", [node]),
                                        ("partition", True)]))
    return entries


@command("guest-get-disks", returns=["GuestDiskInfo"])
def guest_get_disks(agent):
    """guest-get-disks: every block device and partition with its dependencies and address."""
    host = agent.host
    try:
        names = os.listdir(host.path(SYS_BLOCK))
    except OSError as exc:
        raise QgaError('Can\'t open directory "%s": %s' % (SYS_BLOCK, os_error_text(exc)))
    disks = []
    for name in names:
        if os.path.islink(host.path(SYS_BLOCK + "/" + name)):
            disks.extend(disk_info(host, name))
    disks.reverse()
    return disks


# -- CPUs and memory: guest-get/set-vcpus, memory blocks -----------------------------------
#
# Both live in sysfs as numbered directories with a state file: cpu<N>/online ('0' or '1')
# and memory<N>/state ('online', 'offline', ...).  A CPU without an online file (cpu0 on
# most x86 guests) cannot be unplugged.  Directories are reported in numeric order.

_CPU_ENTRY = re.compile(r"cpu([0-9]+)\Z")
_MEMORY_ENTRY = re.compile(r"memory([0-9]+)\Z")
_HEX_PREFIX = re.compile(r"\s*([+-]?)(?:0[xX](?=[0-9a-fA-F]))?([0-9a-fA-F]*)")


def numbered_entries(names, pattern):
    """The numbers N of the directory entries ``pattern`` matches (cpu<N>, ...), in order."""
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)


def parse_block_size(text):
    """block_size_bytes (hex without 0x) as qemu-ga reads it: strtol(text, 16)."""
    sign, digits = _HEX_PREFIX.match(text).groups()
    value = min(int(digits or "0", 16), INT64_MAX)
    return (-value if sign == "-" else value) & UINT64_MAX


def _sysfs_error(fmt, path, exc):
    """A QgaError worded as qemu-ga's error_setg_errno, remembering the errno."""
    error = QgaError(fmt % path + ": " + os_error_text(exc))
    error.errno = exc.errno
    return error


def _pread_at(dirfd, name, size):
    """The first ``size`` bytes of the sysfs file ``name`` under ``dirfd`` (never empty)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        raise _sysfs_error('open sysfs file "%s"', name, exc)
    try:
        data = os.pread(fd, size, 0)
    except OSError as exc:
        raise _sysfs_error('pread sysfs file "%s"', name, exc)
    finally:
        os.close(fd)
    if not data:
        error = QgaError('pread sysfs file "%s": unexpected EOF' % name)
        error.errno = 0
        raise error
    return data


def _open_dir(host, path):
    try:
        return os.open(host.path(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _sysfs_error('open("%s")', path, exc)


def transfer_vcpu(host, logical_id, online=None):
    """Read (``online`` None) or set one CPU's state as qemu-ga does: (online, can_offline).

    The error texts are qemu-ga's, double slash included.
    """
    dirpath = "%s/cpu%d/" % (CPU_SYSFS_DIR, logical_id)
    online_path = dirpath + "/online"
    dirfd = _open_dir(host, dirpath)
    try:
        try:
            fd = os.open("online", (os.O_RDONLY if online is None else os.O_RDWR)
                         | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise _sysfs_error('open("%s")', online_path, exc)
            if online is False:
                raise QgaError("logical processor #%d can't be offlined" % logical_id)
            return True, False                  # not hot-pluggable: always online
        try:
            try:
                status = os.pread(fd, 1, 0)
            except OSError as exc:
                raise _sysfs_error('pread("%s")', online_path, exc)
            if not status:
                raise QgaError('pread("%s"): unexpected EOF' % online_path)
            current = status != b"0"
            if online is not None and online != current:
                try:
                    os.pwrite(fd, b"1" if online else b"0", 0)
                except OSError as exc:
                    raise _sysfs_error('pwrite("%s")', online_path, exc)
            return current, True
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


@command("guest-get-vcpus", returns=["GuestLogicalProcessor"])
def guest_get_vcpus(agent):
    """guest-get-vcpus: every cpu<N> in sysfs, online or not, and whether it can go offline."""
    try:
        names = os.listdir(agent.host.path(CPU_SYSFS_DIR))
    except OSError as exc:
        raise QgaError("failed to list entries: %s: %s" % (CPU_SYSFS_DIR, os_error_text(exc)))
    vcpus = []
    for logical_id in numbered_entries(names, _CPU_ENTRY):
        online, can_offline = transfer_vcpu(agent.host, logical_id)
        vcpus.append({"online": online, "can-offline": can_offline, "logical-id": logical_id})
    return vcpus


@command("guest-set-vcpus", data={"vcpus": ["GuestLogicalProcessor"]}, returns="int")
def guest_set_vcpus(agent, vcpus):
    """guest-set-vcpus: apply the entries in order and stop at the first failure.

    The count of entries done is returned; the error is reported only when the very first
    entry failed (the schema's partial-success rule).
    """
    done = 0
    for vcpu in vcpus:
        try:
            transfer_vcpu(agent.host, vcpu["logical-id"], vcpu["online"])
        except QgaError:
            if done == 0:
                raise
            break
        done += 1
    return done


def _memory_block_dir(index):
    """memory<N>/ as qemu-ga prints the uint64 index (PRId64: 2^64-1 is memory-1)."""
    return "%smemory%d/" % (MEMORY_SYSFS_DIR, index - (1 << 64) if index > INT64_MAX else index)


def read_memory_block(host, index):
    """(online, can_offline) of one memory block; QgaError worded as qemu-ga."""
    dirfd = _open_dir(host, _memory_block_dir(index))
    try:
        try:
            state = _pread_at(dirfd, "state", 10)
        except QgaError as exc:
            if exc.errno == errno.ENOENT:       # very old kernels: no state, not removable
                return True, False
            raise
        try:
            removable = _pread_at(dirfd, "removable", 1)
        except QgaError as exc:
            if exc.errno == errno.ENOENT:
                return state.startswith(b"online"), False
            raise
        return state.startswith(b"online"), removable != b"0"
    finally:
        os.close(dirfd)


def memory_block_states(host, indexes):
    """read_memory_block() of each block, with its files opened relative to one fd of the
    memory directory: two system calls per block fewer (a guest has hundreds of blocks).  Any
    error goes the block-by-block way again, which words it as qemu-ga does."""
    try:
        parent = os.open(host.path(MEMORY_SYSFS_DIR), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return [read_memory_block(host, index) for index in indexes]
    try:
        states = []
        for index in indexes:
            name = _memory_block_dir(index)[len(MEMORY_SYSFS_DIR):]
            try:
                states.append((_pread_at(parent, name + "state", 10).startswith(b"online"),
                               _pread_at(parent, name + "removable", 1) != b"0"))
            except QgaError:
                states.append(read_memory_block(host, index))
        return states
    finally:
        os.close(parent)


def set_memory_block(host, index, online):
    """One GuestMemoryBlockResponse: bring a block online or offline through its state file."""
    def response(kind, code=None):
        if code is None:
            return {"response": kind, "phys-index": index}
        return {"response": kind, "error-code": code, "phys-index": index}

    try:
        os.stat(host.path(MEMORY_SYSFS_DIR))
    except OSError as exc:
        unsupported = exc.errno == errno.ENOENT
        return response("operation-not-supported" if unsupported else "operation-failed",
                        exc.errno)
    try:
        dirfd = _open_dir(host, _memory_block_dir(index))
    except QgaError as exc:
        return response("not-found" if exc.errno == errno.ENOENT else "operation-failed",
                        exc.errno)
    try:
        try:
            state = _pread_at(dirfd, "state", 10)
        except QgaError as exc:
            if exc.errno == errno.ENOENT:       # no state file: always online
                return response("success") if online else response(
                    "operation-not-supported", exc.errno)
            return response("operation-failed", exc.errno or None)
        if online == state.startswith(b"online"):
            return response("success")
        try:
            fd = os.open("state", os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, dir_fd=dirfd)
            try:
                os.write(fd, b"online" if online else b"offline")
            finally:
                os.close(fd)
        except OSError as exc:
            return response("operation-failed", exc.errno)
        return response("success")
    finally:
        os.close(dirfd)


@command("guest-get-memory-blocks", returns=["GuestMemoryBlock"])
def guest_get_memory_blocks(agent):
    """guest-get-memory-blocks: every memory<N> block, its state and whether it is removable."""
    host = agent.host
    try:
        entries = [e.name for e in os.scandir(host.path(MEMORY_SYSFS_DIR)) if e.is_dir()]
    except OSError as exc:
        if exc.errno == errno.ENOENT:           # no memory hotplug in this guest
            return []
        raise QgaError('Can\'t open directory"%s": %s' % (MEMORY_SYSFS_DIR, os_error_text(exc)))
    blocks = []
    indexes = numbered_entries(entries, _MEMORY_ENTRY)
    for index, (online, can_offline) in zip(indexes, memory_block_states(host, indexes)):
        blocks.append({"online": online, "can-offline": can_offline, "phys-index": index})
    if not blocks:
        raise QgaError("guest reported zero memory blocks!")
    return blocks


@command("guest-set-memory-blocks", data={"mem-blks": ["GuestMemoryBlock"]},
         returns=["GuestMemoryBlockResponse"])
def guest_set_memory_blocks(agent, mem_blks):
    """guest-set-memory-blocks: one response per requested block, in request order."""
    return [set_memory_block(agent.host, block["phys-index"], block["online"])
            for block in mem_blks]


@command("guest-get-memory-block-info", returns="GuestMemoryBlockInfo")
def guest_get_memory_block_info(agent):
    """guest-get-memory-block-info: the size of one memory block in bytes."""
    dirfd = _open_dir(agent.host, MEMORY_SYSFS_DIR)
    try:
        text = _pread_at(dirfd, "block_size_bytes", 20)
    finally:
        os.close(dirfd)
    return {"size": parse_block_size(text.decode("ascii", "replace"))}


# -- Network: guest-network-get-interfaces, guest-network-get-route ------------------------
#
# qemu-ga walks getifaddrs(), which glibc builds from two rtnetlink dumps: every link
# (RTM_GETLINK), then every address (RTM_GETADDR, IPv4 before IPv6).  We read the same two
# dumps, so interfaces come in the same order, secondary addresses are all there, and an
# IPv4 address with an alias label ("eth0:1") is its own interface, as in qemu-ga.  The
# hardware address qemu-ga gets from SIOCGIFHWADDR is the link's IFLA_ADDRESS cut or padded
# to 6 bytes (the kernel strips an alias label before looking the name up).

_IPV4_ROUTE = re.compile(r"(\S+)\s+" + r"([0-9a-fA-F]+)\s+" * 3 + r"([-+]?[0-9]+)\s+" * 3
                         + r"([0-9a-fA-F]+)" + r"\s+([-+]?[0-9]+)" * 3)
_IPV6_ROUTE = re.compile(r"([0-9a-fA-F]{32})\s+([0-9a-fA-F]+)\s+([0-9a-fA-F]{32})\s+"
                         r"([0-9a-fA-F]+)\s+([0-9a-fA-F]{32})\s+" + r"([0-9a-fA-F]+)\s+" * 4
                         + r"(\S+)")


def parse_netlink_dump(data):
    """The (type, payload) of every message of a netlink dump, up to NLMSG_DONE.

    OSError for an NLMSG_ERROR reply (with the kernel's errno) or for truncated data.
    """
    messages = []
    offset, end = 0, len(data)
    while offset + 16 <= end:
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16 or offset + length > end:
            raise OSError(errno.EBADMSG, os.strerror(errno.EBADMSG))
        if kind == NLMSG_DONE:
            break
        payload = data[offset + 16:offset + length]
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else errno.EIO
            if code:
                raise OSError(code, os.strerror(code))
        else:
            messages.append((kind, payload))
        offset += (length + 3) & ~3
    return messages


_RTATTR_HEADER = struct.Struct("=HH")
_LINK_ATTRS = frozenset((IFLA_IFNAME, IFLA_ADDRESS))   # of the ~40 a link message carries
_ADDRESS_ATTRS = frozenset((IFA_ADDRESS, IFA_LOCAL, IFA_LABEL))


def parse_rtattrs(data, offset, wanted):
    """{type: value bytes} of the rtattrs of the types in ``wanted`` that fill ``data`` from
    ``offset`` (the others are stepped over without being copied)."""
    attrs = {}
    end = len(data)
    header = _RTATTR_HEADER.unpack_from
    while offset + 4 <= end:
        length, kind = header(data, offset)
        if length < 4:
            break
        kind &= 0x3FFF
        if kind in wanted:
            attrs[kind] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return attrs


def _rtattr_text(value):
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_links(messages):
    """[(ifindex, name, link-layer address bytes)] of the RTM_NEWLINK messages, in order."""
    links = []
    for kind, payload in messages:
        if kind != RTM_NEWLINK or len(payload) < 16:
            continue
        index = struct.unpack_from("=i", payload, 4)[0]
        attrs = parse_rtattrs(payload, 16, _LINK_ATTRS)
        if IFLA_IFNAME in attrs:
            links.append((index, _rtattr_text(attrs[IFLA_IFNAME]), attrs.get(IFLA_ADDRESS, b"")))
    return links


def parse_addresses(messages):
    """[(ifindex, label or None, "ipv4"|"ipv6", address text, prefix)] of RTM_NEWADDR.

    As getifaddrs(): the local address (IFA_LOCAL) when there is one, else IFA_ADDRESS (on
    a point-to-point link IFA_ADDRESS is the peer); the prefix capped at the address size.
    """
    addresses = []
    for kind, payload in messages:
        if kind != RTM_NEWADDR or len(payload) < 8:
            continue
        family, prefix, _, _, index = struct.unpack_from("=BBBBI", payload)
        if family == socket.AF_INET:
            kind_name, size = "ipv4", 4
        elif family == socket.AF_INET6:
            kind_name, size = "ipv6", 16
        else:
            continue
        attrs = parse_rtattrs(payload, 8, _ADDRESS_ATTRS)
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if raw is None or len(raw) < size:
            continue
        label = _rtattr_text(attrs[IFA_LABEL]) if IFA_LABEL in attrs else None
        addresses.append((index, label, kind_name, socket.inet_ntop(family, raw[:size]),
                          min(prefix, size * 8)))
    return addresses


def parse_net_dev(text):
    """{interface: GuestNetworkInterfaceStat} from /proc/net/dev (the first good line wins)."""
    stats = {}
    for line in text.splitlines():
        name, colon, rest = line.lstrip().partition(":")
        if not colon or name in stats:
            continue
        fields = rest.split()
        try:
            values = [min(int(v), INT64_MAX) & UINT64_MAX for v in fields[:16]]
        except ValueError:
            continue
        if len(values) < 16:
            continue
        stats[name] = {"tx-packets": values[9], "tx-errs": values[10], "rx-bytes": values[0],
                       "rx-dropped": values[3], "rx-packets": values[1], "rx-errs": values[2],
                       "tx-bytes": values[8], "tx-dropped": values[11]}
    return stats


def format_mac(address):
    """A link-layer address as qemu-ga prints it: 6 lower-case hex bytes, zero-padded."""
    return ":".join("%02x" % b for b in bytearray((address + b"\0" * MAC_BYTES)[:MAC_BYTES]))


def network_interfaces(links, addresses, stats):
    """guest-network-get-interfaces' answer from parsed links, addresses and statistics.

    Links first in dump order, then any alias label seen on an address.  ``statistics`` only
    for an interface with an address, as qemu-ga.
    """
    interfaces = {}                         # name -> members, in order of first appearance
    macs, names = {}, {}
    for index, name, address in links:
        macs[name] = format_mac(address)
        names[index] = name
        interfaces.setdefault(name, {})
    for index, label, family, address, prefix in addresses:
        name = label or names.get(index)
        if name is None:
            continue
        members = interfaces.setdefault(name, {})
        members.setdefault("ip-addresses", []).append(
            {"ip-address-type": family, "ip-address": address, "prefix": prefix})
    result = []
    for name, members in interfaces.items():
        info = {"name": name}
        if "ip-addresses" in members:
            info["ip-addresses"] = members["ip-addresses"]
            if name in stats:
                info["statistics"] = stats[name]
        mac = macs.get(name.split(":", 1)[0])
        if mac is not None:
            info["hardware-address"] = mac
        result.append(info)
    return result


@command("guest-network-get-interfaces", returns=["GuestNetworkInterface"])
def guest_network_get_interfaces(agent):
    """guest-network-get-interfaces: every interface, its addresses, MAC and counters."""
    host = agent.host
    try:
        link_dump, address_dump = host.rtnetlink_dumps([
            (RTM_GETLINK, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)),
            (RTM_GETADDR, struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0))])
        links = parse_links(parse_netlink_dump(link_dump))
        addresses = parse_addresses(parse_netlink_dump(address_dump))
    except (OSError, IOError) as exc:
        raise QgaError("getifaddrs failed: %s" % os_error_text(exc))
    stats = parse_net_dev(host.read_text(PROC_NET_DEV, ""))
    return network_interfaces(links, addresses, stats)


def _dotted_quad(value):
    """An address from /proc/net/route (hex of the in-memory, network-order bytes)."""
    return "%d.%d.%d.%d" % (value & 255, value >> 8 & 255, value >> 16 & 255, value >> 24 & 255)


def _int32(value):
    """A hex field read into a C int, as qemu-ga's sscanf("%x") does."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value > 0x7FFFFFFF else value


def parse_ipv4_routes(text):
    """guest-network-get-route entries for /proc/net/route (its header line skipped)."""
    routes = []
    for line in text.splitlines()[1:]:
        m = _IPV4_ROUTE.match(line)
        if not m:
            continue
        iface, dest, gateway, flags, refcnt, use, metric, mask, mtu, window, irtt = m.groups()
        routes.append({
            "flags": int(flags, 16) & 0xFFFFFFFF, "metric": _int32(int(metric)),
            "refcnt": _int32(int(refcnt)), "window": _int32(int(window)), "version": 4,
            "iface": iface, "destination": _dotted_quad(int(dest, 16)),
            "irtt": _int32(int(irtt)), "gateway": _dotted_quad(int(gateway, 16)),
            "use": _int32(int(use)), "mtu": _int32(int(mtu)),
            "mask": _dotted_quad(int(mask, 16))})
    return routes


def _ipv6_text(hex32):
    return socket.inet_ntop(socket.AF_INET6, bytes(bytearray.fromhex(hex32)))


def parse_ipv6_routes(text):
    """guest-network-get-route entries for /proc/net/ipv6_route.

    metric, refcnt and use are read as C ints (ffffffff is -1), as qemu-ga does; flags
    stay unsigned (qemu-ga sign-extends 0x80000000 and up into a huge uint64).
    """
    routes = []
    for line in text.splitlines():
        m = _IPV6_ROUTE.match(line.strip())
        if not m:
            continue
        dest, dest_len, source, source_len, nexthop, metric, refcnt, use, flags, iface = \
            m.groups()
        routes.append({
            "flags": int(flags, 16) & 0xFFFFFFFF, "source": _ipv6_text(source),
            "metric": _int32(int(metric, 16)), "refcnt": _int32(int(refcnt, 16)),
            "version": 6, "nexthop": _ipv6_text(nexthop), "iface": iface,
            "destination": _ipv6_text(dest), "desprefixlen": str(_int32(int(dest_len, 16))),
            "srcprefixlen": str(_int32(int(source_len, 16))), "use": _int32(int(use, 16))})
    return routes


@command("guest-network-get-route", returns=["GuestNetworkRoute"])
def guest_network_get_route(agent):
    """guest-network-get-route: the IPv4 then the IPv6 routing table.

    Unlike qemu-ga, a guest without IPv6 (no /proc/net/ipv6_route) still gets its IPv4
    routes; only when neither table can be read is it an error.
    """
    routes, errors = [], []
    tables = ((PROC_NET_ROUTE, parse_ipv4_routes), (PROC_NET_IPV6_ROUTE, parse_ipv6_routes))
    for path, parse in tables:
        try:
            text = agent.host.read_bytes(path).decode("utf-8", "replace")
        except (OSError, IOError) as exc:
            errors.append('open("%s"): %s' % (path, os_error_text(exc)))
            continue
        routes.extend(parse(text))
    if len(errors) == len(tables):
        raise QgaError(errors[0])
    return routes


# -- Devices: guest-get-devices ------------------------------------------------------------
#
# qemu-ga answers this only on Windows.  Here it lists the PCI functions that have a driver
# bound (a function without one has no driver name to report, so it is left out), with the
# driver's module version when the module declares one and the PCI vendor and device ids.


def pci_driver_version(host, driver):
    """The version of the module behind a PCI driver, or None if it declares none."""
    try:
        module = os.path.basename(os.readlink(host.path(
            "/sys/bus/pci/drivers/%s/module" % driver)))
    except OSError:
        module = driver.replace("-", "_")       # built-in drivers have no module link
    return host.read_attr("/sys/module/%s/version" % module) or None


@command("guest-get-devices", returns=["GuestDeviceInfo"])
def guest_get_devices(agent):
    """guest-get-devices: the PCI devices with a bound driver, in PCI address order."""
    host = agent.host
    devices = []
    for address in host.listdir(PCI_SYSFS_DIR):
        base = "%s/%s/" % (PCI_SYSFS_DIR, address)
        try:
            driver = os.path.basename(os.readlink(host.path(base + "driver")))
        except OSError:
            continue
        info = {"driver-name": driver}
        version = pci_driver_version(host, driver)
        if version is not None:
            info["driver-version"] = version
        vendor = host.read_int(base + "vendor", base=16)
        device = host.read_int(base + "device", base=16)
        if vendor is not None and device is not None and 0 <= vendor | device <= 0xFFFF:
            info["id"] = {"device-id": device, "vendor-id": vendor, "type": "pci"}
        devices.append(info)
    return devices


# -- Users and identity: host name, timezone, OS info, users, passwords --------------------

@command("guest-get-host-name", returns="GuestHostName")
def guest_get_host_name(agent):
    """guest-get-host-name: the kernel's host name, read anew each time."""
    try:
        name = socket.gethostname()
    except OSError:
        name = ""
    return {"host-name": name or "localhost"}


@command("guest-get-timezone", returns="GuestTimezone")
def guest_get_timezone(agent):
    """guest-get-timezone: the local zone's abbreviation now and its offset east of UTC."""
    time.tzset()                        # follow a changed /etc/localtime, as GLib does
    now = time.localtime()
    result = {}
    if now.tm_zone:
        result["zone"] = now.tm_zone
    result["offset"] = now.tm_gmtoff
    return result


_ASCII_SPACE = " \t\n\v\f\r"            # GLib's g_ascii_isspace()
_KEYFILE_GROUP_LINE = re.compile(r"\[([^\]]*)\][ \t]*\Z")
_KEYFILE_GROUP_NAME = re.compile(r"[^\[\]\x00-\x1f\x7f]+\Z")
_KEYFILE_KEY = re.compile(r"[^\[\]]*[^\[\] ](?:\[[\w.@-]*\])?\Z")


def parse_os_release(data):
    """The KEY -> raw value pairs of an os-release file, read as qemu-ga reads it.

    qemu-ga loads the file as a GLib key file under an added ``[os-release]`` group line, so
    GLib's rules apply: the text ends at a NUL, a later duplicate key wins, keys after another
    ``[group]`` line do not count, and one line GLib refuses (not UTF-8, no '=', a bad key
    or group name) makes the whole file count as absent: then None is returned.
    """
    try:
        text = data.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
    values, group = {}, "os-release"
    for line in text.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        line = line.lstrip(_ASCII_SPACE)
        if not line or line.startswith("#"):
            continue
        header = _KEYFILE_GROUP_LINE.match(line) if line.startswith("[") else None
        if header:
            group = header.group(1)
            if not _KEYFILE_GROUP_NAME.match(group):
                return None
            continue
        key, equals, value = line.partition("=")
        key = key.rstrip(_ASCII_SPACE)
        if not equals or not _KEYFILE_KEY.match(key):
            return None
        value = value.lstrip(_ASCII_SPACE)
        if group == "os-release":
            if key == "Encoding" and value.upper() != "UTF-8":
                return None
            values[key] = value
    return values


_OS_RELEASE_QUOTED = re.compile(r'"((?:\\[$\'"\\`]|[^"\\]|\\)*)')
_OS_RELEASE_ESCAPE = re.compile(r'\\([$\'"\\`])')


def os_release_value(raw):
    """An os-release value with its shell quoting removed, as qemu-ga does it.

    In double quotes, \\$ \\' \\" \\\\ and \\` stand for the character and any other
    backslash stays.  Unquoted, the value ends at the first space or ';'.  Unlike qemu-ga,
    single quotes are honoured ('a b' is "a b", not "'a") and an unclosed quote runs to
    the end of the line (qemu-ga repeats leftover characters of its buffer).
    """
    if raw.startswith('"'):
        return _OS_RELEASE_ESCAPE.sub(r"\1", _OS_RELEASE_QUOTED.match(raw).group(1))
    if raw.startswith("'"):
        end = raw.find("'", 1)
        return raw[1:] if end < 0 else raw[1:end]
    return re.split("[ ;]", raw, maxsplit=1)[0]


def read_os_release(host):
    """The first os-release file qemu-ga would accept ($QGA_OS_RELEASE alone when set)."""
    override = host.environ.get("QGA_OS_RELEASE")
    for path in OS_RELEASE_PATHS if override is None else (override,):
        try:
            values = parse_os_release(host.read_bytes(path, OS_RELEASE_MAX_BYTES))
        except (OSError, IOError):
            continue
        if values is not None:
            return values
    return {}


@command("guest-get-osinfo", returns="GuestOSInfo")
def guest_get_osinfo(agent):
    """guest-get-osinfo: uname's kernel fields and the os-release fields that are present.

    Members are inserted in the order qemu-ga prints them.
    """
    uname = os.uname()
    values = read_os_release(agent.host)
    info = {"kernel-release": uname[2], "kernel-version": uname[3], "machine": uname[4]}
    info.update((member, os_release_value(values[key]))
                for member, key in OS_RELEASE_FIELDS if key in values)
    return OrderedDict((member, info[member]) for member in OSINFO_MEMBER_ORDER
                       if member in info)


def parse_utmp(data):
    """(user, login time) of each logged-in user's record (USER_PROCESS) of a utmp file."""
    logins = []
    for offset in range(0, len(data) - UTMP_RECORD.size + 1, UTMP_RECORD.size):
        ut_type, user, seconds, micros = UTMP_RECORD.unpack_from(data, offset)
        if ut_type == USER_PROCESS:
            logins.append((user.split(b"\0", 1)[0].decode("utf-8", "replace"),
                           seconds + micros / 1e6))
    return logins


def parse_logind_session(text):
    """(user, login time) of a systemd-logind session file, or None when it is not a user's
    login (a greeter, a background or manager session, one being closed)."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if (not fields.get("CLASS", "user").startswith("user")
            or fields.get("STATE") == "closing"
            or not fields.get("USER") or not fields.get("REALTIME", "").isdigit()):
        return None
    micros = int(fields["REALTIME"])
    return fields["USER"], micros // 1000000 + micros % 1000000 / 1e6


def read_logins(host):
    """Logins from utmp, or, on a guest without utmp, from systemd-logind's session files."""
    for path in UTMP_PATHS:
        try:
            return parse_utmp(host.read_bytes(path))
        except (OSError, IOError):
            continue
    logins = []
    for name in host.listdir(LOGIND_SESSIONS):
        path = host.path(LOGIND_SESSIONS + "/" + name)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):      # skip the sessions' FIFOs
                continue
        except OSError:
            continue
        login = parse_logind_session(host.read_text(LOGIND_SESSIONS + "/" + name, ""))
        if login:
            logins.append((login[1], name, login[0]))
    return [(user, when) for when, name, user in sorted(logins)]


@command("guest-get-users", returns=["GuestUser"])
def guest_get_users(agent):
    """guest-get-users: each logged-in user once, with the earliest login time, in order of
    first appearance (qemu-ga's utmp walk)."""
    earliest = OrderedDict()
    for user, when in read_logins(agent.host):
        if user not in earliest or when < earliest[user]:
            earliest[user] = when
    return [OrderedDict((("login-time", when), ("user", user)))   # qemu-ga's member order
            for user, when in earliest.items()]


PasswdEntry = namedtuple("PasswdEntry", "name uid gid home")


def parse_passwd(text, name):
    """The /etc/passwd entry of user ``name``, or None."""
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and name and fields[0] == name:
            try:
                return PasswdEntry(name, int(fields[2]), int(fields[3]), fields[5])
            except ValueError:
                return None
    return None


def lookup_user(host, name):
    """The passwd entry of user ``name``, or None.

    The name service (getpwnam) answers for the running system; a host rooted in a fixture
    tree has no name service of its own, so its /etc/passwd answers.
    """
    if "\0" in name:       # CPython's getpwnam refuses it; PyPy's looks up the name before it
        return None
    if host.root != "/":
        return parse_passwd(host.read_text(PASSWD_PATH, ""), name)
    import pwd
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):
        return None
    return PasswdEntry(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def replace_password_field(data, username, crypted, last_change=None):
    """The bytes of a passwd or shadow file with ``username``'s password field replaced, and
    for shadow (``last_change`` days) the date of the last change; None without that user."""
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        fields = line.split(b":")
        if len(fields) > 1 and fields[0] == username:
            fields[1] = crypted
            if last_change is not None and len(fields) > 2:
                fields[2] = str(last_change).encode()
            lines[i] = b":".join(fields)
            return b"\n".join(lines)
    return None


def lock_password_files(host):
    """lckpwdf(): a write lock on /etc/.pwd.lock, waited for up to 15 s; returns its fd."""
    fd = os.open(host.path(PASSWD_LOCK), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + PASSWD_LOCK_TIMEOUT
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN) or time.monotonic() > deadline:
                os.close(fd)
                raise
            time.sleep(0.05)


def replace_file_atomically(real_path, data):
    """Replace a file by a new one with the same owner and mode, renamed over it."""
    st = os.lstat(real_path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    temp = real_path + "+"              # the name shadow-utils uses, under the same lock
    try:
        os.unlink(temp)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        os.fsync(fd)
        os.rename(temp, real_path)
    except BaseException:
        os.unlink(temp)
        raise
    finally:
        os.close(fd)


def set_password_in_file(host, username, crypted):
    """Without chpasswd: write a crypted password into /etc/shadow (or /etc/passwd on a guest
    without shadow passwords) under the account tools' lock."""
    path = SHADOW_PATH if os.path.lexists(host.path(SHADOW_PATH)) else PASSWD_PATH
    try:
        lock = lock_password_files(host)
        try:
            with open(host.path(path), "rb") as f:
                data = f.read()
            today = int(time.time() // 86400) if path == SHADOW_PATH else None
            data = replace_password_field(data, username.encode(), crypted, today)
            if data is None:
                raise QgaError("failed to set user password: no user '%s' in %s"
                               % (username, path))
            replace_file_atomically(host.path(path), data)
        finally:
            os.close(lock)
    except OSError as exc:
        raise QgaError("failed to set user password in %s: %s" % (path, os_error_text(exc)))


@command("guest-set-user-password", data={"username": "str", "password": "str",
                                          "crypted": "bool"})
def guest_set_user_password(agent, username, password, crypted):
    """guest-set-user-password: set ``username``'s password (base64; already hashed when
    ``crypted``) with chpasswd, fed on its stdin.

    Without chpasswd a crypted password is written into /etc/shadow directly.  Newlines and
    ':' are refused where they would let one call change other accounts or fields.
    """
    secret = decode_base64(password).split(b"\0", 1)[0]   # qemu-ga uses it as a C string
    if b"\n" in secret:
        raise QgaError("forbidden characters in raw password")
    if "\n" in username or ":" in username or "\0" in username:
        raise QgaError("forbidden characters in username")
    if crypted and b":" in secret:
        raise QgaError("forbidden characters in crypted password")
    line = username.encode("utf-8") + b":" + secret + b"\n"
    result = run_helper(agent.host, ["chpasswd", "-e"] if crypted else ["chpasswd"], line)
    if result is None:
        if not crypted:
            raise QgaError("cannot find 'chpasswd' program in PATH: only a crypted password "
                           "can be set without it")
        set_password_in_file(agent.host, username, secret)
        return
    status, output = result
    if status != 0:
        agent.log.warning("chpasswd: status %d: %s" % (status, output))
        if status < 0:
            raise QgaError("child process has terminated abnormally")
        raise QgaError("child process has failed to set user password")


# -- SSH keys: guest-ssh-get/add/remove-authorized-keys ------------------------------------
#
# The agent runs as root inside a directory the user controls, so nothing there is trusted:
# ~/.ssh and authorized_keys are opened relative to directory fds with O_NOFOLLOW, must be
# the user's (or root's), and the file must be a plain file with one link.  Otherwise a user
# could plant a link to /etc/shadow and have the agent read it into a file the user owns.
# New contents go to a temporary file in ~/.ssh, renamed over the old one.

_SSH_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def check_ssh_key(key):
    """qemu-ga's key check (not a comment, one line), plus no NUL (it would cut the line)."""
    if key.startswith("#") or "\n" in key or "\0" in key:
        raise QgaError("invalid OpenSSH public key: '%s'" % key)


def _ssh_user(host, username):
    user = lookup_user(host, username)
    if user is None:
        raise QgaError("failed to lookup user '%s': No such user" % username)
    return user


def _refused(path, why):
    return QgaError("refusing to use '%s': %s" % (path, why))


def _check_owner(st, user, path):
    if st.st_uid not in (user.uid, 0):
        raise _refused(path, "it belongs to uid %d, not to %s" % (st.st_uid, user.name))


def _make_ssh_dir(home_fd, user, ssh_dir):
    """Create ~/.ssh 0700 for the user, with qemu-ga's errors; its fd."""
    try:
        os.mkdir(".ssh", SSH_DIR_MODE, dir_fd=home_fd)
    except OSError as exc:
        raise QgaError("failed to create directory '%s': %s" % (ssh_dir, os_error_text(exc)))
    fd = os.open(".ssh", _SSH_DIR_FLAGS | os.O_NOFOLLOW, dir_fd=home_fd)
    for change, text in ((lambda: os.fchown(fd, user.uid, user.gid), "ownership"),
                         (lambda: os.fchmod(fd, SSH_DIR_MODE), "permissions")):
        try:
            change()
        except OSError as exc:
            os.close(fd)
            raise QgaError("failed to set %s of directory '%s': %s"
                           % (text, ssh_dir, os_error_text(exc)))
    return fd


def open_ssh_dir(host, user, create=False):
    """An fd of ``~user/.ssh``, never reached through a symbolic link.

    OSError when it cannot be opened (ENOENT when it is missing); with ``create`` a missing
    one is made as qemu-ga makes it.
    """
    ssh_dir = user.home.rstrip("/") + "/.ssh"
    home_fd = os.open(host.path(user.home), _SSH_DIR_FLAGS)
    try:
        try:
            fd = os.open(".ssh", _SSH_DIR_FLAGS | os.O_NOFOLLOW, dir_fd=home_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                    os.stat(".ssh", dir_fd=home_fd, follow_symlinks=False).st_mode):
                raise _refused(ssh_dir, "it is a symbolic link")
            if not create or exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            fd = _make_ssh_dir(home_fd, user, ssh_dir)
    finally:
        os.close(home_fd)
    try:
        _check_owner(os.fstat(fd), user, ssh_dir)
    except QgaError:
        os.close(fd)
        raise
    return fd


def read_authorized_keys(dir_fd, user, path):
    """The bytes of authorized_keys in the .ssh directory ``dir_fd``: a plain file of the
    user's or root's with one link.  OSError when it cannot be opened or read."""
    try:
        fd = os.open("authorized_keys", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(path, "it is a symbolic link")
        raise
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refused(path, "it is not a regular file")
        _check_owner(st, user, path)
        if st.st_nlink != 1:
            raise _refused(path, "it has %d hard links" % st.st_nlink)
        return f.read()


def write_authorized_keys(dir_fd, user, path, lines):
    """Replace authorized_keys with ``lines`` joined by newlines (no newline at the end, as
    qemu-ga): a new file of the user's, mode 0600, renamed over the old one."""
    temp = "authorized_keys.%s" % os.urandom(6).hex()
    data = "\n".join(lines).encode("utf-8", "surrogateescape")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     AUTHORIZED_KEYS_MODE, dir_fd=dir_fd)
    except OSError as exc:
        raise QgaError("failed to write to '%s': %s" % (path, os_error_text(exc)))
    steps = ((lambda: _write_and_sync(fd, data), "failed to write to '%s'"),
             (lambda: os.fchown(fd, user.uid, user.gid),
              "failed to set ownership of directory '%s'"),            # (sic) qemu-ga's text
             (lambda: os.fchmod(fd, AUTHORIZED_KEYS_MODE), "failed to set permissions of '%s'"),
             (lambda: os.rename(temp, "authorized_keys", src_dir_fd=dir_fd, dst_dir_fd=dir_fd),
              "failed to write to '%s'"))
    try:
        for step, text in steps:
            try:
                step()
            except OSError as exc:
                try:
                    os.unlink(temp, dir_fd=dir_fd)
                except OSError:
                    pass
                raise QgaError((text % path) + ": " + os_error_text(exc))
    finally:
        os.close(fd)


def _write_and_sync(fd, data):
    with open(fd, "wb", closefd=False) as f:
        f.write(data)
    os.fsync(fd)


def split_authorized_keys(data, errors="surrogateescape"):
    """The lines of authorized_keys as qemu-ga splits them (g_strsplit: "" has no lines).

    Undecodable bytes survive a rewrite; ``errors="replace"`` shows them as U+FFFD instead.
    """
    return data.decode("utf-8", errors).split("\n") if data else []


def _read_failure(path, exc):
    return QgaError("failed to read '%s': Failed to open file \u201c%s\u201d: %s"
                    % (path, path, os_error_text(exc)))


@command("guest-ssh-get-authorized-keys", data={"username": "str"},
         returns="GuestAuthorizedKeys")
def guest_ssh_get_authorized_keys(agent, username):
    """guest-ssh-get-authorized-keys: the keys in ~/.ssh/authorized_keys, last line first
    (qemu-ga's order), without comments and blank lines."""
    user = _ssh_user(agent.host, username)
    path = user.home.rstrip("/") + "/.ssh/authorized_keys"
    try:
        dir_fd = open_ssh_dir(agent.host, user)
        try:
            data = read_authorized_keys(dir_fd, user, path)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise _read_failure(path, exc)
    keys = [line.strip(_ASCII_SPACE) for line in split_authorized_keys(data, "replace")]
    return {"keys": [key for key in reversed(keys) if key and not key.startswith("#")]}


@command("guest-ssh-add-authorized-keys", data={"username": "str", "keys": ["str"],
                                                "*reset": "bool"})
def guest_ssh_add_authorized_keys(agent, username, keys, reset=False):
    """guest-ssh-add-authorized-keys: append the keys not yet in the file (all of them into
    an empty file with ``reset``); ~/.ssh is created 0700 when needed."""
    for key in keys:
        check_ssh_key(key)
    user = _ssh_user(agent.host, username)
    ssh_dir = user.home.rstrip("/") + "/.ssh"
    path = ssh_dir + "/authorized_keys"
    lines, dir_fd = [], None
    try:
        if not reset:
            try:
                dir_fd = open_ssh_dir(agent.host, user)
                lines = split_authorized_keys(read_authorized_keys(dir_fd, user, path))
            except OSError:
                pass                    # a file that cannot be read starts empty (qemu-ga)
        if dir_fd is None:
            try:
                dir_fd = open_ssh_dir(agent.host, user, create=True)
            except OSError as exc:
                raise QgaError("failed to create directory '%s': %s"
                               % (ssh_dir, os_error_text(exc)))
        present = set(lines)
        for key in keys:
            if key not in present:
                lines.append(key)
                present.add(key)
        write_authorized_keys(dir_fd, user, path, lines)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


@command("guest-ssh-remove-authorized-keys", data={"username": "str", "keys": ["str"]})
def guest_ssh_remove_authorized_keys(agent, username, keys):
    """guest-ssh-remove-authorized-keys: drop every line equal to one of the keys; comments,
    blank lines and the rest stay.  No file means nothing to do."""
    for key in keys:
        check_ssh_key(key)
    user = _ssh_user(agent.host, username)
    path = user.home.rstrip("/") + "/.ssh/authorized_keys"
    dir_fd = None
    try:
        try:
            dir_fd = open_ssh_dir(agent.host, user)
            data = read_authorized_keys(dir_fd, user, path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise _read_failure(path, exc)
        unwanted = set(keys)
        write_authorized_keys(dir_fd, user, path, [line for line in split_authorized_keys(data)
                                                   if line not in unwanted])
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


# -- Statistics: guest-get-diskstats, guest-get-cpustats, guest-get-load -------------------

_C_UNSIGNED = re.compile(r"[+-]?[0-9]+")


def scan_unsigned(token):
    """C's ``%lu`` on one token: (value, whether the whole token was a number), or
    (None, False).  Negative numbers wrap and too large ones saturate, as strtoul does."""
    match = _C_UNSIGNED.match(token)
    if match is None:
        return None, False
    value = int(match.group())
    value = UINT64_MAX if abs(value) > UINT64_MAX else value & UINT64_MAX
    return value, match.end() == len(token)


_PLAIN_NUMBERS = re.compile(r"[0-9]+(?: [0-9]+)*\Z")   # what scan_unsigned takes whole


def scan_diskstats_line(line):
    """The fields sscanf("%u %u %s %lu %lu ...") converts from a line: up to 20, in order,
    ending at the first that is not a number (a number followed by junk still counts)."""
    tokens = line.split()[:20]
    numbers = tokens[:2] + tokens[3:]
    if len(tokens) >= 3 and _PLAIN_NUMBERS.match(" ".join(numbers)):   # every real line
        values = [min(int(token), UINT64_MAX) for token in numbers]
        return values[:2] + [tokens[2]] + values[2:]
    fields = []
    for index, token in enumerate(line.split()[:20]):
        if index == 2:
            fields.append(token)
            continue
        value, whole = scan_unsigned(token)
        if value is None:
            break
        fields.append(value)
        if not whole:
            break
    return fields


def parse_diskstats(text):
    """GuestDiskStatsInfo for every /proc/diskstats line, in file order.

    qemu-ga scans each line with sscanf: fields are taken until the first that is not a number.
    Lines with fewer than four values are skipped; four values are the old partition format
    (read ios and sectors, write ios and sectors); otherwise the stats have 11, 15 (+ discard)
    or 17 (+ flush) columns, whichever the line has in full, and none if it has fewer than 11.
    """
    infos = []
    for line in text.split("\n"):
        fields = scan_diskstats_line(line)
        if len(fields) < 7:
            continue
        values = fields[3:]
        if len(values) == 4:
            stats = dict(zip(("read-ios", "read-sectors", "write-ios", "write-sectors"), values))
        else:
            count = max([n for n in DISKSTATS_GROUPS if n <= len(values)] or [0])
            stats = {name: value & 0xFFFFFFFF if narrow else value
                     for (name, narrow), value in zip(DISKSTATS_COLUMNS[:count], values)}
        infos.append(OrderedDict([
            ("name", fields[2]),
            ("stats", OrderedDict((k, stats[k]) for k in DISKSTATS_KEY_ORDER if k in stats)),
            ("minor", fields[1] & 0xFFFFFFFF), ("major", fields[0] & 0xFFFFFFFF)]))
    return infos


@command("guest-get-diskstats", returns=["GuestDiskStatsInfo"])
def guest_get_diskstats(agent):
    """guest-get-diskstats: the I/O counters of every block device and partition."""
    return parse_diskstats(agent.host.read_required(DISKSTATS_PATH))


_CPU_STAT_LINE = re.compile(r"cpu([0-9]+)\Z")
_UNSIGNED = re.compile(r"[0-9]+\Z")
_CPU_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
                    "guest", "guestnice")            # the order of /proc/stat
_CPU_STAT_WIRE_ORDER = ("cpu", "guestnice", "idle", "steal", "iowait", "system", "guest",
                        "nice", "irq", "type", "user", "softirq")   # qemu-ga's, on the wire


def parse_proc_stat(text, clock_ticks):
    """guest-get-cpustats' entries from /proc/stat: one per cpu<N> line, ticks as ms.

    The total "cpu" line is skipped.  A member is present when its value is (older kernels
    have fewer columns).  A cpu line with fewer than 4 values ends the list, as in qemu-ga,
    which logs it: returns (entries, complete).
    """
    entries = []
    for line in text.splitlines():
        fields = line.split(None, 11)
        m = _CPU_STAT_LINE.match(fields[0]) if fields else None
        if not m:
            continue
        values = []
        for field in fields[1:11]:
            if not _UNSIGNED.match(field):
                break
            values.append(int(field) * 1000 // clock_ticks & UINT64_MAX)
        if len(values) < 4:
            return entries, False
        members = dict(zip(_CPU_STAT_FIELDS, values), cpu=int(m.group(1)), type="linux")
        entries.append({k: members[k] for k in _CPU_STAT_WIRE_ORDER if k in members})
    return entries, True


@command("guest-get-cpustats", returns=["GuestCpuStats"])
def guest_get_cpustats(agent):
    """guest-get-cpustats: per-CPU times from /proc/stat in milliseconds (qemu-ga's unit)."""
    entries, complete = parse_proc_stat(agent.host.read_required(PROC_STAT),
                                        os.sysconf("SC_CLK_TCK"))
    if not complete:
        agent.log.warning('Parsing cpu stat from %s failed, see "man proc"' % PROC_STAT)
    return entries


def parse_loadavg(text):
    """The 1, 5 and 15 minute load averages of /proc/loadavg; ValueError if malformed."""
    fields = text.split()
    if len(fields) < 3:
        raise ValueError(text)
    return [float(field) for field in fields[:3]]


@command("guest-get-load", returns="GuestLoadAverage")
def guest_get_load(agent):
    """guest-get-load: the load averages, as getloadavg() reads them from /proc/loadavg."""
    try:
        load1, load5, load15 = parse_loadavg(
            agent.host.read_bytes(PROC_LOADAVG, 64).decode("ascii", "replace"))
    except (OSError, IOError) as exc:
        raise QgaError("cannot query load average: %s" % os_error_text(exc))
    except ValueError:
        raise QgaError("cannot query load average: %s" % os.strerror(errno.EINVAL))
    return {"load15m": load15, "load5m": load5, "load1m": load1}


# ==============================================================================================
# Transports and the event loop
# ==============================================================================================

class ChannelError(Exception):
    """The channel cannot be opened or has failed; with -r the agent reopens it."""


def find_virtio_port(host, name=VIRTIO_PORT_NAME):
    """The device node of the virtio-serial port ``name`` and the paths tried to find it.

    udev makes /dev/virtio-ports/<name>; without udev (initramfs, busybox) the port's name is
    in /sys/class/virtio-ports/vportNpM/name and its node is /dev/vportNpM.
    """
    tried = ["/dev/virtio-ports/" + name]
    if host.exists(tried[0]):
        return tried[0], tried
    tried.append("/sys/class/virtio-ports/*/name")
    for port in host.listdir("/sys/class/virtio-ports"):
        if host.read_attr("/sys/class/virtio-ports/%s/name" % port) == name:
            node = "/dev/" + port
            tried.append(node)
            if host.exists(node):
                return node, tried
            dev = host.read_attr("/sys/class/virtio-ports/%s/dev" % port)
            if dev and ":" in dev:                   # no /dev node yet: make one, as udev would
                major, minor = (int(x) for x in dev.split(":"))
                try:
                    os.mknod(host.path(node), 0o600 | stat.S_IFCHR, os.makedev(major, minor))
                    return node, tried
                except OSError:
                    pass
    return None, tried


def _uevent_socket():
    """A netlink socket that wakes us on device hotplug, or None where that is not allowed."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 15)
        sock.bind((0, 1))       # NETLINK_KOBJECT_UEVENT, kernel multicast group
        return sock
    except (OSError, AttributeError):
        return None


def set_raw_serial(fd):
    """isa-serial line settings exactly as qemu-ga makes them (raw, 38400, VMIN 1)."""
    import termios
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.IGNPAR | termios.PARMRK
               | termios.INPCK | termios.ISTRIP | termios.INLCR | termios.IGNCR
               | termios.ICRNL | termios.IXON | termios.IXOFF | termios.IXANY
               | termios.IMAXBEL)
    cflag |= termios.B38400
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    termios.tcflush(fd, termios.TCIFLUSH)
    termios.tcsetattr(fd, termios.TCSANOW,
                      [iflag, 0, cflag, 0, termios.B38400, termios.B38400, cc])


class Channel(object):
    """Where requests come from: a serial port, a listening socket, or stdin/stdout.

    ``listen()`` gives the listening socket of the listen kinds; ``open_serial()`` the fd of
    a serial port, or None while it is missing or busy.  The Server serves what they give.
    """

    def __init__(self, config, host, log):
        self.config, self.host, self.log = config, host, log
        self.method = config.method

    # Listening kinds ----------------------------------------------------------------------------

    def listen(self):
        config = self.config
        if config.listen_fd is not None:
            return config.listen_fd
        if self.method == "unix-listen":
            try:
                os.unlink(config.path)
            except OSError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(config.path)
            except OSError as exc:
                raise ChannelError("error binding socket '%s': %s"
                                   % (config.path, os_error_text(exc)))
        else:
            cid, port = parse_vsock_address(config.path)
            family = getattr(socket, "AF_VSOCK", 40)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.bind((cid, port))
            except (OSError, TypeError) as exc:
                raise ChannelError("error binding vsock %s: %s" % (config.path, exc))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        return sock

    # Serial kinds --------------------------------------------------------------------------------

    def open_serial(self, waiting):
        """Open the serial port; None (with the reason logged once) while it cannot be."""
        config = self.config
        path = config.path
        if self.method == "virtio-serial" and path is None:
            path, tried = find_virtio_port(self.host)
            if path is None:
                if not waiting:     # shown without -v: the operator must learn why it waits
                    self.log.error("virtio port %s not found (tried %s); waiting for it"
                                   % (VIRTIO_PORT_NAME, ", ".join(tried)))
                return None
            path = self.host.path(path)
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
        if self.method == "isa-serial":
            flags |= os.O_NOCTTY
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                if not waiting:
                    self.log.error("channel '%s' is busy (opened by another process); "
                                   "retrying" % path)
                return None
            raise ChannelError("error opening channel '%s': %s" % (path, os_error_text(exc)))
        if self.method == "isa-serial":
            try:
                set_raw_serial(fd)
            except Exception as exc:
                os.close(fd)
                raise ChannelError("error setting termios on '%s': %s" % (path, exc))
        self.log.debug("opened channel %s" % path)
        return fd


def parse_vsock_address(text):
    """``CID:PORT`` (both decimal, at most 2^32-1) as qemu parses it."""
    if text is None or ":" not in text:
        raise ChannelError("error parsing address '%s'" % text)
    cid, port = text.split(":", 1)
    for part, what in ((cid, "cid"), (port, "port")):
        if not part.isdigit() or int(part) > 0xFFFFFFFF:
            raise ChannelError("Failed to parse %s '%s'" % (what, part))
    return int(cid), int(port)


def _write_joined(fd, chunks):
    """os.writev's stand-in where os has none (PyPy): the leading chunks, up to READ_CHUNK
    bytes, joined into one write; a bigger first chunk alone, READ_CHUNK bytes of it at a
    time (PyPy's os.write copies the whole buffer it is given: handing it the rest of a
    64 MiB reply on every partial write made a 48 MiB read peak at 1.9 GiB)."""
    count, size = 1, len(chunks[0])
    while count < len(chunks) and size + len(chunks[count]) <= READ_CHUNK:
        size += len(chunks[count])
        count += 1
    return os.write(fd, chunks[0][:READ_CHUNK] if count == 1 else b"".join(chunks[:count]))


write_chunks = getattr(os, "writev", _write_joined)   # bytes written from a list of buffers


if hasattr(socket.socket, "_accept"):
    def accept_fd(listener):
        """The next client of a listening socket as a bare fd (accept4, close-on-exec): no
        socket object, whose construction would ask the kernel for its address."""
        return listener._accept()[0]
else:                                       # an interpreter without the raw call
    def accept_fd(listener):
        return listener.accept()[0].detach()


class Connection(object):
    """One client: its file descriptor, its framer and the reply bytes waiting to go out."""

    def __init__(self, fd, sock=None, owned=False):
        self.fd, self.sock, self.owned = fd, sock, owned
        self.framer = Framer()
        self.out = []            # memoryviews still to write
        self.pending = 0
        self.read_closed = False  # the host shut its write side: hang up once replies are out
        self.backlog = deque()   # framed requests not answered yet (replies were piling up)
        self.watching_output = False   # EPOLLOUT is armed while replies wait

    def queue(self, chunks):
        for chunk in chunks:
            if len(chunk):
                self.out.append(memoryview(chunk))
                self.pending += len(chunk)

    def flush(self):
        """Write what the fd takes now; raises OSError on a hung-up peer."""
        while self.out:
            try:
                written = write_chunks(self.fd, self.out[:64])
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return
                raise
            self.pending -= written
            while written:
                head = self.out[0]
                if written >= len(head):
                    written -= len(head)
                    self.out.pop(0)
                else:
                    self.out[0] = head[written:]
                    written = 0

    def drop_output(self):
        self.out, self.pending = [], 0


EPOLLRDHUP = getattr(select, "EPOLLRDHUP", 0x2000)   # Linux's value; PyPy's select lacks it
_CLIENT_EVENTS = select.EPOLLIN | select.EPOLLET | EPOLLRDHUP
_PEER_CLOSED = EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class Server(object):
    """The event loop: one client at a time, never blocking on it, never spinning.

    The client fd is watched edge-triggered.  That matters for virtio-serial: while no host
    has the port open it stays readable-at-EOF (POLLHUP) for ever, which made qemu-ga poll at
    10 Hz; with an edge trigger we hear of it once and sleep until the host writes again.
    Reply bytes are written without blocking, so a host that stops reading cannot stop us from
    noticing that it hung up; while a reply is stuck we stop reading new requests.
    """

    def __init__(self, agent, channel):
        self.agent = agent
        self.channel = channel
        self.log = agent.log
        self.epoll = select.epoll()
        self.conn = None
        self.listener = None
        self.short_read_drains = False     # a read shorter than asked empties the client's queue
        self.stop_requested = False
        self.channel_error = None
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        self.epoll.register(self.wake_r, select.EPOLLIN)

    # -- stopping --------------------------------------------------------------------------------

    def request_stop(self, signum=None, frame=None):
        """SIGTERM/SIGINT: stop, except while frozen (as qemu-ga: never die holding a freeze)."""
        if self.agent.frozen:
            self.log.warning("ignoring signal %s while file systems are frozen" % signum)
            return
        self.stop()

    def stop(self):
        """Leave the event loop (safe from a signal handler or another thread)."""
        self.stop_requested = True
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    # -- connections -----------------------------------------------------------------------------

    def attach(self, fd, sock=None, owned=False, nonblocking=False):
        """Serve a connected client: a serial port or an accepted socket (``nonblocking``: its
        fd is O_NONBLOCK already)."""
        if not nonblocking:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.conn = Connection(fd, sock, owned)
        self.epoll.register(fd, _CLIENT_EVENTS)
        self.on_readable(peer_open=True)    # what is queued now stays reported until a wait

    def detach(self):
        conn, self.conn = self.conn, None
        if conn is None:
            return
        # Closing our only reference to a client takes it out of the epoll set: no call for it.
        if conn.sock is not None:
            conn.sock.close()
        elif conn.owned:
            os.close(conn.fd)
        else:
            try:
                self.epoll.unregister(conn.fd)
            except (OSError, ValueError):
                pass
        self.watch_listener()

    def watch_listener(self):
        """Be told of the next client.  The listener is watched one-shot: an event disarms it,
        so the clients that connect while one is served wait in the kernel's backlog (one
        client at a time, as qemu-ga) without waking us, and one call re-arms it."""
        if self.listener is not None:
            self.epoll.modify(self.listener.fileno(), select.EPOLLIN | select.EPOLLONESHOT)

    def accept(self):
        try:
            fd = accept_fd(self.listener)
        except OSError:
            self.watch_listener()
            return
        # A new socket has no status flag but its access mode (which F_SETFL ignores): one
        # call makes it non-blocking.
        fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)
        self.log.debug("client connected")
        self.attach(fd, owned=True, nonblocking=True)

    # -- I/O -------------------------------------------------------------------------------------

    def on_readable(self, peer_open=False):
        """Read until the fd runs dry (edge trigger), answering every complete request.

        On a stream socket whose host had not shut its side when the event was reported
        (``peer_open``), a read shorter than asked has emptied the queue, and what arrives
        later (data or the EOF) wakes the edge trigger again, so no read is spent to hear
        EAGAIN.  Otherwise an EOF already reported by that edge would never be seen.
        Elsewhere only EAGAIN says it is dry: a virtio port returns one queued buffer per
        read, so a short read does not mean that nothing more is waiting.

        A host that never pauses keeps the fd from running dry, so a stop request and the
        timers are looked at between reads, not only in the event loop.
        """
        conn = self.conn
        drained = False
        while conn is self.conn and conn.pending < MAX_PENDING_OUTPUT:
            if self.stop_requested:
                return
            self.agent.run_due_timers()
            if conn.backlog:
                conn.queue(self.agent.answer(conn.backlog, MAX_PENDING_OUTPUT - conn.pending))
                self.on_writable()
                continue
            if drained:
                return
            try:
                data = os.read(conn.fd, READ_CHUNK)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return
                if self.listener is None and exc.errno != errno.EIO:
                    # A serial port failed (e.g. unplugged).  EIO is a tty whose other
                    # side closed: like EOF, wait for the host to come back.
                    self.channel_error = "error reading channel: %s" % os_error_text(exc)
                    return
                self.on_hangup("error reading channel: %s" % os_error_text(exc))
                return
            if not data:
                # A host that only shut its write side (socat, nc -N) still reads: send it
                # the replies first, as qemu-ga does; one that is gone fails the write.
                conn.read_closed = self.listener is not None and bool(conn.out)
                if conn.read_closed:
                    self.on_writable()
                else:
                    self.on_hangup("received EOF")
                return
            conn.backlog.extend(conn.framer.feed(data))
            drained = peer_open and self.short_read_drains and len(data) < READ_CHUNK

    def on_writable(self):
        conn = self.conn
        if conn is None:
            return
        try:
            conn.flush()
        except OSError as exc:
            self.on_hangup("error sending reply: %s" % os_error_text(exc))
            return
        # Watch for writability only while a reply waits: a socket stays writable, and every
        # read by the host would otherwise wake us for nothing.
        if bool(conn.out) != conn.watching_output:
            conn.watching_output = bool(conn.out)
            self.epoll.modify(conn.fd, _CLIENT_EVENTS
                              | (select.EPOLLOUT if conn.out else 0))
        if conn.read_closed and not conn.out:
            self.on_hangup("received EOF")

    def on_hangup(self, why):
        """The host went away.

        A socket client's partial request and unsent replies go with it.  A serial port stays
        open with its state, as in qemu-ga: a virtio port can read as EOF while the data of the
        next host is already queued behind a not-yet-seen "host connected" message, and a
        reply written in that window waits (EAGAIN) until the host is seen.  The edge trigger
        wakes us when anything changes, so the hang-up itself costs nothing.
        """
        self.log.debug(why)
        conn = self.conn
        if conn is not None and self.listener is not None:
            conn.framer.reset()
            conn.drop_output()
            self.detach()

    # -- the loop --------------------------------------------------------------------------------

    def run(self):
        """Serve until stopped; raises ChannelError when the channel fails."""
        channel = self.channel
        if channel.method in ("unix-listen", "vsock-listen"):
            self.listener = channel.listen()
            self.short_read_drains = self.listener.getsockopt(
                socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
            self.epoll.register(self.listener.fileno(), select.EPOLLIN | select.EPOLLONESHOT)
            self.run_loop()
        elif channel.method == "stdio":
            self.run_stdio()
        else:
            self.run_serial()

    def run_stdio(self):
        """One client on stdin/stdout, served with plain blocking I/O until EOF.

        The wait for input is a poll() that the wake pipe ends: a read() blocked in the
        kernel would be resumed after the SIGTERM handler, and the agent would not stop.
        """
        framer = Framer()
        poller = select.poll()
        for fd in (0, self.wake_r):
            poller.register(fd, select.POLLIN)
        while not self.stop_requested:
            delay = self.agent.next_timer_delay()
            ready = [fd for fd, _ in poller.poll(None if delay is None else delay * 1000)]
            self.agent.run_due_timers()
            if 0 not in ready:
                continue
            try:
                data = os.read(0, READ_CHUNK)
            except InterruptedError:
                continue
            if not data:
                return
            for chunk in self.agent.handle_bytes(framer, data):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(1, view):]

    def run_serial(self):
        waiting = False
        uevents = None
        while not self.stop_requested:
            fd = self.channel.open_serial(waiting)
            if fd is not None:
                if uevents is not None:
                    self.epoll.unregister(uevents.fileno())
                    uevents.close()
                    uevents = None
                self.attach(fd, owned=True)
                self.run_loop()
                self.detach()
                if self.stop_requested:
                    return
                if self.channel.config.path is not None:
                    raise ChannelError(self.channel_error or "channel closed")
                self.log.warning("%s; looking for the port again" % self.channel_error)
                self.channel_error, waiting = None, False
                continue
            # Not there yet (hotplug) or busy: sleep until a device event or the next rescan.
            if not waiting:
                uevents = _uevent_socket()
                if uevents is not None:
                    self.epoll.register(uevents.fileno(), select.EPOLLIN)
            waiting = True
            for efd, _ in self._poll(PORT_RESCAN_INTERVAL if uevents else BUSY_RETRY_INTERVAL):
                if uevents is not None and efd == uevents.fileno():
                    try:
                        while uevents.recv(65536, socket.MSG_DONTWAIT):
                            pass
                    except OSError:
                        pass
                self._drain_wake(efd)

    def _poll(self, timeout):
        delay = self.agent.next_timer_delay()
        if delay is not None:
            timeout = delay if timeout is None else min(timeout, delay)
        try:
            events = self.epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            events = []
        self.agent.run_due_timers()
        return events

    def _drain_wake(self, fd):
        if fd == self.wake_r:
            try:
                os.read(self.wake_r, 4096)
            except OSError:
                pass

    def run_loop(self):
        while not self.stop_requested and self.channel_error is None:
            for fd, events in self._poll(None):
                conn = self.conn
                if self.listener is not None and fd == self.listener.fileno():
                    if conn is None:
                        self.accept()
                elif conn is not None and fd == conn.fd:
                    if events & select.EPOLLOUT:
                        self.on_writable()
                    if self.conn is conn and events & (select.EPOLLIN | select.EPOLLHUP
                                                       | select.EPOLLERR):
                        self.on_readable(not events & _PEER_CLOSED)
                    elif self.conn is conn and not conn.out and conn.pending == 0:
                        self.on_readable()      # reading was paused behind a stuck reply
                else:
                    self._drain_wake(fd)

    def close(self):
        self.detach()
        if self.listener is not None:
            self.listener.close()
        self.epoll.close()
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)


# ==============================================================================================
# Host-side client: one command to a guest agent, sent the way hosts send it
# ==============================================================================================
#
# ``qga_mini.py client SOCKET COMMAND [JSON-ARGS]`` runs on the host and talks to this agent or
# to qemu-ga through the host end of the channel.  Before the command it sends 0xFF and
# guest-sync-delimited, then skips whatever arrives until the 0xFF that starts the sync's
# reply, so a reply an earlier client left in the channel is never taken for ours.  Both
# agents write every reply as one line.

CLIENT_USAGE = """Usage: %(prog)s client [--timeout SECONDS] [--decode] SOCKET COMMAND [JSON-ARGS]
Send one command to a guest agent and print what it returns, as JSON.
  SOCKET     the host end of the channel: a unix socket path, vsock:CID:PORT, or a
             serial device (a pty)
  JSON-ARGS  the arguments, a JSON object: '{"username": "root"}'
  --timeout  seconds to wait for a reply (default %(timeout)g)
  --decode   show buf-b64, out-data and err-data decoded as text
Exit status: 0 success, 1 an error reply, 2 no reply or a bad command line.  A command
that sends no reply when it works (guest-shutdown, ...) works unless an error comes back.
"""


class ClientError(Exception):
    """No usable reply (no connection, a timeout, a closed channel): exit status 2."""


def print_text(text, stream=None):
    """Write a line even to a stream that cannot encode all of it (an ASCII console)."""
    stream = stream or sys.stdout
    encoding = getattr(stream, "encoding", None) or "ascii"
    stream.write(text.encode(encoding, "backslashreplace").decode(encoding) + "\n")
    stream.flush()


class AgentConnection(object):
    """The host end of one connection to an agent: requests out, reply lines in."""

    def __init__(self, target, timeout):
        self.timeout, self.buf, self.sock, self.fd = timeout, b"", None, None
        vsock = target.startswith("vsock:")
        try:
            if vsock or stat.S_ISSOCK(os.stat(target).st_mode):
                family = getattr(socket, "AF_VSOCK", 40) if vsock else socket.AF_UNIX
                self.sock = socket.socket(family, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(parse_vsock_address(target[6:]) if vsock else target)
            else:                                       # a serial device
                self.fd = os.open(target, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
                if os.isatty(self.fd):
                    set_raw_serial(self.fd)
        except (OSError, ChannelError) as exc:
            self.close()
            raise ClientError("cannot connect to %s: %s" % (target, exc))
        if self.sock is not None:
            self.sock.setblocking(False)
            self.fd = self.sock.fileno()

    def close(self):
        if self.sock is not None:
            self.sock.close()
        elif self.fd is not None:
            os.close(self.fd)

    def _ready(self, write, deadline):
        fds = ([], [self.fd]) if write else ([self.fd], [])
        if not any(select.select(fds[0], fds[1], [], max(0.0, deadline - time.monotonic()))):
            raise ClientError("no reply within %g s" % self.timeout)

    def send(self, name, arguments=None, prefix=b""):
        request = {"execute": name, "arguments": arguments} if arguments else {"execute": name}
        data = memoryview(prefix + json.dumps(request).encode("ascii") + b"\n")
        deadline = time.monotonic() + self.timeout
        while data:
            self._ready(True, deadline)
            data = data[os.write(self.fd, data):]

    def reply(self, after_marker=False):
        """The next reply; with ``after_marker``, the first one that follows a 0xFF byte."""
        deadline = time.monotonic() + self.timeout
        while True:
            if after_marker:
                marker = self.buf.find(b"\xff")
                after_marker = marker < 0
                self.buf = self.buf[marker + 1:] if marker >= 0 else b""
            if not after_marker and b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.strip():
                    return parse_message(line)
                continue
            self._ready(False, deadline)
            try:
                data = os.read(self.fd, READ_CHUNK)
            except OSError:                             # EIO: a pty whose other side closed
                data = b""
            if not data:
                raise ClientError("the channel was closed")
            self.buf += data

    def sync(self):
        """guest-sync-delimited: everything up to its reply is someone else's."""
        sync_id = int.from_bytes(os.urandom(4), "big")
        self.send("guest-sync-delimited", {"id": sync_id}, prefix=b"\xff")
        while True:
            try:
                if self.reply(after_marker=True) == {"return": sync_id}:
                    return
            except JsonError:
                pass                    # a stray 0xFF in an older reply: look for the next


def client_main(argv, prog):
    """``client``: one command to an agent; the exit status says how it went."""
    positional, timeout, decode = [], CLIENT_TIMEOUT, False
    args = list(argv)
    try:
        while args:
            arg = args.pop(0)
            if arg in ("-h", "--help"):
                print(CLIENT_USAGE % {"prog": prog, "timeout": CLIENT_TIMEOUT})
                return 0
            if arg == "--decode":
                decode = True
            elif arg.split("=", 1)[0] == "--timeout":
                timeout = float(arg.split("=", 1)[1] if "=" in arg else args.pop(0))
            else:
                positional.append(arg)
        if not 2 <= len(positional) <= 3 or timeout <= 0:
            raise ValueError("expected SOCKET COMMAND [JSON-ARGS]")
        arguments = json.loads(positional[2]) if len(positional) == 3 else None
        if arguments is not None and not isinstance(arguments, dict):
            raise ValueError("JSON-ARGS must be a JSON object")
    except (ValueError, IndexError) as exc:
        sys.stderr.write("%s client: %s\nTry '%s client --help'.\n" % (prog, exc, prog))
        return 2
    target, name = positional[:2]
    cmd = COMMANDS.get(name)
    silent = cmd is not None and not cmd.success_response
    sent = False
    try:
        conn = AgentConnection(target, timeout)
        try:
            conn.sync()
            conn.send(name, arguments)
            sent = True
            if silent:
                # Success sends nothing; a guest-sync behind the command brings either the
                # command's error or its own reply.  qemu-ga-client waits for a timeout.
                conn.send("guest-sync", {"id": 0})
            reply = conn.reply()
        finally:
            conn.close()
        if not isinstance(reply, dict):
            raise ClientError("not a reply: %s" % json.dumps(reply))
    except (ClientError, JsonError) as exc:
        if silent and sent and isinstance(exc, ClientError):   # the guest went down or asleep
            return 0
        sys.stderr.write("%s client: %s\n" % (prog, exc))
        return 2
    if "error" in reply:
        error = reply["error"]
        print_text("%s: %s" % (error.get("class"), error.get("desc")), sys.stderr)
        return 1
    value = reply.get("return")
    for key in CLIENT_BASE64_MEMBERS if decode and isinstance(value, dict) else ():
        if isinstance(value.get(key), str):
            value[key] = decode_base64(value[key]).decode("utf-8", "replace")
    if not silent:
        print_text(json.dumps(value, indent=2, ensure_ascii=False))
    return 0


# ==============================================================================================
# Configuration and command line (qemu-ga's options, config file and --dump-conf)
# ==============================================================================================

class Config(object):
    """The effective settings, after the config file and then the command line."""

    def __init__(self):
        self.daemon = False
        self.method = "virtio-serial"
        self.path = None
        self.logfile = None
        self.pidfile = DEFAULT_PIDFILE
        self.fsfreeze_hook = None
        self.statedir = DEFAULT_STATEDIR
        self.verbose = False
        self.retry_path = False
        self.block_rpcs = []
        self.allow_rpcs = []
        self.block_rpcs_raw = None      # the config file's text, dumped back verbatim
        self.listen_fd = None           # systemd socket activation
        self.freeze_timeout = 0
        self.fsfreeze_hook_timeout = DEFAULT_FSFREEZE_HOOK_TIMEOUT


USAGE = """Usage: %(prog)s [-m <method> -p <path>] [<options>]
QEMU Guest Agent (qga-mini %(project)s, behaves as qemu-ga %(version)s)

  -m, --method      transport method: one of unix-listen, virtio-serial,
                    isa-serial, vsock-listen or stdio (virtio-serial is the default)
  -p, --path        device/socket path (the default for virtio-serial is
                    found in /dev/virtio-ports or /sys/class/virtio-ports,
                    the default for isa-serial is '/dev/ttyS0'); for vsock-listen
                    it is '<cid>:<port>'
      --device      virtio-serial with the port found automatically
  -l, --logfile     set logfile path, logs to stderr by default
  -f, --pidfile     specify pidfile (default is %(pidfile)s)
  -F, --fsfreeze-hook
                    enable fsfreeze hook. Accepts an optional argument that
                    specifies script to run on freeze/thaw. Script will be
                    called with 'freeze'/'thaw' arguments accordingly.
                    (default is %(hook)s)
                    If using -F with an argument, do not follow -F with a
                    space. (for example: -F/var/run/fsfreezehook.sh)
      --fsfreeze-hook-timeout SECONDS
                    kill the hook with its process group after SECONDS
                    (default %(hook_timeout)g; 0: wait forever, as qemu-ga)
      --freeze-timeout SECONDS
                    thaw by itself if the host has not thawed after SECONDS
                    (default 0: never, as qemu-ga)
  -t, --statedir    specify dir to store state information (absolute paths
                    only, default is %(statedir)s)
  -v, --verbose     log extra debugging information
  -V, --version     print version information and exit
  -d, --daemonize   become a daemon
  -b, --block-rpcs  comma-separated list of RPCs to disable (no spaces,
                    use "help" to list available RPCs)
  -a, --allow-rpcs  comma-separated list of RPCs to enable (no spaces,
                    use "help" to list available RPCs)
  -c, --config      configuration file (default %(config)s, or $QGA_CONF)
  -D, --dump-conf   dump a qemu-ga config file based on current config
                    options / command-line parameters to stdout
  -r, --retry-path  attempt re-opening path if it's unavailable or closed
                    due to an error which may be recoverable in the future
      --self-test   run every read-only command here and print a table
  -h, --help        display this help and exit

%(prog)s client SOCKET COMMAND [JSON-ARGS] sends one command to an agent, from
the host: see '%(prog)s client --help'.
"""

# Options taking an argument, and their long names.
_OPTS_WITH_ARG = {"-m": "method", "-p": "path", "-l": "logfile", "-f": "pidfile",
                  "-t": "statedir", "-b": "block-rpcs", "-a": "allow-rpcs", "-c": "config"}
_LONG_OPTS = {"--method": "-m", "--path": "-p", "--logfile": "-l", "--pidfile": "-f",
              "--statedir": "-t", "--block-rpcs": "-b", "--blacklist": "-b",
              "--allow-rpcs": "-a", "--config": "-c", "--verbose": "-v", "--version": "-V",
              "--daemonize": "-d", "--dump-conf": "-D", "--retry-path": "-r", "--help": "-h",
              "--fsfreeze-hook": "-F", "--device": "--device",
              "--freeze-timeout": "--freeze-timeout", "--self-test": "--self-test",
              "--fsfreeze-hook-timeout": "--fsfreeze-hook-timeout"}
# Ours, not qemu-ga's: an abbreviation that also fits one of qemu-ga's means qemu-ga's.
_OWN_LONG_OPTS = ("--device", "--freeze-timeout", "--self-test", "--fsfreeze-hook-timeout")
_OWN_OPTS_WITH_ARG = ("--freeze-timeout", "--fsfreeze-hook-timeout")
_FLAGS = set("vVdDrh")


class UsageError(Exception):
    """A bad command line or config: one line on stderr, exit 1."""


def parse_args(argv):
    """qemu-ga's command line as a list of (option, value) pairs in order.

    ``-F`` takes its argument only when attached (``-F/path``, ``--fsfreeze-hook=/path``), as
    getopt's optional arguments do; stray non-option words are ignored, as in qemu-ga.
    """
    opts = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            matches = [l for l in _LONG_OPTS if l.startswith(name)]
            if name in _LONG_OPTS:
                matches = [name]
            elif len(matches) > 1:
                matches = [l for l in matches if l not in _OWN_LONG_OPTS] or matches
            if len(matches) != 1:
                raise UsageError("unrecognized option '%s'" % arg)
            short = _LONG_OPTS[matches[0]]
            if short in ("-F",):
                opts.append(("-F", value if eq else None))
            elif short in _OPTS_WITH_ARG or short in _OWN_OPTS_WITH_ARG:
                if not eq:
                    if not args:
                        raise UsageError("option '%s' requires an argument" % matches[0])
                    value = args.pop(0)
                opts.append((short, value))
            else:
                if eq:
                    raise UsageError("option '%s' doesn't allow an argument" % matches[0])
                opts.append((short, None))
        elif arg.startswith("-") and len(arg) > 1:
            i = 1
            while i < len(arg):
                flag = "-" + arg[i]
                rest = arg[i + 1:]
                if flag == "-F":
                    opts.append(("-F", rest or None))
                    break
                if flag in _OPTS_WITH_ARG:
                    if not rest:
                        if not args:
                            raise UsageError("option requires an argument -- '%s'" % arg[i])
                        rest = args.pop(0)
                    opts.append((flag, rest))
                    break
                if arg[i] not in _FLAGS:
                    raise UsageError("invalid option -- '%s'" % arg[i])
                opts.append((flag, None))
                i += 1
    return opts


def split_rpc_list(text):
    """A comma list of command names (qemu-ga splits on commas only, never on ';')."""
    return [name for name in text.split(",") if name]


def parse_keyfile(text, path):
    """A GLib key file as {group: {key: value}}; UsageError on a syntax error."""
    groups, group = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = groups.setdefault(line[1:-1], OrderedDict())
        elif "=" in line and group is not None:
            key, value = line.split("=", 1)
            group[key.strip()] = value.strip()
        else:
            raise UsageError("error loading configuration from path: %s, Key file contains "
                             "line “%s” which is not a key-value pair, group, or comment"
                             % (path, line))
    return groups


def _keyfile_bool(value, key, path):
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise UsageError("error loading configuration from path: %s, Key file contains key “%s” "
                     "which has a value that cannot be interpreted." % (path, key))


def load_config_file(config, path, required, log):
    """Apply the [general] keys of ``path``; a missing file is an error only if ``required``.
    A file another user could have written is refused (untrusted_file_reason)."""
    try:
        with open(path, "rb") as f:
            why = untrusted_file_reason(os.fstat(f.fileno()))
            text = f.read().decode("utf-8", "replace")
    except (OSError, IOError) as exc:
        if not required and exc.errno == errno.ENOENT:
            return
        raise UsageError("error loading configuration from path: %s, %s"
                         % (path, os_error_text(exc)))
    if why:
        raise UsageError("refusing configuration file '%s': %s" % (path, why))
    general = parse_keyfile(text, path).get("general", {})
    for key, value in general.items():
        if key in ("daemon", "verbose", "retry-path"):
            setattr(config, key.replace("-", "_"), _keyfile_bool(value, key, path))
        elif key in ("method", "path", "logfile", "pidfile", "fsfreeze-hook", "statedir"):
            setattr(config, key.replace("-", "_"), value)
        elif key == "block-rpcs" and "blacklist" not in general:
            config.block_rpcs_raw = value
            config.block_rpcs.extend(split_rpc_list(value))
        elif key == "blacklist":
            log.warning("config using deprecated 'blacklist' key, should be replaced with "
                        "the 'block-rpcs' key.")
            config.block_rpcs_raw = value
            config.block_rpcs.extend(split_rpc_list(value))
        elif key == "allow-rpcs":
            config.allow_rpcs.extend(split_rpc_list(value))
        elif key in ("freeze-timeout", "fsfreeze-hook-timeout"):
            setattr(config, key.replace("-", "_"), _parse_seconds(value, key))


def _parse_seconds(text, name):
    """A number of seconds for option or key ``name``: finite, not negative."""
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 <= value < float("inf"):
        raise UsageError("invalid %s '%s': a number of seconds, 0 or more" % (name, text))
    return value


def dump_config(config):
    """--dump-conf, in qemu-ga's key order."""
    lines = ["[general]", "daemon=%s" % str(config.daemon).lower(),
             "method=%s" % config.method, "path=%s" % config.path]
    if config.logfile:
        lines.append("logfile=%s" % config.logfile)
    lines.append("pidfile=%s" % config.pidfile)
    if config.fsfreeze_hook:
        lines.append("fsfreeze-hook=%s" % config.fsfreeze_hook)
    lines += ["statedir=%s" % config.statedir, "verbose=%s" % str(config.verbose).lower(),
              "retry-path=%s" % str(config.retry_path).lower()]
    blocked = config.block_rpcs_raw if config.block_rpcs_raw is not None else ""
    extra = [n for n in config.block_rpcs if n not in split_rpc_list(blocked)]
    lines.append("block-rpcs=%s" % ",".join(([blocked] if blocked else []) + extra))
    if config.allow_rpcs:
        lines.append("allow-rpcs=%s" % ",".join(config.allow_rpcs))
    # Our own keys come last, and only when set away from their default, so that a default
    # configuration dumps exactly as qemu-ga's does.
    if config.freeze_timeout:
        lines.append("freeze-timeout=%g" % config.freeze_timeout)
    if config.fsfreeze_hook_timeout != DEFAULT_FSFREEZE_HOOK_TIMEOUT:
        lines.append("fsfreeze-hook-timeout=%g" % config.fsfreeze_hook_timeout)
    return "\n".join(lines) + "\n"


def build_config(argv, environ, log):
    """The Config and the action ("run", "dump", "version", "help", "list", "self-test")."""
    opts = parse_args(argv)
    config = Config()
    # As qemu-ga 10.x: the last -c, which must exist; else $QGA_CONF or the default file,
    # either of which may be missing (qemu-ga 7.2 has no -c and reads $QGA_CONF so).
    cli_config = [value for opt, value in opts if opt == "-c"]
    if cli_config:
        path = cli_config[-1]
    else:
        path = environ.get("QGA_CONF")
        path = DEFAULT_CONFIG_PATH if path is None else path
    load_config_file(config, path, required=bool(cli_config), log=log)
    action = "run"
    for opt, value in opts:
        if opt == "-m":
            config.method = value
        elif opt == "--device":
            config.method, config.path = "virtio-serial", None
        elif opt == "-p":
            config.path = value
        elif opt == "-l":
            config.logfile = value
        elif opt == "-f":
            config.pidfile = value
        elif opt == "-F":
            config.fsfreeze_hook = value or DEFAULT_FSFREEZE_HOOK
        elif opt == "-t":
            config.statedir = value
        elif opt == "-v":
            config.verbose = True
        elif opt == "-d":
            config.daemon = True
        elif opt == "-r":
            config.retry_path = True
        elif opt in _OWN_OPTS_WITH_ARG:
            setattr(config, opt[2:].replace("-", "_"), _parse_seconds(value, opt))
        elif opt in ("-b", "-a"):
            if value in ("help", "?"):
                action = "list"
            else:
                names = split_rpc_list(value)[::-1]       # qemu-ga prepends each piece
                (config.block_rpcs if opt == "-b" else config.allow_rpcs).extend(names)
        elif opt == "-V":
            return config, "version"
        elif opt == "-h":
            return config, "help"
        elif opt == "-D":
            action = "dump"
        elif opt == "--self-test":
            action = "self-test"
    if action == "list":
        return config, action
    if config.method not in ("virtio-serial", "isa-serial", "unix-listen", "vsock-listen",
                             "stdio"):
        raise UsageError("unsupported channel method/type: %s" % config.method)
    listen_fd = systemd_listen_fd(environ)
    if listen_fd is not None:
        config.listen_fd = listen_fd
        config.method = ("vsock-listen" if listen_fd.family == getattr(socket, "AF_VSOCK", 40)
                         else "unix-listen")
    elif config.path is None:
        if config.method in ("unix-listen", "vsock-listen"):
            raise UsageError("must specify a path for this channel")
        if config.method == "isa-serial":
            config.path = DEFAULT_SERIAL_PATH
    return config, action


def systemd_listen_fd(environ):
    """The socket systemd passed us (LISTEN_FDS/LISTEN_PID), or None."""
    if environ.get("LISTEN_PID") != str(os.getpid()) or "LISTEN_FDS" not in environ:
        return None
    if environ.get("LISTEN_FDS") != "1":
        raise UsageError("qemu-ga only supports listening on one socket")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    fd = 3
    try:
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        if sys.version_info < (3, 7):       # socket() learnt to find the family in 3.7
            probe = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM)
            family = probe.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_DOMAIN", 39))
            probe.close()
            sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
        else:
            sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise UsageError("unsupported listen fd type: %s" % exc)
    if sock.family not in (socket.AF_UNIX, getattr(socket, "AF_VSOCK", 40)):
        raise UsageError("unsupported listen fd type")
    sock.setblocking(False)
    return sock


# ==============================================================================================
# Self-test: every read-only command, run here, as a table for whoever builds an image
# ==============================================================================================

def summarize(value, width=SELF_TEST_SUMMARY_WIDTH):
    """A reply's return value in one short line: scalars as they are, lists by their length
    (and their members' names), objects as ``key=value`` pairs."""
    if isinstance(value, list):
        names = [str(item["name"]) for item in value if isinstance(item, dict) and "name" in item]
        text = "%d entries" % len(value) + (": " + ", ".join(names) if names else "")
    elif isinstance(value, dict):
        text = ", ".join("%s: %d entries" % (key, len(item)) if isinstance(item, list)
                         else "%s=%s" % (key, summarize(item, width)) if isinstance(item, dict)
                         else "%s=%s" % (key, item) for key, item in value.items()) or "{}"
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def self_test_arguments(cmd):
    """Arguments for a read-only command: its required ones that the test can fill (a user
    name: the one it runs as), or None when it needs another (guest-exec-status's pid)."""
    required = [spec for spec in cmd.data if not spec.startswith("*")]
    if any(name != "username" for name in required):
        return None
    if not required:
        return {}
    import pwd
    try:
        return {"username": pwd.getpwuid(os.geteuid()).pw_name}
    except KeyError:
        return {"username": "root"}


def run_self_test_command(agent, cmd):
    """(result, summary) of one command run in-process, as dispatch would run it."""
    if not agent.is_enabled(cmd.name):
        return "disabled", agent.disabled_reason(cmd.name)
    arguments = self_test_arguments(cmd)
    if arguments is None:
        return "skipped", "needs " + ", ".join(s for s in cmd.data if not s.startswith("*"))
    try:
        kwargs = check_members(arguments, cmd.data)
        value = cmd.func(agent, **{k.replace("-", "_"): v for k, v in kwargs.items()})
        value = {} if value is None else value
        encode_reply({"return": value})                  # what could not be sent is a crash
    except QgaError as exc:
        unsupported = exc.desc == UNSUPPORTED_TEXT or exc.cls == COMMAND_NOT_FOUND
        return "unsupported" if unsupported else "error", exc.desc     # in full: it is the news
    return "ok", summarize(value)


def self_test(config):
    """--self-test: run every read-only command here and print what each one answers.

    An error reply is a finding about this system (no utmp, no memory hotplug, ...); only a
    command that raised something other than QgaError, a bug, makes the exit status 1.
    """
    import traceback
    log = Log(verbose=config.verbose)
    log.muted = not config.verbose      # no audit lines in syslog from a check
    agent = Agent(config, log=log)
    commands = [c for c in registered_commands() if READ_ONLY_COMMAND.match(c.name)]
    print_text("qga-mini %s (as qemu-ga %s) self-test on %s: %d read-only commands"
               % (__project_version__, __version__, socket.gethostname(), len(commands)))
    print_text("%-30s %-12s %s\n%s %s %s" % ("command", "result", "summary", "-" * 30, "-" * 12,
                                             "-" * SELF_TEST_SUMMARY_WIDTH))
    counts, crashes = OrderedDict(), []
    try:
        for cmd in commands:
            try:
                result, summary = run_self_test_command(agent, cmd)
            except Exception as exc:
                result, summary = "CRASHED", summarize("%s: %s" % (type(exc).__name__, exc))
                crashes.append((cmd.name, traceback.format_exc()))
            counts[result] = counts.get(result, 0) + 1
            print_text("%-30s %-12s %s" % (cmd.name, result, summary))
    finally:
        agent.shutdown()
    for name, trace in crashes:
        sys.stderr.write("%s crashed:\n%s" % (name, trace))
    print_text("self-test: " + ", ".join("%d %s" % (n, result) for result, n in counts.items()))
    return 1 if crashes else 0


# ==============================================================================================
# main()
# ==============================================================================================

def daemonize(config):
    """Fork into the background as qemu-ga does: pidfile locked, umask 077, stdio /dev/null."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.umask(0o077)
    os.chdir("/")
    fd = os.open(config.pidfile, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        raise UsageError("Cannot lock pid file: %s" % os_error_text(exc))
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % os.getpid())
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.close(null)
    return fd


def open_log(config):
    stream = None
    if config.logfile:
        try:
            stream = open(config.logfile, "a")
            fcntl.fcntl(stream.fileno(), fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        except (OSError, IOError) as exc:
            raise UsageError("unable to open specified log file: %s" % os_error_text(exc))
    return Log(stream, config.verbose)


def serve(agent):
    """Open the channel and serve until stopped; with -r, reopen it after every failure."""
    while True:
        server = Server(agent, Channel(agent.config, agent.host, agent.log))
        server.install_signal_handlers()
        try:
            server.run()
            if server.stop_requested or agent.config.method == "stdio":
                return 0
            raise ChannelError("channel closed")
        except ChannelError as exc:
            agent.log.write("critical", str(exc))
            if not agent.config.retry_path:
                agent.log.write("critical", "failed to initialize guest agent channel")
                return 1
            agent.log.write("critical", "agent stopped unexpectedly, restarting...")
            time.sleep(RETRY_INTERVAL)
        finally:
            server.close()


def main(argv=None, environ=None):
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    # sys.argv[0] is "-c" when started by importing (as contrib/qga-mini does)
    prog = os.path.basename(sys.argv[0] if sys.argv[0] not in ("", "-c") else "qga_mini.py")
    if argv[:1] == ["client"]:
        return client_main(argv[1:], prog)
    early_log = Log(verbose=True)       # config warnings are always shown, as GLib does
    try:
        config, action = build_config(argv, environ, early_log)
        if action == "version":
            print("QEMU Guest Agent %s (qga-mini %s)" % (__version__, __project_version__))
            return 0
        if action == "help":
            print(USAGE % {"prog": prog, "project": __project_version__, "version": __version__,
                           "pidfile": DEFAULT_PIDFILE, "hook": DEFAULT_FSFREEZE_HOOK,
                           "hook_timeout": DEFAULT_FSFREEZE_HOOK_TIMEOUT,
                           "statedir": DEFAULT_STATEDIR, "config": DEFAULT_CONFIG_PATH})
            return 0
        if action == "list":
            for cmd in registered_commands():
                print(cmd.name)
            return 0
        if action == "dump":
            if config.method == "virtio-serial" and config.path is None:
                config.path = DEFAULT_VIRTIO_PATH
            sys.stdout.write(dump_config(config))
            return 0
        if action == "self-test":
            return self_test(config)
        pidfile_fd = daemonize(config) if config.daemon else None
        agent = Agent(config, log=open_log(config))
        if pidfile_fd is not None:
            agent.cleanups.append(lambda: os.unlink(config.pidfile))
        if config.method == "unix-listen" and config.listen_fd is None:
            agent.cleanups.append(lambda: os.path.exists(config.path) and os.unlink(config.path))
        raise_fd_limit()
        start_agent(agent)
    except UsageError as exc:
        sys.stderr.write("%s: %s\n" % (prog, exc))
        if exc.args[0].startswith(("invalid option", "unrecognized option", "option")):
            print("Unknown option, try '%s --help' for more information." % prog)
        return 1
    try:
        return serve(agent)
    finally:
        agent.shutdown()


def fd_budget():
    """The file descriptors the agent may need with every cap reached: each guest-file handle,
    and per exec child its stdin, stdout and stderr pipes and a pidfd."""
    return MAX_FILE_HANDLES + 4 * MAX_EXEC_PROCESSES + FD_RESERVE


def raise_fd_limit():
    """Raise the soft RLIMIT_NOFILE (1024 under systemd and most shells) to fd_budget(), as far
    as the hard limit allows, so each cap is reached with its own error before EMFILE."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = fd_budget() if hard == resource.RLIM_INFINITY else min(fd_budget(), hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):
            pass


def start_agent(agent):
    """Bring up the state dir; come up frozen if a previous instance died frozen."""
    state = agent.state
    try:
        if state.is_frozen():
            agent.log.warning(
                "previous instance appears to have exited with frozen filesystems. deferring "
                "logging/pidfile creation and disabling non-fsfreeze-safe commands until "
                "guest-fsfreeze-thaw is issued, or filesystems are manually unfrozen and the "
                "file %s is removed" % state.frozen_marker)
            agent.frozen = True
            agent.log.muted = True
        else:
            state.ensure()
    except (OSError, IOError) as exc:
        raise UsageError("failed to load persistent state: %s" % os_error_text(exc))
    fsfreeze_start(agent)


if __name__ == "__main__":
    sys.exit(main())
