"""The session worker: runs *inside* a sandbox and serves one persistent Python REPL or bash.

Pure standard library; it runs as ``python3 -I -S worker.py python|bash [WORK_DIR]`` with
``files.py`` next to it (use :func:`worker_sources` to ship both), reading requests on
stdin and writing responses on stdout, so any byte-stream transport works: pipes from
bubblewrap, or ``docker exec -i`` (demultiplex Docker's stdout frames first). The host side
lives in :mod:`agentrl.sandboxes.worker_client`.

Wire format (both directions): a sequence of frames ::

    b"ARL1" | header_len: uint32 big-endian | blob_len: uint64 big-endian | header | blob

``header`` is a UTF-8 JSON object, at most ``MAX_HEADER_BYTES``; ``blob`` is raw bytes
(code, file or tar contents, captured output). :func:`encode_frame` and
:class:`FrameDecoder` implement it (sans-IO, used on both sides).

Conversation: on start the worker sends ``{"op": "ready", "pid", "kind", "python",
"version"}``. Then the host sends one request at a time and reads exactly one response with
the same ``id``:

- ``{"op": "exec", "id", "max_output_bytes"}`` + blob = code (bytes; Python source or a bash
  snippet). Response ``{"op": "result", "id", "status", "exit_code", "stdout_len",
  "stderr_len", "stdout_truncated", "stderr_truncated", "wall_time_s", "cpu_time_s",
  "error", "alive"}`` + blob = stdout bytes followed by stderr bytes. ``status`` is
  ``ok``, ``runtime_error`` (exception, non-zero ``$?`` or ``sys.exit(n != 0)``),
  ``output_limit`` (a stream passed the cap: the Python cell is interrupted, a bash session is
  killed) or ``memory_limit`` (MemoryError). ``alive`` is False when the interpreter is gone
  (bash ran ``exit``, output cap in bash): the host must restart the session.
- ``{"op": "put", "id"}`` + blob = an uncompressed tar; extracted into the work dir with
  :func:`files.safe_extract_tar` (traversal, links and devices refused). Response
  ``{"op": "put", "id", "ok", "written"}``.
- ``{"op": "get", "id", "path", "max_bytes"}``: response ``{"op": "get", "id", "ok"}`` +
  blob = the file's bytes. Symlinks are followed only while they stay inside the work dir.
- ``{"op": "get_dir", "id", "path", "max_bytes"}``: response ``{"ok", "skipped"}`` + blob = a
  tar of the regular files and directories below ``path`` (symlinks and special files are
  skipped and listed in ``skipped``).
- ``{"op": "ping", "id"}`` -> ``{"op": "pong", "id", "ok": true}``;
  ``{"op": "shutdown", "id"}`` -> the worker exits 0.

A failed request answers ``{"ok": false, "error_type": "FileNotFoundError" |
"UnsafePathError" | "ValueError" | "ProtocolError" | ..., "error": message}``.

Python kind: every cell is compiled as ``<cell-N>`` and ``exec``'d in one globals dict, so
variables, imports and functions survive between cells; the value of a trailing expression is
not echoed. ``sys.exit(n)`` ends the cell (``exit_code`` n) but not the session. Output is
captured at the file-descriptor level (fds 1 and 2 are pipes drained by a thread while the
cell runs), so ``os.write(1, ...)`` and subprocesses are captured too; stdin is /dev/null.

Bash kind: one ``bash --noprofile --norc`` process; each snippet is written to a private file
and ``eval``d by a driver loop (no temp path in error messages), so ``cd``, variables and functions persist; ``exit_code`` is
``$?``. ``exit`` ends the shell (``alive: false``).

Trust: this process shares the sandbox with the code it runs. A cell can read the worker's
memory, write fake frames on the protocol fd or kill the worker. Everything it reports is as
trustworthy as the sandboxed code itself: the host treats frames as untrusted input (size caps,
schema checks) and graders must not trust printed or reported text (attack 20 of the threat model in docs/sandboxes.md).
The protection is the sandbox around the worker, not the worker.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import struct
import sys
import threading
import time

PROTOCOL_VERSION = 1
MAGIC = b"ARL1"
_HEAD = struct.Struct(">4sIQ")
MAX_HEADER_BYTES = 1 << 20
MAX_BLOB_BYTES = 1 << 30


class ProtocolError(Exception):
    """A malformed frame (bad magic, oversized header or blob, invalid JSON)."""


def encode_frame(header: dict, blob: bytes = b"") -> bytes:
    """One frame: magic, lengths, JSON header, blob."""
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return _HEAD.pack(MAGIC, len(head), len(blob)) + head + bytes(blob)


class FrameDecoder:
    """Incremental frame parser: ``feed(bytes)`` returns the complete frames so far.

    Raises :class:`ProtocolError` on bad magic, a header over ``max_header_bytes``, a blob
    over ``max_blob_bytes`` or a header that is not a JSON object.
    """

    def __init__(self, *, max_header_bytes: int = MAX_HEADER_BYTES, max_blob_bytes: int = MAX_BLOB_BYTES):
        self._buf = bytearray()
        self._need: tuple[int, int] | None = None
        self.max_header_bytes = max_header_bytes
        self.max_blob_bytes = max_blob_bytes

    def feed(self, data: bytes) -> list[tuple[dict, bytes]]:
        self._buf += data
        frames = []
        while True:
            if self._need is None:
                if len(self._buf) < _HEAD.size:
                    break
                magic, hlen, blen = _HEAD.unpack_from(self._buf)
                if magic != MAGIC:
                    raise ProtocolError(f"bad frame magic {bytes(magic)!r}, expected {MAGIC!r}")
                if hlen > self.max_header_bytes:
                    raise ProtocolError(f"frame header of {hlen} bytes is over {self.max_header_bytes}")
                if blen > self.max_blob_bytes:
                    raise ProtocolError(f"frame blob of {blen} bytes is over {self.max_blob_bytes}")
                self._need = (hlen, blen)
            hlen, blen = self._need
            total = _HEAD.size + hlen + blen
            if len(self._buf) < total:
                break
            raw = bytes(self._buf[_HEAD.size : _HEAD.size + hlen])
            blob = bytes(self._buf[_HEAD.size + hlen : total])
            del self._buf[:total]
            self._need = None
            try:
                header = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise ProtocolError(f"frame header is not JSON: {e}") from None
            if not isinstance(header, dict):
                raise ProtocolError(f"frame header must be a JSON object, got {type(header).__name__}")
            frames.append((header, blob))
        return frames

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)


def worker_sources() -> dict[str, str]:
    """``{"worker.py": source, "files.py": source}``: what a backend ships into a sandbox."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = {}
    for name in ("worker.py", "files.py"):
        with open(os.path.join(here, name), encoding="utf-8") as fh:
            out[name] = fh.read()
    return out


