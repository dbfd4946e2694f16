"""The differential fuzzer's driver: ``python3 -m tests.fuzz_diff --runs N --seed S``.

For each input (cases.make_case(seed, i)): the setup it needs (a file handle, an exec pid) in
both agents, the guard's check of the exact bytes each agent will get, the exchange, the
comparison, then the handles and children the input created are closed and collected.  A
divergence is either known (known.py: which area owns it, and why) or new; a new one is
printed and, with --save DIR, written as a reproducer.  --replay DIR sends the saved
reproducers first.  The exit status is 1 when anything new diverged.
"""
import argparse
import base64
import glob
import json
import os
import signal
import sys
import time

from tests.fuzz_diff import known
from tests.fuzz_diff.agents import AgentPair
from tests.fuzz_diff.cases import HANDLE, PID, make_case
from tests.fuzz_diff.guard import refusal


def normalize(outcome, compare_return=False):
    """What is compared of one agent's answer: each reply's kind, error class and text, the
    id it carries (and with ``compare_return`` the value returned); then how the exchange
    ended."""
    out = []
    for reply in outcome.replies():
        if "bad" in reply:
            out.append(("bad", reply["bad"]))
        elif "error" in reply:
            out.append(("error", reply["error"]["class"], reply["error"]["desc"],
                        repr(reply.get("id", "(no id)"))))
        else:
            value = json.dumps(reply["return"], sort_keys=True) if compare_return else ""
            out.append(("return", repr(reply.get("id", "(no id)")), value))
    return out, outcome.end


def describe(case):
    data = b"".join(case["chunks"])
    return "#%s %s (%d bytes in %d writes)" % (case["index"], case["what"][:200], len(data),
                                               len(case["chunks"]))


class Fuzzer(object):
    def __init__(self, save_dir=None, verbose=False):
        self.pair = None
        self.save_dir = save_dir
        self.verbose = verbose
        self.counts = {"inputs": 0, "same": 0, "known": 0, "new": 0, "refused": 0,
                       "restarts": 0}
        self.known_seen = {}
        self.new = []

    def start(self):
        if self.pair is None:
            self.pair = AgentPair()

    def restart(self):
        self.counts["restarts"] += 1
        self.close()
        self.start()

    def close(self):
        if self.pair is not None:
            self.pair.close()
            self.pair = None

    # -- one input ------------------------------------------------------------------------------

    def setup(self, needs):
        """{placeholder: [value per side]} for what the input needs."""
        values = {}
        if "handle" in needs:
            replies = self.pair.request([{"execute": "guest-file-open",
                                          "arguments": {"path": "fuzz-file", "mode": "r+"}}] * 2)
            values[HANDLE] = [r[0].get("return", -1) if r else -1 for r in replies]
        if "pid" in needs:
            replies = self.pair.request([{"execute": "guest-exec", "arguments": {
                "path": "/bin/echo", "arg": ["fuzz"], "capture-output": True}}] * 2)
            values[PID] = [r[0].get("return", {}).get("pid", -1) if r else -1 for r in replies]
        return values

    def cleanup(self, data, outcomes, values):
        """Close the handles and collect the children that the input and its setup made."""
        handles = [[v] for v in values.get(HANDLE, [-1, -1])]
        pids = [[v] for v in values.get(PID, [-1, -1])]
        opened = b"file-open" in data
        for i, outcome in enumerate(outcomes):
            for reply in outcome.replies():
                value = reply.get("return")
                if opened and type(value) is int and value >= 1000:
                    handles[i].append(value)
                if isinstance(value, dict) and type(value.get("pid")) is int:
                    pids[i].append(value["pid"])
        for i, side in enumerate(self.pair.sides):
            for handle in handles[i]:
                if handle != -1:
                    self.ask(i, {"execute": "guest-file-close", "arguments": {"handle": handle}})
            for pid in pids[i]:
                for _ in range(100):
                    if pid == -1:
                        break
                    reply = self.ask(i, {"execute": "guest-exec-status",
                                         "arguments": {"pid": pid}})
                    if not reply or reply.get("return", {}).get("exited", True):
                        break
                    time.sleep(0.01)

    def ask(self, i, message):
        messages = [{"execute": "guest-ping"}] * 2
        messages[i] = message
        replies = self.pair.request(messages)[i]
        return replies[0] if replies else None

    def run_case(self, case):
        self.start()
        self.counts["inputs"] += 1
        values = self.setup(case["needs"])
        per_side = []
        for i in range(2):
            chunks = []
            for chunk in case["chunks"]:
                for placeholder, value in values.items():
                    chunk = chunk.replace(placeholder, str(value[i]).encode())
                chunks.append(chunk)
            per_side.append(chunks)
        for chunks in per_side:
            why = refusal(b"".join(chunks))
            if why:
                self.counts["refused"] += 1
                print("refused to send %s: %s" % (describe(case), why), flush=True)
                return
        outcomes = self.pair.exchange(per_side)
        theirs, ours = (normalize(outcome, case.get("compare-return")) for outcome in outcomes)
        if theirs != ours:
            self.divergence(case, theirs, ours)
        else:
            self.counts["same"] += 1
        if all(outcome.end == "ok" for outcome in outcomes):
            self.cleanup(b"".join(per_side[0]), outcomes, values)
        else:
            self.restart()

    def divergence(self, case, theirs, ours):
        entry = known.match(case, theirs, ours)
        if entry is not None:
            self.counts["known"] += 1
            self.known_seen[entry.name] = self.known_seen.get(entry.name, 0) + 1
            if self.save_dir and self.known_seen[entry.name] == 1:   # one example of each
                self.save(case, "known-%s" % entry.name)
            if self.verbose:
                print("known (%s): %s" % (entry.name, describe(case)), flush=True)
            return
        self.counts["new"] += 1
        self.new.append(case)
        at = first_difference(theirs, ours)
        print("DIVERGENCE %s\n  qemu-ga:  %s\n  qga-mini: %s" % (
            describe(case), _short(theirs, at), _short(ours, at)), flush=True)
        if self.save_dir:
            self.save(case, "new")

    def save(self, case, kind):
        os.makedirs(self.save_dir, exist_ok=True)
        save(case, os.path.join(self.save_dir, "%s-seed%s-%s.json" % (kind, case["seed"],
                                                                       case["index"])))


