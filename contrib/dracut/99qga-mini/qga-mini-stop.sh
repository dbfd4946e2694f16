#!/bin/sh
# dracut cleanup hook (sourced by dracut's init): stop the initramfs copy of
# qga-mini before the real root takes over, unless "qga-mini=keep".
if [ -r /run/qga-mini.pid ] && [ "$(getarg qga-mini=)" != keep ]; then
    kill "$(cat /run/qga-mini.pid)" 2>/dev/null
    rm -f /run/qga-mini.pid
fi
