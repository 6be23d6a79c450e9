# Attack 10, signal_abuse: ignore SIGTERM, kill -9 -1, kill the parent, SIGSTOP itself.
import os, signal, time
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
for target in (-1, os.getppid()):
    try:
        os.kill(target, signal.SIGKILL)
    except OSError as e:
        print('kill', target, e, flush=True)
print('stopping myself', flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
time.sleep(100)
