"""Host side of the session worker protocol: a backend-agnostic :class:`WorkerSession`.

A backend supplies a *launcher*: an async callable that starts one sandbox running
``worker.py`` (see :mod:`agentrl.sandboxes.worker`) and returns a :class:`WorkerProcess` (a
byte pipe to it plus kill and post-mortem). :class:`WorkerSession` does the rest for every
backend: the ready handshake, one request at a time, per-exec wall-clock timeout, mapping
worker results to :class:`~agentrl.sandboxes.types.ExecResult`, file put/get with
:mod:`files` checks on the host side, and a clean restart (new sandbox, initial files put
again, ``result.extra["restarted"] = True``) after a timeout, a crash, an OOM kill or a
protocol violation.

Frames from the worker are untrusted input: their size is capped (twice the output cap plus
slack for results, the transfer caps for files) and a malformed frame is treated as the
session's death, never parsed further.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from . import files as _files
from .base import FileMap, Language, Session, check_language
from .metrics import SandboxMetrics
from .pool import ConcurrencyLimiter
from .types import (
    ExecResult,
    Limits,
    SandboxConfigError,
    SandboxError,
    Status,
    UnsafePathError,
)
from .worker import FrameDecoder, ProtocolError, encode_frame

_ERRORS: dict[str, type[Exception]] = {
    "FileNotFoundError": FileNotFoundError,
    "UnsafePathError": UnsafePathError,
    "IsADirectoryError": UnsafePathError,
    "NotADirectoryError": UnsafePathError,
    "ValueError": ValueError,
}


class WorkerDied(Exception):
    """The worker's stream ended or broke; ``reason`` says how."""


class WorkerProcess(abc.ABC):
    """One running sandbox with a worker inside, as a backend exposes it."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send bytes to the worker's stdin. Raises WorkerDied if it is gone."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """Some bytes from the worker's stdout; b"" at EOF."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Kill every process of this sandbox instance and wait until they are gone."""

    @abc.abstractmethod
    async def post_mortem(self) -> tuple[Status, str]:
        """After the worker died (or was killed): why, as a status and a detail, e.g.
        (MEMORY_LIMIT, "OOM killed") or (RUNTIME_ERROR, "worker exited with code 3")."""

    def cpu_time_s(self) -> float | None:
        """CPU seconds used so far by the whole sandbox, if the backend can tell."""
        return None

    def peak_memory_mb(self) -> float | None:
        return None


Launcher = Callable[[], Awaitable[WorkerProcess]]


def encode_code(code: str | bytes) -> bytes:
    """Code as bytes: str as UTF-8 (SandboxConfigError for lone surrogates), bytes as is."""
    if isinstance(code, (bytes, bytearray, memoryview)):
        return bytes(code)
    if not isinstance(code, str):
        raise SandboxConfigError(f"code must be str or bytes, got {type(code).__name__}.")
    try:
        return code.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SandboxConfigError(
            f"code is not encodable as UTF-8 ({e.reason} at index {e.start}: "
            f"{code[e.start:e.end]!r}); pass valid text, or bytes if you mean raw bytes."
        ) from None


