"""VM test driver: boot qga_mini.py in QEMU and check it with real host clients.

Run through tests/vm/run.sh, which installs QEMU, unpacks a Debian kernel and
makes a venv with the qemu.qmp package.  This file builds the initramfs
(image.py), boots it (KVM when it boots, else TCG), runs the checks with the
clients of clients.py, then the virsh checks (virsh.py) when libvirt runs, and
prints a table and "vm-test: N passed, M failed[, K skipped]".
"""
import argparse
import base64
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import image  # noqa: E402
from clients import BuiltinClient, ClientError, LibvirtClient, ProxmoxClient, QmpClient  # noqa: E402

TOP = image.TOP
AGENT = os.path.join(TOP, "qga_mini.py")
QEMU_GA = "/usr/sbin/qemu-ga"
KVM_PROBE_SECONDS = 15     # a KVM boot that shows no "init done" by then has hung
BOOT_SECONDS = 90          # TCG boot to first pong, generous for a loaded CI machine
BOOT_SAMPLES = 3           # boots per agent for the boot-time comparison (median)
BOOT_MARGIN = 1.0          # seconds qga-mini may take longer than qemu-ga to the first pong
IDLE_SECONDS = 5           # how long the host stays away in the idle-CPU check
IDLE_CPU_LIMIT = 1.0       # percent of one CPU the agent may use meanwhile
RECONNECTS = 30            # host connect/command/close cycles before the idle check
USER_HZ = 100              # clock ticks per second of /proc/<pid>/stat (x86 Linux)


# ----------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------

class Skip(Exception):
    """The check cannot run here or the command is not implemented (yet)."""


class Results:
    def __init__(self):
        self.rows = []

    def add(self, group, name, status, detail=""):
        self.rows.append((group, name, status, " ".join(str(detail).split())))
        detail = self.rows[-1][3]
        print("  %-5s %-14s %-38s %s" % (status, group, name, detail if status == "FAIL" else detail[:100]),
              flush=True)

    def check(self, group, name, fn, *args):
        """Run fn(*args): a returned string is the detail of a pass."""
        try:
            self.add(group, name, "pass", fn(*args) or "")
        except Skip as e:
            self.add(group, name, "skip", e)
        except Exception as e:  # a failed check, whatever broke
            self.add(group, name, "FAIL", "%s: %s" % (type(e).__name__, e))

    def count(self, status):
        return sum(1 for r in self.rows if r[2] == status)

    def print_table(self):
        print("\n%-14s %-40s %-6s %s" % ("group", "check", "result", "detail"))
        print("-" * 120)
        for group, name, status, detail in self.rows:
            print("%-14s %-40s %-6s %s" % (group, name, status, detail[:80]))
        print("-" * 120)


def ret(reply):
    """The "return" of a reply; CommandNotFound (not implemented yet) is a Skip."""
    if reply is None:
        raise ClientError("no reply")
    if "error" in reply:
        err = reply["error"]
        if err.get("class") == "CommandNotFound" and "has not been found" in err.get("desc", ""):
            raise Skip("not implemented: " + err["desc"])
        raise AssertionError("%s: %s" % (err.get("class"), err.get("desc")))
    return reply["return"]


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


# ----------------------------------------------------------------------------
# The virtual machine
# ----------------------------------------------------------------------------

class VM:
    """One QEMU process with the devices of the test (see README in run.sh)."""

    def __init__(self, work, kernel, initrd, disk, accel, agent="mini", tag="vm"):
        self.work, self.kernel, self.initrd, self.disk = work, kernel, initrd, disk
        self.accel, self.agent, self.tag = accel, agent, tag
        self.sock = os.path.join(work, tag + "-qga.sock")
        self.isa_sock = os.path.join(work, tag + "-isa.sock")
        self.console = os.path.join(work, tag + "-console.log")
        self.proc = None
        self.t0 = None

    def accel_argv(self):
        return ["-accel", "kvm"] if self.accel == "kvm" else ["-accel", "tcg,thread=multi"]

    memory = 512

    def qemu_argv(self, append, disks, extra=()):
        """QEMU's command line: the machine, -kernel/-initrd with ``append``, the serial
        console, ``extra`` devices, the agent's virtio port, ``disks`` [(path, format)] as
        virtio-blk in order (vda, vdb, ...) and a user-mode NIC."""
        argv = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
                "-M", "pc", "-m", str(self.memory), "-smp", "2"] + self.accel_argv() + [
            "-kernel", self.kernel, "-initrd", self.initrd, "-append", append,
            "-chardev", "file,id=con,path=" + self.console, "-serial", "chardev:con"] + list(extra) + [
            "-device", "virtio-serial-pci,id=vs0",
            "-chardev", "socket,id=qga0,path=%s,server=on,wait=off" % self.sock,
            "-device", "virtserialport,bus=vs0.0,chardev=qga0,name=org.qemu.guest_agent.0"]
        for i, (path, fmt) in enumerate(disks):
            argv += ["-drive", "file=%s,if=none,id=d%d,format=%s,discard=unmap" % (path, i, fmt),
                     "-device", "virtio-blk-pci,drive=d%d" % i]
        return argv + ["-nic", "user,restrict=on,model=virtio-net-pci"]

    def argv(self):
        return self.qemu_argv("console=ttyS0 panic=-1 qga.agent=" + self.agent, [(self.disk, "raw")],
                              # second channel: isa-serial (ttyS1 in the guest)
                              ["-chardev", "socket,id=isa1,path=%s,server=on,wait=off" % self.isa_sock,
                               "-device", "isa-serial,chardev=isa1"])

    def start(self):
        for p in (self.sock, self.isa_sock, self.console):
            if os.path.exists(p):
                os.unlink(p)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=open(self.console + ".qemu", "w"),
                                     stderr=subprocess.STDOUT)

    def console_text(self):
        try:
            with open(self.console, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout):
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            if not self.wait_exit(5):
                self.proc.kill()
                self.proc.wait()


