"""Requests over a socket: validation texts, ids, sync, the command filter, guest-info."""
import io
import json
import unittest

from tests.support import AgentHarness, AgentProcess, SCHEMA, qga_mini


class Harnessed(unittest.TestCase):
    settings = {}

    def setUp(self):
        self.h = AgentHarness(**self.settings)

    def tearDown(self):
        self.h.close()

    def raw(self, data):
        """Send bytes, read one reply line (as bytes)."""
        self.h.send(data)
        return self.h.read_line()

    def reply(self, data):
        self.h.send(data)
        return self.h.read_reply()


class RequestValidation(Harnessed):
    def error(self, data):
        reply = self.reply(data)
        return reply["error"]["class"], reply["error"]["desc"]

    def test_texts(self):
        generic = "GenericError"
        cases = [
            (b"[]", "QMP input must be a JSON object"),
            (b'"guest-ping"\n', "QMP input must be a JSON object"),
            (b"{}", "QMP input lacks member 'execute'"),
            (b'{"execute":1}', "QMP input member 'execute' must be a string"),
            (b'{"execute":"guest-ping","arguments":[]}',
             "QMP input member 'arguments' must be an object"),
            (b'{"execute":"guest-ping","arguments":null}',
             "QMP input member 'arguments' must be an object"),
            (b'{"execute":"guest-ping","foo":1}', "QMP input member 'foo' is unexpected"),
            (b'{"exec-oob":"guest-ping"}', "QMP input member 'exec-oob' is unexpected"),
            (b'{"execute":"guest-ping","arguments":{"foo":42}}', "Parameter 'foo' is unexpected"),
            (b'{"execute":"guest-sync"}', "Parameter 'id' is missing"),
            (b'{"execute":"guest-sync","arguments":{"id":"x"}}',
             "Invalid parameter type for 'id', expected: integer"),
            (b'{"execute":"guest-sync","arguments":{"id":1.0}}',
             "Invalid parameter type for 'id', expected: integer"),
            (b'{"execute":"guest-sync","arguments":{"id":true}}',
             "Invalid parameter type for 'id', expected: integer"),
            (b'{"execute":"guest-sync","arguments":{"id":9223372036854775808}}',
             "Invalid parameter type for 'id', expected: integer"),
            (b'{"execute":"guest-sync","arguments":{"id":null}}',
             "Invalid parameter type for 'id', expected: integer"),
        ]
        for data, desc in cases:
            self.assertEqual(self.error(data), (generic, desc), data)

    def test_unknown_command_is_echoed_raw(self):
        self.assertEqual(self.error(b'{"execute":" guest-ping"}'),
                         ("CommandNotFound", "The command  guest-ping has not been found"))

    def test_missing_beats_unexpected(self):
        self.assertEqual(self.error(b'{"execute":"guest-sync","arguments":{"x":1}}'),
                         ("GenericError", "Parameter 'id' is missing"))

    def test_agent_keeps_serving_after_every_error(self):
        for data in (b"[", b"]", b"{\xff", b'{"execute":[]}', b"\x01", b'"\\ud800"'):
            self.h.send(data)
        self.h.send(b'\xff{"execute":"guest-sync","arguments":{"id":99}}')
        while True:
            reply = self.h.read_reply()
            if reply.get("return") == 99:
                break


