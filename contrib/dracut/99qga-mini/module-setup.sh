#!/bin/bash
# dracut module: put qga-mini (the QEMU guest agent in one Python file) and
# the python3 it needs into the initramfs, and run the agent while it is up.
# Install this directory as /usr/lib/dracut/modules.d/99qga-mini, the agent at
# /usr/lib/qga-mini/qga_mini.py, contrib/qga-mini (its launcher) at
# /usr/lib/qga-mini/qga-mini and contrib/qga-mini-deps at
# /usr/lib/qga-mini/qga-mini-deps, then: dracut --add qga-mini -f.
# Kernel command line: "qga-mini=off" skips the agent, "qga-mini=keep" keeps
# it running past the switch to the real root.

QGA_MINI_AGENT=${QGA_MINI_AGENT:-/usr/lib/qga-mini/qga_mini.py}
QGA_MINI_LAUNCHER=${QGA_MINI_LAUNCHER:-/usr/lib/qga-mini/qga-mini}
QGA_MINI_DEPS=${QGA_MINI_DEPS:-/usr/lib/qga-mini/qga-mini-deps}

# Only when asked for (--add qga-mini or add_dracutmodules+=" qga-mini ").
check() {
    require_binaries python3 || return 1
    [ -r "$QGA_MINI_AGENT" ] || return 1
    return 255
}

depends() {
    return 0
}

installkernel() {
    instmods virtio_console
}

install() {
    inst_binary python3 /usr/bin/python3
    inst_simple "$QGA_MINI_AGENT" /usr/lib/qga-mini/qga_mini.py
    inst_simple "$QGA_MINI_LAUNCHER" /usr/lib/qga-mini/qga-mini
    # Its bytecode, which the launcher imports: no compiling at every boot.
    # shellcheck disable=SC2154  # dracut sets initdir
    python3 "$QGA_MINI_DEPS" --compile "$initdir/usr/lib/qga-mini/qga_mini.py" \
        /usr/lib/qga-mini/qga_mini.py >/dev/null
    # The standard-library files, listed by the same helper the
    # initramfs-tools hook uses; extension modules bring their libraries.
    local f
    while read -r f; do
        case "$f" in
        *.so) inst_library "$f" ;;
        *) inst_simple "$f" ;;
        esac
    done < <(python3 "$QGA_MINI_DEPS" "$QGA_MINI_AGENT")
    # shellcheck disable=SC2154  # dracut sets moddir
    inst_hook pre-udev 90 "$moddir/qga-mini-start.sh"
    inst_hook cleanup 90 "$moddir/qga-mini-stop.sh"
}
