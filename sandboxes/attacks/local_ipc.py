# Attack 16, local_ipc: abstract/D-Bus/X11/docker sockets, TIOCSTI, /dev/tty.
import errno, fcntl, json, os, socket, termios
out = {}
for name in ['\0@ABSTRACT@', '\0/tmp/.X11-unix/X0', '/run/dbus/system_bus_socket',
             '/var/run/dbus/system_bus_socket', '/tmp/.X11-unix/X0', '/var/run/docker.sock',
             '/run/docker.sock', '/run/containerd/containerd.sock']:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(name); out[repr(name)] = 'CONNECTED'
    except OSError as e:
        out[repr(name)] = errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
for fd in (0, 1, 2):
    for req, label in ((termios.TIOCSTI, 'TIOCSTI'), (0x541C, 'TIOCLINUX')):
        try:
            fcntl.ioctl(fd, req, b'x'); out[f'{label}:{fd}'] = 'OK'
        except OSError as e:
            out[f'{label}:{fd}'] = errno.errorcode.get(e.errno, str(e.errno))
try:
    fd = os.open('/dev/tty', os.O_RDWR); out['/dev/tty'] = 'OPENED'; os.close(fd)
except OSError as e:
    out['/dev/tty'] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
