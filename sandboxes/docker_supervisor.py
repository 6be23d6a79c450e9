"""The in-container supervisor of the docker backend: runs *inside* every sandbox container.

It is the container's main process (under ``docker-init``, so PID 2), started as
``python3 -I -S -c <this source> <config json>`` by :mod:`agentrl.sandboxes.docker_backend`,
and talks to the host over the container's attached stdin/stdout in the frame format of
:mod:`agentrl.sandboxes.worker` (``ARL1`` | header length | blob length | JSON | blob).
Pure standard library; it never imports the package (it is shipped as source text).

Privilege separation. The supervisor runs as uid 0 *with only* CAP_SETUID, CAP_SETGID and
CAP_KILL (the container drops every other capability, sets no-new-privileges and a read-only
root). Untrusted code always runs as the unprivileged ``SANDBOX_UID``, so it cannot signal,
ptrace or read the supervisor, and ``kill -9 -1`` from it hits only its own processes. After
every run the supervisor kills *every* process in the container except init and itself
(``kill(-1, SIGKILL)`` until /proc shows none: a whole-container kill, never a tree walk),
then a helper running as ``SANDBOX_UID`` wipes /work, /tmp, /dev/shm, /dev/mqueue and SysV
IPC objects, so the next stateless run sees an empty sandbox.

Requests (one at a time; each answered by one frame with the same ``id``):

- ``{"op": "run", "id", "argv", "main", "timeout_s", "max_output_bytes", "nofile",
  "fsize_bytes", "code_len", "stdin_len", "files": [[relpath, len], ...]}`` + blob = code,
  then stdin (when ``stdin_len >= 0``; otherwise stdin is /dev/null), then the files' bytes in
  order. The code is written to ``<private dir>/<main>`` (root-owned, read-only; e.g.
  ``/opt/agentrl/main.py``) and ``argv`` runs it. The program runs in a new session (no
  controlling TTY) with a cleared environment, rlimits set, in /work.
  Response ``{"op": "result", "id", "exit_code", "signal", "timed_out", "stdout_len",
  "stderr_len", "stdout_truncated", "stderr_truncated", "wall_time_s", "cpu_time_s",
  "peak_rss_kb", "oom_kills", "pids_max_events", "survivors", "error"}`` + blob = stdout then
  stderr (each at most ``max_output_bytes``). Then, unasked, ``{"op": "clean", "ok"}`` once
  the wipe is done; the host returns the container to its pool only after that.
- ``{"op": "install", "id", "dir", "files": [[name, len], ...]}`` + blob: write root-owned,
  read-only files (the session worker's sources) into ``dir`` (created 0755).
- ``{"op": "ping", "id"}`` -> ``{"op": "pong", "id", "ok": true, "seccomp": "ok" | "off" |
  why the filter cannot be installed}``.
- ``{"op": "reset", "id"}``: kill everything and wipe; -> ``{"op": "reset", "id", "ok"}``.
- ``{"op": "stats", "id"}`` -> the container's cgroup counters (``oom_kills``,
  ``pids_max_events``, ``cpu_ns``) and how many other processes run (``others``).

The output caps, the wall-clock deadline (also enforced by the host, which kills the whole
container when this process stops answering) and the counters read from the container's
cgroups (memory ``oom_kill``, pids ``max``, ``cpuacct.usage``) are all per run. With
``"seccomp"`` in the config (base64 of :func:`agentrl.sandboxes.seccomp.build_filter`, the
bwrap backend's deny list: ptrace, mount, unshare, keyctl, bpf, TIOCSTI...), every program
gets that filter on top of docker's default profile, installed right before ``execve``.
"""

import json
import os
import resource
import select
import shutil
import signal
import stat as st_mod
import struct
import sys
import time

MAGIC = b"ARL1"
#: Seconds processes left behind by a finished program may run on before the sweep.
LINGER_S = 0.1
_HEAD = struct.Struct(">4sIQ")
CG = "/sys/fs/cgroup"


