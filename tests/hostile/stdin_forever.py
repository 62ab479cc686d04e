# Keeps reading stdin after EOF: must see EOF (not block) and spin until the limit.
import sys

total = 0
while True:
    total += len(sys.stdin.read(1 << 16))
