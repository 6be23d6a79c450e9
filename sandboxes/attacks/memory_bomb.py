# Attack 3, memory_bomb: append 100 MB blocks forever (a benign run alongside).
x = []
while True:
    x.append(b'\1' * (100 << 20))
