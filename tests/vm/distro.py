"""Full-distribution VM test: qga-mini's .deb in Debian 12 and 13 systemd guests.

Run through tests/vm/run-distro.sh (make vm-test-distro).  For each suite it
takes the cached Debian image of distro_image.py (systemd, udev, python3 and
Debian's qemu-guest-agent; built when missing) and boots it under QEMU, with
the virtio-serial agent port and a second virtio disk, from two copy-on-write
overlays:

- "mini": booted with Debian's qemu-guest-agent, which the test uses to copy
  the .deb in and run ``apt-get install -y ./qga-mini_*.deb`` in the running
  guest, as a user would (through systemd-run, so that stopping
  qemu-guest-agent does not stop apt).  Then ``guest-shutdown`` reboots it, and
  the checks run against the qga-mini that udev and systemd started at boot;
  libvirt's virsh drives it too; at the end the package is purged.
- "ref": the same image with Debian's qemu-guest-agent, for the boot-time
  comparison only.

Boot-to-first-pong (QEMU's start to the first guest-ping reply) and
unit-start-to-first-pong (systemd's ExecMainStartTimestamp of
qemu-guest-agent.service to that reply, through the guest's clocks) of both are
reported as measurements (medians of several boots, alternating), never as a
verdict.  Prints a table and "vm-test-distro: N passed, M failed[, K skipped]".
"""
import argparse
import base64
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import distro_image  # noqa: E402
import virsh  # noqa: E402
import vmtest  # noqa: E402
from clients import BuiltinClient, LibvirtClient, ProxmoxClient, QmpClient  # noqa: E402
from vmtest import Results, expect, guest_sh, ret  # noqa: E402

SUITES = {"bookworm": "12", "trixie": "13"}   # suite: VERSION_ID
BOOT_SECONDS = 300         # a TCG boot of a full Debian on a loaded 2-core machine
INSTALL_SECONDS = 300      # apt-get install of the .deb, to the new agent's answer
SHUTDOWN_SECONDS = 120     # guest-shutdown to QEMU's exit
RESTART_SECONDS = 10       # the killed agent must answer again within this
RECONNECTS = 10            # host connect/command/close cycles per client style
BOOTS = int(os.environ.get("QGA_DISTRO_BOOTS", "3"))   # per agent, for the medians
START_MARGIN = 1.0         # target: qga-mini's unit start to first pong <= qemu-ga's + this
UNIT = "qemu-guest-agent.service"
TOP = vmtest.TOP


def log(msg):
    print("vm-test-distro: " + msg, flush=True)


# ----------------------------------------------------------------------------
# The virtual machine
# ----------------------------------------------------------------------------

class DistroVM(vmtest.VM):
    """vmtest's VM with a Debian root disk (a qcow2 overlay) and a data disk."""

    def __init__(self, work, image, overlay, data, accel, tag):
        super().__init__(work, image.kernel, image.initrd, data, accel, agent="-", tag=tag)
        self.overlay = overlay
        self.wall0 = None

    memory = 1024

    def argv(self):
        return self.qemu_argv(distro_image.KERNEL_ARGS, [(self.overlay, "qcow2"), (self.disk, "raw")])

    def start(self):
        super().start()
        self.wall0 = time.time() - (time.monotonic() - self.t0)

    def wall(self, mono):
        """Host wall-clock time of a time.monotonic() value."""
        return self.wall0 + (mono - self.t0)


def overlay(path, image):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image.root, path],
                   check=True)


def power_off(vm, client=None, fallback=False):
    """guest-shutdown (powerdown) and wait for QEMU to exit; kill it after the bound.

    fallback: if the agent's guest-shutdown fails (bookworm's qemu-ga runs
    ``shutdown -h -P +0``, which needs logind and fails without it), power off
    with ``systemctl poweroff`` through guest-exec, so the next boot starts clean.
    """
    t = time.monotonic()
    try:
        r = (client or ProxmoxClient(vm.sock)).cmd("guest-shutdown", {"mode": "powerdown"},
                                                    timeout=10, allow_close=True)
        if r is not None and fallback and "error" in r:
            # the error may come from a shutdown already under way: the channel may close
            r = ProxmoxClient(vm.sock).cmd("guest-exec", {"path": "systemctl", "arg": ["poweroff"]},
                                           timeout=10, allow_close=True)
            if r is not None:
                ret(r)
        elif r is not None:
            ret(r)
            raise AssertionError("guest-shutdown replied %r (success sends nothing)" % r)
        if vm.wait_exit(SHUTDOWN_SECONDS):
            return "QEMU exited %.0f s after the command" % (time.monotonic() - t)
        raise AssertionError("VM still running %d s after guest-shutdown" % SHUTDOWN_SECONDS)
    finally:
        vm.kill()


