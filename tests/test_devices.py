"""guest-get-devices: PCI functions with a bound driver, from sysfs.

qemu-ga implements this command on Windows only (7.2 lists it disabled on Linux); ours reports
the PCI functions that have a driver, so a host can see that the virtio drivers are bound.
"""
import unittest

from tests.system_support import call_on


def devices(profile, change=None):
    return call_on(profile, "guest-get-devices", change)


def pci(vendor, device):
    return {"device-id": device, "vendor-id": vendor, "type": "pci"}


class Devices(unittest.TestCase):
    def test_virtio_vm_lists_bound_functions_with_module_versions(self):
        reply, _ = devices("virtio-vm")
        self.assertEqual(reply, [
            {"driver-name": "ata_piix", "driver-version": "2.13", "id": pci(0x8086, 0x7010)},
            {"driver-name": "piix4_smbus", "id": pci(0x8086, 0x7113)},   # module, no version
            {"driver-name": "bochs-drm", "id": pci(0x1234, 0x1111)},
            {"driver-name": "virtio-pci", "driver-version": "1", "id": pci(0x1AF4, 0x1000)},
            {"driver-name": "virtio-pci", "driver-version": "1", "id": pci(0x1AF4, 0x1001)},
            {"driver-name": "virtio-pci", "driver-version": "1", "id": pci(0x1AF4, 0x1003)}])

    def test_functions_without_a_driver_are_left_out(self):
        reply, guest = devices("large")
        bound = [(vendor, device, driver) for _, vendor, device, driver in guest["pci"]
                 if driver is not None]
        self.assertEqual([(d["id"]["vendor-id"], d["id"]["device-id"], d["driver-name"])
                          for d in reply], bound)
        self.assertEqual(len(reply), 36)
        self.assertEqual({d["driver-name"]: d.get("driver-version") for d in reply},
                         {"virtio-pci": "1", "e1000e": "3.2.6-k", "nvme": None})

    def test_this_machine(self):
        reply, _ = devices("this-machine")
        self.assertEqual(len(reply), 5)
        self.assertTrue(all(d["driver-name"] == "virtio-pci" and d["id"]["vendor-id"] == 0x1AF4
                            for d in reply))

    def test_unreadable_ids_leave_the_id_out_and_no_pci_bus_is_an_empty_list(self):
        def garble(tree):
            tree.write("/sys/bus/pci/devices/0000:00:03.0/vendor", "garbage\n")
            tree.write("/sys/bus/pci/devices/0000:00:04.0/device", "0x12345\n")
        reply, _ = devices("virtio-vm", garble)
        self.assertEqual(reply[3], {"driver-name": "virtio-pci", "driver-version": "1"})
        self.assertEqual(reply[4], {"driver-name": "virtio-pci", "driver-version": "1"})
        reply, _ = devices("virtio-vm", lambda tree: tree.remove("/sys/bus/pci"))
        self.assertEqual(reply, [])

    def test_member_order_matches_qemu_ga_s_dictionary_order(self):
        reply, _ = devices("virtio-vm")
        self.assertEqual(list(reply[0]), ["driver-name", "driver-version", "id"])
        self.assertEqual(list(reply[0]["id"]), ["device-id", "vendor-id", "type"])


if __name__ == "__main__":
    unittest.main()
