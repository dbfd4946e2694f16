"""CPUs and memory blocks: guest-get/set-vcpus, guest-get/set-memory-blocks, block info.

Every command runs on fixture trees (captured from this machine, or generated: a 2-vCPU
virtio VM and a 256-CPU / 512-block guest).  The set commands write only into temp copies of
those trees: nothing here ever writes the real /sys.
"""
import json
import os
import unittest

from tests.support import AgentHarness, needs_root, qga_mini
from tests.system_support import QEMU_GA, QemuGa, TreeCase, golden

CPU = "/sys/devices/system/cpu"
MEMORY = "/sys/devices/system/memory"


class PureParsers(unittest.TestCase):
    def test_numbered_entries_keep_only_numbered_names_in_numeric_order(self):
        names = ["cpu10", "cpufreq", "cpu2", "cpuidle", "online", "cpu0", "cpu1x"]
        self.assertEqual(qga_mini.numbered_entries(names, qga_mini._CPU_ENTRY), [0, 2, 10])

    def test_block_size_is_hex_as_strtol_reads_it(self):
        parse = qga_mini.parse_block_size
        self.assertEqual(parse("8000000\n"), 134217728)
        self.assertEqual(parse("0x10"), 16)
        self.assertEqual(parse("  ff zz"), 255)
        self.assertEqual(parse("zz"), 0)
        self.assertEqual(parse("-1"), (1 << 64) - 1)


class Vcpus(TreeCase):
    def expected(self, guest):
        return [{"online": online != "0", "can-offline": online is not None, "logical-id": i}
                for i, online in sorted(guest["cpus"].items())]

    def test_large_guest_lists_every_cpu_with_cpu0_fixed(self):
        vcpus = self.h.call("guest-get-vcpus")
        self.assertEqual(vcpus, self.expected(self.tree.guest))
        self.assertEqual(len(vcpus), 256)
        self.assertEqual(vcpus[0], {"online": True, "can-offline": False, "logical-id": 0})
        self.assertEqual(sum(1 for v in vcpus if not v["online"]), 56 + 6)

    def test_reply_members_are_in_qemu_ga_wire_order(self):
        self.h.send({"execute": "guest-get-vcpus"})
        line = self.h.read_line().decode()
        self.assertTrue(line.startswith('{"return": [{"online": true, "can-offline": false, '
                                        '"logical-id": 0}, '), line)

    def test_set_offline_and_online_writes_the_online_files(self):
        self.assertEqual(self.h.call("guest-set-vcpus", vcpus=[
            {"logical-id": 5, "online": False}, {"logical-id": 31, "online": True}]), 2)
        self.assertEqual(self.tree.read(CPU + "/cpu5/online"), "0\n")
        self.assertEqual(self.tree.read(CPU + "/cpu31/online"), "1\n")
        states = {v["logical-id"]: v["online"] for v in self.h.call("guest-get-vcpus")}
        self.assertFalse(states[5])
        self.assertTrue(states[31])

    def test_set_to_the_current_state_writes_nothing(self):
        path = self.tree.path(CPU + "/cpu7/online")
        os.chmod(path, 0o444)
        os.utime(path, (1, 1))
        self.assertEqual(self.h.call("guest-set-vcpus", vcpus=[{"logical-id": 7,
                                                               "online": True}]), 1)
        self.assertEqual(os.stat(path).st_mtime, 1)

    def test_cpu_without_online_file_cannot_be_offlined_but_onlining_is_a_no_op(self):
        self.assertEqual(self.h.error("guest-set-vcpus", vcpus=[{"logical-id": 0,
                                                                 "online": False}]),
                         ("GenericError", "logical processor #0 can't be offlined"))
        self.assertEqual(self.h.call("guest-set-vcpus", vcpus=[{"logical-id": 0,
                                                               "online": True}]), 1)

    def test_partial_success_returns_the_count_done_and_stops_at_the_failure(self):
        done = self.h.call("guest-set-vcpus", vcpus=[
            {"logical-id": 1, "online": False}, {"logical-id": 2, "online": False},
            {"logical-id": 0, "online": False}, {"logical-id": 3, "online": False}])
        self.assertEqual(done, 2)
        self.assertEqual(self.tree.read(CPU + "/cpu2/online"), "0\n")
        self.assertEqual(self.tree.read(CPU + "/cpu3/online"), "1\n")   # never reached

    def test_first_entry_failing_is_an_error_with_qemu_ga_text(self):
        self.assertEqual(self.h.error("guest-set-vcpus", vcpus=[{"logical-id": 999,
                                                                 "online": True}]),
                         ("GenericError", 'open("/sys/devices/system/cpu/cpu999/"): '
                                          "No such file or directory"))
        self.assertEqual(self.h.error("guest-set-vcpus", vcpus=[{"logical-id": -1,
                                                                 "online": True}])[1],
                         'open("/sys/devices/system/cpu/cpu-1/"): No such file or directory')

    def test_empty_list_does_nothing_and_returns_zero_as_qemu_ga_7_2(self):
        self.assertEqual(self.h.call("guest-set-vcpus", vcpus=[]), 0)

    def test_bad_arguments_get_qapi_errors_and_the_agent_keeps_serving(self):
        self.assertEqual(self.h.error("guest-set-vcpus", vcpus=[{"logical-id": 1}]),
                         ("GenericError", "Parameter 'vcpus[0].online' is missing"))
        self.assertEqual(self.h.error("guest-set-vcpus", vcpus="all")[1],
                         "Invalid parameter type for 'vcpus', expected: array")
        self.assertEqual(len(self.h.call("guest-get-vcpus")), 256)

    def test_unreadable_online_file_errors_name_the_double_slash_path(self):
        online = CPU + "/cpu3/online"
        self.tree.remove(online)
        os.mkdir(self.tree.path(online))
        self.assertEqual(self.h.error("guest-get-vcpus")[1],
                         'pread("/sys/devices/system/cpu/cpu3//online"): Is a directory')
        self.assertEqual(self.h.error("guest-set-vcpus", vcpus=[{"logical-id": 3,
                                                                 "online": False}])[1],
                         'open("/sys/devices/system/cpu/cpu3//online"): Is a directory')

    def test_empty_online_file_is_an_unexpected_eof(self):
        self.tree.write(CPU + "/cpu4/online", "")
        self.assertEqual(self.h.error("guest-get-vcpus")[1],
                         'pread("/sys/devices/system/cpu/cpu4//online"): unexpected EOF')

    def test_missing_cpu_directory(self):
        self.tree.remove(CPU)
        self.assertEqual(self.h.error("guest-get-vcpus")[1],
                         "failed to list entries: /sys/devices/system/cpu: "
                         "No such file or directory")


