"""The VM tests' libvirt part: the same guest driven through virsh.

A session-mode libvirtd (run as the unprivileged user "nobody", so libvirt keeps
all its state under a temporary XDG directory tree instead of /etc/libvirt and
/var/lib/libvirt) defines the VM with a virtio agent channel; every check is a
virsh command that talks to the agent.  Skipped with a reason when libvirt is
missing or does not start.  ``Guest`` says what the domain boots and what the
checks expect; its defaults are make vm-test's busybox image, tests/vm/distro.py
passes its Debian guest.
"""
import json
import os
import re
import shutil
import subprocess
import time

import image

NOBODY = 65534
DOMAIN = "qga-vm"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvq1SkM7bE0r3yqP2xLwN8fJc4mT5aGz6dKp9sV0uW1 virsh@host"

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{disks}    <interface type='user'><model type='virtio'/></interface>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <channel type='unix'>
      <source mode='bind' path='{sock}'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
"""


DISK_XML = """    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}' discard='unmap'/>
      <source file='{path}'/>
      <target dev='{dev}' bus='virtio'/>
    </disk>
"""


class Guest:
    """What the domain boots and what the checks expect of it: make vm-test's image."""
    cmdline = "console=ttyS0 panic=-1 qga.agent=mini"
    memory = 512
    ready = "init done"         # console text once the guest's init has finished
    hostname = image.HOSTNAME
    os_id = "qga-vm"
    data_dev = "vda"            # the ext4 disk mounted on /mnt/data

    def disks(self, base, make_disk):
        """[(path, format)] in vda, vdb, ... order, made or moved into base."""
        disk = os.path.join(base, "data.img")
        make_disk(disk)
        return [(disk, "raw")]


class Virsh:
    def __init__(self, base):
        self.base = base
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": base + "/home",
                    "XDG_RUNTIME_DIR": base + "/run", "XDG_CONFIG_HOME": base + "/config",
                    "XDG_CACHE_HOME": base + "/cache", "XDG_DATA_HOME": base + "/data",
                    "LC_ALL": "C"}
        self.prefix = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"]
        self.daemon = None

    def start_daemon(self):
        for d in ("home", "run", "config", "cache", "data"):
            os.makedirs(os.path.join(self.base, d), mode=0o700, exist_ok=True)
        subprocess.run(["chown", "-R", "%d:%d" % (NOBODY, NOBODY), self.base], check=True)
        self.daemon = subprocess.Popen(self.prefix + ["libvirtd"], env=self.env,
                                       stdin=subprocess.DEVNULL,
                                       stdout=open(self.base + "/libvirtd.log", "w"),
                                       stderr=subprocess.STDOUT)
        sock = self.base + "/run/libvirt/libvirt-sock"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError("libvirtd exited: " + open(self.base + "/libvirtd.log").read()[-300:])
            if os.path.exists(sock) and self.run("version").returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("libvirtd did not come up in 20 s")

    def stop_daemon(self):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()

    def run(self, *args, timeout=60):
        try:
            return subprocess.run(self.prefix + ["virsh", "-q", "-c", "qemu:///session"] + list(args),
                                  env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  universal_newlines=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 124, "", "virsh timed out after %d s" % timeout)


class Skip(Exception):
    pass


def ok(proc):
    """stdout of a successful virsh; a command the agent lacks is a Skip."""
    if proc.returncode != 0:
        err = " ".join(proc.stderr.split())
        missing = re.search(r"The command \S+ has not been found", err)
        if missing:
            raise Skip("not implemented in the agent: " + missing.group(0))
        if re.search(r"does not support|not supported", err):
            raise Skip("not supported: " + err[:150])
        raise AssertionError("virsh exit %d: %s" % (proc.returncode, err[:200]))
    return proc.stdout


def agent(v, cmd, args=None):
    msg = {"execute": cmd}
    if args is not None:
        msg["arguments"] = args
    reply = json.loads(ok(v.run("qemu-agent-command", DOMAIN, json.dumps(msg))))
    return reply["return"]


def run(results, work, vmlinuz, initrd, make_disk, guest=None):
    def check(name, fn):
        try:
            results.add("libvirt", name, "pass", fn() or "")
        except Skip as e:
            results.add("libvirt", name, "skip", e)
        except Exception as e:
            results.add("libvirt", name, "FAIL", "%s: %s" % (type(e).__name__, e))

    missing = [p for p in ("libvirtd", "virsh", "setpriv") if not shutil.which(p)]
    if missing:
        results.add("libvirt", "virsh checks", "skip", "not installed: " + ", ".join(missing))
        return
    base = os.path.join(work, "libvirt")
    os.makedirs(base)
    os.chmod(work, 0o711)  # nobody's qemu reaches its files through here
    guest = guest or Guest()
    disks = "".join(DISK_XML.format(path=path, fmt=fmt, dev="vd" + chr(ord("a") + i))
                    for i, (path, fmt) in enumerate(guest.disks(base, make_disk)))
    shutil.copy(initrd, os.path.join(base, "initrd.cpio"))
    kernel = os.path.join(base, "vmlinuz")
    shutil.copy(vmlinuz, kernel)
    console = os.path.join(base, "console.log")
    v = Virsh(base)
    try:
        v.start_daemon()
    except Exception as e:
        results.add("libvirt", "virsh checks", "skip", "session libvirtd does not run here: %s" % e)
        v.stop_daemon()
        return
    try:
        xml = os.path.join(base, "domain.xml")
        with open(xml, "w") as f:
            f.write(DOMAIN_XML.format(name=DOMAIN, kernel=kernel, initrd=os.path.join(base, "initrd.cpio"),
                                      disks=disks, console=console, sock=os.path.join(base, "qga.sock"),
                                      cmdline=guest.cmdline, memory=guest.memory))
        subprocess.run(["chown", "-R", "%d:%d" % (NOBODY, NOBODY), base], check=True)
        started = v.run("create", xml)
        if started.returncode != 0:
            results.add("libvirt", "virsh create", "FAIL", started.stderr.strip()[:200])
            return
        t0 = time.monotonic()
        check("qemu-agent-command (agent up)", lambda: wait_agent(v, console, t0, guest.ready))
        run_checks(v, check, guest)
    finally:
        v.run("destroy", DOMAIN, timeout=20)
        v.stop_daemon()


