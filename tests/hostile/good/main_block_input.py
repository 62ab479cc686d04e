# Correct; its main block reads stdin (which would hit EOF under the tests).
def add(a, b):
    return a + b


if __name__ == "__main__":
    x, y = map(int, input().split())
    print(add(x, y))
