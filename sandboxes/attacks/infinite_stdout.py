# Attack 7, infinite_stdout: print forever.
while True:
    print('y' * 79)
