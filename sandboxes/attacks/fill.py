# Attack 4, shm_fill and tmp_fill: write 4 GB into @DIR@ (/dev/shm or /tmp), report the errno.
import errno, json
d = '@DIR@'
written, err = 0, None
chunk = b'\1' * (16 << 20)
try:
    for i in range(4096 // 16):                          # up to 4 GiB
        with open(f'{d}/fill-{i}', 'wb') as fh:
            for _ in range(4):                           # 64 MiB per file at most
                fh.write(chunk); fh.flush(); written += len(chunk)
except OSError as e:
    err = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({'written_mb': written >> 20, 'errno': err}))
