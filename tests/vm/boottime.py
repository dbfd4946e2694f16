"""Boot-to-first-pong of qga-mini and of qemu-ga, the median of several boots each.

    sudo /usr/bin/python3 tests/vm/boottime.py [--boots 5] [--cache DIR]

Run tests/vm/run.sh once first: it installs QEMU and qemu-ga and unpacks the
kernel into the cache.  One image holds both agents ("qga.agent=" on the kernel
command line picks one); the boots alternate between them so that a change in
the machine's load hits both alike.  Uses the accelerator the VM test chose.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import image  # noqa: E402
import vmtest  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--boots", type=int, default=5, help="boots per agent (default 5)")
    ap.add_argument("--cache", default=os.environ.get("QGA_VM_CACHE", "/var/cache/qga-mini-vm"))
    ap.add_argument("--kernel-pkg", default=os.environ.get("QGA_VM_KERNEL_PKG",
                                                           "linux-image-cloud-amd64"))
    args = ap.parse_args()
    kroot = os.path.join(args.cache, "kernel", args.kernel_pkg)
    if not os.path.isdir(os.path.join(kroot, "boot")):
        sys.exit("boottime: no kernel in %s; run tests/vm/run.sh once first" % kroot)
    agents = ["mini"] + (["qemu-ga"] if os.access(vmtest.QEMU_GA, os.X_OK) else [])
    try:
        accel = json.load(open(os.path.join(args.cache, "accel.json")))[vmtest.accel_cache_key()]
    except (OSError, ValueError, KeyError):
        accel = "tcg"
    work = tempfile.mkdtemp(prefix="qga-boot-")
    try:
        tree, initrd = os.path.join(work, "tree"), os.path.join(work, "initrd.cpio")
        image.build_tree(tree, kroot, vmtest.AGENT,
                         extra_exec=[vmtest.QEMU_GA] if "qemu-ga" in agents else [])
        image.write_cpio(tree, initrd)
        times = vmtest.pong_times(work, image.find_kernel(kroot)[0], initrd, accel,
                                  agents * args.boots)
        for agent, got in times.items():   # qga-mini runs as images start it: the launcher
            label = "qga-mini (launcher)" if agent == "mini" else agent
            print("%-19s %s, %s" % (label, vmtest.describe_times(got), accel))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