def wait_answer(vm, timeout, probe):
    """Call probe(LibvirtClient) on fresh connections until it returns without an
    exception (agents stop, restart, reboot meanwhile); its result, or the last error."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline and vm.alive():
        if vmtest.first_pong(vm, max(1, deadline - time.monotonic()), since=time.monotonic()) is None:
            break
        try:
            c = LibvirtClient(vm.sock)
            try:
                return probe(c)
            finally:
                c.close()
        except Exception as e:
            last = e
            time.sleep(1)
    raise AssertionError("no answer in %d s: %s" % (timeout, last))


# ----------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------

def unit_start_to_pong(vm, pong):
    """Seconds from the unit's ExecMainStartTimestamp to the first pong.

    The guest prints its monotonic and wall clocks at one instant (so the unit's
    monotonic start becomes a guest wall time) and guest-get-time gives the
    guest's clock against the host's; the pong's time is the host's.
    """
    c = LibvirtClient(vm.sock)
    try:
        c.sync()
        t1 = time.time()
        guest_now = ret(c.cmd("guest-get-time")) / 1e9
        t2 = time.time()
        offset = guest_now - (t1 + t2) / 2          # guest clock minus host clock
        out = guest_sh(c, "systemctl show -p ExecMainStartTimestampMonotonic --value %s; "
                          "python3 -c 'import time; print(time.clock_gettime(time.CLOCK_MONOTONIC),"
                          " time.time())'" % UNIT).split()
    finally:
        c.close()
    start_mono, mono, wall = int(out[0]) / 1e6, float(out[1]), float(out[2])
    start_host = wall - (mono - start_mono) - offset
    return vm.wall(vm.t0 + pong) - start_host


def measure_boot(vm):
    """(boot-to-first-pong, unit-start-to-first-pong) of a VM just started, or Nones."""
    pong = vmtest.first_pong(vm, BOOT_SECONDS)
    if pong is None:
        return None, None
    try:
        return pong, unit_start_to_pong(vm, pong)
    except Exception as e:
        log("unit start time not read: %s" % e)
        return pong, None


START_COST = """import statistics, subprocess, time
def cost(argv):
    runs = []
    for _ in range(3):
        t = time.monotonic()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        runs.append(time.monotonic() - t)
    return statistics.median(runs)