def _short(normalized, start):
    replies, end = normalized
    shown = [tuple(str(x)[:160] for x in r) for r in replies[start:start + 3]]
    return "from reply %d: %s, then %s (%d replies)" % (start, shown, end, len(replies))


def first_difference(theirs, ours):
    for i, (a, b) in enumerate(zip(theirs[0], ours[0])):
        if a != b:
            return i
    return min(len(theirs[0]), len(ours[0]))


def save(case, path):
    record = dict(case, chunks=[base64.b64encode(c).decode() for c in case["chunks"]])
    with open(path, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")


def load(path):
    with open(path) as f:
        record = json.load(f)
    record["chunks"] = [base64.b64decode(c) for c in record["chunks"]]
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m tests.fuzz_diff")
    parser.add_argument("--runs", type=int, default=1000, help="generated inputs")
    parser.add_argument("--seed", default="1")
    parser.add_argument("--start", type=int, default=0, help="first input number")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--save", help="write each new divergence here as a reproducer")
    parser.add_argument("--replay", help="send every reproducer in this directory first")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    # SIGTERM (a bounded run's timeout, a kill by pid) still tears both agents down.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    fuzzer = Fuzzer(args.save, args.verbose)
    began = time.monotonic()
    try:
        replays = sorted(glob.glob(os.path.join(args.replay, "*.json"))) if args.replay else []
        for path in replays:
            fuzzer.run_case(load(path))
        for index in range(args.start, args.start + args.runs):
            if args.seconds and time.monotonic() - began > args.seconds:
                break
            fuzzer.run_case(make_case(args.seed, index))
            if index % 1000 == 999:
                print("fuzz-diff: %s after %.0f s" % (fuzzer.counts, time.monotonic() - began),
                      flush=True)
    finally:
        fuzzer.close()
    print("fuzz-diff: seed %s: %s in %.0f s" % (args.seed, fuzzer.counts,
                                               time.monotonic() - began))
    for name, count in sorted(fuzzer.known_seen.items()):
        print("  known %-40s %6d inputs (%s)" % (name, count, known.BY_NAME[name].area))
    return 1 if fuzzer.counts["new"] or fuzzer.counts["refused"] else 0


if __name__ == "__main__":
    sys.exit(main())
