# qga-mini developer targets.  `make help` lists them; CI runs `make test`.
PYTHON ?= /usr/bin/python3

.PHONY: help test schema-check vermin bench vm-test fuzz soak demo

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

test:  ## run the whole unit and integration test suite
	$(PYTHON) -m unittest discover -s tests -t . -v

schema-check:  ## hold the command table and argument types against schema.json
	$(PYTHON) -m unittest tests.test_schema -v

vermin:  ## check statically that qga_mini.py runs on Python 3.6+
	$(PYTHON) -m vermin -t=3.6- --violations --no-tips qga_mini.py

vm-test:  ## boot the agent in a QEMU guest and check it with real host clients (root)
	bash tests/vm/run.sh

demo:  ## run a demo agent on /tmp/qga-demo.sock and query it with the built-in client
	sh contrib/demo.sh
