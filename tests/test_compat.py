"""Python-version guards: what qga_mini.py may call, and which interpreter the tests run.

``make test-pythons`` runs the suite under each interpreter we can run here; these tests keep
the lessons of those runs on every interpreter.
"""
import ast
import subprocess
import sys
import unittest

from tests.pythons import parse_apt_sources
from tests.support import AGENT, PYTHON

# re functions whose trailing count/maxsplit/flags arguments Python 3.13 deprecates
# as positional: the most positional arguments each may be given.
RE_POSITIONAL_LIMIT = {"split": 2, "sub": 3, "subn": 3}


def positional_re_calls(source):
    """(line, call) of every ``re.split/sub/subn`` call with a positional count or flags."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == "re":
            limit = RE_POSITIONAL_LIMIT.get(node.func.attr)
            if limit is not None and len(node.args) > limit:
                found.append((node.lineno, "re." + node.func.attr))
    return found


class Source(unittest.TestCase):
    def test_re_counts_and_flags_are_keywords(self):
        with open(AGENT) as f:
            self.assertEqual(positional_re_calls(f.read()), [])

    def test_the_check_finds_positional_counts(self):
        self.assertEqual(positional_re_calls("re.split('a', s, 1)\nre.sub('a', 'b', s, 0, 2)\n"
                                             "re.split('a', s, maxsplit=1)\n"),
                         [(1, "re.split"), (2, "re.sub")])


class Interpreter(unittest.TestCase):
    def test_agent_processes_run_under_the_interpreter_running_the_tests(self):
        out = subprocess.run([PYTHON, "-c", "import sys; print(sys.version)"],
                             stdout=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(out.stdout.strip(), sys.version.strip())


class AptMirror(unittest.TestCase):
    """make test-pythons builds its Debian roots from the mirror apt already uses."""

    def test_deb822_skips_security_and_disabled_sources(self):
        text = ("Types: deb\nURIs: http://security.example/debian-security\n"
                "Suites: bookworm-security\nComponents: main\n\n"
                "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"
                "Components: main\nEnabled: no\n\n"
                "Types: deb deb-src\n# a comment\nURIs: http://mirror.example/debian\n"
                "Suites: bookworm bookworm-updates\nComponents: main contrib\n")
        self.assertEqual(parse_apt_sources([text]), "http://mirror.example/debian")

    def test_one_line_format_with_options(self):
        text = ("# deb http://old.example/debian bookworm main\n"
                "deb http://x.example/debian bookworm-updates main\n"
                "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n")
        self.assertEqual(parse_apt_sources(["", text]), "http://one.example/debian")

    def test_none_without_a_main_archive(self):
        self.assertIsNone(parse_apt_sources(["deb https://vendor.example/apt stable extra\n"]))


if __name__ == "__main__":
    unittest.main()
