# Correct; writes and reads a scratch file in its cwd, seeds random, uses a generator.
import os
import random

random.seed(0)


def _digits(n):
    yield from str(n)


def add(a, b):
    with open("scratch.txt", "w") as f:
        f.write(repr(a + b))
    with open("scratch.txt") as f:
        value = eval(f.read())
    os.remove("scratch.txt")
    return value
