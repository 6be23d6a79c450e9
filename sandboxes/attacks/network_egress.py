# Attack 15, network_egress: TCP out, DNS, metadata IP, docker gateway, host ports (@TARGETS@: JSON [[host, port]]).
import json, socket, time
targets = [tuple(t) for t in json.loads('@TARGETS@')]
out = {}
for host, port in targets:
    t = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.close(); res = 'CONNECTED'
    except OSError as e:
        res = type(e).__name__ + ':' + str(e.errno)
    out[f'{host}:{port}'] = [res, round(time.monotonic() - t, 3)]
t = time.monotonic()
try:
    socket.getaddrinfo('example.com', 80); res = 'RESOLVED'
except OSError as e:
    res = type(e).__name__
out['dns:example.com'] = [res, round(time.monotonic() - t, 3)]
print(json.dumps(out))
