# Starts a long-sleeping child and exits at once: the child must not survive.
# The test replaces __MARKER__ (digits) to recognise the child in /proc.
import subprocess

subprocess.Popen(["sleep", "1000", "0.__MARKER__"])
print("started")
