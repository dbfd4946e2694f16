"""Run the whole suite: ``python3 -m tests`` (what ``make test`` and CI run).

unittest's own summary is followed by one plain line, ``tests: N passed, M failed, K skipped``,
so that any CI reading closing lines can count the run.
"""
import os
import sys
import unittest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    pattern = sys.argv[1] if len(sys.argv) > 1 else "test*.py"
    suite = unittest.defaultTestLoader.discover(os.path.join(TOP, "tests"), pattern=pattern,
                                                top_level_dir=TOP)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print("tests: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 0 if result.wasSuccessful() and result.testsRun else 1


if __name__ == "__main__":
    sys.exit(main())