def send(header, blob=b""):
    head = json.dumps(header, separators=(",", ":")).encode()
    data = memoryview(_HEAD.pack(MAGIC, len(head), len(blob)) + head + blob)
    while data:
        n = os.write(1, data)
        data = data[n:]


def _read_exact(n):
    chunks, got = [], 0
    while got < n:
        chunk = os.read(0, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv():
    head = _read_exact(_HEAD.size)
    if head is None:
        return None
    magic, hlen, blen = _HEAD.unpack(head)
    if magic != MAGIC or hlen > (1 << 20):
        raise SystemExit("supervisor: bad frame from the host")
    header = json.loads(_read_exact(hlen) or b"{}")
    blob = _read_exact(blen) if blen else b""
    return header, blob


def _cg_read(path):
    try:
        with open(os.path.join(CG, path)) as fh:
            return fh.read()
    except OSError:
        return ""


def _cg_counter(path, key):
    for line in _cg_read(path).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


def counters():
    """(oom kills, pids-limit hits, cpu ns) of the whole container, cgroup v1 or v2."""
    oom = _cg_counter("memory/memory.oom_control", "oom_kill") or _cg_counter("memory.events", "oom_kill")
    pids = _cg_counter("pids/pids.events", "max") or _cg_counter("pids.events", "max")
    cpu = _cg_read("cpuacct/cpuacct.usage").strip()
    if cpu.isdigit():
        cpu_ns = int(cpu)
    else:
        cpu_ns = _cg_counter("cpu.stat", "usage_usec") * 1000
    return oom, pids, cpu_ns


def others():
    """PIDs in the container other than init (1) and this process, zombies excluded."""
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me):
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            out.append(int(name))
    return out


def kill_all(deadline_s=5.0):
    """SIGKILL every process but init and us until none is left; reap our children."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        reap()
        left = others()
        if not left:
            return 0
        if time.monotonic() > end:
            return len(left)
        time.sleep(0.002)


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def seccomp_installer(prog):
    """A function that installs the classic-BPF program ``prog`` (bytes of ``struct
    sock_filter[]``, from :func:`agentrl.sandboxes.seccomp.build_filter`) on the calling
    thread. Needs no_new_privs, which docker sets (``no-new-privileges``)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(prog, len(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))

    def install():
        keep = buf  # noqa: F841 - the program must stay alive until prctl copied it
        if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, MODE_FILTER
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")

    return install


