# Attack 5, cpu_spin and cpu_spin_procs: @N@ processes spinning forever.
import os
for _ in range(int('@N@') - 1):
    if os.fork() == 0:
        break
while True:
    pass
