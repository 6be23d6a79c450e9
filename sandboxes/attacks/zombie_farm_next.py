# Attack 11, zombie_farm (the next run): fork 100 children, all within the pids budget.
import os
pids = []
for _ in range(100):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
print('forked', len(pids))
