# Attack 13, persistence_tamper (run N+1): did system files change, is run N's state visible?
import errno, hashlib, json, os
def digest(p):
    try:
        with open(p, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        return 'ERR ' + errno.errorcode.get(e.errno, '?')
paths = ['/bin/bash', '/usr/bin/python3', os.__file__, '/etc/hosts', '/etc/passwd']
seen = [p for d in ('/work', '/tmp', '/dev/shm') for p in [d + '/state-@NONCE@'] if os.path.exists(p)]
print(json.dumps({'after': {p: digest(p) for p in paths}, 'state_seen': seen,
                  'work_listing': sorted(os.listdir('.'))}))
