"""Build (or take from the cache) the Debian guest of make vm-test-distro.

A root file system made by mmdebstrap from Debian's packages (systemd, udev,
python3, Debian's qemu-guest-agent, the cloud kernel with initramfs-tools),
from the mirror this host's apt uses, written into an ext4 image with
``mke2fs -d`` (no loop device), plus the kernel and initrd taken out of it for
QEMU's -kernel/-initrd.  The result is cached under CACHE/<suite>-<key>/, the
key being a hash of the suite, the package list and this file, so a changed
recipe builds a new image; a missing cache is simply rebuilt.  qga-mini is not
in the image: the test installs its .deb into the booted guest as a user would.
"""
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import time

HOSTNAME = "qga-distro"
PACKAGES = ["systemd-sysv", "udev", "python3", "linux-image-cloud-amd64", "initramfs-tools",
            "qemu-guest-agent", "e2fsprogs", "procps", "iproute2", "kmod"]
# The initrd needs only the drivers of the root disk (ext4 is built in).
INITRD_MODULES = ["virtio_pci", "virtio_blk"]
KERNEL_ARGS = "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1"
SLACK_MIB = 384            # free space in the root file system for the test's writes

# QEMU's user network: a fixed address, no DHCP wait at boot.  The line on the
# console tells the host that the guest is up (the virsh checks wait for it).
READY = "qga-vm: network up"
NET_UNIT = """[Unit]
Description=Static address on QEMU's user network (VM test)
BindsTo=sys-subsystem-net-devices-eth0.device
After=sys-subsystem-net-devices-eth0.device

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip link set eth0 up
ExecStart=/sbin/ip addr add 10.0.2.15/24 dev eth0
ExecStart=/sbin/ip route add default via 10.0.2.2
ExecStart=/bin/sh -c 'echo "%s" >/dev/ttyS0'

[Install]
WantedBy=multi-user.target
""" % READY
FSTAB = """/dev/vda / ext4 rw,errors=remount-ro 0 1
LABEL=qga-data /mnt/data ext4 rw,nofail,x-systemd.device-timeout=30s 0 2
"""


def apt_mirror(suite):
    """The Debian mirror this host's apt uses (deb822 or one-line sources)."""
    texts = []
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*")):
        try:
            with open(path) as f:
                texts.append(f.read())
        except OSError:
            pass
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"(?mi)^URIs:\s*(\S+)", stanza)
            suites = re.search(r"(?mi)^Suites:\s*(.+)$", stanza)
            if uris and suites and re.search(r"/debian/?$", uris.group(1)) \
                    and not re.search(r"-security", suites.group(1)):
                return uris.group(1)
        m = re.search(r"(?m)^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian/?)\s+\S+\s", text)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def cache_key(suite, packages):
    with open(os.path.abspath(__file__), "rb") as f:
        recipe = f.read()
    h = hashlib.sha256(json.dumps([suite, sorted(packages)]).encode() + recipe)
    return h.hexdigest()[:12]


class Image:
    """A built guest: root.img (raw ext4), vmlinuz, initrd.img and info.json."""

    def __init__(self, path):
        self.path = path
        self.root = os.path.join(path, "root.img")
        self.kernel = os.path.join(path, "vmlinuz")
        self.initrd = os.path.join(path, "initrd.img")
        with open(os.path.join(path, "info.json")) as f:
            self.info = json.load(f)


def get(cache, suite, log=print):
    """The cached image of suite, built first when missing; returns an Image."""
    key = cache_key(suite, PACKAGES)
    path = os.path.join(cache, "%s-%s" % (suite, key))
    if os.path.exists(os.path.join(path, "info.json")):
        return Image(path)
    os.makedirs(cache, exist_ok=True)
    os.chmod(cache, 0o755)  # the libvirt part's qemu runs as nobody and reads root.img
    for old in glob.glob(os.path.join(cache, suite + "-*")):
        shutil.rmtree(old, ignore_errors=True)  # an older recipe, or a half-built one
    t0 = time.monotonic()
    build(path + ".tmp", suite, log)
    os.rename(path + ".tmp", path)
    log("image %s built in %.0f s" % (path, time.monotonic() - t0))
    return Image(path)


def _write(tree, rel, text, mode=0o644):
    path = os.path.join(tree, rel.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def build(out, suite, log):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tree = os.path.join(out, "tree")
    mirror = apt_mirror(suite)
    log("mmdebstrap %s from %s (%s)" % (suite, mirror, ", ".join(PACKAGES)))
    with open(os.path.join(out, "mmdebstrap.log"), "w") as logf:
        subprocess.run(["mmdebstrap", "--mode=root", "--variant=minbase",
                        "--include=" + ",".join(PACKAGES), suite, tree, mirror],
                       stdout=logf, stderr=subprocess.STDOUT, check=True, timeout=1800)
    customize(tree)
    kernel = sorted(glob.glob(os.path.join(tree, "boot", "vmlinuz-*")))[-1]
    release = os.path.basename(kernel)[len("vmlinuz-"):]
    shutil.copy(kernel, os.path.join(out, "vmlinuz"))
    shutil.copy(os.path.join(tree, "boot", "initrd.img-" + release), os.path.join(out, "initrd.img"))
    info = {"suite": suite, "release": release, "mirror": mirror, "packages": PACKAGES}
    with open(os.path.join(tree, "etc", "os-release")) as f:
        info["os-release"] = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', f.read(), re.M))
    used = int(subprocess.run(["du", "-sm", "--apparent-size", tree], stdout=subprocess.PIPE,
                              universal_newlines=True, check=True).stdout.split()[0])
    size = "%dM" % (used * 13 // 10 + SLACK_MIB)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-d", tree,
                    os.path.join(out, "root.img"), size], check=True)
    shutil.rmtree(tree)
    with open(os.path.join(out, "info.json"), "w") as f:
        json.dump(info, f, indent=1)
    for name in os.listdir(out):
        os.chmod(os.path.join(out, name), 0o644)
    os.chmod(out, 0o755)


def customize(tree):
    """What a cloud image's builder would set: host name, fstab, network, a fixed
    machine id (no first-boot presets), a small initrd."""
    _write(tree, "/etc/hostname", HOSTNAME + "\n")
    _write(tree, "/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 %s\n" % HOSTNAME)
    _write(tree, "/etc/fstab", FSTAB)
    os.makedirs(os.path.join(tree, "mnt", "data"), exist_ok=True)
    _write(tree, "/etc/machine-id", hashlib.md5(tree.encode()).hexdigest() + "\n", 0o444)
    _write(tree, "/etc/systemd/system/qga-vm-net.service", NET_UNIT)
    wants = os.path.join(tree, "etc/systemd/system/multi-user.target.wants")
    os.makedirs(wants, exist_ok=True)
    os.symlink("/etc/systemd/system/qga-vm-net.service", os.path.join(wants, "qga-vm-net.service"))
    # The guest has no route to the mirror: apt must not try at boot.
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        os.symlink("/dev/null", os.path.join(tree, "etc/systemd/system", timer))
    _write(tree, "/etc/initramfs-tools/conf.d/qga-vm", "MODULES=list\n")
    with open(os.path.join(tree, "etc/initramfs-tools/modules"), "a") as f:
        f.write("".join(m + "\n" for m in INITRD_MODULES))
    subprocess.run(["chroot", tree, "update-initramfs", "-u", "-k", "all"],
                   stdout=subprocess.DEVNULL, check=True, timeout=600)
