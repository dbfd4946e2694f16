"""guest-network-get-interfaces and guest-network-get-route.

The interface list is built from rtnetlink dumps; fixture trees keep captured dumps
(this machine; a network namespace with a bridge, veths, alias labels, secondary, peer and
IPv6 addresses and a tun device) next to qemu-ga 7.2's answers, and a generated guest with
147 interfaces.  With root, both agents also run side by side in a fresh network namespace.
"""
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import unittest
import uuid

from tests.support import (AGENT, PYTHON, AgentHarness, LineClient, needs_root, qga_mini,
                           stop_process)
from tests.system_support import (QEMU_GA, GuestTree, QemuGa, TreeCase, call_on, connect_unix,
                                  encode_return, golden, make_guest)


def without_statistics(interfaces):
    return [{k: v for k, v in i.items() if k != "statistics"} for i in interfaces]


class NetlinkParsers(unittest.TestCase):
    def test_messages_up_to_done(self):
        data = (make_guest.link_message(1, "lo", [0] * 6) + make_guest.DONE
                + make_guest.link_message(2, "never", None))
        messages = qga_mini.parse_netlink_dump(data)
        self.assertEqual([kind for kind, _ in messages], [qga_mini.RTM_NEWLINK])
        self.assertEqual(qga_mini.parse_links(messages), [(1, "lo", b"\0" * 6)])

    def test_an_error_message_raises_the_kernel_errno(self):
        data = make_guest.nlmsg(qga_mini.NLMSG_ERROR, struct.pack("=i", -errno.EPERM) + b"\0" * 16)
        with self.assertRaises(OSError) as caught:
            qga_mini.parse_netlink_dump(data)
        self.assertEqual(caught.exception.errno, errno.EPERM)

    def test_truncated_data_is_a_bad_message(self):
        data = make_guest.link_message(1, "lo", [0] * 6)
        with self.assertRaises(OSError) as caught:
            qga_mini.parse_netlink_dump(data[:-4])
        self.assertEqual(caught.exception.errno, errno.EBADMSG)

    def test_address_prefers_the_local_address_of_a_peer_pair_and_keeps_labels(self):
        data = (make_guest.address_message(3, socket.AF_INET, "192.0.2.1", 30, "eth0:p",
                                           "192.0.2.2")
                + make_guest.address_message(3, socket.AF_INET6, "fd00::1", 200, None, None))
        self.assertEqual(qga_mini.parse_addresses(qga_mini.parse_netlink_dump(data)),
                         [(3, "eth0:p", "ipv4", "192.0.2.1", 30),
                          (3, None, "ipv6", "fd00::1", 128)])

    def test_mac_is_six_lower_case_bytes_padded_or_cut(self):
        self.assertEqual(qga_mini.format_mac(b"\x02\xAB\0\0\0\x01"), "02:ab:00:00:00:01")
        self.assertEqual(qga_mini.format_mac(b""), "00:00:00:00:00:00")
        self.assertEqual(qga_mini.format_mac(b"\xc0\x00\x02\x01"), "c0:00:02:01:00:00")
        self.assertEqual(qga_mini.format_mac(bytes(range(1, 21))), "01:02:03:04:05:06")

    def test_net_dev_first_complete_line_wins(self):
        text = ("Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n"
                "  eth0: 1 2 3\n  eth0: " + " ".join(str(n) for n in range(1, 17)) + "\n"
                "  eth0: " + " ".join("9" * 16) + "\nbogus line\n")
        stats = qga_mini.parse_net_dev(text)
        self.assertEqual(list(stats), ["eth0"])
        self.assertEqual(stats["eth0"], {"tx-packets": 10, "tx-errs": 11, "rx-bytes": 1,
                                         "rx-dropped": 4, "rx-packets": 2, "rx-errs": 3,
                                         "tx-bytes": 9, "tx-dropped": 12})


class CapturedInterfaces(unittest.TestCase):
    def interfaces(self, profile):
        return call_on(profile, "guest-network-get-interfaces")[0]

    def test_bridge_veths_aliases_peers_tun_are_byte_for_byte_qemu_ga_s(self):
        ours = self.interfaces("bridges-veths")
        self.assertEqual('{"return": %s}' % encode_return(ours)[len('{"return": '):-1],
                         golden("bridges-veths", "guest-network-get-interfaces"))
        names = [i["name"] for i in ours]
        self.assertEqual(names[-2:], ["br0:1", "br0:web"])     # labels after the links
        self.assertIn("tun0", names)

    def test_this_machine_matches_qemu_ga_apart_from_moving_counters(self):
        theirs = json.loads(golden("this-machine", "guest-network-get-interfaces"))["return"]
        ours = self.interfaces("this-machine")
        self.assertEqual(without_statistics(ours), without_statistics(theirs))
        self.assertEqual([sorted(i.get("statistics", {})) for i in ours],
                         [sorted(i.get("statistics", {})) for i in theirs])


