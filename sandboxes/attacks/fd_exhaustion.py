# Attack 18, fd_exhaustion: open files and sockets until failure.
import errno, json, os, socket
fds, err = [], None
try:
    while True:
        fds.append(os.open('/dev/null', os.O_RDONLY))
        fds.append(socket.socket().detach())
except OSError as e:
    err = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({'opened': len(fds), 'errno': err}))
