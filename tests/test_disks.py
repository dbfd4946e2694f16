"""guest-get-fsinfo, guest-get-disks, guest-get-diskstats and the mount list, on fixture trees.

Trees (see tests/fixtures/storage/make_trees.py): this machine as captured (committed), a small
virtio VM and a large guest with every kind of disk (both built at test time).  No test here
freezes or trims anything.
"""
import ctypes
import importlib.util
import os
import shutil
import struct
import tempfile
import time
import unittest
from unittest import mock

from tests.support import AgentHarness, FIXTURES, SCHEMA, qga_mini

STORAGE = os.path.join(FIXTURES, "storage")
THIS_MACHINE = os.path.join(STORAGE, "thismachine")


def load_make_trees():
    spec = importlib.util.spec_from_file_location("make_trees",
                                                  os.path.join(STORAGE, "make_trees.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_trees = load_make_trees()


class TreeCase(unittest.TestCase):
    """Builds the generated trees once per class, in a temporary directory."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="qga-storage-")
        cls.vm = os.path.join(cls.tmp, "vm")
        cls.large = os.path.join(cls.tmp, "large")
        make_trees.build_virtio_vm(cls.vm)
        make_trees.build_large_guest(cls.large)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def call(self, root, name, **args):
        with AgentHarness(host_root=root) as h:
            return h.call(name, **args)


# -- the mount list ------------------------------------------------------------------------------

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
28 27 254:2 / /mnt/with\\040space\\011tab rw,relatime - ext4 /dev/vda2 rw
29 27 254:1 /srv /srv/bind rw,relatime - ext4 /dev/vda1 rw
30 27 0:50 / /home rw,relatime - btrfs /dev/vdb rw
31 27 0:51 / /var rw,relatime - btrfs /dev/vdb rw
32 27 0:52 / /nfs rw - nfs4 server:/export rw
33 27 0:53 / /smb rw - cifs //server/share rw
34 27 0:54 / /fuse rw - fuse.sshfs user@host: rw
35 27 0:55 / /gone rw - btrfs /dev/gone rw
36 27 8:0 / /back\\134slash rw - xfs /dev/sda rw
garbage line
37 27 x:y / /bad rw - ext4 /dev/bad rw
38 27 8:16 / /nodash rw ext4 /dev/sdb rw
"""


def fake_devices(source):
    return {"/dev/vdb": (254, 16), "/srv": "dir"}.get(source)


class MountListTest(unittest.TestCase):

    def test_parse_mountinfo_decodes_octal_escapes_and_skips_malformed_lines(self):
        entries = qga_mini.parse_mountinfo(MOUNTINFO)
        self.assertEqual([e.dirname for e in entries],
                         ["/proc", "/", "/mnt/with space\ttab", "/srv/bind", "/home", "/var",
                          "/nfs", "/smb", "/fuse", "/gone", "/back\\slash"])
        self.assertEqual(entries[1], qga_mini.MountInfoEntry(254, 1, "/", "ext4", "/dev/vda1"))

    def test_unescape_leaves_unknown_escapes_alone(self):
        self.assertEqual(qga_mini.unescape_mount_field("a\\400b\\x\\\\c\\101"), "a\\400b\\x\\cA")

    def test_block_devices_only_btrfs_by_its_source_first_mount_of_a_device_wins(self):
        mounts = qga_mini.select_local_mounts(qga_mini.parse_mountinfo(MOUNTINFO), fake_devices)
        self.assertEqual([(m.dirname, m.fstype, m.major, m.minor) for m in mounts],
                         [("/", "ext4", 254, 1), ("/mnt/with space\ttab", "ext4", 254, 2),
                          ("/home", "btrfs", 254, 16), ("/back\\slash", "xfs", 8, 0)])
        self.assertEqual(mounts[0].dev, os.makedev(254, 1))
        self.assertIsNone(mounts[2].dev)        # btrfs subvolumes have devices of their own

    def test_network_and_pseudo_file_systems_are_never_asked_about(self):
        asked = []
        qga_mini.select_local_mounts(qga_mini.parse_mountinfo(MOUNTINFO),
                                     lambda source: asked.append(source))
        self.assertEqual(asked, ["/dev/vdb", "/dev/vdb", "/dev/gone"])

    def test_mounts_fallback_rules(self):
        text = ("/dev/vda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n"
                "//server/share /smb cifs rw 0 0\n/srv /srv/bind none rw,bind 0 0\n"
                "/dev/vda1 /again ext4 rw 0 0\n/dev/root /x ext4 rw 0 0\n"
                "/dev/other /y ext4 rw 0 0\n")
        devices = {"/dev/vda1": (254, 1), "/srv": "dir"}
        mounts = qga_mini.select_mtab_mounts(qga_mini.parse_mounts(text), devices.get)
        # /dev/root and /dev/other cannot be stat()ed: both are 0:0, so only the first stays.
        self.assertEqual([(m.dirname, m.major, m.minor) for m in mounts],
                         [("/", 254, 1), ("/x", 0, 0)])

    def test_mounts_file_is_the_fallback_and_its_absence_an_error(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        os.makedirs(tmp + "/proc/self")
        host = qga_mini.Host(tmp)
        with self.assertRaises(qga_mini.QgaError) as cm:
            qga_mini.build_mount_list(host)
        self.assertEqual(cm.exception.desc, "failed to open mtab file: '/proc/self/mounts'")
        with open(tmp + "/proc/self/mounts", "w") as f:
            f.write("/dev/vda1 / ext4 rw 0 0\n")
        self.assertEqual([m.dirname for m in qga_mini.build_mount_list(host)], ["/"])

    def test_this_machine_mount_list(self):
        mounts = qga_mini.build_mount_list(qga_mini.Host(THIS_MACHINE))
        self.assertEqual([(m.dirname, m.fstype) for m in mounts], [("/", "ext4")])


# -- guest-get-fsinfo ------------------------------------------------------------------------------

def pci(domain, bus, slot, function):
    return {"domain": domain, "bus": bus, "slot": slot, "function": function}


class FsinfoTest(TreeCase):

    def by_mountpoint(self, root):
        return {fs["mountpoint"]: fs for fs in self.call(root, "guest-get-fsinfo")}

    def test_this_machine(self):
        info = self.call(THIS_MACHINE, "guest-get-fsinfo")
        self.assertEqual(len(info), 1)
        fs = info[0]
        self.assertEqual((fs["name"], fs["mountpoint"], fs["type"]), ("vda", "/", "ext4"))
        self.assertEqual(fs["disk"], [{"serial": "overlayblk", "bus-type": "virtio", "bus": 0,
                                       "unit": 0, "pci-controller": pci(0, 0, 2, 0),
                                       "dev": "/dev/vda", "target": 0}])
        # "/" is the fixture directory, on a real file system: the sizes are there.
        self.assertLessEqual(fs["used-bytes"], fs["total-bytes"])
        self.assertLessEqual(fs["total-bytes"], fs["total-bytes-privileged"])

    def test_virtio_vm_partitions_reverse_mount_order(self):
        info = self.call(self.vm, "guest-get-fsinfo")
        self.assertEqual([(fs["name"], fs["mountpoint"]) for fs in info],
                         [("vda2", "/boot"), ("vda1", "/")])
        self.assertEqual(info[0]["disk"], [{"serial": "vm-disk-0001", "bus-type": "virtio",
                                            "bus": 0, "unit": 0,
                                            "pci-controller": pci(0, 0, 4, 0),
                                            "dev": "/dev/vda2", "target": 0}])
        self.assertNotIn("used-bytes", info[0])          # /boot does not exist in the tree

    def test_large_guest_addresses(self):
        info = self.by_mountpoint(self.large)
        expected = {   # mountpoint: (name, [(bus-type, pci, bus, target, unit, dev)])
            "/": ("dm-0", [("sata", pci(0, 0, 31, 2), 0, 0, 2, "/dev/sda2")]),
            "/boot": ("sda1", [("sata", pci(0, 0, 31, 2), 0, 0, 2, "/dev/sda1")]),
            "/boot/efi": ("nvme0n1p1", [("nvme", pci(0, 0, 6, 0), 0, 0, 0, "/dev/nvme0n1p1")]),
            "/data": ("dm-3", [("nvme", pci(0, 0, 6, 0), 0, 0, 0, "/dev/nvme0n1p2")]),
            "/srv": ("vdb", [("virtio", pci(0, 1, 0, 0), 0, 0, 0, "/dev/vdb")]),
            "/var": ("vda1", [("virtio", pci(0, 0, 5, 0), 0, 0, 0, "/dev/vda1")]),
            "/media/usb stick": ("sde1", [("usb", pci(0, 0, 29, 0), 0, 0, 0, "/dev/sde1")]),
            "/raid": ("md0", [("scsi", pci(0, 0, 3, 0), 0, 0, 2, "/dev/sdc"),
                              ("scsi", pci(0, 0, 7, 0), 0, 0, 3, "/dev/sdd")]),
            "/ide": ("sdb1", [("ide", pci(0, 0, 1, 1), 1, 0, 1, "/dev/sdb1")]),
            "/s390": ("vdc1", [("virtio", pci(0, 0, 0, 0), 0, 0, 0, "/dev/vdc1")]),
            "/mmio": ("vdd", []),        # virtio-mmio: no address a host could match
            "/loop": ("loop4", []),      # virtual, no slaves
            "/gone": ("8:99", []),       # not in sysfs (containers)
        }
        self.assertEqual(sorted(info), sorted(expected))
        for mountpoint, (name, disks) in expected.items():
            fs = info[mountpoint]
            self.assertEqual(fs["name"], name, mountpoint)
            got = [(d["bus-type"], d["pci-controller"], d["bus"], d["target"], d["unit"],
                    d["dev"]) for d in sorted(fs["disk"], key=lambda d: d["dev"])]
            self.assertEqual(got, disks, mountpoint)
        self.assertEqual(info["/s390"]["disk"][0]["ccw-address"],
                         {"cssid": 0, "ssid": 0, "subchno": 2, "devno": 3})
        self.assertEqual(info["/ide"]["disk"][0]["serial"], "QEMU_HARDDISK_QM00004")

    def test_no_negative_or_missing_address_numbers(self):
        for root in (THIS_MACHINE, self.vm, self.large):
            for fs in self.call(root, "guest-get-fsinfo"):
                for disk in fs["disk"]:
                    numbers = [disk["bus"], disk["target"], disk["unit"]]
                    numbers += list(disk["pci-controller"].values())
                    numbers += list(disk.get("ccw-address", {}).values())
                    self.assertTrue(all(n >= 0 for n in numbers), disk)

    def test_statvfs_only_on_the_mount_list(self):
        seen = []
        real = os.statvfs

        def statvfs(path):
            seen.append(path)
            return real(path)
        with mock.patch.object(qga_mini.os, "statvfs", statvfs):
            self.call(self.large, "guest-get-fsinfo")
        mountpoints = sorted(p[len(self.large):] or "/" for p in seen)
        self.assertEqual(len(mountpoints), 13)
        for network in ("/nfs", "/smb", "/sshfs", "/btrfs", "/proc", "/run", "/srv/data-bind"):
            self.assertNotIn(network, mountpoints)

    def test_usage_is_qemu_ga_arithmetic(self):
        st = os.statvfs_result((4096, 1024, 1000, 300, 250, 0, 0, 0, 0, 255))
        self.assertEqual(qga_mini.statvfs_usage(st), (700 * 1024, 950 * 1024, 1000 * 1024))

    def test_mount_list_error_fails_the_command(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        with AgentHarness(host_root=tmp) as h:
            self.assertEqual(h.error("guest-get-fsinfo"),
                             ("GenericError", "failed to open mtab file: '/proc/self/mounts'"))


class DiskHardwareTest(unittest.TestCase):
    """disk_hardware() on sysfs paths, with the two lookups it needs given as data."""

    def hardware(self, path, drivers, ports=None):
        return qga_mini.disk_hardware(path, lambda p: drivers.get(p),
                                      lambda p, prefix: (ports or {}).get((p, prefix), []))

    def test_unknown_driver_or_bus_means_no_address(self):
        path = "/sys/devices/pci0000:00/0000:00:10.0/host0/target0:0:0/0:0:0:0/block/sda"
        self.assertIsNone(self.hardware(path, {"/sys/devices/pci0000:00/0000:00:10.0":
                                               "megaraid_sas"}))
        self.assertIsNone(self.hardware("/sys/devices/platform/foo/block/mmcblk0", {}))

    def test_ahci_port_missing_from_the_controller_means_no_address(self):
        ctl = "/sys/devices/pci0000:00/0000:00:1f.2"
        path = ctl + "/ata9/host8/target8:0:0/8:0:0:0/block/sda"
        self.assertIsNone(self.hardware(path, {ctl: "ahci"}, {(ctl, "ata"): [1, 2]}))
        found = self.hardware(path, {ctl: "ahci"}, {(ctl, "ata"): [1, 2, 9, 10]})
        self.assertEqual((found["bus-type"], found["unit"], found["pci"]),
                         ("sata", 2, (0, 0, 0x1f, 2)))

    def test_hex_pci_numbers_and_domains(self):
        dev = "/sys/devices/pci0001:1a/0001:1a:0b.3"
        found = self.hardware(dev + "/virtio7/block/vdz", {dev: "virtio-pci"})
        self.assertEqual(found["pci"], (1, 0x1a, 0x0b, 3))

    def test_ccw_virtio_scsi(self):
        path = "/sys/devices/css0/0.0.0010/0.0.00a2/virtio1/host0/target0:0:4/0:0:4:7/block/sdb"
        found = self.hardware(path, {})
        self.assertEqual(found["ccw"], (0, 0, 0x10, 0xa2))
        self.assertEqual((found["bus-type"], found["bus"], found["target"], found["unit"]),
                         ("scsi", 0, 4, 7))


# -- guest-get-disks -------------------------------------------------------------------------------

class DisksTest(TreeCase):

    def test_this_machine(self):
        self.assertEqual(self.call(THIS_MACHINE, "guest-get-disks"), [
            {"name": "/dev/vda", "dependencies": [], "partition": False,
             "address": {"serial": "overlayblk", "bus-type": "virtio", "bus": 0, "unit": 0,
                         "pci-controller": pci(0, 0, 2, 0), "dev": "/dev/vda", "target": 0}}])

    def test_virtio_vm_partitions_come_before_their_disk(self):
        # Within a disk, entries follow the kernel's readdir order (as in qemu-ga); every
        # partition comes before its disk, since qemu-ga prepends it after the disk.
        disks = self.call(self.vm, "guest-get-disks")
        self.assertEqual(sorted((d["name"], d["partition"], d["dependencies"]) for d in disks),
                         [("/dev/vda", False, []), ("/dev/vda1", True, ["/dev/vda"]),
                          ("/dev/vda2", True, ["/dev/vda"]), ("/dev/vda3", True, ["/dev/vda"])])
        self.assertEqual(disks[-1]["name"], "/dev/vda")

    def test_large_guest(self):
        disks = {d["name"]: d for d in self.call(self.large, "guest-get-disks")}
        self.assertNotIn("/dev/loop0", disks)            # size 0
        self.assertNotIn("/dev/zram0", disks)
        self.assertEqual(disks["/dev/dm-3"]["dependencies"], ["/dev/dm-2"])
        self.assertEqual(disks["/dev/dm-3"]["alias"], "vg1-data")
        self.assertEqual(disks["/dev/dm-2"]["dependencies"], ["/dev/nvme0n1p2"])
        self.assertTrue(disks["/dev/dm-2"]["alias"].startswith("luks-"))
        self.assertEqual(sorted(disks["/dev/md0"]["dependencies"]), ["/dev/sdc", "/dev/sdd"])
        self.assertNotIn("address", disks["/dev/dm-0"])  # virtual devices have none
        self.assertNotIn("address", disks["/dev/vdd"])   # virtio-mmio: unknown
        self.assertEqual(disks["/dev/nvme0n1p2"],
                         {"name": "/dev/nvme0n1p2", "dependencies": ["/dev/nvme0n1"],
                          "partition": True})
        self.assertEqual(disks["/dev/nvme0n1"]["address"]["bus-type"], "nvme")
        self.assertNotIn("smart", disks["/dev/nvme0n1"])  # no device node to ask
        self.assertEqual(disks["/dev/sdc"]["address"]["unit"], 2)
        self.assertEqual(disks["/dev/vdc"]["address"]["ccw-address"]["devno"], 3)
        self.assertEqual(len(disks), 24)

    def test_alias_from_sysfs_without_udev(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        shutil.copytree(self.large, tmp + "/g", symlinks=True)
        shutil.rmtree(tmp + "/g/run/udev")
        disks = {d["name"]: d for d in self.call(tmp + "/g", "guest-get-disks")}
        self.assertEqual(disks["/dev/dm-0"]["alias"], "vg0-root")
        self.assertEqual(disks["/dev/sdb"]["address"]["serial"], "QEMU_HARDDISK_QM00004")

    def test_no_sys_block(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        with AgentHarness(host_root=tmp) as h:
            self.assertEqual(h.error("guest-get-disks"),
                             ("GenericError", 'Can\'t open directory "/sys/block": '
                              'No such file or directory'))

    def test_nvme_smart_through_a_device_that_refuses_the_ioctl(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        shutil.copytree(self.large, tmp + "/g", symlinks=True)
        os.makedirs(tmp + "/g/dev")
        open(tmp + "/g/dev/nvme0n1", "w").close()        # a plain file: ENOTTY
        disks = {d["name"]: d for d in self.call(tmp + "/g", "guest-get-disks")}
        self.assertNotIn("smart", disks["/dev/nvme0n1"])


class NvmeSmartTest(unittest.TestCase):

    def page(self):
        with open(os.path.join(STORAGE, make_trees.SMART_LOG_NAME), "rb") as f:
            return f.read()

    def expected(self):
        values = dict(make_trees.SMART_VALUES)
        smart = {"type": "nvme"}
        for name, value in values.items():
            if isinstance(value, tuple):
                smart[name + "-lo"], smart[name + "-hi"] = value
            else:
                smart[name] = value
        return smart

    def test_fixture_page_is_what_the_generator_writes(self):
        self.assertEqual(self.page(), make_trees.smart_log_page())
        self.assertEqual(len(self.page()), 512)

    def test_parse_log_page(self):
        smart = qga_mini.parse_nvme_smart_log(self.page())
        self.assertEqual(dict(smart), self.expected())
        self.assertEqual(list(smart)[:3], ["available-spare", "host-write-commands-hi",
                                           "temperature"])
        SCHEMA.check(smart, "GuestDiskSmart", "smart")

    def test_admin_command_asks_for_the_smart_page_and_reads_it_back(self):
        page = self.page()
        seen = {}

        def ioctl(fd, request, arg, mutate=False):
            seen["request"], seen["command"] = request, bytes(arg)
            fields = qga_mini.NVME_ADMIN_CMD.unpack(bytes(arg))
            ctypes.memmove(fields[7], page, len(page))     # what the kernel would do
            return 0
        with tempfile.NamedTemporaryFile() as node, \
                mock.patch.object(qga_mini.fcntl, "ioctl", ioctl):
            data = qga_mini.read_nvme_smart_log(node.name)
        self.assertEqual(data, page)
        self.assertEqual(seen["request"], 0xC0484E41)
        fields = struct.unpack("<BBHIIIQQIIIIIIIIII", seen["command"])
        self.assertEqual(len(seen["command"]), 72)
        self.assertEqual((fields[0], fields[3], fields[9], fields[10]),
                         (0x02, 0xFFFFFFFF, 512, 0x007F8002))

    def test_short_page_is_an_error_not_a_guess(self):
        with self.assertRaises(struct.error):
            qga_mini.parse_nvme_smart_log(self.page()[:100])


# -- guest-get-diskstats ---------------------------------------------------------------------------

class DiskstatsTest(TreeCase):

    def test_formats_as_qemu_ga_scans_them(self):
        text = ("   8       0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n"
                "   8       1 sda1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15\n"
                "   8       2 sda2 1 2 3 4 5 6 7 8 9 10 11\n"
                "   8       3 sda3 1 2 3 4\n"
                "   8       4 sda4 1 2 3 4 5 6\n"
                "   8       5 sda5 1 2 3\n"
                "   8       6 sda6 1 2 3 4x 5 6\n"
                "bogus line here\n"
                "\n")
        stats = qga_mini.parse_diskstats(text)
        self.assertEqual([s["name"] for s in stats],
                         ["sda", "sda1", "sda2", "sda3", "sda4", "sda6"])
        self.assertEqual(len(stats[0]["stats"]), 17)
        self.assertEqual(stats[0]["stats"]["flush-ticks"], 17)
        self.assertEqual(stats[0]["stats"]["read-sectors"], 3)
        self.assertEqual(len(stats[1]["stats"]), 15)
        self.assertEqual(stats[1]["stats"]["discard-ticks"], 15)
        self.assertEqual(len(stats[2]["stats"]), 11)
        self.assertEqual(dict(stats[3]["stats"]), {"read-ios": 1, "read-sectors": 2,
                                                   "write-ios": 3, "write-sectors": 4})
        self.assertEqual(stats[4]["stats"], {})          # 6 values: qemu-ga sets none
        self.assertEqual(dict(stats[5]["stats"]), {"read-ios": 1, "read-sectors": 2,
                                                   "write-ios": 3, "write-sectors": 4})
        self.assertEqual(list(stats[0]), ["name", "stats", "minor", "major"])
        self.assertEqual(list(stats[0]["stats"]), list(qga_mini.DISKSTATS_KEY_ORDER))

    def test_32_bit_columns_wrap_and_64_bit_ones_saturate(self):
        big, huge = 1 << 40, 1 << 70
        text = "8 0 sda %d 0 0 0 0 0 0 %d 0 0 0 0 0 0 -1 0 0\n" % (big, big + 5)
        stats = qga_mini.parse_diskstats(text)[0]["stats"]
        self.assertEqual(stats["read-ios"], big)
        self.assertEqual(stats["write-ticks"], 5)
        self.assertEqual(stats["discard-ticks"], 0xFFFFFFFF)
        text = "8 0 sda %d 0 0 0 0 0 0 0 0 0 0\n" % huge
        self.assertEqual(qga_mini.parse_diskstats(text)[0]["stats"]["read-ios"],
                         (1 << 64) - 1)

    def test_trees(self):
        self.assertEqual(len(self.call(THIS_MACHINE, "guest-get-diskstats")), 10)
        stats = self.call(self.large, "guest-get-diskstats")
        self.assertEqual(len(stats), 29)
        self.assertEqual(stats[0]["name"], "sdb")

    def test_missing_file(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        with AgentHarness(host_root=tmp) as h:
            self.assertEqual(h.error("guest-get-diskstats"),
                             ("GenericError",
                              'open("/proc/diskstats"): No such file or directory'))


# -- cost on large guests --------------------------------------------------------------------------

class ScalingTest(unittest.TestCase):
    """The commands' cost grows linearly with the number of disks and mounts."""

    def cost(self, root, name, rounds=5):
        agent = qga_mini.Agent(qga_mini.Config(), host=qga_mini.Host(root),
                               log=qga_mini.Log(self.devnull))
        func = qga_mini.COMMANDS[name].func
        best = None
        for _ in range(rounds):
            start = time.perf_counter()
            func(agent)
            elapsed = time.perf_counter() - start
            best = elapsed if best is None else min(best, elapsed)
        return best

    def test_linear(self):
        self.devnull = open(os.devnull, "w")
        self.addCleanup(self.devnull.close)
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        small, big = os.path.join(tmp, "s"), os.path.join(tmp, "b")
        make_trees.build_large_guest(small, 20)
        make_trees.build_large_guest(big, 80)
        for name in ("guest-get-fsinfo", "guest-get-disks", "guest-get-diskstats"):
            ratio = self.cost(big, name) / self.cost(small, name)
            # 4x the disks: linear cost is ~4x (the fixed part makes it less); quadratic ~16x.
            self.assertLess(ratio, 8, name)


if __name__ == "__main__":
    unittest.main()