class WorkerSession(Session):
    """A persistent Python or bash session driven over the worker protocol."""

    def __init__(
        self,
        kind: Language,
        launcher: Launcher,
        *,
        limits: Limits,
        backend: str,
        files: FileMap | None = None,
        metrics: SandboxMetrics | None = None,
        limiter: ConcurrencyLimiter | None = None,
        startup_timeout_s: float = 30.0,
    ):
        check_language(kind, "session kind")
        self.kind = kind
        self.limits = limits
        self.backend = backend
        self._launcher = launcher
        self._initial_files = _files.normalize_files(files)
        self._metrics = metrics
        self._limiter = limiter
        self._startup_timeout_s = startup_timeout_s
        self._proc: WorkerProcess | None = None
        self._decoder: FrameDecoder | None = None
        self._frames: list[tuple[dict, bytes]] = []
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._closed = False
        self.restarts = 0
        self.worker_info: dict = {}

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the sandbox and worker, wait for "ready", put the initial files."""
        proc = await self._launcher()
        self._proc = proc
        self._decoder = FrameDecoder(max_blob_bytes=max(_files.MAX_TOTAL_BYTES, 4 * self.limits.max_output_bytes + (1 << 16)))
        self._frames = []
        try:
            header, _ = await asyncio.wait_for(self._next_frame(), self._startup_timeout_s)
        except (asyncio.TimeoutError, WorkerDied, ProtocolError) as e:
            status, detail = await self._bury()
            raise SandboxError(
                f"{self.backend} {self.kind} session worker did not start: "
                f"{type(e).__name__}: {e} ({status}: {detail})"
            ) from None
        if header.get("op") != "ready":
            await self._bury()
            raise SandboxError(f"{self.backend} session worker sent {header!r} instead of 'ready'.")
        self.worker_info = header
        if self._initial_files:
            await self._request({"op": "put"}, _files.tar_from_files(self._initial_files))

    async def _bury(self) -> tuple[Status, str]:
        proc, self._proc = self._proc, None
        if proc is None:
            return Status.SANDBOX_ERROR, "no worker"
        await proc.kill()
        return await proc.post_mortem()

    async def restart(self) -> None:
        async with self._lock:
            await self._restart_locked()

    async def _restart_locked(self) -> None:
        await self._bury()
        self.restarts += 1
        await self.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                await asyncio.wait_for(proc.write(encode_frame({"op": "shutdown", "id": 0})), 0.5)
            except (asyncio.TimeoutError, WorkerDied, OSError):
                pass
            await proc.kill()

    # -- transport ---------------------------------------------------------------------------
    async def _next_frame(self) -> tuple[dict, bytes]:
        assert self._proc is not None and self._decoder is not None
        while not self._frames:
            chunk = await self._proc.read()
            if not chunk:
                raise WorkerDied("worker stream closed")
            self._frames.extend(self._decoder.feed(chunk))
        return self._frames.pop(0)

    async def _request(self, header: dict, blob: bytes = b"", *, timeout_s: float | None = None) -> tuple[dict, bytes]:
        """One request/response for file ops; raises the mapped error on ``ok: false``."""
        if self._closed:
            raise SandboxError("session is closed; start a new one with sandbox.session().")
        if self._proc is None:
            await self.start()
        rid = next(self._ids)
        timeout = timeout_s or max(30.0, self.limits.timeout_s)
        try:
            await self._proc.write(encode_frame({**header, "id": rid}, blob))
            reply, data = await asyncio.wait_for(self._next_frame(), timeout)
        except (asyncio.TimeoutError, WorkerDied, ProtocolError, OSError) as e:
            status, detail = await self._bury()
            raise SandboxError(
                f"{self.backend} session worker failed during {header.get('op')!r}: "
                f"{type(e).__name__}: {e} ({status}: {detail}); the session will restart."
            ) from None
        if reply.get("id") != rid:
            await self._bury()
            raise SandboxError(f"session worker answered id {reply.get('id')!r}, expected {rid}.")
        if not reply.get("ok", False):
            exc = _ERRORS.get(str(reply.get("error_type")), SandboxError)
            raise exc(str(reply.get("error", "unknown error")))
        return reply, data

    # -- Session API ---------------------------------------------------------------------------
    async def exec(self, code: str | bytes, *, timeout_s: float | None = None) -> ExecResult:
        data = encode_code(code)
        timeout = self.limits.timeout_s if timeout_s is None else timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 24 * 3600:
            raise SandboxConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}.")
        if self._closed:
            raise SandboxError("session is closed; start a new one with sandbox.session().")
        async with self._lock:
            if self._limiter is not None:
                async with self._limiter.slot() as waited:
                    result = await self._exec_locked(data, timeout)
            else:
                waited = 0.0
                result = await self._exec_locked(data, timeout)
        result.extra["queue_wait_s"] = waited
        if self._metrics is not None:
            self._metrics.record(result, latency_s=result.wall_time_s + waited, queue_wait_s=waited)
        return result

    async def _exec_locked(self, data: bytes, timeout: float) -> ExecResult:
        t0 = time.monotonic()
        if self._proc is None:
            try:
                await self.start()
            except SandboxError as e:
                return ExecResult(Status.SANDBOX_ERROR, backend=self.backend, detail=str(e),
                                  wall_time_s=time.monotonic() - t0)
        rid = next(self._ids)
        cap = self.limits.max_output_bytes
        try:
            await self._proc.write(encode_frame({"op": "exec", "id": rid, "max_output_bytes": cap}, data))
            header, blob = await asyncio.wait_for(self._next_frame(), timeout)
            if header.get("op") != "result" or header.get("id") != rid:
                raise ProtocolError(f"expected result {rid}, got {str(header)[:200]}")
        except asyncio.TimeoutError:
            return await self._recover(
                Status.TIMEOUT, f"killed after {timeout:g} s wall-clock timeout; session restarted", t0
            )
        except (WorkerDied, ProtocolError, OSError) as e:
            status, detail = await self._bury()
            if status is Status.SANDBOX_ERROR:
                status = Status.RUNTIME_ERROR  # the cell broke its own session
            return await self._recover(status, f"session worker died ({e}): {detail}; session restarted", t0, buried=True)
        return await self._to_result(header, blob, t0)

    async def _recover(self, status: Status, detail: str, t0: float, *, buried: bool = False) -> ExecResult:
        if not buried:
            await self._bury()
        self.restarts += 1
        result = ExecResult(status, backend=self.backend, detail=detail)
        try:
            await self.start()
        except SandboxError as e:
            result.detail += f"; restart failed: {e}"
        result.wall_time_s = time.monotonic() - t0
        result.extra["restarted"] = True
        return result

    async def _to_result(self, h: dict, blob: bytes, t0: float) -> ExecResult:
        try:
            status = Status(h.get("status"))
            out_len = int(h.get("stdout_len", 0))
        except (ValueError, TypeError):
            status, out_len = Status.RUNTIME_ERROR, 0
        out, err = blob[:out_len], blob[out_len:]
        result = ExecResult(
            status=status,
            exit_code=h.get("exit_code") if isinstance(h.get("exit_code"), int) else None,
            signal=h.get("signal") if isinstance(h.get("signal"), int) else None,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            stdout_truncated=bool(h.get("stdout_truncated")),
            stderr_truncated=bool(h.get("stderr_truncated")),
            cpu_time_s=float(h.get("cpu_time_s") or 0.0),
            backend=self.backend,
        )
        if h.get("error"):
            result.extra["error"] = str(h["error"])
        if status is Status.OUTPUT_LIMIT:
            result.detail = f"output passed {self.limits.max_output_bytes} bytes; the cell was stopped"
        elif status is Status.MEMORY_LIMIT:
            result.detail = "MemoryError inside the session"
        if not h.get("alive", True):
            await self._bury()
            self.restarts += 1
            result.extra["restarted"] = True
            result.detail = (result.detail + "; " if result.detail else "") + (
                "the shell exited; session restarted" if self.kind == "bash" else "session restarted"
            )
            try:
                await self.start()
            except SandboxError as e:
                result.detail += f"; restart failed: {e}"
        result.wall_time_s = time.monotonic() - t0
        return result

    async def put_files(self, files: FileMap) -> None:
        norm = _files.normalize_files(files)
        if norm:
            async with self._lock:
                await self._request({"op": "put"}, _files.tar_from_files(norm))

    async def get_file(self, path: str, *, max_bytes: int = 16 << 20) -> bytes:
        rel = _files.validate_relpath(path)
        async with self._lock:
            _, data = await self._request({"op": "get", "path": rel, "max_bytes": int(max_bytes)})
        if len(data) > max_bytes:
            raise ValueError(f"{rel!r} came back with {len(data)} bytes, over max_bytes={max_bytes}.")
        return data

    async def put_dir(self, local_dir: str | Path, dest: str = ".") -> None:
        tar = _files.tar_from_dir(local_dir, dest)
        async with self._lock:
            await self._request({"op": "put"}, tar)

    async def get_dir(self, path: str, local_dir: str | Path) -> list[str]:
        rel = _files.validate_relpath(path, allow_root=True)
        async with self._lock:
            reply, tar = await self._request({"op": "get_dir", "path": rel, "max_bytes": _files.MAX_TOTAL_BYTES})
        os.makedirs(local_dir, exist_ok=True)
        written = _files.safe_extract_tar(tar, local_dir, on_unsafe="skip")
        return sorted(written)
