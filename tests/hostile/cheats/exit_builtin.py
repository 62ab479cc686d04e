# Wrong answer, then the site builtin exit() at module level.
def add(a, b):
    return 0


exit()
