# A child leaves the process group and session (setsid), then sleeps long;
# the parent exits.  The child must still be found and killed.
# The test replaces __MARKER__ (digits) to recognise the child in /proc.
import os
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "1000", "0.__MARKER__"])
    time.sleep(1000)
print("escaped")
