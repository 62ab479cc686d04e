# Busy loop: stopped by the CPU-time limit or the wall-clock timeout.
n = 0
while True:
    n += 1
