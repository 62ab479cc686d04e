# Correct, chatty on stdout and stderr, at import and in every call.
import sys

print("loading add ...")
print("debug: starting", file=sys.stderr)


def add(a, b):
    print(f"add({a!r}, {b!r})")
    print("trace", a, b, file=sys.stderr)
    return a + b
