# Attack 13, persistence_tamper (run N): open system files for writing (never write), create sitecustomize, leave state.
import errno, hashlib, json, os, sysconfig
def digest(p):
    try:
        with open(p, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        return 'ERR ' + errno.errorcode.get(e.errno, '?')
paths = ['/bin/bash', '/usr/bin/python3', os.__file__, '/etc/hosts', '/etc/passwd']
out = {'before': {p: digest(p) for p in paths}, 'open_for_write': {}, 'create': {}}
for p in paths:   # open for writing, never write: harmless even if a broken sandbox allowed it
    try:
        fd = os.open(p, os.O_WRONLY); os.close(fd); out['open_for_write'][p] = 'ALLOWED'
    except OSError as e:
        out['open_for_write'][p] = errno.errorcode.get(e.errno, str(e.errno))
for d in {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['stdlib'], '/usr/lib/python3/dist-packages', '/usr/bin', '/etc'}:
    p = os.path.join(d, 'sitecustomize_agentrl_@NONCE@.py')
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644); os.close(fd); os.unlink(p)
        out['create'][p] = 'ALLOWED'
    except OSError as e:
        out['create'][p] = errno.errorcode.get(e.errno, str(e.errno))
for d in ('/work', '/tmp', '/dev/shm'):   # state for the next stateless run
    try:
        open(d + '/state-@NONCE@', 'w').write('leak')
    except OSError:
        pass
print(json.dumps(out))