class GeneratedInterfaces(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tree = GuestTree("large")
        with AgentHarness(host_root=cls.tree.root) as h:
            cls.reply = h.call("guest-network-get-interfaces")
        cls.by_name = {i["name"]: i for i in cls.reply}

    @classmethod
    def tearDownClass(cls):
        cls.tree.close()

    def test_every_link_in_dump_order_then_the_alias_labels(self):
        links = [name for _, name, _ in self.tree.guest["links"]]
        aliases = ["br%d:1" % b for b in range(8)]
        self.assertEqual([i["name"] for i in self.reply], links + aliases)
        self.assertEqual(len(self.reply), 147)

    def test_secondary_and_ipv6_addresses_with_prefixes(self):
        self.assertEqual(self.by_name["br3"]["ip-addresses"], [
            {"ip-address-type": "ipv4", "ip-address": "10.3.0.1", "prefix": 24},
            {"ip-address-type": "ipv4", "ip-address": "10.3.0.2", "prefix": 24},
            {"ip-address-type": "ipv6", "ip-address": "2001:db8:4::1", "prefix": 64},
            {"ip-address-type": "ipv6", "ip-address": "fe80::bb:3", "prefix": 64}])
        self.assertEqual(self.by_name["eth0"]["ip-addresses"][1],
                         {"ip-address-type": "ipv4", "ip-address": "192.0.2.1", "prefix": 30})

    def test_alias_has_the_link_mac_but_no_counters(self):
        alias = self.by_name["br2:1"]
        self.assertEqual(alias["hardware-address"], self.by_name["br2"]["hardware-address"])
        self.assertNotIn("statistics", alias)
        self.assertEqual(alias["ip-addresses"], [{"ip-address-type": "ipv4",
                                                  "ip-address": "10.2.1.1", "prefix": 24}])

    def test_counters_only_with_an_address_and_always_a_mac(self):
        self.assertEqual(self.by_name["veth9"]["statistics"]["rx-bytes"],
                         [i for i, n, _ in self.tree.guest["links"] if n == "veth9"][0] * 1000)
        self.assertEqual(self.by_name["vpeer9"], {"name": "vpeer9",
                                                  "hardware-address": "02:ef:00:00:00:09"})
        self.assertEqual(self.by_name["tun0"]["hardware-address"], "00:00:00:00:00:00")
        self.assertEqual(self.by_name["lo"]["hardware-address"], "00:00:00:00:00:00")
        self.assertTrue(all("hardware-address" in i for i in self.reply))

    def test_wire_order_of_members(self):
        line = encode_return(self.reply[:1])
        self.assertRegex(line, r'^\{"return": \[\{"name": "lo", "ip-addresses": \[\{'
                               r'"ip-address-type": "ipv4", "ip-address": "127.0.0.1", '
                               r'"prefix": 8\}.*\], "statistics": \{"tx-packets": .*\}, '
                               r'"hardware-address": "00:00:00:00:00:00"\}\]\}$')


class InterfaceErrors(TreeCase):
    profile = "virtio-vm"

    def test_a_failed_dump_is_a_getifaddrs_error(self):
        with open(self.tree.path("/rtnetlink/22"), "wb") as f:
            f.write(make_guest.nlmsg(qga_mini.NLMSG_ERROR, struct.pack("=i", -errno.EACCES)))
        self.assertEqual(self.h.error("guest-network-get-interfaces"),
                         ("GenericError", "getifaddrs failed: Permission denied"))
        self.tree.remove("/rtnetlink/18")
        self.assertEqual(self.h.error("guest-network-get-interfaces")[1],
                         "getifaddrs failed: No such file or directory")

    def test_no_proc_net_dev_means_no_counters(self):
        self.tree.remove("/proc/net/dev")
        reply = self.h.call("guest-network-get-interfaces")
        self.assertEqual([i["name"] for i in reply], ["lo", "eth0"])
        self.assertFalse(any("statistics" in i for i in reply))


class Routes(TreeCase):
    profile = "this-machine"

    def test_ipv4_then_ipv6_in_the_10_x_shape(self):
        routes = self.h.call("guest-network-get-route")
        self.assertEqual(routes[0], {"flags": 3, "metric": 0, "refcnt": 0, "window": 0,
                                     "version": 4, "iface": "eth0", "destination": "0.0.0.0",
                                     "irtt": 0, "gateway": "192.0.2.1", "use": 0, "mtu": 0,
                                     "mask": "0.0.0.0"})
        self.assertEqual(routes[1]["mask"], "255.255.255.0")
        self.assertEqual([r["version"] for r in routes], [4] * 2 + [6] * 8)
        default6 = [r for r in routes if r["version"] == 6 and r["nexthop"] == "fd00::1"][0]
        self.assertEqual(default6, {"flags": 3, "source": "::", "metric": 1024, "refcnt": 2,
                                    "version": 6, "nexthop": "fd00::1", "iface": "eth0",
                                    "destination": "::", "desprefixlen": "0",
                                    "srcprefixlen": "0", "use": 0})

    def test_ipv6_metric_is_a_c_int_and_flags_stay_unsigned(self):
        routes = [r for r in self.h.call("guest-network-get-route") if r["version"] == 6]
        unreachable = routes[-1]
        self.assertEqual((unreachable["metric"], unreachable["flags"]), (-1, 0x00200200))
        local = [r for r in routes if r["destination"] == "::1"][0]
        self.assertEqual((local["flags"], local["desprefixlen"]), (0x80200001, "128"))

    def test_a_guest_without_ipv6_still_gets_its_ipv4_routes(self):
        self.tree.remove("/proc/net/ipv6_route")
        self.assertEqual([r["version"] for r in self.h.call("guest-network-get-route")], [4, 4])

    def test_no_routing_table_at_all_is_qemu_ga_s_open_error(self):
        self.tree.remove("/proc/net/ipv6_route")
        self.tree.remove("/proc/net/route")
        self.assertEqual(self.h.error("guest-network-get-route"),
                         ("GenericError", 'open("/proc/net/route"): No such file or directory'))

    def test_malformed_lines_are_skipped_and_the_ipv4_header_always(self):
        self.assertEqual(qga_mini.parse_ipv4_routes(
            "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"), [])
        text = ("Iface Destination\nbad line\n"
                "eth1\t0000A8C0\t00000000\t0001\t0\t0\t5\t00FFFFFF\t1500\t0\t0\n")
        self.assertEqual([(r["iface"], r["destination"], r["metric"], r["mtu"])
                          for r in qga_mini.parse_ipv4_routes(text)],
                         [("eth1", "192.168.0.0", 5, 1500)])
        self.assertEqual(qga_mini.parse_ipv6_routes("garbage\n" + "0" * 31 + " 40\n"), [])


def _ip(*args):
    subprocess.check_call(("ip",) + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@unittest.skipUnless(QEMU_GA and shutil.which("ip"), "needs qemu-ga and iproute2")
class LiveAgainstQemuGa(unittest.TestCase):
    @needs_root
    def test_this_machine_same_interfaces_addresses_prefixes_and_macs(self):
        oracle = QemuGa()
        try:
            with AgentHarness() as h:
                ours = h.call("guest-network-get-interfaces")
            theirs = oracle.call("guest-network-get-interfaces")
        finally:
            oracle.close()
        self.assertEqual(without_statistics(ours), without_statistics(theirs))

    @needs_root
    def test_namespace_with_bridge_veths_aliases_is_byte_for_byte_qemu_ga_s(self):
        ns = "qga-test-" + uuid.uuid4().hex[:8]
        try:
            _ip("netns", "add", ns)
        except (OSError, subprocess.CalledProcessError):
            self.skipTest("cannot create a network namespace")
        try:
            try:
                for command in (("link", "set", "lo", "up"),
                                ("link", "add", "va", "type", "veth", "peer", "name", "vb"),
                                ("link", "add", "brx", "type", "bridge"),
                                ("link", "set", "vb", "master", "brx"),
                                ("addr", "add", "10.1.0.1/24", "dev", "brx"),
                                ("addr", "add", "10.1.0.9/24", "dev", "brx"),
                                ("addr", "add", "10.1.7.1/16", "dev", "brx", "label", "brx:7"),
                                ("addr", "add", "2001:db8:7::1/64", "dev", "brx", "nodad"),
                                ("addr", "add", "172.31.0.1", "peer", "172.31.0.2/31", "dev",
                                 "va")):
                    _ip("-n", ns, *command)
            except subprocess.CalledProcessError:
                self.skipTest("veth or bridge links are not available")
            oracle = QemuGa(prefix=("ip", "netns", "exec", ns))
            try:
                theirs = oracle.raw("guest-network-get-interfaces")
                ours = self.run_ours(ns)
            finally:
                oracle.close()
            self.assertEqual(ours, theirs)
            self.assertIn('"brx:7"', ours)
        finally:
            _ip("netns", "delete", ns)

    def run_ours(self, ns):
        tmp = tempfile.mkdtemp(prefix="qga-ns-")
        sock_path = os.path.join(tmp, "m.sock")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, PYTHON, AGENT, "-m", "unix-listen",
                                 "-p", sock_path, "-t", os.path.join(tmp, "state")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            sock = connect_unix(sock_path)
            client = LineClient(sock)
            client.send({"execute": "guest-network-get-interfaces"})
            line = client.read_line().decode("ascii")
            sock.close()
            return line
        finally:
            stop_process(proc)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
