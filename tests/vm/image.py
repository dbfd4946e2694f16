"""Build the VM test's initramfs: busybox, virtio modules, python3 and qga_mini.py.

The agent, python3 and its standard-library files are put in by the
initramfs-tools hook in contrib/ (run in its standalone mode), so the image is
built by the same logic that users run; this module adds only what a test VM
needs around it (busybox init, kernel modules, /etc, the fsfreeze hook).
"""
import os
import shutil
import stat
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
CONTRIB = os.path.join(TOP, "contrib")
GUEST = os.path.join(HERE, "guest")

# The drivers of the devices the test VM has; their dependencies are added.
WANTED_MODULES = ["virtio_pci", "virtio_console", "virtio_blk", "virtio_net", "ext4"]
HOSTNAME = "qga-vm"
OS_RELEASE = ('NAME="qga-mini VM test"\nID=qga-vm\nVERSION_ID=1\n'
              'PRETTY_NAME="qga-mini VM test image 1"\nVERSION="1 (test)"\n')


def find_kernel(kroot):
    """(vmlinuz path, modules dir, release) of a kernel unpacked with dpkg -x."""
    release = sorted(os.listdir(os.path.join(kroot, "lib", "modules")))[-1]
    vmlinuz = os.path.join(kroot, "boot", "vmlinuz-" + release)
    return vmlinuz, os.path.join(kroot, "lib", "modules", release), release


def _modname(name):
    return os.path.basename(name).split(".ko")[0].replace("-", "_")


def module_depends(path):
    """The depends= list of a module's .modinfo section (as modinfo -F depends)."""
    data = open(path, "rb").read()
    if path.endswith(".xz"):
        import lzma
        data = lzma.decompress(data)
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    value = data[at + 9:data.index(b"\0", at + 9)].decode()
    return [_modname(d) for d in value.split(",") if d]


def module_load_order(moddir, wanted):
    """Relative paths of the .ko files to insmod, dependencies first.

    Modules listed in modules.builtin are part of the kernel image and skipped
    (for example ext4 in Debian's cloud kernel).
    """
    with open(os.path.join(moddir, "modules.builtin")) as f:
        builtin = {_modname(line.strip()) for line in f if line.strip()}
    index = {}
    for root, _dirs, files in os.walk(os.path.join(moddir, "kernel")):
        for name in files:
            if ".ko" in name:
                index[_modname(name)] = os.path.relpath(os.path.join(root, name), moddir)
    order = []

    def visit(name):
        if name in builtin or index.get(name) in order:
            return
        if name not in index:
            raise RuntimeError("kernel module %s is neither built in nor shipped" % name)
        for dep in module_depends(os.path.join(moddir, index[name])):
            visit(dep)
        order.append(index[name])

    for name in wanted:
        visit(name)
    return order