class NestedArguments(unittest.TestCase):
    """Argument paths and types below the top level, checked on the real type table."""

    def check(self, data, typ):
        try:
            qga_mini.check_value(data, typ, "vcpus")
        except qga_mini.QgaError as exc:
            return exc.desc
        return None

    def test_paths(self):
        lp = ["GuestLogicalProcessor"]
        self.assertEqual(self.check([{"logical-id": 0}], lp), "Parameter 'vcpus[0].online' is missing")
        self.assertEqual(self.check([{"logical-id": 0, "online": True, "foo": 1}], lp),
                         "Parameter 'vcpus[0].foo' is unexpected")
        self.assertEqual(self.check([{"logical-id": 0, "online": 1}], lp),
                         "Invalid parameter type for 'vcpus[0].online', expected: boolean")
        self.assertEqual(self.check({}, lp), "Invalid parameter type for 'vcpus', expected: array")
        self.assertEqual(self.check([5], lp),
                         "Invalid parameter type for 'vcpus[0]', expected: object")
        self.assertIsNone(self.check([{"logical-id": 1, "online": False, "can-offline": True}], lp))

    def test_uint64_wraps_negative_and_rejects_non_numbers(self):
        self.assertEqual(qga_mini.check_value(-1, "uint64", "x"), (1 << 64) - 1)
        self.assertEqual(self.check("1", "uint64"), "Parameter 'vcpus' expects uint64")
        self.assertEqual(self.check(1.0, "uint64"), "Parameter 'vcpus' expects uint64")

    def test_integer_types_as_qemus_visitors_check_them(self):
        cases = [
            (-(1 << 63), "int", -(1 << 63)), ((1 << 63) - 1, "int", (1 << 63) - 1),
            (1 << 63, "int", "Invalid parameter type for 'vcpus', expected: integer"),
            (1.0, "int", "Invalid parameter type for 'vcpus', expected: integer"),
            (float("inf"), "int", "Invalid parameter type for 'vcpus', expected: integer"),
            (True, "int", "Invalid parameter type for 'vcpus', expected: integer"),
            ((1 << 64) - 1, "uint64", (1 << 64) - 1), (-(1 << 63), "uint64", 1 << 63),
            (float(1 << 64), "uint64", "Parameter 'vcpus' expects uint64"),
            (-1, "size", (1 << 64) - 1), (None, "size", "Parameter 'vcpus' expects uint64"),
            (255, "uint8", 255), (-1, "uint8", "Parameter 'vcpus' expects uint8_t"),
            (65536, "uint16", "Parameter 'vcpus' expects uint16_t"),
            ((1 << 32) - 1, "uint32", (1 << 32) - 1),
            (1 << 32, "uint32", "Parameter 'vcpus' expects uint32_t"),
            (-129, "int8", "Parameter 'vcpus' expects int8_t"), (-128, "int8", -128),
            (1 << 15, "int16", "Parameter 'vcpus' expects int16_t"),
            (-(1 << 31), "int32", -(1 << 31)), (1 << 31, "int32", "Parameter 'vcpus' expects int32_t"),
            ("1", "int32", "Invalid parameter type for 'vcpus', expected: integer"),
        ]
        for value, typ, expected in cases:
            try:
                got = qga_mini.check_value(value, typ, "vcpus")
            except qga_mini.QgaError as exc:
                got = exc.desc
            self.assertEqual(got, expected, (value, typ))

    def test_a_narrow_range_error_names_the_member_not_the_path(self):
        # qemu's visit_type_uintN() words it with the bare name ("null" in a list).
        self.assertEqual(self.check(1 << 40, "uint32").replace("vcpus", "x"),
                         "Parameter 'x' expects uint32_t")
        try:
            qga_mini.check_value([1 << 40], ["uint32"], "a.b")
        except qga_mini.QgaError as exc:
            self.assertEqual(exc.desc, "Parameter 'null' expects uint32_t")
        try:
            qga_mini.check_value(300, "uint8", "a[0].b")
        except qga_mini.QgaError as exc:
            self.assertEqual(exc.desc, "Parameter 'b' expects uint8_t")

    def test_alternates_and_enums(self):
        self.assertEqual(self.check(True, "GuestFileWhence"),
                         "Invalid parameter type for 'vcpus', expected: GuestFileWhence")
        self.assertEqual(self.check("bogus", "GuestFileWhence"),
                         "Parameter 'vcpus' does not accept value 'bogus'")
        self.assertIsNone(self.check("end", "GuestFileWhence"))
        self.assertIsNone(self.check(7, "GuestFileWhence"))
        self.assertIsNone(self.check(True, "GuestExecCaptureOutput"))
        self.assertIsNone(self.check("merged", "GuestExecCaptureOutput"))
        self.assertEqual(self.check(1, "GuestExecCaptureOutput"),
                         "Invalid parameter type for 'vcpus', expected: GuestExecCaptureOutput")


