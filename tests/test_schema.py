"""The module's command table and argument types against schema.json (make schema-check)."""
import unittest

from tests.support import SCHEMA, qga_mini


class CommandTable(unittest.TestCase):
    def test_every_registered_command_matches_its_schema_entry(self):
        for name, cmd in qga_mini.COMMANDS.items():
            if name.startswith("test-"):
                continue                      # commands registered by other tests
            with self.subTest(command=name):
                self.assertIn(name, SCHEMA.commands)
                expr = SCHEMA.commands[name]
                self.assertEqual(dict(cmd.data), expr.get("data", {}))
                self.assertEqual(list(cmd.data), list(expr.get("data", {})),
                                 "arguments must be declared in schema order")
                self.assertEqual(cmd.returns, expr.get("returns"))
                self.assertEqual(cmd.success_response, expr.get("success-response", True))

    def test_every_schema_command_is_implemented(self):
        missing = sorted(set(SCHEMA.commands) - set(qga_mini.COMMANDS))
        self.assertEqual(missing, [])

    def test_registration_order_is_the_schema_order(self):
        self.assertEqual(list(qga_mini.COMMAND_ORDER), list(SCHEMA.commands))

    def test_argument_types_match_the_schema(self):
        for name, definition in qga_mini.ARGUMENT_TYPES.items():
            kind, expr = SCHEMA.types[name]
            with self.subTest(type=name):
                self.assertEqual(list(definition), [kind])
                self.assertEqual(definition[kind], expr["data"])

    def test_every_type_used_by_an_argument_is_defined(self):
        def types_of(typ):
            if isinstance(typ, list):
                return types_of(typ[0])
            if typ in SCHEMA.types:
                kind, expr = SCHEMA.types[typ]
                nested = expr["data"].values() if isinstance(expr["data"], dict) else []
                return {typ}.union(*[types_of(t) for t in nested])
            return set()
        used = set()
        for expr in SCHEMA.commands.values():
            for typ in expr.get("data", {}).values():
                used |= types_of(typ)
        self.assertEqual(used, set(qga_mini.ARGUMENT_TYPES))

    def test_freeze_safe_commands_are_qemu_gas_six(self):
        self.assertEqual(qga_mini.FREEZE_SAFE_COMMANDS,
                         {"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited",
                          "guest-fsfreeze-status", "guest-fsfreeze-thaw"})


class SchemaFile(unittest.TestCase):
    def test_target_command_set(self):
        # The 42 commands of the newest seed, plus guest-get-load and guest-network-get-route.
        self.assertEqual(len(SCHEMA.commands), 44)
        self.assertIn("*total-bytes-privileged", SCHEMA.types["GuestFilesystemInfo"][1]["data"])

    def test_every_referenced_type_exists(self):
        builtins = {"int", "uint64", "uint16", "number", "str", "bool"}

        def check(typ):
            typ = typ[0] if isinstance(typ, list) else typ
            self.assertTrue(typ in builtins or typ in SCHEMA.types, typ)
        for expr in SCHEMA.expressions:
            data = expr.get("data", {})
            for typ in (data.values() if isinstance(data, dict) else []):
                check(typ)
            if "returns" in expr:
                check(expr["returns"])


class ReplyChecker(unittest.TestCase):
    """The checker every test uses must itself reject wrong replies."""

    def test_rejects(self):
        bad = [("guest-sync", "1"), ("guest-ping", {"x": 1}),
               ("guest-info", {"version": "1"}),
               ("guest-info", {"version": "1", "supported_commands": [], "extra": 1}),
               ("guest-get-cpustats", [{"type": "windows", "cpu": 0}]),
               ("guest-get-memory-block-info", {"size": -1}),
               ("guest-get-fsinfo", [{"name": "vda", "mountpoint": "/", "type": "ext4",
                                      "disk": [{"bus-type": "virtio", "bus": 0, "target": 0,
                                                "unit": 0}]}])]
        for command, value in bad:
            with self.assertRaises(AssertionError, msg=command):
                SCHEMA.check_return(command, value)

    def test_accepts(self):
        SCHEMA.check_return("guest-get-cpustats", [{"type": "linux", "cpu": 0, "user": 1,
                                                    "nice": 0, "system": 0, "idle": 5}])
        SCHEMA.check_return("guest-exec", {"pid": 5})


if __name__ == "__main__":
    unittest.main()
