"""Host's file reading: open, read to the end, close, with no file object in between."""

import errno
import os
import shutil
import tempfile
import unittest

import qga_mini


class HostReadTest(unittest.TestCase):

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="qga-host-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.host = qga_mini.Host(self.root)
        self.data = bytes(range(256)) * (3 * qga_mini.HOST_READ_SIZE // 256 + 7)
        with open(os.path.join(self.root, "big"), "wb") as f:
            f.write(self.data)
        os.mkdir(os.path.join(self.root, "dir"))

    def test_a_file_longer_than_one_read_is_read_whole(self):
        self.assertEqual(self.host.read_bytes("/big"), self.data)
        self.assertEqual(self.host.read_text("/big"), self.data.decode("utf-8", "replace"))

    def test_limit_stops_reading_at_that_many_bytes(self):
        for limit in (0, 1, qga_mini.HOST_READ_SIZE, qga_mini.HOST_READ_SIZE + 1):
            self.assertEqual(self.host.read_bytes("/big", limit), self.data[:limit])

    def test_unreadable_paths_keep_their_errors(self):
        self.assertIsNone(self.host.read_text("/dir"))
        self.assertEqual(self.host.read_text("/missing", "x"), "x")
        with self.assertRaises(OSError) as caught:
            self.host.read_bytes("/missing")
        self.assertEqual(caught.exception.errno, errno.ENOENT)
        with self.assertRaises(qga_mini.QgaError) as caught:
            self.host.read_required("/missing")
        self.assertEqual(caught.exception.desc, 'open("/missing"): No such file or directory')

    def test_proc_files_read_as_a_file_object_reads_them(self):
        host = qga_mini.Host("/")
        with open("/proc/self/cmdline", "rb") as f:
            expected = f.read()
        self.assertEqual(host.read_bytes("/proc/self/cmdline"), expected)


if __name__ == "__main__":
    unittest.main()
