# KeyboardInterrupt at import.
def add(a, b):
    return 0


raise KeyboardInterrupt
