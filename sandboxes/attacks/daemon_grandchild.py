# Attack 9, daemon_grandchild: double fork, setsid, ignore SIGTERM, write a marker later.
import os, signal, socket, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        time.sleep(1.5)
        for d in ('/work', '/tmp', '/dev/shm', '/var/tmp', '@SCRATCH@'):
            try:
                open(d + '/agentrl-marker-@NONCE@', 'w').write('alive')
            except OSError:
                pass
        try:
            socket.create_connection(('1.1.1.1', 80), timeout=2)
        except OSError:
            pass
        time.sleep(60)
    os._exit(0)
os.wait()
print('parent exits; the daemon sleeps on')
