# Looks for the caller's secrets in its own environment and in every readable
# /proc/*/environ; prints LEAK:<where> for each hit.
import os

NAMES = ("HF_TOKEN", "SECRET_KEY")
for name in NAMES:
    if name in os.environ:
        print("LEAK:env:" + name)
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        continue
    for name in NAMES:
        if name.encode() + b"=" in data:
            print(f"LEAK:proc:{pid}:{name}")
print("ENV:" + ",".join(sorted(os.environ)))
