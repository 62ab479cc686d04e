# Kills its parent and its process group (the sandbox must survive and report).
import os
import signal


def add(a, b):
    return a - b


for target in (lambda: os.kill(os.getppid(), signal.SIGKILL), lambda: os.killpg(0, signal.SIGTERM),
               lambda: os.kill(-1, signal.SIGKILL)):
    try:
        target()
    except OSError:
        pass
