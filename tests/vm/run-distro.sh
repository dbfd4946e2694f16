#!/bin/bash
# Full-distribution VM test (make vm-test-distro): qga-mini's .deb installed with
# apt in Debian 12 (bookworm) and 13 (trixie) guests with systemd and udev,
# booted under QEMU and driven by real host clients and virsh.
#
#   sudo bash tests/vm/run-distro.sh [bookworm] [trixie]     # default: both
#
# The guest images are built with mmdebstrap from the mirror apt uses here and
# cached in $QGA_DISTRO_CACHE (default /var/tmp/qga-mini-distro), keyed by suite,
# package list and recipe; a missing cache is rebuilt.  Prints a results table
# and "vm-test-distro: N passed, M failed[, K skipped]"; exits non-zero on any
# failure; exits 0 with a reason when it cannot run here.
#
# Environment:
#   QGA_DISTRO_CACHE   image cache directory
#   QGA_DISTRO_BOOTS   boots per agent for the boot-time medians (default 3)
#   QGA_VM_NO_LIBVIRT  set to skip the virsh part
#   QGA_VM_KEEP        set to keep the work directory (console logs, overlays)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${QGA_DISTRO_CACHE:-/var/tmp/qga-mini-distro}
skip() {
	echo "vm-test-distro: skipped: $*"
	exit 0
}

[ "$(id -u)" -eq 0 ] || skip "needs root (mmdebstrap, chroot, qemu)"
[ "$(uname -m)" = x86_64 ] || skip "needs an x86_64 host"
for tool in qemu-system-x86_64 qemu-img mmdebstrap mke2fs dpkg-deb; do
	command -v "$tool" >/dev/null || skip "$tool is not installed"
done

# qemu.qmp for the qemu-ga-client flows, when make vm-test's venv has it.
py=/usr/bin/python3
venv=${QGA_VM_CACHE:-/var/cache/qga-mini-vm}/venv
"$venv/bin/python3" -c 'import qemu.qmp' 2>/dev/null && py=$venv/bin/python3

exec "$py" "$here/distro.py" --cache "$cache" "$@"