def _put(tree, path, text=None, src=None, mode=0o644):
    dst = os.path.join(tree, path.lstrip("/"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if src:
        shutil.copy2(src, dst)
    else:
        with open(dst, "w") as f:
            f.write(text)
    os.chmod(dst, mode)


def build_tree(tree, kroot, agent, extra_exec=()):
    """Fill the directory tree with the guest's files; returns the module list."""
    if os.path.exists(tree):
        shutil.rmtree(tree)
    os.makedirs(tree)
    for d in ("proc", "sys", "dev", "run", "tmp", "mnt/data", "root", "etc/init.d",
              "var/log", "usr/sbin", "usr/bin", "sbin", "bin"):
        os.makedirs(os.path.join(tree, d), exist_ok=True)
    os.chmod(os.path.join(tree, "root"), 0o700)
    os.chmod(os.path.join(tree, "tmp"), 0o1777)

    # busybox, with one link per applet; busybox init runs as /init.
    _put(tree, "/bin/busybox", src="/bin/busybox", mode=0o755)
    applets = subprocess.run(["/bin/busybox", "--list-full"], stdout=subprocess.PIPE,
                             universal_newlines=True, check=True).stdout.split()
    for applet in applets:
        link = os.path.join(tree, applet)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink("/bin/busybox", link)
    os.symlink("/bin/busybox", os.path.join(tree, "init"))

    # Kernel modules in load order.
    _vmlinuz, moddir, release = find_kernel(kroot)
    order = module_load_order(moddir, WANTED_MODULES)
    for rel in order:
        _put(tree, "/lib/modules/%s/%s" % (release, rel), src=os.path.join(moddir, rel))
    _put(tree, "/etc/modules.list", "".join("%s/%s\n" % (release, rel) for rel in order))

    # /etc of a tiny system with one user.
    _put(tree, "/etc/inittab", src=os.path.join(GUEST, "inittab"))
    _put(tree, "/etc/init.d/rcS", src=os.path.join(GUEST, "rcS"), mode=0o755)
    _put(tree, "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    _put(tree, "/etc/group", "root:x:0:\n")
    _put(tree, "/etc/shadow", "root:*:19000:0:99999:7:::\n", mode=0o600)
    _put(tree, "/etc/hostname", HOSTNAME + "\n")
    _put(tree, "/root/.ssh/authorized_keys", "", mode=0o600)
    os.chmod(os.path.join(tree, "root", ".ssh"), 0o700)
    _put(tree, "/etc/os-release", OS_RELEASE)
    _put(tree, "/usr/sbin/chpasswd", src=os.path.join(GUEST, "chpasswd"), mode=0o755)

    # The contrib pieces the image uses: init script, fsfreeze hook and hook.d.
    _put(tree, "/etc/init.d/qga-mini", src=os.path.join(CONTRIB, "init.d", "qga-mini"), mode=0o755)
    _put(tree, "/etc/default/qga-mini",
         'QGA_MINI_ARGS="-t /run -l /run/qga-mini.log -F/etc/qemu/fsfreeze-hook"\n')
    _put(tree, "/etc/qemu/fsfreeze-hook", src=os.path.join(CONTRIB, "fsfreeze-hook"), mode=0o755)
    _put(tree, "/etc/qemu/fsfreeze-hook.d/50-record", src=os.path.join(GUEST, "hook-record"),
         mode=0o755)
    never = "#!/bin/sh\necho \"$0 must not run\" >>/run/fsfreeze-hook.record\n"
    for name in ("60-never.sample", "60-never~", "60-never.dpkg-old"):
        _put(tree, "/etc/qemu/fsfreeze-hook.d/" + name, never, mode=0o755)

    # The agent, python3 and the stdlib files it needs: the initramfs-tools
    # hook from contrib/ in its standalone mode.
    env = dict(os.environ, DESTDIR=tree, QGA_MINI_STANDALONE="1", QGA_MINI_AGENT=agent,
               QGA_MINI_LAUNCHER=os.path.join(CONTRIB, "qga-mini"),
               QGA_MINI_DEPS=os.path.join(CONTRIB, "qga-mini-deps"),
               QGA_MINI_PYTHON="/usr/bin/python3", QGA_MINI_EXTRA_EXEC=" ".join(extra_exec))
    subprocess.run(["sh", os.path.join(CONTRIB, "initramfs-tools", "hooks", "qga-mini")],
                   env=env, check=True)
    return order


def write_cpio(tree, out):
    """Write tree as an uncompressed newc cpio archive (what the kernel unpacks).

    Uncompressed because decompression is slow under TCG and the image is small.
    /dev/console is added as a device node, so init has a console before devtmpfs.
    """
    ino = [1000]

    def entry(f, name, mode, data=b"", rdev=(0, 0), mtime=0):
        ino[0] += 1
        name_b = name.encode() + b"\0"
        fields = [ino[0], mode, 0, 0, 1, mtime, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
        head = b"070701" + b"".join(b"%08X" % v for v in fields) + name_b
        f.write(head + b"\0" * (-len(head) % 4))
        f.write(data + b"\0" * (-len(data) % 4))

    with open(out + ".tmp", "wb") as f:
        for root, dirs, files in os.walk(tree):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, tree)
                st = os.lstat(path)
                # Keep mtimes: a .pyc is used only if its source's mtime matches.
                mtime = int(st.st_mtime)
                if stat.S_ISLNK(st.st_mode):
                    entry(f, rel, st.st_mode, os.readlink(path).encode(), mtime=mtime)
                elif stat.S_ISDIR(st.st_mode):
                    entry(f, rel, st.st_mode, mtime=mtime)
                else:
                    with open(path, "rb") as src:
                        entry(f, rel, st.st_mode, src.read(), mtime=mtime)
        entry(f, "dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
        entry(f, "TRAILER!!!", 0)
    os.replace(out + ".tmp", out)
