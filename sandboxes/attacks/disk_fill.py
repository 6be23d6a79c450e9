# Attack 17, disk_fill: write a 10 GB file.
import errno, json
err, written = None, 0
try:
    with open('big', 'wb') as fh:
        chunk = b'\0' * (1 << 20)
        for _ in range(10 << 10):                       # 10 GiB
            fh.write(chunk); fh.flush(); written += 1
except OSError as e:
    err = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({'written_mb': written, 'errno': err}))
