# Attack 17, inode_flood: create a million empty files.
import errno, json, os
os.mkdir('f')
n, err = 0, None
try:
    for n in range(1_000_000):
        os.close(os.open(f'f/{n}', os.O_CREAT | os.O_WRONLY, 0o644))
except OSError as e:
    err = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({'created': n, 'errno': err}))