def first_pong(vm, timeout, since=None):
    """Seconds from QEMU's start to the agent's first guest-ping reply, or None.

    Pings every 0.2 s on one connection (requests written before the guest opens
    the port wait in the channel), then drains stale replies with a delimited
    sync so that the next client starts clean.  The timeout counts from QEMU's
    start, or from the monotonic time ``since`` (an agent restarted later).
    """
    deadline = (vm.t0 if since is None else since) + timeout
    sock = None
    while time.monotonic() < deadline and vm.alive():
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(vm.sock)
            break
        except OSError:
            sock.close()
            sock = None
            time.sleep(0.02)
    if sock is None:
        return None
    buf = b""
    try:
        while time.monotonic() < deadline and vm.alive():
            # While no agent has the port open QEMU reads nothing: a long boot would
            # fill the socket, so a ping is written only where it fits whole.
            if select.select([], [sock], [], 0)[1]:
                sock.sendall(b'{"execute": "guest-ping"}\n')
            sock.settimeout(0.2)
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                return None
            buf += chunk
            if b'{"return": {}}' in buf:
                pong = time.monotonic() - vm.t0
                sock.settimeout(10)
                sock.sendall(b'{"execute": "guest-sync-delimited", "arguments": {"id": 4711}}\n')
                while b'\xff{"return": 4711}' not in buf:
                    buf += sock.recv(4096)
                return pong
        return None
    except OSError:  # QEMU went away
        return None
    finally:
        sock.close()


def accel_cache_key():
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], stdout=subprocess.PIPE,
                          universal_newlines=True).stdout.split("\n")[0]
    return "%s|%s" % (platform.release(), qemu)


def boot(vm, cache, results, ready="qga-vm: init done", timeout=BOOT_SECONDS):
    """Start vm, on KVM if it works here (remembered in the cache), else TCG.

    Returns the boot-to-first-pong time.  A KVM boot that hangs (this host's
    nested KVM does with the stock kernel) or aborts is detected by the missing
    ``ready`` line on the console and redone with TCG.
    """
    verdict_file = os.path.join(cache, "accel.json")
    try:
        verdicts = json.load(open(verdict_file))
    except (OSError, ValueError):
        verdicts = {}
    key = accel_cache_key()
    kvm_ok = os.access("/dev/kvm", os.R_OK | os.W_OK)
    vm.accel = verdicts.get(key, "kvm") if kvm_ok else "tcg"
    vm.start()
    if vm.accel == "kvm":
        pong = first_pong(vm, KVM_PROBE_SECONDS)
        if pong is not None:
            verdicts[key] = "kvm"
        elif ready in vm.console_text():
            verdicts[key] = "kvm"  # KVM boots; the agent did not answer
            return None
        else:
            vm.kill()
            verdicts[key] = "tcg"
            vm.accel = "tcg"
            print("vm-test: KVM boot hung or failed, falling back to TCG", flush=True)
            vm.start()
        json.dump(verdicts, open(verdict_file, "w"))
        if vm.accel == "kvm":
            return pong
    return first_pong(vm, timeout)


# ----------------------------------------------------------------------------
# Guest helpers
# ----------------------------------------------------------------------------

