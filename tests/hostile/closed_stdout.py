# Closes its stdout, then prints: an error, not a hang or a crash of the host.
import os

os.close(1)
print("where does this go?")
