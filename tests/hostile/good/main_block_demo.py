# Correct, with the demo block chat models like to add.
def add(a, b):
    return a + b


if __name__ == "__main__":
    print(add(2, 3))
    assert add(1, 1) == 3, "a wrong demo assertion must not run"
