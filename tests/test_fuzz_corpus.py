"""The fuzz target in CI: every seed of tests/fuzz/corpus/, every crash reproducer the
fuzzer found (tests/fuzz/crashes/, kept as regression tests) and the seeds made from the
command table at run time, each fed to one agent as ``make fuzz`` feeds them."""
import unittest

from tests.fuzz.make_corpus import command_seeds
from tests.fuzz.target import CORPUS_DIR, CRASHES_DIR, FuzzTarget, corpus_files


class FuzzCorpus(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.target = FuzzTarget()

    @classmethod
    def tearDownClass(cls):
        cls.target.close()

    def replay(self, named_inputs):
        for name, data in named_inputs:
            with self.subTest(seed=name):
                self.target.one_input(data)

    def test_committed_seed_corpus(self):
        files = corpus_files(CORPUS_DIR)
        self.assertGreater(len(files), 100)
        self.replay(files)

    def test_crash_reproducers(self):
        self.replay(corpus_files(CRASHES_DIR))

    def test_seeds_of_every_registered_command(self):
        self.replay(sorted(command_seeds().items()))

    def test_each_seed_byte_by_byte(self):
        """The same seeds arriving one byte per read (a slow serial line)."""
        for path, data in corpus_files(CORPUS_DIR)[::7]:
            with self.subTest(seed=path):
                for i in range(min(len(data), 4096)):
                    self.target.agent.handle_bytes(self.target.framer, data[i:i + 1])
                self.target.one_input(b"")


if __name__ == "__main__":
    unittest.main()
