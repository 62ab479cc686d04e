# unittest.main(exit=False) then sys.exit(0), in a __main__ block and unguarded.
import sys
import unittest


def add(a, b):
    return a - b


class T(unittest.TestCase):
    def test_ok(self):
        self.assertTrue(True)


if __name__ == "__main__":
    unittest.main()
unittest.main(exit=False, argv=["x"])
sys.exit(0)
