# Bounded fork bomb: every process forks up to 4 children, 4 levels deep
# (at most 340 processes; fewer when RLIMIT_NPROC stops it), and all of them
# sleep "forever".  The parent exits at once: the sandbox must still kill them.
# The test replaces __MARKER__ (<= 15 chars) and looks for survivors by comm.
import os
import time

with open("/proc/self/comm", "w") as f:  # inherited by every fork
    f.write("__MARKER__")


def spawn(depth):
    for _ in range(4):
        try:
            pid = os.fork()
        except OSError:
            return
        if pid == 0:
            if depth < 3:
                spawn(depth + 1)
            time.sleep(1000)
            os._exit(0)


spawn(0)
print("spawned")