def guest_run(client, argv, input_data=None, timeout=30):
    """guest-exec argv with captured output; the finished GuestExecStatus."""
    args = {"path": argv[0], "arg": argv[1:], "capture-output": True}
    if input_data is not None:
        args["input-data"] = base64.b64encode(input_data).decode()
    pid = ret(client.cmd("guest-exec", args))["pid"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = ret(client.cmd("guest-exec-status", {"pid": pid}))
        if status["exited"]:
            for key in ("out-data", "err-data"):
                status[key] = base64.b64decode(status.get(key, "")).decode(errors="replace")
            return status
        time.sleep(0.05)
    raise AssertionError("guest-exec %s did not finish in %d s" % (argv, timeout))


def guest_sh(client, script):
    """Output of a shell script run in the guest; fails on a non-zero exit."""
    st = guest_run(client, ["/bin/sh", "-c", script])
    expect(st.get("exitcode") == 0, "%r exited %s: %s" % (script, st.get("exitcode"), st["err-data"]))
    return st["out-data"]


# ----------------------------------------------------------------------------
# Read-only commands and what a reply must hold (what libvirt, Proxmox,
# KubeVirt and qemu-ga-client read from it)
# ----------------------------------------------------------------------------

def _uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def v_info(r):
    names = {c["name"] for c in r["supported_commands"]}
    expect(isinstance(r["version"], str) and "guest-ping" in names, "bad guest-info")
    for c in r["supported_commands"]:
        expect(isinstance(c["enabled"], bool) and isinstance(c["success-response"], bool), c)
    return "%d commands" % len(names)


def v_ping(r):
    expect(r == {}, "ping returned %r" % r)


def v_time(r):
    expect(_uint(r), "not an unsigned integer: %r" % r)
    return "offset to host %.1f s" % (r / 1e9 - time.time())


def v_timezone(r):
    expect(isinstance(r["offset"], int), "offset %r" % r)
    return "%s %+d" % (r.get("zone"), r["offset"])


def v_hostname(r):
    expect(r["host-name"] == image.HOSTNAME, "host-name %r" % r)


def v_osinfo(r):
    expect(all(isinstance(v, str) for v in r.values()), "non-string field in %r" % r)
    expect(r.get("id") == "qga-vm" and r.get("version-id") == "1", "os-release not read: %r" % r)
    expect(r.get("kernel-release") == KERNEL_RELEASE[0], "kernel-release %r" % r.get("kernel-release"))
    return r.get("pretty-name")


def v_users(r):
    for u in r:
        expect(isinstance(u["user"], str) and isinstance(u["login-time"], (int, float)), u)
    return "%d users" % len(r)


def _check_disk_address(d):
    for key in ("bus", "target", "unit"):
        expect(_uint(d[key]), "disk %s=%r" % (key, d.get(key)))
    pci = d["pci-controller"]
    for key in ("domain", "bus", "slot", "function"):
        expect(_uint(pci[key]), "pci-controller %s=%r" % (key, pci.get(key)))


def v_fsinfo(r):
    data = None
    for fs in r:
        for key in ("name", "mountpoint", "type"):
            expect(isinstance(fs[key], str), "fsinfo %s missing in %r" % (key, fs))
        expect(isinstance(fs["disk"], list), "fsinfo disk not a list in %r" % fs)
        for d in fs["disk"]:
            _check_disk_address(d)
        if fs["mountpoint"] == "/mnt/data":
            data = fs
    expect(data is not None, "/mnt/data missing")
    expect(data["type"] == "ext4", "/mnt/data type %r" % data["type"])
    expect(data["disk"] and data["disk"][0].get("bus-type") == "virtio",
           "/mnt/data disk %r" % data["disk"])
    return "%d filesystems, /mnt/data on %s" % (len(r), data["disk"][0].get("dev"))


def v_disks(r):
    for d in r:
        expect(isinstance(d["name"], str) and isinstance(d["partition"], bool), d)
        if "address" in d:
            _check_disk_address(d["address"])
    expect(any(d["name"] == "/dev/vda" for d in r), "no /dev/vda in %r" % r)
    return "%d disks" % len(r)


def v_diskstats(r):
    vda = [d for d in r if d["name"] == "vda"]
    expect(vda and isinstance(vda[0]["stats"], dict), "no vda stats")
    return "vda read-ios %s" % vda[0]["stats"].get("read-ios")


def v_cpustats(r):
    expect(len(r) == 2 and all(c["type"] == "linux" for c in r), "%d cpus" % len(r))


def v_vcpus(r):
    expect(sorted(c["logical-id"] for c in r) == [0, 1], "vcpus %r" % r)
    for c in r:
        expect(isinstance(c["online"], bool), c)
        expect(c["online"] or c.get("can-offline"), "offline and can't be onlined: %r" % c)


def v_memblocks(r):
    for b in r:
        expect(_uint(b["phys-index"]) and isinstance(b["online"], bool), b)
    return "%d blocks" % len(r)


def v_memblockinfo(r):
    expect(_uint(r["size"]) and r["size"] > 0, r)


def v_interfaces(r):
    names = {i["name"]: i for i in r}
    expect("lo" in names and "eth0" in names, "interfaces %s" % sorted(names))
    for i in r:
        # qemu-ga-client's ifconfig reads it without a check
        expect("hardware-address" in i, "%s has no hardware-address" % i["name"])
        for a in i.get("ip-addresses", []):
            expect(a["ip-address-type"] in ("ipv4", "ipv6") and _uint(a["prefix"]), a)
    eth0 = [(a["ip-address"], a["prefix"]) for a in names["eth0"].get("ip-addresses", [])]
    expect(("10.0.2.15", 24) in eth0, "eth0 addresses %r" % eth0)
    return "eth0 %s" % names["eth0"]["hardware-address"]


def v_routes(r):
    expect(any(x.get("gateway") == "10.0.2.2" and x.get("iface") == "eth0" for x in r),
           "no default route via 10.0.2.2 in %r" % r)


def v_load(r):
    # qemu prints doubles with %.17g, so an idle guest's 0.0 arrives as the JSON number 0.
    expect(all(isinstance(r[k], (int, float)) and r[k] >= 0
               for k in ("load1m", "load5m", "load15m")), r)


def v_fsfreeze_status(r):
    expect(r == "thawed", r)


def v_sshkeys(r):
    expect(isinstance(r["keys"], list), r)


READ_ONLY = [
    ("guest-info", None, v_info),
    ("guest-ping", None, v_ping),
    ("guest-get-time", None, v_time),
    ("guest-get-timezone", None, v_timezone),
    ("guest-get-host-name", None, v_hostname),
    ("guest-get-osinfo", None, v_osinfo),
    ("guest-get-users", None, v_users),
    ("guest-get-fsinfo", None, v_fsinfo),
    ("guest-get-disks", None, v_disks),
    ("guest-get-diskstats", None, v_diskstats),
    ("guest-get-cpustats", None, v_cpustats),
    ("guest-get-vcpus", None, v_vcpus),
    ("guest-get-memory-blocks", None, v_memblocks),
    ("guest-get-memory-block-info", None, v_memblockinfo),
    ("guest-network-get-interfaces", None, v_interfaces),
    ("guest-network-get-route", None, v_routes),
    ("guest-get-load", None, v_load),
    ("guest-fsfreeze-status", None, v_fsfreeze_status),
    ("guest-ssh-get-authorized-keys", {"username": "root"}, v_sshkeys),
]
# Commands the other checks exercise (so guest-info's list is fully covered).
EXERCISED = {"guest-sync", "guest-sync-delimited", "guest-exec", "guest-exec-status",
             "guest-file-open", "guest-file-close", "guest-file-read", "guest-file-write",
             "guest-file-seek", "guest-file-flush", "guest-fsfreeze-freeze",
             "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw", "guest-fstrim",
             "guest-set-vcpus", "guest-set-time", "guest-set-user-password",
             "guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys",
             "guest-shutdown"}
KERNEL_RELEASE = [""]


def read_only_replies(vm, client_types, commands=None):
    """{client name: {command: reply or exception}}, one client at a time.

    QEMU's chardev serves one connection at a time, as for real hosts (libvirt
    or Proxmox own a VM's channel alone), so clients never overlap here.
    """
    commands = READ_ONLY if commands is None else commands
    replies = {}
    for make in client_types:
        try:
            client = make(vm.sock)
        except Exception as e:  # cannot even connect
            replies[make.name] = {name: e for name, _a, _v in commands}
            continue
        got = replies[make.name] = {}
        for name, args, _validate in commands:
            try:
                got[name] = client.cmd(name, args)
            except Exception as e:
                got[name] = e
        if hasattr(client, "close"):
            client.close()
    return replies


def check_read_only(replies, name, validate):
    """One read-only command's replies through every client, each validated."""
    details = []
    for client, got in replies.items():
        reply = got[name]
        if isinstance(reply, Exception):
            raise AssertionError("%s: %s" % (client, reply))
        try:
            details.append(validate(ret(reply)) or "")
        except AssertionError as e:
            raise AssertionError("%s: %s" % (client, e))
    return "%s: %s" % ("+".join(replies), details[0])


# ----------------------------------------------------------------------------
# Checks that change the guest
# ----------------------------------------------------------------------------

def check_files(c):
    path = "/mnt/data/qga-file-test.bin"
    data = bytes(range(256)) * 40
    h = ret(c.cmd("guest-file-open", {"path": path, "mode": "w+"}))
    try:
        w = ret(c.cmd("guest-file-write", {"handle": h, "buf-b64": base64.b64encode(data).decode()}))
        expect(w["count"] == len(data), "wrote %r" % w)
        ret(c.cmd("guest-file-flush", {"handle": h}))
        s = ret(c.cmd("guest-file-seek", {"handle": h, "offset": 0, "whence": "set"}))
        expect(s["position"] == 0, "seek set: %r" % s)
        r = ret(c.cmd("guest-file-read", {"handle": h, "count": 4096}))
        expect(base64.b64decode(r["buf-b64"]) == data[:4096] and r["count"] == 4096, "read 4096")
        s = ret(c.cmd("guest-file-seek", {"handle": h, "offset": 100, "whence": "cur"}))
        expect(s["position"] == 4196, "seek cur: %r" % s)
        s = ret(c.cmd("guest-file-seek", {"handle": h, "offset": -16, "whence": 2}))
        expect(s["position"] == len(data) - 16, "seek end (whence 2): %r" % s)
        r = ret(c.cmd("guest-file-read", {"handle": h, "count": 100}))
        expect(base64.b64decode(r["buf-b64"]) == data[-16:] and r["eof"], "read at end %r" % r)
    finally:
        ret(c.cmd("guest-file-close", {"handle": h}))
    out = guest_sh(c, "sha256sum " + path)
    expect(out.split()[0] == hashlib.sha256(data).hexdigest(), "file content differs in the guest")
    return "10240 bytes written, seeked, read back; sha256 matches in the guest"


def check_exec(c):
    st = guest_run(c, ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    expect(st["exitcode"] == 3 and st["out-data"] == "out\n" and st["err-data"] == "err\n",
           "status %r" % st)
    st = guest_run(c, ["/bin/cat"], input_data=b"hello from the host\n")
    expect(st["exitcode"] == 0 and st["out-data"] == "hello from the host\n", "cat: %r" % st)
    return "exit code, stdout, stderr and input-data"


def check_freeze(c):
    """Proxmox's backup flow: ping, status, freeze, (work), thaw; with the hook."""
    ret(c.cmd("guest-ping"))
    expect(ret(c.cmd("guest-fsfreeze-status")) == "thawed", "not thawed at start")
    n = ret(c.cmd("guest-fsfreeze-freeze", timeout=60))
    try:
        expect(isinstance(n, int) and n >= 1, "froze %r filesystems" % n)
        expect(ret(c.cmd("guest-fsfreeze-status")) == "frozen", "status not frozen")
        ret(c.cmd("guest-ping"))  # allowed while frozen
        r = c.cmd("guest-exec", {"path": "/bin/true"})
        expect("error" in r, "guest-exec allowed while frozen: %r" % r)
    finally:
        t = ret(c.cmd("guest-fsfreeze-thaw", timeout=60))
    expect(t == n, "thawed %r of %r" % (t, n))
    expect(ret(c.cmd("guest-fsfreeze-status")) == "thawed", "status not thawed")
    n2 = ret(c.cmd("guest-fsfreeze-freeze-list", {"mountpoints": ["/mnt/data"]}, timeout=60))
    ret(c.cmd("guest-fsfreeze-thaw", timeout=60))
    expect(n2 == 1, "freeze-list froze %r" % n2)
    record = guest_sh(c, "cat /run/fsfreeze-hook.record").split("\n")
    calls = [line.split()[0] for line in record if line]
    expect(calls == ["freeze", "thaw", "freeze", "thaw"], "hook calls %r" % record)
    return "froze %d fs, ping ok and exec refused while frozen; hook ran freeze/thaw" % n


def check_fstrim(c):
    r = ret(c.cmd("guest-fstrim", {"minimum": 0}, timeout=120))
    data = [p for p in r["paths"] if p["path"] == "/mnt/data"]
    expect(data and "error" not in data[0], "/mnt/data: %r" % r)
    return "/mnt/data trimmed %s" % data[0].get("trimmed")


def check_vcpus(c):
    def online():
        return {v["logical-id"]: v["online"] for v in ret(c.cmd("guest-get-vcpus"))}
    n = ret(c.cmd("guest-set-vcpus", {"vcpus": [{"logical-id": 1, "online": False}]}))
    expect(n == 1, "set-vcpus offline returned %r" % n)
    expect(online() == {0: True, 1: False}, "cpu1 still online")
    expect(guest_sh(c, "cat /sys/devices/system/cpu/cpu1/online").strip() == "0", "sysfs says online")
    n = ret(c.cmd("guest-set-vcpus", {"vcpus": [{"logical-id": 1, "online": True}]}))
    expect(n == 1 and online() == {0: True, 1: True}, "cpu1 not back online")
    return "cpu1 offline and online again"


def check_set_time(c):
    day = 86400 * 10 ** 9
    now = lambda: int(time.time() * 10 ** 9)  # noqa: E731
    t0 = ret(c.cmd("guest-get-time"))
    ret(c.cmd("guest-set-time", {"time": t0 + day}))  # the system clock and the RTC
    t1 = ret(c.cmd("guest-get-time"))
    expect(abs(t1 - (t0 + day)) < 60 * 10 ** 9, "clock at %+.0f s, wanted +86400" % ((t1 - t0) / 1e9))
    ret(c.cmd("guest-set-time", {"time": now()}))
    expect(abs(ret(c.cmd("guest-get-time")) - now()) < 60 * 10 ** 9, "clock not back at host time")
    # No argument: the system clock is set from the RTC; move the clock alone first.
    guest_sh(c, "date -s @%d" % (time.time() - 86400))
    ret(c.cmd("guest-set-time", timeout=30))
    t2 = ret(c.cmd("guest-get-time"))
    expect(abs(t2 / 1e9 - time.time()) < 60, "clock %.0f s off after RTC sync" % (t2 / 1e9 - time.time()))
    return "set +1 day, back to host time, then from the RTC"


def check_password(c):
    pw = "s3cret pass:word"
    ret(c.cmd("guest-set-user-password", {"username": "root", "crypted": False,
                                          "password": base64.b64encode(pw.encode()).decode()}))
    stored = guest_sh(c, "grep '^root:' /etc/shadow").split(":")[1]
    salt = stored.split("$")[2]
    again = guest_run(c, ["/bin/busybox", "mkpasswd", "-m", "sha512", "-S", salt, pw])["out-data"].strip()
    expect(stored == again, "stored hash %r is not the hash of the password" % stored)
    crypted = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."
    ret(c.cmd("guest-set-user-password", {"username": "root", "crypted": True,
                                          "password": base64.b64encode(crypted.encode()).decode()}))
    expect(guest_sh(c, "grep '^root:' /etc/shadow").split(":")[1] == crypted, "crypted not stored")
    return "plain and crypted passwords reach /etc/shadow"


SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqgaL6pR9tK7m4KZ1wLzYqH0pW2bHqSx5hM0QnE1qY9 vm-test@host"


def check_ssh_keys(c):
    ret(c.cmd("guest-ssh-add-authorized-keys", {"username": "root", "keys": [SSH_KEY]}))
    keys = ret(c.cmd("guest-ssh-get-authorized-keys", {"username": "root"}))["keys"]
    expect(SSH_KEY in keys, "key not listed: %r" % keys)
    mode = guest_sh(c, "stat -c %a /root/.ssh/authorized_keys").strip()
    expect(mode == "600", "authorized_keys mode %s" % mode)
    ret(c.cmd("guest-ssh-remove-authorized-keys", {"username": "root", "keys": [SSH_KEY]}))
    keys = ret(c.cmd("guest-ssh-get-authorized-keys", {"username": "root"}))["keys"]
    expect(SSH_KEY not in keys, "key still listed")
    return "added (mode 600), listed, removed"


def check_isa_serial(vm):
    p = ProxmoxClient(vm.isa_sock)
    info = ret(p.cmd("guest-info"))
    ret(p.cmd("guest-ping"))
    v_ping(ret(BuiltinClient(vm.isa_sock).cmd("guest-ping")))
    lv = LibvirtClient(vm.isa_sock)
    try:
        v_ping(ret(lv.cmd("guest-ping")))
    finally:
        lv.close()
    return "second agent on ttyS1: %d commands" % len(info["supported_commands"])


def check_qmp_client(vm):
    """The flows of QEMU's qemu-ga-client: sync, info, cat, fsfreeze status, ifconfig."""
    q = QmpClient(vm.sock)
    try:
        q.sync()
        ret(q.cmd("guest-info"))
        # cat: open, read 1024 bytes at a time until eof, close
        h = ret(q.cmd("guest-file-open", {"path": "/etc/os-release"}))
        text = b""
        while True:
            r = ret(q.cmd("guest-file-read", {"handle": h, "count": 1024}))
            text += base64.b64decode(r["buf-b64"])
            if r["eof"]:
                break
        ret(q.cmd("guest-file-close", {"handle": h}))
        expect(text.decode() == image.OS_RELEASE, "cat returned %r" % text[:80])
        ret(q.cmd("guest-fsfreeze-status"))
        for nif in ret(q.cmd("guest-network-get-interfaces")):
            nif["hardware-address"]  # qemu-ga-client's ifconfig reads it unchecked
    finally:
        q.close()
    return "sync, info, cat, fsfreeze status, ifconfig"


def check_idle_cpu(vm, pid):
    """Host connects and leaves many times, then stays away; the agent must idle.

    A guest-side monitor (started with guest-exec, so no host is attached while
    it measures) reads the agent's utime+stime before and after the idle window.
    """
    p = ProxmoxClient(vm.sock)
    worst = 0.0
    for _ in range(RECONNECTS):
        t = time.monotonic()
        ret(p.cmd("guest-ping"))
        worst = max(worst, time.monotonic() - t)
    script = ("s() { cut -d' ' -f14,15 /proc/%d/stat; }; sleep 1; a=$(s); sleep %d; b=$(s); "
              "echo $a $b >/run/idle.cpu" % (pid, IDLE_SECONDS))
    lv = LibvirtClient(vm.sock)
    ret(lv.cmd("guest-exec", {"path": "/bin/sh", "arg": ["-c", script]}))
    lv.close()  # the host is gone for the whole window
    time.sleep(IDLE_SECONDS + 2)
    t = time.monotonic()
    ret(p.cmd("guest-ping"))
    back = time.monotonic() - t
    lv = LibvirtClient(vm.sock)
    try:
        u0, s0, u1, s1 = map(int, guest_sh(lv, "cat /run/idle.cpu").split())
    finally:
        lv.close()
    pct = 100.0 * (u1 + s1 - u0 - s0) / USER_HZ / IDLE_SECONDS
    expect(pct <= IDLE_CPU_LIMIT, "agent used %.1f%% CPU with no host attached" % pct)
    expect(back < 1.0, "first reply after the host came back took %.2f s" % back)
    return ("%d reconnects (slowest %.2f s); %.1f%% CPU over %d s without host; "
            "answered %.2f s after return" % (RECONNECTS, worst, pct, IDLE_SECONDS, back))


def check_self_test(c):
    """qga_mini.py --self-test in the guest: its table goes to the log, it must exit 0."""
    st = guest_run(c, ["/usr/lib/qga-mini/qga-mini", "--self-test"], timeout=60)
    print("".join("        | %s\n" % line for line in st["out-data"].splitlines()), end="", flush=True)
    expect(st.get("exitcode") == 0, "exit status %s: %s" % (st.get("exitcode"), st["err-data"][-300:]))
    expect("CRASHED" not in st["out-data"], "a command crashed")
    return st["out-data"].strip().splitlines()[-1]


def check_builtin_client(vm):
    """qga_mini.py's own client from the host: a command with arguments, --decode and an
    error reply (exit status 1); the read-only commands and guest-shutdown use it too."""
    argv = ["/usr/bin/python3", AGENT, "client", vm.sock]
    run = lambda *a: subprocess.run(argv + list(a), stdout=subprocess.PIPE,  # noqa: E731
                                    stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    p = run("guest-exec", json.dumps({"path": "/bin/echo", "arg": ["from", "the host"],
                                      "capture-output": True}))
    expect(p.returncode == 0, "guest-exec: exit %d: %s" % (p.returncode, p.stderr))
    pid = json.loads(p.stdout)["pid"]
    deadline = time.monotonic() + 30
    while True:
        p = run("--decode", "guest-exec-status", json.dumps({"pid": pid}))
        status = json.loads(p.stdout)
        if status["exited"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    expect(status.get("out-data") == "from the host\n", "decoded output %r" % status)
    p = run("guest-ssh-get-authorized-keys", '{"username": "no-such-user"}')
    expect(p.returncode == 1 and "no-such-user" in p.stderr, "error reply: exit %d, %r" % (p.returncode, p.stderr))
    return "exec + --decoded exec-status, error reply is exit 1"


def check_shutdown(vm, client):
    r = client.cmd("guest-shutdown", {"mode": "powerdown"}, timeout=10, allow_close=True)
    if r is not None:
        ret(r)  # an error reply fails the check; a reply without error is wrong too
        raise AssertionError("guest-shutdown replied %r (success sends nothing)" % r)
    expect(vm.wait_exit(60), "VM still running 60 s after guest-shutdown")
    return "VM powered off %.1f s after the command" % (time.monotonic() - vm.t0 - UPTIME[0])


UPTIME = [0.0]


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def make_disk(path):
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "qga-data", path], check=True)


def run_mini(results, args, work, initrd, vmlinuz):
    disk = os.path.join(work, "data.img")
    make_disk(disk)
    # QGA_VM_AGENT=qemu-ga runs the same checks against qemu-ga: a check of the checks.
    vm = VM(work, vmlinuz, initrd, disk, "tcg", agent=os.environ.get("QGA_VM_AGENT", "mini"), tag="main")
    pong = boot(vm, args.cache, results)
    results.add("boot", "%s boot-to-first-pong" % ("qga-mini" if vm.agent == "mini" else vm.agent),
                "pass" if pong is not None else "FAIL",
                "%.2f s (%s)" % (pong, vm.accel) if pong is not None else
                "no pong in time (%s); console: %s" % (vm.accel, vm.console_text()[-300:]))
    if pong is None:
        vm.kill()
        return vm, None
    deadline = time.monotonic() + 60
    while "qga-vm: init done" not in vm.console_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    client_types = [ProxmoxClient, LibvirtClient, BuiltinClient]
    try:
        import qemu.qmp  # noqa: F401
        client_types.append(QmpClient)
    except ImportError:
        results.add("clients", "qemu.qmp", "skip", "the qemu.qmp package is not installed")
    replies = read_only_replies(vm, client_types)
    for name, _args, validate in READ_ONLY:
        results.check("read-only", name, check_read_only, replies, name, validate)
    try:
        listed = {c["name"] for c in ret(replies["proxmox"]["guest-info"])["supported_commands"]}
        unknown = listed - {n for n, _a, _v in READ_ONLY} - EXERCISED
        if unknown:
            print("vm-test: listed by guest-info but not checked here: " + ", ".join(sorted(unknown)))
    except Exception:
        pass
    if QmpClient in client_types:
        results.check("clients", "qemu-ga-client flows (qemu.qmp)", check_qmp_client, vm)
    results.check("clients", "qga_mini.py client", check_builtin_client, vm)
    results.check("channels", "isa-serial second instance", check_isa_serial, vm)
    proxmox = ProxmoxClient(vm.sock)
    results.check("freeze", "freeze/thaw with hook (proxmox)", check_freeze, proxmox)
    # The rest through one libvirt-style connection, as libvirt keeps it open.
    lv = LibvirtClient(vm.sock)
    results.check("self-test", "--self-test in the guest", check_self_test, lv)
    results.check("files", "write/seek/read/close", check_files, lv)
    results.check("exec", "guest-exec capture + input", check_exec, lv)
    results.check("freeze", "fstrim", check_fstrim, lv)
    results.check("vcpus", "set-vcpus offline/online", check_vcpus, lv)
    results.check("time", "set-time", check_set_time, lv)
    results.check("users", "set-user-password", check_password, lv)
    results.check("users", "ssh authorized keys", check_ssh_keys, lv)
    try:
        pid = int(guest_sh(lv, "cat /run/qga-mini.pid"))
    except Skip as e:
        pid = None
        results.add("idle", "reconnects, then ~0% CPU alone", "skip", e)
    except Exception as e:
        pid = None
        results.add("idle", "agent pid", "FAIL", e)
    lv.close()
    if pid:
        results.check("idle", "reconnects, then ~0% CPU alone", check_idle_cpu, vm, pid)
    UPTIME[0] = time.monotonic() - vm.t0
    # qga_mini.py client: the command sends no reply, the guest-sync behind it tells.
    results.check("power", "guest-shutdown powers off", check_shutdown, vm, BuiltinClient(vm.sock))
    vm.kill()
    return vm, pong


def pong_times(work, vmlinuz, initrd, accel, agents):
    """{agent: [boot-to-first-pong or None, ...]}: one boot of the image per entry of
    ``agents`` ("mini" or "qemu-ga"), in that order.  Alternating the agents lets a change
    in the host's load hit both alike; one boot each swings by a second or more."""
    disk = os.path.join(work, "data-boot.img")
    make_disk(disk)
    times = {}
    for agent in agents:
        vm = VM(work, vmlinuz, initrd, disk, accel, agent=agent, tag="boot")
        vm.start()
        try:
            times.setdefault(agent, []).append(first_pong(vm, BOOT_SECONDS))
        finally:
            vm.kill()
    return times


def describe_times(times):
    """"median 3.10 s (2.95 3.10 3.42)" of boot times (None: no pong)."""
    ok = sorted(t for t in times if t is not None)
    median = "median %.2f s" % statistics.median(ok) if ok else "no pong"
    return "%s (%s)" % (median, " ".join("%.2f" % t if t else "-" for t in times))


def compare_boot_times(results, work, vmlinuz, initrd, accel, first):
    """qga-mini against qemu-ga, the median of BOOT_SAMPLES boots each (the main boot
    of qga-mini, ``first``, is one of them)."""
    times = pong_times(work, vmlinuz, initrd, accel,
                       ["qemu-ga", "mini"] * (BOOT_SAMPLES - 1) + ["qemu-ga"])
    mini, ref = [first] + times["mini"], times["qemu-ga"]
    results.add("boot", "qemu-ga boot-to-first-pong", "pass" if None not in ref else "FAIL",
                "%s, %s" % (describe_times(ref), accel))
    if None in mini + ref:
        results.add("boot", "qga-mini within %g s of qemu-ga" % BOOT_MARGIN, "FAIL",
                    "a boot without pong: qga-mini %s, qemu-ga %s" % (mini, ref))
        return
    # A measurement, not a pass/fail check: boot times swing with the host's load, and the
    # project keeps speed out of test verdicts.  The row says whether the target was met.
    diff = statistics.median(mini) - statistics.median(ref)
    results.add("boot", "qga-mini within %g s of qemu-ga" % BOOT_MARGIN, "info",
                "%+.2f s (target %s): qga-mini %s, qemu-ga %s"
                % (diff, "met" if diff <= BOOT_MARGIN else "missed", describe_times(mini),
                   describe_times(ref)))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache", required=True, help="cache directory (kernel, verdicts)")
    ap.add_argument("--kernel", required=True, help="a Debian kernel package unpacked with dpkg -x")
    args = ap.parse_args()
    t_start = time.monotonic()
    results = Results()
    work = tempfile.mkdtemp(prefix="qga-vm-")
    vmlinuz, _moddir, release = image.find_kernel(args.kernel)
    KERNEL_RELEASE[0] = release
    have_qemu_ga = os.access(QEMU_GA, os.X_OK)
    tree = os.path.join(work, "tree")
    initrd = os.path.join(work, "initrd.cpio")
    image.build_tree(tree, args.kernel, AGENT, extra_exec=[QEMU_GA] if have_qemu_ga else [])
    image.write_cpio(tree, initrd)
    shutil.rmtree(tree)
    print("vm-test: image %s (%.1f MiB, kernel %s) built in %.1f s" % (
        initrd, os.path.getsize(initrd) / 2 ** 20, release, time.monotonic() - t_start), flush=True)

    vm, pong = run_mini(results, args, work, initrd, vmlinuz)
    if not have_qemu_ga:
        results.add("boot", "qemu-ga boot-to-first-pong", "skip", "qemu-ga not installed")
    elif pong is not None:
        compare_boot_times(results, work, vmlinuz, initrd, vm.accel, pong)

    if os.environ.get("QGA_VM_NO_LIBVIRT"):
        results.add("libvirt", "virsh", "skip", "QGA_VM_NO_LIBVIRT is set")
    else:
        import virsh
        virsh.run(results, work, vmlinuz, initrd, make_disk)

    return finish(results, "vm-test", work, t_start)


def finish(results, name, work, t_start):
    """The table, the time, the work directory removed (kept on failure or QGA_VM_KEEP)
    and the closing line "NAME: N passed, M failed[, K skipped]"; the exit status."""
    results.print_table()
    passed, failed, skipped = (results.count(s) for s in ("pass", "FAIL", "skip"))
    print("%s: image, boots and checks took %.0f s" % (name, time.monotonic() - t_start))
    if failed or os.environ.get("QGA_VM_KEEP"):
        print("%s: logs kept in %s" % (name, work))
    else:
        shutil.rmtree(work, ignore_errors=True)
    print("%s: %d passed, %d failed%s" % (name, passed, failed, ", %d skipped" % skipped if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
