# Correct; deep recursion in a joined worker thread (a competitive-programming idiom).
import sys
import threading

sys.setrecursionlimit(10000)


def _add_rec(a, n):
    return a if n == 0 else _add_rec(a + 1, n - 1)


def add(a, b):
    out = []
    if isinstance(b, int) and b >= 0 and isinstance(a, int):
        t = threading.Thread(target=lambda: out.append(_add_rec(a, b)))
        t.start()
        t.join()
        return out[0]
    return a + b