print(cost(["python3", "-S", "-c", "pass"]), cost(["/usr/lib/qga-mini/qga-mini", "--version"]))
"""


def start_cost(c):
    """What starting the agent costs in the guest once the boot has settled: a bare
    python3 -S, and the launcher up to --version (the agent's imports and module body)."""
    bare, launcher = map(float, guest_sh(c, "python3 -c '%s'" % START_COST).split())
    return "python3 -S -c pass %.2f s; launcher --version %.2f s (+%.2f s: imports, module body)" % (
        bare, launcher, launcher - bare)


def report_times(results, group, mini, ref):
    """The comparison rows: information, not a verdict (boot times swing with load)."""
    for i, what in enumerate(("boot-to-first-pong", "unit-start-to-first-pong")):
        m = [t[i] for t in mini]
        r = [t[i] for t in ref]
        okm, okr = [t for t in m if t is not None], [t for t in r if t is not None]
        if not okm or not okr:
            results.add(group, what, "FAIL", "no pong: qga-mini %s, qemu-ga %s" % (m, r))
            continue
        diff = statistics.median(okm) - statistics.median(okr)
        target = ""
        if i == 1:
            target = " (target <= +%g s: %s)" % (START_MARGIN, "met" if diff <= START_MARGIN else "missed")
        detail = "%+.2f s%s: qga-mini %s, qemu-ga %s" % (
            diff, target, vmtest.describe_times(m), vmtest.describe_times(r))
        results.add(group, what, "info", detail)
        log("%s %s: %s" % (group, what, detail))   # in full: the table cuts details short


# ----------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------

def systemd_run(c, unit, script):
    """Run script in the guest as its own transient unit (outliving the agent that starts it)."""
    st = vmtest.guest_run(c, ["systemd-run", "-q", "--unit=" + unit,
                              "--setenv=DEBIAN_FRONTEND=noninteractive", "/bin/sh", "-c", script])
    expect(st.get("exitcode") == 0, "systemd-run %s: %s" % (unit, st["err-data"]))


def check_install(vm, deb):
    """apt-get install ./qga-mini_*.deb in the running guest, over qemu-guest-agent."""
    name = os.path.basename(deb)
    with open(deb, "rb") as f:
        data = f.read()
    c = LibvirtClient(vm.sock)
    try:
        h = ret(c.cmd("guest-file-open", {"path": "/root/" + name, "mode": "w"}))
        ret(c.cmd("guest-file-write", {"handle": h, "buf-b64": base64.b64encode(data).decode()}))
        ret(c.cmd("guest-file-close", {"handle": h}))
        # systemd-run: apt stops qemu-guest-agent, and with it everything it started.
        systemd_run(c, "qga-mini-install",
                    "apt-get install -y /root/%s >/root/install.log 2>&1; rc=$?; echo $rc >/root/install.rc; "
                    "tail -n 3 /root/install.log | sed 's/^/qga-install: /' >/dev/ttyS0; "
                    "echo qga-install: rc=$rc >/dev/ttyS0" % name)
    finally:
        c.close()
    t = time.monotonic()
    try:
        rc = wait_answer(vm, INSTALL_SECONDS, lambda c: guest_sh(c, "cat /root/install.rc").strip())
    except AssertionError as e:
        said = re.findall(r"qga-install: (.*)", vm.console_text())
        raise AssertionError("%s; the guest's console says: %s" % (e, " | ".join(said) or "nothing"))
    took = time.monotonic() - t

    def state(c):
        return guest_sh(c, "for p in qga-mini qemu-guest-agent; do "
                           "dpkg-query -W -f='${db:Status-Abbrev}' $p 2>&1 | tr -d ' '; printf ' '; done; echo; "
                           "readlink -f /usr/sbin/qemu-ga; "
                           "readlink /proc/$(systemctl show -p MainPID --value %s)/exe; "
                           "systemctl cat %s | grep -c qga-mini; ls /usr/lib/qga-mini/__pycache__; "
                           "tail -n 5 /root/install.log" % (UNIT, UNIT))
    out = wait_answer(vm, 60, state)
    expect(rc == "0", "apt-get exited %s: %s" % (rc, out[-400:]))
    lines = out.splitlines()
    expect(lines[0].split() == ["ii", "rc"], "dpkg states (qga-mini, qemu-guest-agent) %r" % lines[0])
    expect(lines[1] == "/usr/lib/qga-mini/qga-mini", "/usr/sbin/qemu-ga -> %r" % lines[1])
    expect("python3" in lines[2], "the unit's main process is %r" % lines[2])
    expect(lines[3] != "0", "the qemu-guest-agent.service systemd loads is not qga-mini's")
    expect(re.match(r"qga_mini\.cpython-\d+\.pyc$", lines[4]), "bytecode %r" % lines[4])
    return "qemu-guest-agent removed, qga-mini running (%s) %.0f s after apt started" % (
        os.path.basename(lines[2]), took)


def add_hook_script(vm):
    """A script in fsfreeze-hook.d that records its calls (tests/vm/guest/hook-record)."""
    with open(os.path.join(HERE, "guest", "hook-record"), "rb") as f:
        data = f.read()
    c = LibvirtClient(vm.sock)
    try:
        path = "/etc/qemu/fsfreeze-hook.d/50-record"
        h = ret(c.cmd("guest-file-open", {"path": path, "mode": "w"}))
        ret(c.cmd("guest-file-write", {"handle": h, "buf-b64": base64.b64encode(data).decode()}))
        ret(c.cmd("guest-file-close", {"handle": h}))
        guest_sh(c, "chmod 755 " + path)
    finally:
        c.close()
    return path


def check_reboot(vm):
    """guest-shutdown reboot: the guest comes back (a new boot id) and the agent answers."""
    boot_id = wait_answer(vm, 30, lambda c: guest_sh(c, "cat /proc/sys/kernel/random/boot_id"))
    t = time.monotonic()
    r = ProxmoxClient(vm.sock).cmd("guest-shutdown", {"mode": "reboot"}, timeout=10, allow_close=True)
    if r is not None:
        ret(r)
        raise AssertionError("guest-shutdown replied %r (success sends nothing)" % r)

    def new_boot(c):
        now = guest_sh(c, "cat /proc/sys/kernel/random/boot_id")
        expect(now != boot_id, "still the old boot")
        return now
    wait_answer(vm, BOOT_SECONDS, new_boot)
    return "agent answered %.0f s after guest-shutdown reboot" % (time.monotonic() - t)


def systemd_show(c, *props):
    out = guest_sh(c, "systemctl show %s %s" % (UNIT, " ".join("-p " + p for p in props)))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def check_started_at_boot(c):
    """Started by udev (the port's device unit wants it) and systemd, nobody logged in."""
    show = systemd_show(c, "ActiveState", "NRestarts", "UnitFileState", "MainPID", "FragmentPath",
                        "WantedBy")
    expect(show["ActiveState"] == "active", "unit %r" % show)
    expect(show["NRestarts"] == "0", "restarted %s times" % show["NRestarts"])
    # the port's device unit, by its sysfs name (…-virtio\x2dports-vport1p1.device;
    # systemd 252 quotes it and doubles the backslash)
    expect(re.search(r"virtio\\+x2dports-vport\w+\.device", show["WantedBy"]),
           "not wanted by the port's device: WantedBy=%r" % show["WantedBy"])
    expect(show["UnitFileState"] == "static", "unit file state %r" % show["UnitFileState"])
    expect(ret(c.cmd("guest-get-users")) == [], "someone is logged in")
    exe = guest_sh(c, "readlink /proc/%s/exe" % show["MainPID"]).strip()
    expect("python3" in exe, "main process %r" % exe)
    return "%s, wanted by the port's device, %s, no user logged in" % (show["FragmentPath"], exe)


def v_osinfo(version):
    def validate(r):
        expect(r.get("id") == "debian" and r.get("version-id") == version, "osinfo %r" % r)
        expect(r.get("kernel-release") == IMAGE_RELEASE[0], "kernel-release %r" % r.get("kernel-release"))
        return r.get("pretty-name")
    return validate


def v_fsinfo(r):
    by_mount = {fs["mountpoint"]: fs for fs in r}
    for mount, dev in (("/", "vda"), ("/mnt/data", "vdb")):
        fs = by_mount.get(mount)
        expect(fs is not None, "%s missing in %s" % (mount, sorted(by_mount)))
        expect(fs["type"] == "ext4", "%s type %r" % (mount, fs["type"]))
        disk = fs["disk"][0] if fs["disk"] else {}
        expect(disk.get("bus-type") == "virtio" and disk.get("dev") == "/dev/" + dev,
               "%s disk %r" % (mount, fs["disk"]))
        vmtest._check_disk_address(disk)
    return "/ on vda, /mnt/data on vdb (ext4, virtio)"


def v_users(r):
    expect(r == [], "users %r (nobody is logged in)" % r)


def v_timezone(r):
    expect(r.get("offset") == 0, "timezone %r" % r)
    return vmtest.v_timezone(r)


def v_hostname(r):
    expect(r["host-name"] == distro_image.HOSTNAME, "host-name %r" % r)


def read_only(version):
    return [("guest-info", None, vmtest.v_info),
            ("guest-ping", None, vmtest.v_ping),
            ("guest-get-osinfo", None, v_osinfo(version)),
            ("guest-get-host-name", None, v_hostname),
            ("guest-get-fsinfo", None, v_fsinfo),
            ("guest-get-disks", None, vmtest.v_disks),
            ("guest-network-get-interfaces", None, vmtest.v_interfaces),
            ("guest-get-users", None, v_users),
            ("guest-get-timezone", None, v_timezone),
            ("guest-get-vcpus", None, vmtest.v_vcpus),
            ("guest-fsfreeze-status", None, vmtest.v_fsfreeze_status)]


IMAGE_RELEASE = [""]


def check_freeze(c):
    """vmtest's Proxmox backup flow with the hook, then the root file system alone."""
    detail = vmtest.check_freeze(c)
    n = int(re.search(r"froze (\d+)", detail).group(1))
    expect(n >= 2, "froze %d file systems, want the root and /mnt/data" % n)
    root = ret(c.cmd("guest-fsfreeze-freeze-list", {"mountpoints": ["/"]}, timeout=60))
    try:
        expect(root == 1, "freeze-list / froze %r" % root)
        expect(ret(c.cmd("guest-fsfreeze-status")) == "frozen", "/ not frozen")
    finally:
        ret(c.cmd("guest-fsfreeze-thaw", timeout=60))
    return detail + "; / alone frozen and thawed"


def check_reconnects(vm):
    """RECONNECTS Proxmox-style and libvirt-style connections, one command each."""
    p = ProxmoxClient(vm.sock)
    for _ in range(RECONNECTS):
        vmtest.v_ping(ret(p.cmd("guest-ping")))
    for i in range(RECONNECTS):
        c = LibvirtClient(vm.sock)
        try:
            expect(ret(c.cmd("guest-get-host-name"))["host-name"] == distro_image.HOSTNAME, "host name")
        finally:
            c.close()
    return "%d Proxmox-style and %d libvirt-style connections" % (RECONNECTS, RECONNECTS)


def check_restart(vm):
    """The agent killed inside the guest: systemd restarts it, it answers within 10 s."""
    c = LibvirtClient(vm.sock)
    try:
        pid = systemd_show(c, "MainPID")["MainPID"]
        # The reply goes out before the delayed kill.
        ret(c.cmd("guest-exec", {"path": "/bin/sh", "arg": ["-c", "sleep 1; kill -KILL " + pid]}))
    finally:
        c.close()
    killed = time.monotonic() + 1   # the kill is no sooner: the time below is an upper bound
    time.sleep(1)
    while True:
        # A pong may still come from the old agent (the guest's sleep runs late under
        # TCG): the answer counts once the unit's main process is a new one.
        pong = vmtest.first_pong(vm, RESTART_SECONDS, since=killed)
        expect(pong is not None, "no answer %d s after the kill" % RESTART_SECONDS)
        answered = vm.t0 + pong - killed
        c = LibvirtClient(vm.sock, timeout=RESTART_SECONDS)
        try:
            show = systemd_show(c, "MainPID", "NRestarts")
        except Exception:
            show = {"MainPID": pid}     # the old agent went away meanwhile
        finally:
            c.close()
        if show["MainPID"] != pid:
            break
        time.sleep(0.2)
    expect(show["NRestarts"] == "1", "unit after the kill: %r" % show)
    return "answered %.1f s after kill -KILL (NRestarts=1)" % answered


class DistroGuest(virsh.Guest):
    """The Debian guest as virsh.run boots it: the "mini" overlay and a data disk."""
    cmdline = distro_image.KERNEL_ARGS
    memory = 1024
    ready = distro_image.READY
    hostname = distro_image.HOSTNAME
    os_id = "debian"
    data_dev = "vdb"

    def __init__(self, suite_state):
        self.state = suite_state

    def disks(self, base, make_disk):
        data = os.path.join(base, "data.img")
        make_disk(data)
        root = os.path.join(base, "root.qcow2")
        os.rename(self.state["overlay"], root)   # nobody's qemu must reach it; moved back after
        self.state["overlay"] = root
        return [(root, "qcow2"), (data, "raw")]


def check_purge(vm):
    """apt-get purge qga-mini in the guest; what is left is printed on the console."""
    script = (
        "apt-get purge -y qga-mini >/root/purge.log 2>&1; rc=$?; "
        "printf '\\nqga-purge: rc=%s qemu-ga=%s unit=%s active=%s lib=%s hook=%s dpkg=%s load=%s\\n' $rc "
        "$(test -e /usr/sbin/qemu-ga && echo present || echo absent) "
        "$(systemctl show -p FragmentPath --value " + UNIT + " | grep -q . && echo present || echo absent) "
        "$(systemctl is-active " + UNIT + ") "
        "$(test -e /usr/lib/qga-mini && echo present || echo absent) "
        "$(test -e /etc/qemu/fsfreeze-hook && echo present || echo absent) "
        "$(dpkg-query -W -f='${db:Status-Abbrev}' qga-mini 2>/dev/null | tr -d ' ' | grep . || echo none) "
        "$(systemctl show -p LoadState --value " + UNIT + ") "
        ">/dev/ttyS0; systemctl poweroff")
    c = LibvirtClient(vm.sock)
    try:
        systemd_run(c, "qga-mini-purge", script)
    finally:
        c.close()
    expect(vm.wait_exit(SHUTDOWN_SECONDS + INSTALL_SECONDS), "VM still running after purge + poweroff")
    m = re.search(r"qga-purge: (.*)", vm.console_text())
    expect(m, "no purge report on the console")
    got = dict(kv.split("=", 1) for kv in m.group(1).split())
    load = got.pop("load", "?")   # "loaded" if a removed qemu-guest-agent left its init script
    want = {"rc": "0", "qemu-ga": "absent", "unit": "absent", "active": "inactive", "lib": "absent",
            "hook": "absent", "dpkg": "none"}
    expect(got == want, "after purge: %r" % got)
    return "purged: no /usr/sbin/qemu-ga, no unit file (LoadState=%s), no files, agent stopped" % load


# ----------------------------------------------------------------------------
# One suite
# ----------------------------------------------------------------------------

def run_suite(results, suite, args, work, deb):
    group = suite
    version = SUITES[suite]
    try:
        image = distro_image.get(args.cache, suite, log)
    except Exception as e:
        results.add(group, "image (mmdebstrap)", "FAIL", "%s: %s" % (type(e).__name__, e))
        return
    IMAGE_RELEASE[0] = image.info["release"]
    results.add(group, "image", "pass", "%s, kernel %s, python3 from %s" % (
        image.info["os-release"].get("PRETTY_NAME"), image.info["release"], suite))
    state = {"overlay": os.path.join(work, suite + "-mini.qcow2")}
    ref_overlay = os.path.join(work, suite + "-ref.qcow2")
    overlay(state["overlay"], image)
    overlay(ref_overlay, image)
    data = os.path.join(work, suite + "-data.img")
    vmtest.make_disk(data)
    mini_times, ref_times = [], []

    # The "mini" overlay's first boot runs Debian's qemu-guest-agent.  A first boot is
    # no sample (the "ref" ones below follow a boot, as the "mini" ones do).
    vm = DistroVM(work, image, state["overlay"], data, "tcg", suite + "-main")
    pong = vmtest.boot(vm, args.cache, results, ready=distro_image.READY, timeout=BOOT_SECONDS)
    if pong is None:
        results.add(group, "boot with Debian's qemu-guest-agent", "FAIL",
                    "no pong in %d s (%s); console: %s" % (BOOT_SECONDS, vm.accel, vm.console_text()[-300:]))
        vm.kill()
        return
    accel = vm.accel
    results.add(group, "boot with Debian's qemu-guest-agent", "pass", "first pong %.1f s (%s)" % (pong, accel))
    results.check(group, "apt install ./%s" % os.path.basename(deb), check_install, vm, deb)
    results.check(group, "hook script in fsfreeze-hook.d", add_hook_script, vm)
    results.check(group, "guest-shutdown reboot, agent back", check_reboot, vm)
    if not vm.alive():
        results.add(group, "checks after the reboot", "FAIL", "the VM is gone")
        return
    lv = LibvirtClient(vm.sock)
    try:
        results.check(group, "started by udev+systemd at boot", check_started_at_boot, lv)
    finally:
        lv.close()
    client_types = [ProxmoxClient, LibvirtClient, BuiltinClient]
    try:
        import qemu.qmp  # noqa: F401
        client_types.append(QmpClient)
    except ImportError:
        pass
    commands = read_only(version)
    replies = vmtest.read_only_replies(vm, client_types, commands)
    for name, _args, validate in commands:
        results.check(group, name, vmtest.check_read_only, replies, name, validate)
    lv = LibvirtClient(vm.sock)
    try:
        results.check(group, "guest-exec capture + input", vmtest.check_exec, lv)
        results.check(group, "file write/seek/read round trip", vmtest.check_files, lv)
        results.check(group, "--self-test in the guest", vmtest.check_self_test, lv)
        try:
            results.add(group, "agent start cost, settled guest", "info", start_cost(lv))
        except Exception as e:
            results.add(group, "agent start cost, settled guest", "skip", "not measured: %s" % e)
    finally:
        lv.close()
    results.check(group, "freeze/thaw / and /mnt/data, hook", check_freeze, ProxmoxClient(vm.sock))
    results.check(group, "%d host reconnects" % RECONNECTS, check_reconnects, vm)
    results.check(group, "kill -KILL: restarted, answers", check_restart, vm)
    results.check(group, "guest-shutdown powerdown", power_off, vm)

    # Fresh boots for the comparison, alternating so that load swings hit both.
    # The ref overlay's first boot is not measured either.
    for i in range(-1, BOOTS):
        runs = [(ref_times, ref_overlay, "ref")]
        if 0 <= i < BOOTS - 1:         # the last "mini" sample is the purge boot below
            runs.insert(0, (mini_times, state["overlay"], "mini"))
        for times, path, tag in runs:
            vm = DistroVM(work, image, path, data, accel, "%s-%s%d" % (suite, tag, i))
            vm.start()
            try:
                got = measure_boot(vm)
                if i >= 0:
                    times.append(got)
                if got[0] is not None:
                    power_off(vm, fallback=True)
            except Exception as e:
                log("%s boot %d: %s" % (tag, i, e))
            finally:
                vm.kill()

    if os.environ.get("QGA_VM_NO_LIBVIRT"):
        results.add(group + "/libvirt", "virsh", "skip", "QGA_VM_NO_LIBVIRT is set")
    else:
        sub = Results()
        virsh.run(sub, os.path.join(work, suite + "-virsh"), image.kernel, image.initrd,
                  vmtest.make_disk, DistroGuest(state))
        for _g, name, status, detail in sub.rows:
            results.rows.append((group + "/virsh", name, status, detail))

    # The last qga-mini boot: measured, then the package is purged.
    vm = DistroVM(work, image, state["overlay"], data, accel, suite + "-purge")
    vm.start()
    try:
        mini_times.append(measure_boot(vm))
        results.check(group, "apt purge qga-mini", check_purge, vm)
    finally:
        vm.kill()
    report_times(results, group, mini_times, ref_times)


def build_deb(work):
    out = subprocess.run(["sh", os.path.join(TOP, "contrib", "debian", "build-deb"), work],
                         stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    return out.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", required=True, help="image cache directory")
    ap.add_argument("suites", nargs="*", default=list(SUITES), help="bookworm and/or trixie")
    args = ap.parse_args()
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        sys.exit("vm-test-distro: unknown suite(s) %s; known: %s" % (" ".join(unknown), " ".join(SUITES)))
    t_start = time.monotonic()
    # SIGTERM (a CI timeout) unwinds through the finally clauses that stop QEMU.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = Results()
    work = tempfile.mkdtemp(prefix="qga-distro-")
    os.chmod(work, 0o711)  # the libvirt part's qemu (user nobody) reaches its files through here
    deb = build_deb(work)
    log("package %s" % deb)
    for suite in args.suites:
        t = time.monotonic()
        run_suite(results, suite, args, work, deb)
        log("%s took %.0f s" % (suite, time.monotonic() - t))
    return vmtest.finish(results, "vm-test-distro", work, t_start)


if __name__ == "__main__":
    sys.exit(main())
