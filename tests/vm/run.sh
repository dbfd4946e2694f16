#!/bin/bash
# VM test of qga_mini.py: boots it in a small QEMU guest (busybox initramfs,
# Debian kernel, no udev/systemd) and drives it with real host clients.
#
#   sudo bash tests/vm/run.sh        # from the checkout; needs root
#
# Installs what it needs with apt-get (skipped when present), keeps downloads
# and the venv in $QGA_VM_CACHE (default /var/cache/qga-mini-vm), prints a
# results table and "vm-test: N passed, M failed[, K skipped]", and exits
# non-zero on any failure.  Exits 0 with a reason when it cannot run here (not
# root, qemu not installable).
#
# Environment:
#   QGA_VM_CACHE       cache directory (kernel, venv, KVM verdict)
#   QGA_VM_KERNEL_PKG  Debian kernel meta package (default linux-image-cloud-amd64:
#                      virtio drivers as modules, ext4 built in, a third of the
#                      size of linux-image-amd64; both work)
#   QGA_VM_NO_LIBVIRT  set to skip the virsh part
#   QGA_VM_KEEP        set to keep the work directory (console logs, sockets)
#   QGA_VM_AGENT=qemu-ga  run the checks against qemu-ga instead (checks the checks)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${QGA_VM_CACHE:-/var/cache/qga-mini-vm}
kernel_pkg=${QGA_VM_KERNEL_PKG:-linux-image-cloud-amd64}
start=$(date +%s)

skip() {
	echo "vm-test: skipped: $*"
	exit 0
}
log() { echo "vm-test: $*"; }

[ "$(id -u)" -eq 0 ] || skip "needs root (apt-get, qemu)"
[ "$(uname -m)" = x86_64 ] || skip "needs an x86_64 host"
command -v apt-get >/dev/null || skip "needs apt-get (a Debian-like host)"

# --- packages ---------------------------------------------------------------
# Installed only when missing; an apt-get update is tried once if needed.
updated=no
apt_install() { # PKG...: install the missing ones; fails if apt-get does
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "apt-get install ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		"${missing[@]}" >"$cache/apt.log" 2>&1; then
		[ $updated = yes ] && return 1
		updated=yes
		apt-get update -q >>"$cache/apt.log" 2>&1 || true
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			"${missing[@]}" >>"$cache/apt.log" 2>&1
	fi
}
mkdir -p "$cache"
apt_install qemu-system-x86 busybox-static e2fsprogs python3 python3-venv ||
	skip "qemu-system-x86/busybox-static cannot be installed here (see $cache/apt.log)"
# Optional: qemu-ga for the boot-time comparison, libvirt for the virsh part.
apt_install qemu-guest-agent || log "qemu-guest-agent not installable: comparison skipped"
if [ -z "${QGA_VM_NO_LIBVIRT:-}" ]; then
	apt_install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients ||
		log "libvirt not installable: virsh checks skipped"
fi

# --- kernel: a Debian package, unpacked, not installed ----------------------
kdir=$cache/kernel/$kernel_pkg
if [ ! -d "$kdir/boot" ]; then
	# The meta package depends on the versioned image package.
	real=$(apt-cache depends "$kernel_pkg" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
	if [ -z "$real" ]; then
		apt-get update -q >>"$cache/apt.log" 2>&1 || true
		real=$(apt-cache depends "$kernel_pkg" | awk '/Depends: linux-image-/ {print $2; exit}')
	fi
	[ -n "$real" ] || skip "no kernel package behind $kernel_pkg"
	log "apt-get download $real"
	rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp"
	# _apt cannot write into root-only directories: download via /tmp.
	dl=$(mktemp -d)
	chmod 755 "$dl"
	(cd "$dl" && apt-get download -q "$real" >>"$cache/apt.log" 2>&1) ||
		skip "cannot download $real"
	dpkg -x "$dl"/*.deb "$kdir.tmp"
	rm -rf "$dl" "$kdir"
	mv "$kdir.tmp" "$kdir"
fi

# --- host client: the qemu.qmp package in a venv -----------------------------
venv=$cache/venv
if [ ! -x "$venv/bin/python3" ] || ! "$venv/bin/python3" -c 'import qemu.qmp' 2>/dev/null; then
	log "pip install qemu.qmp"
	rm -rf "$venv"
	/usr/bin/python3 -m venv "$venv" &&
		"$venv/bin/pip" install -q --disable-pip-version-check qemu.qmp >>"$cache/pip.log" 2>&1 ||
		log "qemu.qmp not installable: its checks are skipped (see $cache/pip.log)"
fi
py=/usr/bin/python3
[ -x "$venv/bin/python3" ] && py=$venv/bin/python3

log "setup took $(($(date +%s) - start)) s"
rc=0
"$py" "$here/vmtest.py" --cache "$cache" --kernel "$kdir" || rc=$?
log "total $(($(date +%s) - start)) s"
exit $rc
