# qga-mini developer targets.  `make help` lists them; CI runs `make test`.
PYTHON ?= /usr/bin/python3

.PHONY: help test schema-check vermin bench vm-test fuzz soak demo

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

test:  ## run the whole unit and integration test suite (what CI runs)
	$(PYTHON) -m tests

schema-check:  ## hold the command table and argument types against schema.json
	$(PYTHON) -m unittest tests.test_schema -v

vermin:  ## check statically that qga_mini.py runs on Python 3.6+ (pip install vermin)
	$(PYTHON) -c 'import sys; from vermin.main import main; sys.argv = ["vermin"] + sys.argv[1:]; sys.exit(main())' \
		-t=3.6- --violations --no-tips qga_mini.py

bench:  ## qga-mini and qemu-ga side by side: start-up, RSS, throughput, latency
	$(PYTHON) bench/bench.py --json bench/results.json

vm-test:  ## boot a busybox+python guest under QEMU and drive the agent like real hosts
	bash tests/vm/run.sh

demo:  ## run a demo agent on /tmp/qga-demo.sock and talk to it (no VM needed)
	sh contrib/demo.sh
