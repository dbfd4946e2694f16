#!/bin/sh
# dracut pre-udev hook (sourced by dracut's init): start qga-mini.
if ! getargbool 1 qga-mini; then
    info "qga-mini: disabled on the kernel command line"
else
    modprobe -q virtio_console || :
    # The agent finds its port in /sys/class/virtio-ports without udev.
    /usr/bin/python3 /usr/lib/qga-mini/qga_mini.py -t /run </dev/null >/dev/null 2>&1 &
    echo $! >/run/qga-mini.pid
fi