class VcpusVirtioVm(TreeCase):
    profile = "virtio-vm"

    def test_two_vcpus(self):
        self.assertEqual(self.h.call("guest-get-vcpus"),
                         [{"online": True, "can-offline": False, "logical-id": 0},
                          {"online": True, "can-offline": True, "logical-id": 1}])


class ThisMachine(TreeCase):
    profile = "this-machine"

    def test_vcpus_and_memory_blocks_are_qemu_ga_s_captured_answers_in_numeric_order(self):
        for command, key in (("guest-get-vcpus", "logical-id"),
                             ("guest-get-memory-blocks", "phys-index")):
            theirs = json.loads(golden(self.profile, command))["return"]
            self.assertEqual(self.h.call(command), sorted(theirs, key=lambda e: e[key]))

    def test_block_size_is_qemu_ga_s(self):
        self.assertEqual({"return": self.h.call("guest-get-memory-block-info")},
                         json.loads(golden(self.profile, "guest-get-memory-block-info")))


class MemoryBlocks(TreeCase):
    def test_large_guest_lists_512_blocks_with_state_and_removability(self):
        blocks = self.h.call("guest-get-memory-blocks")
        expected = [{"online": state == "online", "can-offline": removable == "1",
                     "phys-index": i}
                    for i, (state, removable) in sorted(self.tree.guest["memory"].items())]
        self.assertEqual(blocks, expected)
        self.assertEqual(blocks[5], {"online": True, "can-offline": False, "phys-index": 5})
        self.assertEqual(sum(1 for b in blocks if not b["online"]), 32)

    def test_block_without_state_file_is_online_and_fixed(self):
        self.tree.remove(MEMORY + "/memory9/state")
        self.assertEqual(self.h.call("guest-get-memory-blocks")[9],
                         {"online": True, "can-offline": False, "phys-index": 9})

    def test_block_info_is_the_hex_block_size(self):
        self.assertEqual(self.h.call("guest-get-memory-block-info"), {"size": 2 << 30})

    def test_block_info_errors(self):
        self.tree.remove(MEMORY + "/block_size_bytes")
        self.assertEqual(self.h.error("guest-get-memory-block-info")[1],
                         'open sysfs file "block_size_bytes": No such file or directory')
        self.tree.remove(MEMORY)
        self.assertEqual(self.h.error("guest-get-memory-block-info")[1],
                         'open("/sys/devices/system/memory/"): No such file or directory')

    def test_no_memory_directory_means_no_blocks_and_empty_one_is_an_error(self):
        self.tree.remove(MEMORY)
        self.assertEqual(self.h.call("guest-get-memory-blocks"), [])
        os.mkdir(self.tree.path(MEMORY))
        self.assertEqual(self.h.error("guest-get-memory-blocks"),
                         ("GenericError", "guest reported zero memory blocks!"))

    def test_set_answers_each_block_in_request_order(self):
        os.mkdir(self.tree.path(MEMORY + "/memory7/x"))
        self.tree.remove(MEMORY + "/memory8/state")
        self.tree.remove(MEMORY + "/memory9/state")
        os.mkdir(self.tree.path(MEMORY + "/memory9/state"))
        reply = self.h.call("guest-set-memory-blocks", **{"mem-blks": [
            {"phys-index": 3, "online": False},          # written
            {"phys-index": 4, "online": True},           # already online: success, no write
            {"phys-index": 490, "online": True},         # offline block brought online
            {"phys-index": 9999, "online": True},        # no such block
            {"phys-index": 8, "online": False},          # no state file: cannot offline
            {"phys-index": 8, "online": True},           # ... but is always online
            {"phys-index": 9, "online": False},          # state unreadable
            {"phys-index": -1, "online": False}]})       # wraps to 2^64-1, as in qemu-ga
        self.assertEqual(reply, [
            {"response": "success", "phys-index": 3},
            {"response": "success", "phys-index": 4},
            {"response": "success", "phys-index": 490},
            {"response": "not-found", "error-code": 2, "phys-index": 9999},
            {"response": "operation-not-supported", "error-code": 2, "phys-index": 8},
            {"response": "success", "phys-index": 8},
            {"response": "operation-failed", "error-code": 21, "phys-index": 9},
            {"response": "not-found", "error-code": 2, "phys-index": (1 << 64) - 1}])
        self.assertEqual(self.tree.read(MEMORY + "/memory3/state"), "offline")
        self.assertEqual(self.tree.read(MEMORY + "/memory4/state"), "online\n")
        self.assertEqual(self.tree.read(MEMORY + "/memory490/state"), "online")

    def test_set_without_memory_directory_is_not_supported(self):
        self.tree.remove(MEMORY)
        self.assertEqual(self.h.call("guest-set-memory-blocks", **{"mem-blks": [
            {"phys-index": 0, "online": True}]}),
            [{"response": "operation-not-supported", "error-code": 2, "phys-index": 0}])

    def test_set_with_an_empty_list_and_bad_arguments(self):
        self.assertEqual(self.h.call("guest-set-memory-blocks", **{"mem-blks": []}), [])
        self.assertEqual(self.h.error("guest-set-memory-blocks", **{"mem-blks": [
            {"phys-index": "x", "online": True}]})[1], "Parameter 'mem-blks[0].phys-index' "
                                                        "expects uint64")


@unittest.skipUnless(QEMU_GA, "qemu-ga is not installed")
class LiveAgainstQemuGa(unittest.TestCase):
    """Read-only commands on this machine, side by side with the real qemu-ga."""

    @needs_root
    def test_same_vcpus_memory_blocks_and_block_size(self):
        oracle = QemuGa()
        try:
            with AgentHarness() as h:
                for command, key in (("guest-get-vcpus", "logical-id"),
                                     ("guest-get-memory-blocks", "phys-index")):
                    self.assertEqual(h.call(command),
                                     sorted(oracle.call(command), key=lambda e: e[key]))
                self.assertEqual(h.call("guest-get-memory-block-info"),
                                 oracle.call("guest-get-memory-block-info"))
        finally:
            oracle.close()


if __name__ == "__main__":
    unittest.main()
