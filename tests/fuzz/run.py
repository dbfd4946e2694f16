"""``make fuzz``: coverage-guided fuzzing of the framer and the dispatcher with atheris.

    .venv/bin/python -m tests.fuzz.run [--runs 1000000] [--jobs 2] [--max-len 4096]

Each of ``--jobs`` worker processes runs libFuzzer over tests.fuzz.target.FuzzTarget for its
share of ``--runs`` inputs, seeded with tests/fuzz/corpus/ and with seeds made from the
command table; new interesting inputs go to .fuzz-work/ (not committed).  A failing input is
saved as .fuzz-work/crash-* (or timeout-*): copy it into tests/fuzz/crashes/ to keep it as a
regression test (tests/test_fuzz_corpus.py replays that directory).  The total number of
inputs and the time taken are printed at the end; the exit status is 1 if anything failed.
"""
import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
WORK = os.path.join(TOP, ".fuzz-work")
DONE = re.compile(r"Done (\d+) runs in (\d+) second")
ARTIFACT_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


def write_dictionary(path):
    """libFuzzer tokens: JSON punctuation, keywords, the 0xFF marker, and every command and
    argument name in the command table."""
    from tests.support import qga_mini
    tokens = ['"{"', '"}"', '"["', '"]"', '":"', '","', '"\\""', '"\'"', '"true"', '"false"',
              '"null"', '"\\xff"', '"\\\\u"', '"\\\\u0000"', '"1e400"', '"-"',
              '"\\"execute\\""', '"\\"arguments\\""', '"\\"id\\""', '"77"']
    names = set(qga_mini.COMMANDS)
    for cmd in qga_mini.COMMANDS.values():
        names.update(spec.lstrip("*") for spec in cmd.data)
    for definition in qga_mini.ARGUMENT_TYPES.values():
        for key in ("struct", "alternate"):
            names.update(spec.lstrip("*") for spec in definition.get(key, {}))
        names.update(definition.get("enum", ()))
    tokens += ['"\\"%s\\""' % name for name in sorted(names)]
    with open(path, "w") as f:
        f.write("\n".join(tokens) + "\n")


def worker(args):
    import atheris
    with atheris.instrument_imports(include=["qga_mini"]):
        sys.path.insert(0, TOP)
        import qga_mini  # noqa: F401  (instrumented once; tests.support reuses it)
    from tests.fuzz.make_corpus import command_seeds
    from tests.fuzz.target import CORPUS_DIR, FuzzTarget

    generated = os.path.join(WORK, "generated")
    os.makedirs(generated, exist_ok=True)
    for i, data in enumerate(sorted(command_seeds().values())):
        with open(os.path.join(generated, "seed-%04d" % i), "wb") as f:
            f.write(data)
    own = os.path.join(WORK, "corpus-%d" % args.worker)
    os.makedirs(own, exist_ok=True)
    target = FuzzTarget()
    libfuzzer_args = [sys.argv[0], "-runs=%d" % args.runs, "-max_len=%d" % args.max_len,
                      "-timeout=%d" % args.timeout, "-seed=%d" % (args.seed + args.worker),
                      "-dict=%s" % os.path.join(WORK, "qga.dict"), "-print_final_stats=1",
                      "-artifact_prefix=%s/" % WORK, "-rss_limit_mb=4096",
                      own, CORPUS_DIR, generated]
    atheris.Setup(libfuzzer_args, target.one_input)
    atheris.Fuzz()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000000, help="inputs in all (10^6)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-len", type=int, default=4096, help="bytes of one input")
    parser.add_argument("--timeout", type=int, default=10, help="seconds for one input")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args)

    os.makedirs(WORK, exist_ok=True)
    sys.path.insert(0, TOP)
    write_dictionary(os.path.join(WORK, "qga.dict"))
    before = set(os.listdir(WORK))
    share = [args.runs // args.jobs + (i < args.runs % args.jobs) for i in range(args.jobs)]
    started = time.time()
    workers = []
    for i, runs in enumerate(share):
        log = open(os.path.join(WORK, "worker-%d.log" % i), "w+")
        cmd = [sys.executable, "-m", "tests.fuzz.run", "--worker", str(i), "--runs", str(runs),
               "--max-len", str(args.max_len), "--timeout", str(args.timeout),
               "--seed", str(args.seed)]
        workers.append((subprocess.Popen(cmd, cwd=TOP, stdout=log, stderr=log), log))
    total, failed = 0, False
    for i, (proc, log) in enumerate(workers):
        status = proc.wait()
        log.seek(0)
        text = log.read()
        log.close()
        done = DONE.findall(text)
        runs = int(done[-1][0]) if done else 0
        total += runs
        sys.stdout.write("worker %d: %d inputs, exit status %d (log: %s)\n"
                         % (i, runs, status, log.name))
        if status != 0:
            failed = True
            sys.stdout.write(text[-3000:] + "\n")
    elapsed = time.time() - started
    artifacts = sorted(name for name in set(os.listdir(WORK)) - before
                       if name.startswith(ARTIFACT_PREFIXES))
    sys.stdout.write("fuzz: %d inputs in %.0f s (%.0f inputs/s, %d workers), %d failing "
                     "inputs\n" % (total, elapsed, total / max(elapsed, 1e-9), args.jobs,
                                   len(artifacts)))
    for name in artifacts:
        sys.stdout.write("  %s: copy it into tests/fuzz/crashes/ and fix the agent\n"
                         % os.path.join(WORK, name))
    return 1 if failed or artifacts or total < args.runs else 0


if __name__ == "__main__":
    sys.exit(main())
