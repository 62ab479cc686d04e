# Allocates without bound: RLIMIT_AS turns this into a MemoryError.
hoard = []
while True:
    hoard.append(bytearray(64 * 1024 * 1024))
