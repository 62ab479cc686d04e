# Correct; prints tracebacks and logs exceptions in an except block on every call.
import logging
import signal
import traceback


def add(a, b):
    try:
        int("not a number")
    except ValueError:
        traceback.print_exc()
        logging.exception("parsing failed")
        assert "ValueError" in traceback.format_exc()
    signal.signal(signal.SIGALRM, lambda signum, frame: None)  # a timeout guard, as some solutions do
    signal.alarm(5)
    result = a + b
    signal.alarm(0)
    return result
