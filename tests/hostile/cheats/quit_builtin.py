# Wrong answer, then quit() at module level.
def add(a, b):
    return 0


quit()
