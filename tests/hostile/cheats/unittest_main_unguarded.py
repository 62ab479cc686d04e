# unittest.main() at module level: finds no tests, exits "OK".
import unittest


def add(a, b):
    return a - b


class Tests(unittest.TestCase):
    def test_nothing(self):
        pass


unittest.main()
