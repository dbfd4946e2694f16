import sys

from tests.fuzz_diff.run import main

sys.exit(main())
