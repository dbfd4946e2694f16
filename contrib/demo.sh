#!/bin/sh
# qga-mini without a VM: start an agent on a unix socket, talk to it with the
# host-side client built into qga_mini.py, stop it.  `make demo` runs this.
# The agent runs as you, in /tmp; the commands shown only read.
PYTHON=${PYTHON:-/usr/bin/python3}
SOCK=${QGA_DEMO_SOCK:-/tmp/qga-demo.sock}
STATE=${QGA_DEMO_STATE:-/tmp/qga-demo-state}
cd "$(dirname "$0")/.." || exit 1

"$PYTHON" qga_mini.py -m unix-listen -p "$SOCK" -t "$STATE" &
agent=$!
trap 'kill "$agent" 2>/dev/null; wait "$agent" 2>/dev/null; rm -rf "$STATE"' EXIT
trap 'exit 130' INT TERM

# The socket exists from bind(), a moment before the agent listens: ping until it answers.
tries=0
until "$PYTHON" qga_mini.py client --timeout 1 "$SOCK" guest-ping >/dev/null 2>&1; do
	tries=$((tries + 1))
	if [ $tries -ge 50 ] || ! kill -0 "$agent" 2>/dev/null; then
		echo "demo: the agent did not come up" >&2
		exit 1
	fi
	sleep 0.1
done

for cmd in guest-ping guest-info guest-get-osinfo guest-get-host-name; do
	echo "\$ python3 qga_mini.py client $SOCK $cmd"
	if [ "$cmd" = guest-info ]; then  # ~200 lines: the version and the first commands
		"$PYTHON" qga_mini.py client "$SOCK" "$cmd" | head -n 12
		echo "  ..."
	else
		"$PYTHON" qga_mini.py client "$SOCK" "$cmd" || exit 1
	fi
done
echo "\$ python3 qga_mini.py client $SOCK guest-ssh-get-authorized-keys '{\"username\": \"nobody-here\"}'"
"$PYTHON" qga_mini.py client "$SOCK" guest-ssh-get-authorized-keys '{"username": "nobody-here"}'
echo "(exit status $?: an error reply)"
