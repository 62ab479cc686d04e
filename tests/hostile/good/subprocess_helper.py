# Correct; runs a harmless child process at import and inside the function.
import subprocess

subprocess.run(["true"], check=True)


def add(a, b):
    out = subprocess.run(["echo", str(a + b)], capture_output=True, text=True).stdout
    return type(a + b)(out.strip()) if out.strip() else a + b
