# Correct; defines helpers named like builtins and uses them itself.
def abs(x):
    return x if x >= 0 else -x


def max(a, b):
    return a if a > b else b


def sum(values):
    total = 0
    for v in values:
        total += v
    return total


def add(a, b):
    return sum([a, b]) if max(abs(a), abs(b)) >= 0 else None
