"""Runs one integration test module for ctest: `python3 run.py test_x`.

Exits 77, which ctest reports as "skipped" (SKIP_RETURN_CODE), when every
test of the module was skipped, as when redis-server is not installed;
otherwise 0 when all passed and 1 when any failed. scripts/test.sh sets
REBOUND_REQUIRE_REDIS=1, so there a missing redis-server fails instead.
"""
import sys
import unittest

SKIPPED = 77


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: run.py TEST_MODULE")
    suite = unittest.defaultTestLoader.loadTestsFromName(sys.argv[1])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    if not result.wasSuccessful():
        return 1
    if result.testsRun > 0 and len(result.skipped) == result.testsRun:
        print("every test of %s was skipped" % sys.argv[1])
        return SKIPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
