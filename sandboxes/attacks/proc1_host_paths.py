# Attack 21, proc1_host_paths: every /proc view and inherited descriptor, for host paths.
import json, os
out = {}
def rd(path):
    try:
        with open(path, 'rb') as fh:
            return fh.read(1 << 20).decode('latin-1')
    except OSError as e:
        return 'ERR ' + type(e).__name__
for pid in sorted(int(p) for p in os.listdir('/proc') if p.isdigit()):
    for name in ('cmdline', 'comm', 'environ', 'maps', 'mountinfo', 'cgroup'):
        out[f'/proc/{pid}/{name}'] = rd(f'/proc/{pid}/{name}')
    for name in ('exe', 'cwd', 'root'):
        try:
            out[f'/proc/{pid}/{name} ->'] = os.readlink(f'/proc/{pid}/{name}')
        except OSError as e:
            out[f'/proc/{pid}/{name} ->'] = 'ERR ' + type(e).__name__
for fd in os.listdir('/proc/self/fd'):           # inherited descriptors: memfds, pipes, files
    try:
        out[f'fd {fd} ->'] = os.readlink(f'/proc/self/fd/{fd}')
    except OSError:
        pass
out['self'] = os.getpid()
print(json.dumps(out))
