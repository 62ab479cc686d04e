# Prints forever: the sandbox must stop reading at the cap and kill it.
line = "spam " * 200
while True:
    print(line)
