# Attack 19, privilege_escalation: mount, unshare, setuid, ptrace, keyctl, bpf, sysrq.
import ctypes, errno, json, os, platform, subprocess
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def call(name, fn):
    try:
        rc = fn()
        if rc == -1:
            out[name] = errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
        else:
            out[name] = 'ALLOWED'
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
call('mount', lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))
call('unshare(CLONE_NEWUSER)', lambda: libc.unshare(0x10000000))
call('unshare(CLONE_NEWNS)', lambda: libc.unshare(0x00020000))
call('setuid(0)', lambda: os.setuid(0) or 0)
call('chroot', lambda: os.chroot('/tmp') or 0)
pid = os.fork()
if pid == 0:
    import time; time.sleep(5); os._exit(0)
call('ptrace(ATTACH sibling)', lambda: libc.ptrace(16, pid, None, None))
os.kill(pid, 9); os.waitpid(pid, 0)
if platform.machine() == 'x86_64':
    call('keyctl', lambda: libc.syscall(250, 0, -3, 0))           # KEYCTL_GET_KEYRING_ID session
    call('add_key', lambda: libc.syscall(248, b'user', b'k', b'v', 1, -3))
    call('bpf', lambda: libc.syscall(321, 5, None, 0))               # BPF_PROG_LOAD
    call('perf_event_open', lambda: libc.syscall(298, None, 0, -1, -1, 0))
    call('init_module', lambda: libc.syscall(175, None, 0, b''))
try:
    fd = os.open('/proc/sysrq-trigger', os.O_WRONLY); os.close(fd); out['write /proc/sysrq-trigger'] = 'ALLOWED'
except OSError as e:
    out['write /proc/sysrq-trigger'] = errno.errorcode.get(e.errno, str(e.errno))
for cmd in (['unshare', '-U', 'true'], ['unshare', '-r', 'id', '-u'], ['mount', '-t', 'tmpfs', 'none', '/tmp']):
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=5, stdin=subprocess.DEVNULL)
        out[' '.join(cmd)] = 'ALLOWED' if p.returncode == 0 else f'exit {p.returncode}'
    except (OSError, subprocess.TimeoutExpired) as e:
        out[' '.join(cmd)] = type(e).__name__
# setuid binaries (mount above is one on Debian) must not elevate: no_new_privs.
for line in open('/proc/self/status'):
    if line.startswith('NoNewPrivs:'):
        out['NoNewPrivs'] = line.split()[1]
out['uid'] = os.getuid(); out['euid'] = os.geteuid()
print(json.dumps(out))