def wait_agent(v, console, t0, ready, timeout=240):
    """libvirt answers only once the guest opened the port (VSERPORT_CHANGE)."""
    deadline = t0 + timeout
    last = None
    while time.monotonic() < deadline:
        p = v.run("qemu-agent-command", DOMAIN, '{"execute":"guest-ping"}', "--timeout", "5", timeout=20)
        if p.returncode == 0 and ready in open(console, errors="replace").read():
            return "agent answered %.1f s after virsh create" % (time.monotonic() - t0)
        last = p.stderr.strip()
        time.sleep(0.3)
    raise AssertionError("no agent: %s" % last)


def run_checks(v, check, guest):
    def info():
        r = agent(v, "guest-info")
        return "guest-info: %d commands" % len(r["supported_commands"])

    def domifaddr():
        out = ok(v.run("domifaddr", DOMAIN, "--source", "agent"))
        assert "10.0.2.15/24" in out, out
        return " ".join(out.split())[:80]

    def guestinfo():
        out = ok(v.run("guestinfo", DOMAIN))
        fields = dict(re.findall(r"^(\S+)\s*:\s*(.*?)\s*$", out, re.M))
        if not fields:  # libvirt leaves out what the agent does not implement
            raise Skip("the agent implements none of the guestinfo commands yet")
        expected = {"hostname": guest.hostname, "os.id": guest.os_id}
        for key, want in expected.items():
            if key in fields:
                assert fields[key] == want, "%s = %r" % (key, fields[key])
        return "%d fields (%s)" % (len(fields), ", ".join(sorted(k.split(".")[0] for k in fields))[:60])

    def domfsinfo():
        out = ok(v.run("domfsinfo", DOMAIN))
        assert re.search(r"^\s*/mnt/data\s+\S+\s+ext4\s+%s" % guest.data_dev, out, re.M), out
        return "/mnt/data ext4 on " + guest.data_dev

    def freeze():
        # virsh -q keeps "Froze N filesystem(s)" to itself: ask the agent for its state.
        status = '{"execute":"guest-fsfreeze-status"}'
        ok(v.run("domfsfreeze", DOMAIN))
        try:
            frozen = ok(v.run("qemu-agent-command", DOMAIN, status))
            assert '"frozen"' in frozen, frozen
        finally:
            ok(v.run("domfsthaw", DOMAIN))
        thawed = ok(v.run("qemu-agent-command", DOMAIN, status))
        assert '"thawed"' in thawed, thawed
        return "frozen, then thawed"

    def fstrim():
        ok(v.run("domfstrim", DOMAIN, "--minimum", "0"))

    def domtime():
        ok(v.run("domtime", DOMAIN, "--now"))
        out = ok(v.run("domtime", DOMAIN))
        t = int(re.search(r"Time:\s*(\d+)", out).group(1))
        assert abs(t - time.time()) < 60, "guest time %d vs host %d" % (t, time.time())
        return "set to host time and read back"

    def guestvcpus():
        out = ok(v.run("guestvcpus", DOMAIN))
        assert re.search(r"vcpus\s*:\s*0-1", out), out
        ok(v.run("guestvcpus", DOMAIN, "--cpulist", "1", "--disable"))
        off = ok(v.run("guestvcpus", DOMAIN))
        assert re.search(r"online\s*:\s*0\s*$", off, re.M), off
        ok(v.run("guestvcpus", DOMAIN, "--cpulist", "1", "--enable"))
        on = ok(v.run("guestvcpus", DOMAIN))
        assert re.search(r"online\s*:\s*0-1", on), on
        return "cpu1 disabled and enabled"

    def password():
        ok(v.run("set-user-password", DOMAIN, "root", "virsh-pass"))

    def sshkeys():
        keyfile = os.path.join(v.base, "keys")
        with open(keyfile, "w") as f:
            f.write(SSH_KEY + "\n")
        os.chown(keyfile, NOBODY, NOBODY)
        ok(v.run("set-user-sshkeys", DOMAIN, "root", "--file", keyfile))
        got = ok(v.run("get-user-sshkeys", DOMAIN, "root"))
        assert SSH_KEY in got, got
        ok(v.run("set-user-sshkeys", DOMAIN, "root", "--remove", "--file", keyfile))
        assert SSH_KEY not in ok(v.run("get-user-sshkeys", DOMAIN, "root"))
        return "set, read back, removed"

    def shutdown():
        ok(v.run("shutdown", DOMAIN, "--mode", "agent"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if v.run("domstate", DOMAIN).returncode != 0:  # transient domain gone
                return "domain shut off"
            time.sleep(0.5)
        raise AssertionError("still running 60 s after shutdown --mode agent")

    for name, fn in [("qemu-agent-command guest-info", info), ("domifaddr --source agent", domifaddr),
                     ("guestinfo", guestinfo), ("domfsinfo", domfsinfo),
                     ("domfsfreeze / domfsthaw", freeze), ("domfstrim", fstrim),
                     ("domtime", domtime), ("guestvcpus", guestvcpus),
                     ("set-user-password", password), ("set-user-sshkeys", sshkeys),
                     ("shutdown --mode agent", shutdown)]:
        check(name, fn)
