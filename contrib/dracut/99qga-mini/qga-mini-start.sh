#!/bin/sh
# dracut pre-udev hook (sourced by dracut's init): start qga-mini.
if ! getargbool 1 qga-mini; then
    info "qga-mini: disabled on the kernel command line"
else
    modprobe -q virtio_console || :
    # The agent finds its port in /sys/class/virtio-ports without udev.  It is
    # imported, not run as a script, so that the module's compiled bytecode is
    # used; -I -S: no site, no PYTHON* variables, no current directory on the path.
    /usr/bin/python3 -I -S -c 'import sys; sys.path.insert(0, "/usr/lib/qga-mini"); import qga_mini; sys.exit(qga_mini.main())' \
        -t /run </dev/null >/dev/null 2>&1 &
    echo $! >/run/qga-mini.pid
fi