def _check_installer(install):
    """Install the filter in a throw-away child: "ok" or why it cannot be used."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            install()
            os.write(w, b"ok")
        except BaseException as e:  # noqa: BLE001
            os.write(w, str(e).encode()[:500])
        os._exit(0)
    os.close(w)
    msg = os.read(r, 600).decode(errors="replace")
    os.close(r)
    os.waitpid(pid, 0)
    return msg or "the check child died"


class Supervisor:
    def __init__(self, cfg):
        self.uid = int(cfg["uid"])
        self.gid = int(cfg["gid"])
        self.work = cfg.get("work", "/work")
        self.wipe_dirs = cfg.get("wipe", ["/work", "/tmp", "/dev/shm", "/dev/mqueue"])
        self.private = cfg.get("private", "/opt/agentrl")
        self.env = dict(cfg.get("env") or {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.work, "LANG": "C.UTF-8",
            "TMPDIR": "/tmp", "USER": "sandbox", "LOGNAME": "sandbox", "SHELL": "/bin/bash",
            "TERM": "dumb",
        })
        os.makedirs(self.private, mode=0o755, exist_ok=True)
        self.seccomp, self.seccomp_state = None, "off"
        if cfg.get("seccomp"):
            import base64

            self.seccomp = seccomp_installer(base64.b64decode(cfg["seccomp"]))
            self.seccomp_state = _check_installer(self.seccomp)

    # -- running one program -----------------------------------------------------------------
    def which(self, prog, _cache={}):  # noqa: B006 - a deliberate per-process cache
        """Resolve ``prog`` on PATH in the parent: ``os.execvpe`` in a child imports modules
        (about 10 ms per run)."""
        if "/" in prog:
            return prog
        if prog not in _cache:
            for d in self.env["PATH"].split(":"):
                path = os.path.join(d, prog)
                if os.path.isfile(path) and os.access(path, os.X_OK):
                    _cache[prog] = path
                    break
            else:
                return prog  # execve fails with ENOENT and the child reports it
        return _cache[prog]

    def _child(self, exe, argv, stdin_fd, out_w, err_w, files, nofile, fsize):
        """In the forked child: become the sandbox user, set limits, write files, exec."""
        try:
            os.setsid()
            os.dup2(stdin_fd, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.closerange(3, 65536)
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write("1000")  # the OOM killer takes user code first, never the supervisor
            # Below the supervisor in the CPU scheduler *inside this container* only (the
            # container's share against others is its cgroup's): a fork bomb at the CPU quota
            # cannot starve the watchdog that enforces the deadline.
            os.nice(10)
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.chdir(self.work)
            for rel, data in files:
                parent = os.path.dirname(rel)
                if parent:
                    os.makedirs(parent, exist_ok=True)
                fd = os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if data[:2] == b"#!" else 0o644)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.close(fd)
            if self.seccomp is not None:
                self.seccomp()
            os.execve(exe, argv, self.env)
        except BaseException as e:  # noqa: BLE001
            try:
                os.write(2, f"sandbox: cannot start {argv[0]!r}: {e}\n".encode())
            finally:
                os._exit(127)

    def run(self, h, blob):
        code_len, stdin_len = int(h["code_len"]), int(h.get("stdin_len", -1))
        code = blob[:code_len]
        pos = code_len
        stdin_data = None
        if stdin_len >= 0:
            stdin_data = blob[pos:pos + stdin_len]
            pos += stdin_len
        files = []
        for rel, n in h.get("files", []):
            files.append((rel, blob[pos:pos + n]))
            pos += n
        argv = list(h["argv"])
        if h.get("main"):  # the code goes to a root-owned, read-only file the program runs
            name = os.path.basename(h["main"])
            path = os.path.join(self.private, name)
            with open(path + ".tmp", "wb") as fh:
                fh.write(code)
            os.chmod(path + ".tmp", 0o444)
            os.replace(path + ".tmp", path)
        cap = int(h["max_output_bytes"])
        timeout = float(h["timeout_s"])

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if stdin_data is None:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY), None
        else:
            in_r, in_w = os.pipe()
        oom0, pids0, cpu0 = counters()
        t0 = time.monotonic()
        exe = self.which(argv[0])
        pid = os.fork()
        if pid == 0:
            self._child(exe, argv, in_r, out_w, err_w, files, int(h["nofile"]), int(h["fsize_bytes"]))
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        res = self._watch(pid, out_r, err_r, in_w, stdin_data or b"", cap, t0 + timeout)
        res["wall_time_s"] = time.monotonic() - t0
        res["survivors"] = kill_all()
        oom1, pids1, cpu1 = counters()
        res.update(oom_kills=oom1 - oom0, pids_max_events=pids1 - pids0, cpu_time_s=(cpu1 - cpu0) / 1e9)
        out, err = res.pop("out"), res.pop("err")
        res.update(op="result", id=h.get("id"), stdout_len=len(out), stderr_len=len(err))
        send(res, bytes(out) + bytes(err))
        if h.get("main"):
            try:
                os.unlink(os.path.join(self.private, os.path.basename(h["main"])))
            except OSError:
                pass
        send({"op": "clean", "ok": self.wipe() and res["survivors"] == 0})

    def _watch(self, pid, out_r, err_r, in_w, stdin_data, cap, deadline):
        """Pump stdin, drain stdout/stderr with caps, wait for the child or the deadline."""
        bufs = {out_r: bytearray(), err_r: bytearray()}
        trunc = {out_r: False, err_r: False}
        open_fds = {out_r, err_r}
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        if in_w is not None:
            os.set_blocking(in_w, False)
            if not stdin_data:
                os.close(in_w)
                in_w = None
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        status, timed_out, overflow, peak = None, False, False, 0
        swept, linger_until = False, 0.0
        stdin_view = memoryview(stdin_data)
        while True:
            if status is None:
                got, st, ru = os.wait4(pid, os.WNOHANG)
                if got:
                    status, peak = st, ru.ru_maxrss
                    linger_until = min(time.monotonic() + LINGER_S, deadline)
            if status is not None and not swept and (time.monotonic() >= linger_until or not others()):
                # The program is done: whatever it left running dies with it (like the end of
                # a pid namespace), so its pipes reach EOF now. Leftovers get LINGER_S first,
                # to flush output (and a fork bomb started in the background meets its cap).
                kill_all()
                swept = True
            if swept and not open_fds:
                break
            now = time.monotonic()
            if now >= deadline:
                timed_out = status is None
                break
            rlist = list(open_fds)
            if pidfd is not None and status is None:
                rlist.append(pidfd)
            wlist = [in_w] if in_w is not None else []
            if status is not None and not swept:
                wait = 0.005
            elif pidfd is not None or status is not None:
                wait = deadline - now
            else:
                wait = min(deadline - now, 0.005)
            try:
                r, w, _ = select.select(rlist, wlist, [], wait)
            except InterruptedError:
                continue
            for fd in w:
                try:
                    n = os.write(fd, stdin_view[:65536])
                    stdin_view = stdin_view[n:]
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:  # EPIPE: the program closed its stdin
                    stdin_view = stdin_view[:0]
                if not stdin_view:
                    os.close(in_w)
                    in_w = None
            for fd in r:
                if fd == pidfd:
                    continue
                while True:
                    try:
                        chunk = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        break
                    if not chunk:
                        open_fds.discard(fd)
                        break
                    buf = bufs[fd]
                    room = cap - len(buf)
                    if len(chunk) > room:
                        buf += chunk[:max(room, 0)]
                        trunc[fd] = overflow = True
                    else:
                        buf += chunk
                if overflow:
                    break
            if overflow:
                break
        if status is None:
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            try:
                _, status, ru = os.wait4(pid, 0)
                peak = ru.ru_maxrss
            except ChildProcessError:
                status = None
            kill_all()
        # Read what is left in the pipes (writers are dead now), still under the caps.
        for fd in list(open_fds):
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except (BlockingIOError, OSError):
                    break
                if not chunk:
                    break
                buf = bufs[fd]
                room = cap - len(buf)
                if len(chunk) > room:
                    buf += chunk[:max(room, 0)]
                    trunc[fd] = True
                    break
                buf += chunk
        for fd in (out_r, err_r, in_w, pidfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        exit_code = sig = None
        if status is not None:
            if os.WIFEXITED(status):
                exit_code = os.WEXITSTATUS(status)
            elif os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
        return {
            "exit_code": exit_code, "signal": sig, "timed_out": timed_out,
            "stdout_truncated": trunc[out_r], "stderr_truncated": trunc[err_r],
            "out": bufs[out_r], "err": bufs[err_r], "peak_rss_kb": peak, "error": None,
        }

    # -- cleaning up -------------------------------------------------------------------------
    def wipe(self):
        """As the sandbox user: empty the writable dirs and drop SysV IPC objects."""
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setgroups([])
                os.setgid(self.gid)
                os.setuid(self.uid)
                code = 0 if self._wipe_as_user() else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

    def _wipe_as_user(self):
        ok = True

        def onerror(func, path, exc):
            nonlocal ok
            try:  # a directory the program made unreadable or unwritable: fix and retry
                parent = os.path.dirname(path)
                os.chmod(parent, 0o700)
                if os.path.isdir(path) and not os.path.islink(path):
                    os.chmod(path, 0o700)
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except OSError:
                ok = False

        for d in self.wipe_dirs:
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for name in names:
                path = os.path.join(d, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if st.st_uid != self.uid:
                    continue  # root-owned infrastructure (this supervisor's private dir)
                try:
                    if st_mod.S_ISDIR(st.st_mode):
                        os.chmod(path, 0o700)
                        shutil.rmtree(path, onerror=onerror)
                    else:
                        os.unlink(path)
                except OSError:
                    onerror(None, path, None)
        ok = self._drop_ipc() and ok
        return ok

    def _drop_ipc(self):
        ok, libc = True, None
        for kind, fn in (("shm", "shmctl"), ("msg", "msgctl"), ("sem", "semctl")):
            try:
                with open(f"/proc/sysvipc/{kind}") as fh:
                    rows = fh.read().splitlines()[1:]
            except OSError:
                continue
            if rows and libc is None:
                try:
                    import ctypes  # only when there is something to remove (rare, and slow)

                    libc = ctypes.CDLL(None, use_errno=True)
                except Exception:  # noqa: BLE001
                    return False
            for row in rows:
                parts = row.split()
                if len(parts) < 2:
                    continue
                ipc_id = int(parts[1])
                args = (ipc_id, 0, 0, None) if kind == "sem" else (ipc_id, 0, None)
                if getattr(libc, fn)(*args) != 0:  # IPC_RMID == 0
                    ok = False
        return ok

    # -- main loop -----------------------------------------------------------------------------
    def install(self, h, blob):
        d = h["dir"]
        os.makedirs(d, mode=0o755, exist_ok=True)
        os.chmod(d, 0o755)
        pos = 0
        for name, n in h["files"]:
            if "/" in name or name.startswith("."):
                raise ValueError(f"bad file name {name!r}")
            path = os.path.join(d, name)
            with open(path + ".tmp", "wb") as fh:
                fh.write(blob[pos:pos + n])
            os.chmod(path + ".tmp", 0o644)
            os.replace(path + ".tmp", path)
            pos += n

    def serve(self):
        while True:
            frame = recv()
            if frame is None:
                return 0
            h, blob = frame
            op, rid = h.get("op"), h.get("id")
            try:
                if op == "run":
                    self.run(h, blob)
                elif op == "ping":
                    send({"op": "pong", "id": rid, "ok": True, "others": len(others()),
                          "seccomp": self.seccomp_state})
                elif op == "stats":
                    oom, pids, cpu = counters()
                    send({"op": "stats", "id": rid, "ok": True, "oom_kills": oom, "pids_max_events": pids,
                          "cpu_ns": cpu, "others": len(others())})
                elif op == "reset":
                    left = kill_all()
                    send({"op": "reset", "id": rid, "ok": self.wipe() and left == 0})
                elif op == "install":
                    self.install(h, blob)
                    send({"op": "install", "id": rid, "ok": True})
                else:
                    send({"op": op, "id": rid, "ok": False, "error": f"unknown op {op!r}"})
            except Exception as e:  # noqa: BLE001 - report, keep serving
                send({"op": op, "id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"})


def seccomp_exec(argv):
    """``--seccomp-exec FILTER_FILE PROGRAM ARGS...``: install the filter, exec the program
    (how session workers, started by ``docker exec``, get the same filter, OOM-killer
    preference and CPU priority as runs)."""
    with open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("1000")
    os.nice(10)
    with open(argv[0], "rb") as fh:
        seccomp_installer(fh.read())()
    os.execv(argv[1], argv[1:])


def main():
    if sys.argv[1:2] == ["--seccomp-exec"]:
        return seccomp_exec(sys.argv[2:])
    # Refuse to run anywhere but a sandbox container: kill(-1) as root on a host would be fatal.
    if os.environ.get("AGENTRL_SUPERVISOR") != "1" or not os.path.exists("/.dockerenv") or os.getpid() > 64:
        sys.stderr.write("agentrl docker supervisor: refusing to run outside a sandbox container\n")
        return 2
    cfg = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"uid": 1000, "gid": 1000}
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return Supervisor(cfg).serve()


if __name__ == "__main__":
    sys.exit(main())