class Ids(Harnessed):
    def test_any_json_id_is_echoed_on_success_and_error(self):
        for ident in (1, "s", None, 1.5, [1, {"a": None}], {"x": [True]}, 18446744073709551615):
            ok = self.reply(json.dumps({"execute": "guest-ping", "id": ident}).encode())
            self.assertEqual(ok, {"return": {}, "id": ident})
            bad = self.reply(json.dumps({"execute": "nope", "id": ident}).encode())
            self.assertEqual(bad["id"], ident)

    def test_wire_order_matches_qemu(self):
        self.assertEqual(self.raw(b'{"execute":"guest-ping","id":1}'), b'{"return": {}, "id": 1}')
        self.assertTrue(self.raw(b'{"execute":"x","id":1}').startswith(b'{"id": 1, "error": '))

    def test_parse_errors_carry_no_id(self):
        self.assertEqual(self.reply(b'{"execute":"guest-ping","id":1,}'),
                         {"error": {"class": "GenericError",
                                    "desc": "JSON parse error, expecting value"}})

    def test_deepest_allowed_id_is_echoed(self):
        ident = "[" * 1023 + "]" * 1023
        reply = self.raw(('{"execute":"guest-ping","id":%s}' % ident).encode())
        self.assertEqual(reply, ('{"return": {}, "id": %s}' % ident).encode())


