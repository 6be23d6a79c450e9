# Attack 11, zombie_farm: 1000 orphaned zombies + 50 unwaited children.
import os
for _ in range(1000):                # orphans: pid 1 of the sandbox must reap them
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)
for _ in range(50):                  # children never waited for
    if os.fork() == 0:
        os._exit(0)
print('done')
