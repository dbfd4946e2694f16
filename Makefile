# qga-mini developer targets.  `make help` lists them; CI runs `make test`.
PYTHON ?= /usr/bin/python3

.PHONY: help test test-pythons schema-check vermin bench vm-test vm-test-distro deb fuzz \
	fuzz-corpus fuzz-diff fuzz-diff-replay soak demo

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

test:  ## run the whole unit and integration test suite (what CI runs)
	$(PYTHON) -m tests

test-pythons:  ## the suite under Debian 11's 3.9 and 13's 3.13 (cached roots), this 3.11 and pypy3
	$(PYTHON) -m tests.pythons

schema-check:  ## hold the command table and argument types against schema.json
	$(PYTHON) -m unittest tests.test_schema -v

vermin:  ## check statically that qga_mini.py runs on Python 3.6+ (pip install vermin)
	$(PYTHON) -c 'import sys; from vermin.main import main; sys.argv = ["vermin"] + sys.argv[1:]; sys.exit(main())' \
		-t=3.6- --violations --no-tips qga_mini.py

bench:  ## qga-mini and qemu-ga side by side: start-up, RSS, throughput, latency
	$(PYTHON) bench/bench.py --json bench/results.json

vm-test:  ## boot a busybox+python guest under QEMU and drive the agent like real hosts
	bash tests/vm/run.sh

deb:  ## build build/qga-mini_<version>_all.deb (replaces qemu-guest-agent) with dpkg-deb
	sh contrib/debian/build-deb

# DISTRO=bookworm or DISTRO=trixie runs one of the two guests.
DISTRO ?= bookworm trixie
vm-test-distro:  ## build the .deb, install it in Debian 12 and 13 systemd guests under QEMU and drive them
	bash tests/vm/run-distro.sh $(DISTRO)

# The fuzzer's dependency lives in .venv/ (git-ignored): nothing is installed system-wide.
VENV = .venv
FUZZ_RUNS ?= 1000000
FUZZ_JOBS ?= 2

$(VENV)/.fuzz-deps:
	$(PYTHON) -m venv $(VENV) || { apt-get update && apt-get install -y python3-venv \
		&& $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/pip install --quiet atheris==3.0.0
	touch $@

fuzz: $(VENV)/.fuzz-deps  ## fuzz the framer and dispatcher with atheris (FUZZ_RUNS=1000000 inputs)
	$(VENV)/bin/python -m tests.fuzz.run --runs $(FUZZ_RUNS) --jobs $(FUZZ_JOBS)

# The differential fuzzer needs nothing but the standard library (inputs come from a seeded
# random.Random per input, so any input of any run can be made again) and qemu-ga.
FUZZ_DIFF_RUNS ?= 100000
FUZZ_DIFF_SEED ?= 1
FUZZ_DIFF_SECONDS ?= 7200

fuzz-diff:  ## qga-mini and qemu-ga side by side on hostile inputs (FUZZ_DIFF_RUNS=100000)
	$(PYTHON) -m tests.fuzz_diff --runs $(FUZZ_DIFF_RUNS) --seed $(FUZZ_DIFF_SEED) \
		--seconds $(FUZZ_DIFF_SECONDS) --save .fuzz-work/fuzz-diff

fuzz-diff-replay:  ## CI: the saved reproducers and a fixed-seed 5,000-input differential run
	$(PYTHON) -m tests.fuzz_diff --replay tests/fuzz_diff/reproducers --runs 5000 --seed ci

fuzz-corpus:  ## rewrite the seed corpus tests/fuzz/corpus/ from the command table
	$(PYTHON) -m tests.fuzz.make_corpus

soak:  ## long soak (10^5 requests, 10^3 reconnects; RSS/fd slopes) and the fault tests
	QGA_SOAK=long $(PYTHON) -m unittest tests.test_soak tests.test_faults -v

demo:  ## run a demo agent on /tmp/qga-demo.sock and talk to it (no VM needed)
	sh contrib/demo.sh