class Sync(Harnessed):
    def test_sync_echoes(self):
        self.assertEqual(self.h.call("guest-sync", id=-5), -5)

    def test_delimited_reply_starts_with_ff(self):
        self.assertEqual(self.raw(b'{"execute":"guest-sync-delimited","arguments":{"id":7}}'),
                         b'\xff{"return": 7}')

    def test_failed_delimited_sync_has_no_ff(self):
        self.assertTrue(self.raw(b'{"execute":"guest-sync-delimited"}').startswith(b'{"error"'))

    def test_client_ff_then_delimited_sync(self):
        self.h.send(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":42}}')
        self.assertIn(b"stray", self.h.read_line())
        self.assertEqual(self.h.read_line(), b'\xff{"return": 42}')

    def test_proxmox_style_two_requests_in_one_write(self):
        self.h.send(b'{"execute":"guest-sync-delimited","arguments":{"id":12340}}\n'
                    b'{"execute":"guest-ping","arguments":{}}\n')
        self.assertEqual(self.h.read_line(), b'\xff{"return": 12340}')
        self.assertEqual(self.h.read_line(), b'{"return": {}}')


class NoSuccessResponse(Harnessed):
    def setUp(self):
        Harnessed.setUp(self)
        self.calls = []

        @qga_mini.command("test-silent", data={"*fail": "bool"}, success_response=False)
        def silent(agent, fail=False):
            self.calls.append(fail)
            if fail:
                raise qga_mini.QgaError("it failed")
        self.addCleanup(qga_mini.COMMANDS.pop, "test-silent")

    def test_success_sends_nothing_even_with_an_id(self):
        self.h.send(b'{"execute":"test-silent","id":3}')
        self.h.expect_silence()
        self.assertEqual(self.calls, [False])

    def test_failure_is_answered_with_the_id(self):
        self.assertEqual(self.reply(b'{"execute":"test-silent","arguments":{"fail":true},"id":3}'),
                         {"id": 3, "error": {"class": "GenericError", "desc": "it failed"}})


class BlockedCommands(Harnessed):
    settings = {"block_rpcs": ["guest-ping", "guest-sync"]}

    def test_blocked_text_and_guest_info(self):
        self.assertEqual(self.h.error("guest-ping"),
                         ("CommandNotFound", "Command guest-ping has been disabled"))
        info = {c["name"]: c["enabled"] for c in self.h.call("guest-info")["supported_commands"]}
        self.assertFalse(info["guest-ping"])
        self.assertTrue(info["guest-info"])

    def test_blocked_stays_blocked_while_frozen(self):
        self.h.agent.frozen = True
        self.assertEqual(self.h.error("guest-ping")[1], "Command guest-ping has been disabled")


class AllowedCommands(Harnessed):
    settings = {"allow_rpcs": ["guest-ping", "guest-info"]}

    def test_only_allowed_run(self):
        self.assertEqual(self.h.call("guest-ping"), {})
        self.assertEqual(self.h.error("guest-sync", id=1),
                         ("CommandNotFound", "Command guest-sync has been disabled"))


class FrozenGate(Harnessed):
    def test_only_freeze_safe_commands_run(self):
        self.h.agent.frozen = True
        self.assertEqual(self.h.call("guest-ping"), {})
        self.assertEqual(self.h.call("guest-sync", id=1), 1)

        @qga_mini.command("test-unsafe")
        def unsafe(agent):
            return None
        self.addCleanup(qga_mini.COMMANDS.pop, "test-unsafe")
        self.assertEqual(self.h.error("test-unsafe"),
                         ("CommandNotFound",
                          "Command test-unsafe has been disabled: the agent is in frozen state"))
        info = {c["name"]: c["enabled"] for c in self.h.call("guest-info")["supported_commands"]}
        self.assertFalse(info["test-unsafe"])


class GuestInfo(Harnessed):
    def test_lists_every_registered_command_in_reverse_registration_order(self):
        info = self.h.call("guest-info")
        self.assertEqual(info["version"], qga_mini.__version__)
        names = [c["name"] for c in info["supported_commands"]]
        self.assertEqual(sorted(names), sorted(qga_mini.COMMANDS))
        order = [n for n in qga_mini.COMMAND_ORDER if n in qga_mini.COMMANDS]
        self.assertEqual(names, order[::-1])
        for entry in info["supported_commands"]:
            self.assertEqual(entry["success-response"],
                             SCHEMA.commands[entry["name"]].get("success-response", True))


class InternalErrors(Harnessed):
    def test_a_crashing_command_is_an_error_reply_not_a_dead_agent(self):
        @qga_mini.command("test-crash")
        def crash(agent):
            return 1 // 0
        self.addCleanup(qga_mini.COMMANDS.pop, "test-crash")
        cls, desc = self.h.error("test-crash")
        self.assertEqual(cls, "GenericError")
        self.assertIn("division", desc)
        self.assertEqual(self.h.call("guest-ping"), {})


class OneBoundaryPerMessage(Harnessed):
    """A failure at any stage of a message's life (framing, parsing, checking, the command,
    encoding) is one error reply, logged once, and the next request on the same connection
    is answered."""

    INJECTED = b'"desc": "internal error: injected"}}'
    NEXT = b'{"execute":"guest-sync","arguments":{"id":8},"id":9}'

    def setUp(self):
        Harnessed.setUp(self)
        self.log = io.StringIO()
        self.h.agent.log.stream = self.log

    def fail(self, target, name, times=1):
        """Make ``target.name`` raise the next ``times`` times it is called."""
        real = getattr(target, name)
        left = [times]

        def failing(*args, **kwargs):
            if left[0]:
                left[0] -= 1
                raise RuntimeError("injected")
            return real(*args, **kwargs)
        setattr(target, name, failing)
        self.addCleanup(setattr, target, name, real)

    def check(self, request, reply):
        self.assertEqual(self.raw(request), reply)
        self.assertEqual(self.log.getvalue().count("error: internal error: "), 1, self.log.getvalue())
        self.assertEqual(self.raw(self.NEXT), b'{"return": 8, "id": 9}')
        self.assertIn(b"stray", self.raw(b"\xff" + self.NEXT.replace(b"sync", b"sync-delimited")))
        self.assertEqual(self.h.read_line(), b'\xff{"return": 8, "id": 9}')

    def test_framer(self):
        self.fail(qga_mini.Framer, "_feed")
        self.check(b'{"execute":"guest-ping","id":1}', b'{"error": {"class": "GenericError", '
                   + self.INJECTED)

    def test_framer_failing_after_a_message(self):
        self.fail(qga_mini.Framer, "_scan")       # the walk, after json read the first one
        self.h.send(b'{"execute":"guest-sync","arguments":{"id":2}}')
        self.assertEqual(self.raw(b"{'execute':'guest-ping'}"), b'{"return": 2}')
        self.check(b"", b'{"error": {"class": "GenericError", ' + self.INJECTED)

    def test_json_parser(self):
        self.fail(qga_mini, "_SCAN_JSON_VALUE")
        self.check(b'{"execute":"guest-ping","id":1}', b'{"error": {"class": "GenericError", '
                   + self.INJECTED)

    def test_exact_parser(self):
        self.fail(qga_mini, "parse_message")
        self.check(b"{'execute':'guest-ping','id':1}", b'{"error": {"class": "GenericError", '
                   + self.INJECTED)

    def test_checker(self):
        self.fail(qga_mini, "check_members")
        self.check(b'{"execute":"guest-sync","arguments":{"id":2},"id":1}',
                   b'{"id": 1, "error": {"class": "GenericError", ' + self.INJECTED)

    def test_command(self):
        sync = qga_mini.COMMANDS["guest-sync"]
        self.addCleanup(qga_mini.COMMANDS.__setitem__, "guest-sync", sync)

        def crash(agent, id):
            qga_mini.COMMANDS["guest-sync"] = sync
            raise RuntimeError("injected")
        qga_mini.COMMANDS["guest-sync"] = sync._replace(func=crash)
        self.check(b'{"execute":"guest-sync","arguments":{"id":2},"id":1}',
                   b'{"id": 1, "error": {"class": "GenericError", ' + self.INJECTED)

    def test_encoder(self):
        self.fail(qga_mini, "encode_reply")
        self.check(b'{"execute":"guest-sync-delimited","arguments":{"id":2},"id":[1.5]}',
                   b'{"id": [1.5], "error": {"class": "GenericError", ' + self.INJECTED)

    def test_encoder_failing_for_the_error_reply_too(self):
        self.fail(qga_mini, "encode_reply", times=2)
        self.check(b'{"execute":"guest-ping","id":"\xc3\xa9"}',
                   b'{"id": "\\u00e9", "error": {"class": "GenericError", ' + self.INJECTED)

    def test_bad_input_is_not_an_internal_error(self):
        for data in (b"\xff", b"]", b'{"a":1,"a":2}', b'{"execute":"x"}', b"{'a':\"\\ud800\"}"):
            self.assertTrue(self.raw(data).startswith(b'{"error": {"class": '), data)
        self.assertEqual(self.log.getvalue(), "")


class OverSockets(unittest.TestCase):
    def test_new_connection_starts_with_a_fresh_framer(self):
        # qemu-ga would finish the stale half request with the next client's bytes.
        with AgentProcess() as agent:
            first = agent.connect()
            first.send(b'{"execute":')
            first.sock.close()
            second = agent.connect()
            second.send(b'{"execute":"guest-ping"}')
            self.assertEqual(second.read_reply(), {"return": {}})

    def test_pipelined_requests_all_answered_in_order(self):
        with AgentProcess() as agent:
            client = agent.connect()
            client.send(b"".join(b'{"execute":"guest-sync","arguments":{"id":%d}}' % i
                                 for i in range(2000)))
            for i in range(2000):
                self.assertEqual(client.read_reply(), {"return": i})

    def test_numbers_of_any_length_anywhere(self):
        huge = b"9" * 5000
        with AgentProcess() as agent:
            client = agent.connect()
            for request, reply in [
                    (b'{"execute":"guest-ping","id":%s}' % huge, b'{"return": {}, "id": inf}'),
                    (b'{"execute":"guest-ping","id":-%s}' % huge, b'{"return": {}, "id": -inf}'),
                    (b'{"execute":"guest-sync","arguments":{"id":%s}}' % huge,
                     b'{"error": {"class": "GenericError", "desc": "Invalid parameter type for '
                     b'\'id\', expected: integer"}}'),
                    (b"{'execute':'guest-ping','id':%s}" % huge, b'{"return": {}, "id": inf}'),
                    (b'{"execute":"guest-ping","id":[%s]}{"execute":"guest-ping","id":%s' % (
                        huge, huge), b'{"return": {}, "id": [inf]}')]:
                client.send(request)
                self.assertEqual(client.read_line(), reply, request[:60])
            client.send(b"}")
            self.assertEqual(client.read_line(), b'{"return": {}, "id": inf}')
            self.assertEqual(client.call("guest-sync", id=3), 3)
            self.assertIsNone(agent.proc.poll())
            self.assertEqual(agent.read_stderr(), "")

    def test_client_vanishing_with_unread_replies_does_not_stop_the_agent(self):
        with AgentProcess() as agent:
            client = agent.connect()
            client.send(b'{"execute":"guest-info"}' * 500)
            client.sock.close()
            again = agent.connect()
            self.assertEqual(again.call("guest-ping"), {})
            self.assertIsNone(agent.proc.poll())


if __name__ == "__main__":
    unittest.main()