# =============================================================================================
# Everything below runs inside the sandbox.


def _load_files_module():
    """``files.py``: from the package on the host, from next to this script in a sandbox."""
    if __package__:
        from . import files

        return files
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files.py")
    spec = importlib.util.spec_from_file_location("agentrl_sandbox_files", path)
    module = importlib.util.module_from_spec(spec)
    # files.py does "from .types import UnsafePathError"; give it a stand-in package.
    types_stub = type(sys)("agentrl_sandbox_types")

    class UnsafePathError(ValueError):
        pass

    types_stub.UnsafePathError = UnsafePathError
    sys.modules["agentrl_sandbox_pkg.types"] = types_stub
    module.__package__ = "agentrl_sandbox_pkg"
    sys.modules["agentrl_sandbox_pkg"] = type(sys)("agentrl_sandbox_pkg")
    spec.loader.exec_module(module)
    return module


class _OutputLimit(BaseException):
    """Raised inside a Python cell when a stream passed its cap (BaseException: not swallowed
    by ``except Exception``)."""


class _Capture:
    """Drains the pipes behind fds 1 and 2 on a thread, keeping at most ``cap`` bytes each."""

    def __init__(self, out_r: int, err_r: int, on_overflow):
        self.fds = {out_r: 0, err_r: 1}
        self.bufs = [bytearray(), bytearray()]
        self.truncated = [False, False]
        self.cap = 1 << 20
        self.lock = threading.Lock()
        self.on_overflow = on_overflow
        self.wake_r, self.wake_w = os.pipe()
        self.synced = threading.Event()
        for fd in (out_r, err_r, self.wake_r):
            os.set_blocking(fd, False)
        self.thread = threading.Thread(target=self._loop, name="agentrl-capture", daemon=True)
        self.thread.start()

    def _read_available(self, fd: int) -> bool:
        """Read until EAGAIN; False at EOF."""
        idx = self.fds[fd]
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            overflow = False
            with self.lock:
                buf = self.bufs[idx]
                room = self.cap - len(buf)
                if len(chunk) > room:
                    if room > 0:
                        buf += chunk[:room]
                    if not self.truncated[idx]:
                        self.truncated[idx] = overflow = True
                else:
                    buf += chunk
            if overflow:
                self.on_overflow()

    def _loop(self) -> None:
        live = set(self.fds)
        while True:
            ready, _, _ = select.select([*live, self.wake_r], [], [])
            for fd in ready:
                if fd == self.wake_r:
                    try:
                        os.read(self.wake_r, 64)
                    except BlockingIOError:
                        pass
                    for f in list(live):
                        if not self._read_available(f):
                            live.discard(f)
                    self.synced.set()
                elif not self._read_available(fd):
                    live.discard(fd)

    def start(self, cap: int) -> None:
        with self.lock:
            self.cap = cap
            for i in (0, 1):
                del self.bufs[i][cap:]

    def collect(self) -> tuple[bytes, bytes, bool, bool]:
        """Drain what is in the pipes now, then hand back and clear both buffers."""
        self.synced.clear()
        os.write(self.wake_w, b"s")
        self.synced.wait()
        with self.lock:
            out, err = bytes(self.bufs[0]), bytes(self.bufs[1])
            trunc = (self.truncated[0], self.truncated[1])
            self.bufs = [bytearray(), bytearray()]
            self.truncated = [False, False]
        return out, err, trunc[0], trunc[1]


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Worker:
    """The in-sandbox server: one per session."""

    def __init__(self, kind: str, work_dir: str):
        if kind not in ("python", "bash"):
            raise SystemExit(f"worker: kind must be 'python' or 'bash', got {kind!r}")
        self.kind = kind
        self.work_dir = work_dir
        self.files = _load_files_module()
        # Keep the protocol channel on private, close-on-exec fds; the cell gets /dev/null as
        # stdin and capture pipes as stdout/stderr.
        self.proto_in = os.dup(0)
        self.proto_out = os.dup(1)
        self.diag = os.dup(2)
        for fd in (self.proto_in, self.proto_out, self.diag):
            os.set_inheritable(fd, False)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        os.close(err_w)
        self.in_cell = False
        self.main_ident = threading.get_ident()
        self.capture = _Capture(out_r, err_r, self._overflow)
        sys.stdin = open(0, "r", closefd=False)  # noqa: SIM115
        sys.stdout = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
            write_through=True,
        )
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
            write_through=True,
        )
        self.decoder = FrameDecoder()
        self._backlog: list = []
        self.pid = os.getpid()
        self.cells = 0
        self.globals: dict = {"__name__": "__main__", "__builtins__": __builtins__}
        self.bash = None
        if kind == "python":
            signal.signal(signal.SIGUSR1, self._on_sigusr1)
        else:
            self._start_bash()

    # -- transport -------------------------------------------------------------------------
    def send(self, header: dict, blob: bytes = b"") -> None:
        data = memoryview(encode_frame(header, blob))
        while data:
            n = os.write(self.proto_out, data)
            data = data[n:]

    def recv(self):
        """The next request frame, or None at EOF. The host sends one request at a time; a
        second frame that arrives in the same read is kept for the next call."""
        while not self._backlog:
            chunk = os.read(self.proto_in, 1 << 20)
            if not chunk:
                return None
            self._backlog.extend(self.decoder.feed(chunk))
        return self._backlog.pop(0)

    # -- python ------------------------------------------------------------------------------
    def _overflow(self) -> None:
        if self.kind == "python":
            if self.in_cell:
                signal.pthread_kill(self.main_ident, signal.SIGUSR1)
        elif self.bash is not None:
            try:
                os.killpg(self.bash.pid, signal.SIGKILL)
            except OSError:
                pass

    def _on_sigusr1(self, signum, frame) -> None:
        if self.in_cell:
            self.in_cell = False
            raise _OutputLimit()

    def _exec_python(self, code: bytes) -> dict:
        import linecache
        import traceback

        self.cells += 1
        name = f"<cell-{self.cells}>"
        status, exit_code, error = "ok", 0, None
        self.in_cell = True
        try:
            compiled = compile(code, name, "exec", dont_inherit=True)
            text = code.decode("utf-8", "replace")
            linecache.cache[name] = (len(text), None, text.splitlines(True), name)
            exec(compiled, self.globals)  # noqa: S102 - the whole point, inside the sandbox
        except _OutputLimit:
            status, exit_code, error = "output_limit", None, "OutputLimit"
        except SystemExit as e:
            code_ = e.code
            exit_code = code_ if isinstance(code_, int) else (0 if code_ is None else 1)
            if not isinstance(code_, (int, type(None))):
                print(code_, file=sys.stderr)
            status = "ok" if exit_code == 0 else "runtime_error"
        except BaseException as e:  # noqa: BLE001 - report every failure of the cell
            self.in_cell = False
            status, exit_code, error = "runtime_error", 1, type(e).__name__
            if isinstance(e, MemoryError):
                status = "memory_limit"
            tb = e.__traceback__
            if tb is not None and tb.tb_frame.f_code is Worker._exec_python.__code__:
                tb = tb.tb_next
            try:
                traceback.print_exception(type(e), e, tb, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - e.g. MemoryError while formatting
                os.write(2, f"{type(e).__name__}\n".encode())
        finally:
            self.in_cell = False
            if os.getpid() != self.pid:  # a fork() in the cell fell through: not our reply
                os._exit(0)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - user replaced or broke the stream
                pass
        return {"status": status, "exit_code": exit_code, "error": error, "alive": True}

    # -- bash --------------------------------------------------------------------------------
    _DRIVER = (
        'while IFS= read -r __agentrl_cell <&60; do '
        # eval of the text (read with a builtin, no fork) rather than `source FILE`, so error
        # messages say "bash: ..." instead of leaking the worker's temp path.
        "IFS= builtin read -r -d '' __agentrl_code < \"$__agentrl_cell\"; "
        'builtin eval "$__agentrl_code" </dev/null; '
        "builtin printf '%s\\n' \"$?\" >&61; "
        "done"
    )

    def _start_bash(self) -> None:
        import subprocess
        import tempfile

        self.cell_dir = tempfile.mkdtemp(prefix=".agentrl-worker-")
        cmd_r, self.cmd_w = os.pipe()
        self.status_r, status_w = os.pipe()
        os.set_inheritable(self.cmd_w, False)
        os.set_inheritable(self.status_r, False)
        # Move the bash-side ends to fds 60/61 in the child only (pass_fds keeps them).
        os.dup2(cmd_r, 60)
        os.dup2(status_w, 61)
        os.close(cmd_r)
        os.close(status_w)
        self.bash = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-c", self._DRIVER],
            stdin=subprocess.DEVNULL, stdout=1, stderr=2, pass_fds=(60, 61),
            cwd=self.work_dir, start_new_session=True,
        )
        os.close(60)
        os.close(61)

    def _exec_bash(self, code: bytes) -> dict:
        self.cells += 1
        path = os.path.join(self.cell_dir, f"cell-{self.cells}.sh")
        with open(path, "wb") as fh:
            fh.write(code)
        try:
            os.write(self.cmd_w, path.encode() + b"\n")
        except BrokenPipeError:
            return {"status": "runtime_error", "exit_code": None, "error": "ShellGone", "alive": False}
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(self.status_r, 64)
            if not chunk:
                break
            line += chunk
        try:
            os.unlink(path)
        except OSError:
            pass
        if line.endswith(b"\n"):
            rc = int(line.strip() or b"1")
            return {"status": "ok" if rc == 0 else "runtime_error", "exit_code": rc, "error": None, "alive": True}
        # The shell is gone: `exit`, a signal, or killed at the output cap.
        rc = self.bash.wait()
        exit_code = rc if rc >= 0 else None
        return {
            "status": "runtime_error", "exit_code": exit_code, "signal": -rc if rc < 0 else None,
            "error": "ShellExited", "alive": False,
        }

    # -- files -------------------------------------------------------------------------------
    def _put(self, blob: bytes) -> dict:
        written = self.files.safe_extract_tar(blob, self.work_dir, on_unsafe="raise")
        return {"ok": True, "written": written}

    def _get(self, header: dict) -> tuple[dict, bytes]:
        max_bytes = int(header.get("max_bytes", self.files.MAX_FILE_BYTES))
        data = self.files.read_in_root(
            self.work_dir, header["path"], max_bytes=max_bytes, root_prefix=self.work_dir
        )
        return {"ok": True}, data

    def _get_dir(self, header: dict) -> tuple[dict, bytes]:
        import tarfile

        rel = self.files.validate_relpath(header.get("path", "."), allow_root=True)
        max_bytes = int(header.get("max_bytes", self.files.MAX_TOTAL_BYTES))
        entries = self.files.walk_in_root(self.work_dir, rel, root_prefix=self.work_dir)
        base = rel if rel != "." else ""
        buf = io.BytesIO()
        skipped, total = [], 0
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path, kind in entries:
                full = f"{base}/{path}" if base else path
                if kind == "dir":
                    info = tarfile.TarInfo(path)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                elif kind == "file":
                    try:
                        data = self.files.read_in_root(
                            self.work_dir, full, max_bytes=max_bytes - total, root_prefix=self.work_dir
                        )
                    except (OSError, ValueError) as e:
                        skipped.append(f"{path} ({e})")
                        continue
                    total += len(data)
                    info = tarfile.TarInfo(path)
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
                else:
                    skipped.append(f"{path} ({kind})")
        return {"ok": True, "skipped": skipped}, buf.getvalue()

    # -- main loop ---------------------------------------------------------------------------
    def handle(self, header: dict, blob: bytes) -> bool:
        """Serve one request; False means shut down."""
        op, rid = header.get("op"), header.get("id")
        if op == "exec":
            cap = int(header.get("max_output_bytes", 1 << 20))
            self.capture.start(cap)
            t0, c0 = time.monotonic(), _cpu_seconds()
            res = self._exec_python(blob) if self.kind == "python" else self._exec_bash(blob)
            out, err, out_t, err_t = self.capture.collect()
            if (out_t or err_t) and res["status"] in ("ok", "runtime_error") and self.kind == "python":
                res["status"] = "output_limit"
            if (out_t or err_t) and self.kind == "bash":
                res["status"] = "output_limit"
            res.update(
                op="result", id=rid, stdout_len=len(out), stderr_len=len(err),
                stdout_truncated=out_t, stderr_truncated=err_t,
                wall_time_s=time.monotonic() - t0, cpu_time_s=_cpu_seconds() - c0,
            )
            self.send(res, out + err)
            return res["alive"]
        if op == "shutdown":
            self.send({"op": "bye", "id": rid, "ok": True})
            return False
        try:
            if op == "ping":
                self.send({"op": "pong", "id": rid, "ok": True})
            elif op == "put":
                self.send({"op": "put", "id": rid, **self._put(blob)})
            elif op == "get":
                reply, data = self._get(header)
                self.send({"op": "get", "id": rid, **reply}, data)
            elif op == "get_dir":
                reply, data = self._get_dir(header)
                self.send({"op": "get_dir", "id": rid, **reply}, data)
            else:
                raise ValueError(f"unknown op {op!r}; expected exec, put, get, get_dir, ping, shutdown")
        except Exception as e:  # noqa: BLE001 - every failure is reported to the host
            self.send({"op": op, "id": rid, "ok": False, "error_type": type(e).__name__, "error": str(e)})
        return True

    def serve(self) -> int:
        os.chdir(self.work_dir)
        self.send({
            "op": "ready", "pid": os.getpid(), "kind": self.kind, "version": PROTOCOL_VERSION,
            "python": sys.version.split()[0],
        })
        while True:
            try:
                frame = self.recv()
            except ProtocolError as e:
                os.write(self.diag, f"worker: {e}\n".encode())
                return 2
            if frame is None:
                return 0
            header, blob = frame
            if not self.handle(header, blob):
                return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    kind = argv[0] if argv else "python"
    work_dir = argv[1] if len(argv) > 1 else "/work"
    return Worker(kind, work_dir).serve()


if __name__ == "__main__":
    sys.exit(main())
