"""guest-get-cpustats and guest-get-load (the statistics this section owns).

cpustats: /proc/stat's per-CPU lines in milliseconds, as qemu-ga 7.2 reports them
(ticks * 1000 / CLK_TCK).  load: /proc/loadavg read as getloadavg() reads it.
"""
import json
import os
import unittest

from tests.support import AgentHarness, needs_root, qga_mini
from tests.system_support import QEMU_GA, QemuGa, TreeCase, call_on, encode_return, golden

WIRE_ORDER = ["cpu", "guestnice", "idle", "steal", "iowait", "system", "guest", "nice", "irq",
              "type", "user", "softirq"]


class ProcStatParser(unittest.TestCase):
    def parse(self, text, ticks=100):
        return qga_mini.parse_proc_stat(text, ticks)

    def test_total_line_and_other_lines_are_skipped(self):
        entries, complete = self.parse("cpu  1 2 3 4\ncpu3 1 2 3 4 5 6 7 8 9 10\nintr 5 6\n"
                                       "cpufreq 1 2 3 4\n")
        self.assertTrue(complete)
        self.assertEqual(entries, [{"cpu": 3, "guestnice": 100, "idle": 40, "steal": 80,
                                    "iowait": 50, "system": 30, "guest": 90, "nice": 20,
                                    "irq": 60, "type": "linux", "user": 10, "softirq": 70}])
        self.assertEqual(list(entries[0]), WIRE_ORDER)

    def test_members_follow_the_number_of_columns(self):
        present = {}
        for count in range(4, 11):
            entries, _ = self.parse("cpu0 " + " ".join(["7"] * count))
            present[count] = set(entries[0]) - {"cpu", "type", "user", "nice", "system", "idle"}
        self.assertEqual(present[4], set())
        self.assertEqual(present[5], {"iowait"})
        self.assertEqual(present[6], {"iowait", "irq"})
        self.assertEqual(present[7], {"iowait", "irq", "softirq"})
        self.assertEqual(present[8], present[7] | {"steal"})
        self.assertEqual(present[10], present[8] | {"guest", "guestnice"})

    def test_a_short_cpu_line_ends_the_list(self):
        entries, complete = self.parse("cpu0 1 2 3 4\ncpu1 1 2 3\ncpu2 1 2 3 4\n")
        self.assertFalse(complete)
        self.assertEqual([e["cpu"] for e in entries], [0])

    def test_ticks_become_milliseconds_with_integer_division(self):
        entries, _ = self.parse("cpu0 3 1 0 7\n", ticks=250)
        self.assertEqual([entries[0][k] for k in ("user", "nice", "system", "idle")],
                         [12, 4, 0, 28])


class CpuStats(unittest.TestCase):
    def test_large_guest_has_a_line_per_online_cpu(self):
        stats, guest = call_on("large", "guest-get-cpustats")
        online = [i for i, state in sorted(guest["cpus"].items()) if state != "0"]
        self.assertEqual([s["cpu"] for s in stats], online)
        ticks = os.sysconf("SC_CLK_TCK")
        self.assertEqual(stats[-1]["user"], online[-1] * 100 * 1000 // ticks)

    def test_this_machine_against_qemu_ga_s_answer_a_moment_later(self):
        ours = call_on("this-machine", "guest-get-cpustats")[0]
        theirs = json.loads(golden("this-machine", "guest-get-cpustats"))["return"]
        self.assertEqual([list(e) for e in ours], [list(e) for e in theirs])
        for mine, qemu in zip(ours, theirs):      # counters only grow, by less than a minute
            for key in mine:
                if key not in ("cpu", "type"):
                    self.assertTrue(0 <= qemu[key] - mine[key] < 60000, (key, mine, qemu))

    def test_missing_proc_stat(self):
        reply = call_on("virtio-vm", "guest-get-cpustats", lambda t: t.remove("/proc/stat"))[0]
        self.assertEqual(reply, ("error", "GenericError",
                                 'open("/proc/stat"): No such file or directory'))


class Load(TreeCase):

    def test_three_averages_in_qemu_ga_s_member_order(self):
        self.assertEqual(self.h.call("guest-get-load"),
                         {"load1m": 12.5, "load5m": 8.25, "load15m": 4.0})
        self.assertTrue(encode_return(self.h.call("guest-get-load")).startswith(
            '{"return": {"load15m": 4, "load5m": 8.25, "load1m": 12.5}'))

    def test_errors(self):
        self.tree.write("/proc/loadavg", "0.5 1.x\n")
        self.assertEqual(self.h.error("guest-get-load"),
                         ("GenericError", "cannot query load average: Invalid argument"))
        self.tree.remove("/proc/loadavg")
        self.assertEqual(self.h.error("guest-get-load")[1],
                         "cannot query load average: No such file or directory")

    def test_parser(self):
        self.assertEqual(qga_mini.parse_loadavg("0.95 0.43 0.17 1/97 12031\n"),
                         [0.95, 0.43, 0.17])
        self.assertRaises(ValueError, qga_mini.parse_loadavg, "0.95 0.43\n")


class LiveStats(unittest.TestCase):
    def test_load_is_proc_loadavg_and_within_rounding_of_getloadavg(self):
        def proc_loadavg():
            with open("/proc/loadavg") as f:
                return [float(v) for v in f.read().split()[:3]]
        with AgentHarness() as h:
            before, exact_before = proc_loadavg(), os.getloadavg()
            load = h.call("guest-get-load")
            after, exact_after = proc_loadavg(), os.getloadavg()
        for i, key in enumerate(("load1m", "load5m", "load15m")):
            self.assertTrue(min(before[i], after[i]) <= load[key] <= max(before[i], after[i]))
            self.assertTrue(min(exact_before[i], exact_after[i]) - 0.006 <= load[key]
                            <= max(exact_before[i], exact_after[i]) + 0.006, (key, load))

    @unittest.skipUnless(QEMU_GA, "qemu-ga is not installed")
    @needs_root
    def test_cpustats_side_by_side_with_qemu_ga(self):
        oracle = QemuGa()
        try:
            with AgentHarness() as h:
                ours = h.call("guest-get-cpustats")
                theirs = oracle.call("guest-get-cpustats")
        finally:
            oracle.close()
        self.assertEqual([list(e) for e in ours], [list(e) for e in theirs])
        for mine, qemu in zip(ours, theirs):
            self.assertTrue(all(0 <= qemu[k] - mine[k] < 10000 for k in mine
                                if k not in ("cpu", "type")), (mine, qemu))


if __name__ == "__main__":
    unittest.main()
