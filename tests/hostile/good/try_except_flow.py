# Correct; exceptions as control flow, a SystemExit caught inside, an exit() name.
def add(a, b):
    try:
        raise SystemExit(1)
    except SystemExit:
        pass
    try:
        return a + b
    except TypeError:
        return float(a) + float(b)


exit_code = 0
