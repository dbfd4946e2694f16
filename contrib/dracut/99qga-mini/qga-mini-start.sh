#!/bin/sh
# dracut pre-udev hook (sourced by dracut's init): start qga-mini.
if ! getargbool 1 qga-mini; then
    info "qga-mini: disabled on the kernel command line"
else
    modprobe -q virtio_console || :
    # The agent finds its port in /sys/class/virtio-ports without udev;
    # qga-mini (contrib/qga-mini) starts it from the bytecode compiled for it.
    /usr/lib/qga-mini/qga-mini -t /run </dev/null >/dev/null 2>&1 &
    echo $! >/run/qga-mini.pid
fi
