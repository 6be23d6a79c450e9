"""The sandbox protocol: one abstract API that every backend implements.

Two ways to run untrusted code:

- ``await sandbox.run(code, language="python"|"bash", files=..., stdin=..., limits=...)``:
  stateless. A fresh, empty work dir per call; nothing survives the call.
- ``session = await sandbox.session("python"|"bash", files=...)``: stateful. One persistent
  interpreter or shell per episode; ``await session.exec(code)`` keeps variables and files
  between turns. A crash or timeout inside a session is reported in the result and the session
  restarts from a clean state (``result.extra["restarted"] = True``).

Everything is asyncio so hundreds of envs can wait on sandboxes at once; ``*_sync`` wrappers
run the coroutine on a background loop (see :mod:`agentrl.sandboxes.runtime`) for sync code
such as ``gymnasium.Env.step``.

File paths given to ``files=``/``put_files``/``get_file`` are relative to the work dir; a path
that is absolute, contains ``..`` or resolves through a symlink to outside the work dir raises
:class:`~agentrl.sandboxes.types.UnsafePathError`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from . import files as _files
from .runtime import run_sync
from .types import ExecResult, Limits, SandboxConfigError

Language = Literal["python", "bash"]
FileMap = Mapping[str, "bytes | str"]

#: What ``run(language=...)`` and ``session(kind)`` accept, in every backend.
LANGUAGES: tuple[str, ...] = ("python", "bash")

#: The work dir inside every sandbox, the cwd of every call. Same path in every backend.
WORK_DIR = "/work"


def check_language(language: object, what: str = "language") -> None:
    """Raise SandboxConfigError unless ``language`` is one of :data:`LANGUAGES`."""
    if language not in LANGUAGES:
        raise SandboxConfigError(
            f"{what} must be 'python' or 'bash', got {language!r}. Pass {what.split()[-1]}='python' or "
            f"'bash'; another interpreter runs from a bash program (e.g. 'node main.js' with files=...)."
        )


def check_limits(limits: object, default: Limits | None = None) -> Limits:
    """``limits`` if it is a :class:`Limits`, ``default`` for None (when given); else
    SandboxConfigError saying what was passed and how to build a Limits."""
    if limits is None and default is not None:
        return default
    if not isinstance(limits, Limits):
        raise SandboxConfigError(
            f"limits must be a Limits instance, got {type(limits).__name__} ({limits!r:.80}). Build one with "
            "agentrl.sandboxes.Limits(timeout_s=..., memory_limit_mb=...), or pass None for the sandbox's defaults."
        )
    return limits


def check_stdin(stdin: object) -> bytes | bytearray | None:
    """``stdin`` as bytes (str as UTF-8, lone surrogates kept as in file contents), or None."""
    if isinstance(stdin, str):
        return stdin.encode("utf-8", "surrogateescape")
    if stdin is not None and not isinstance(stdin, (bytes, bytearray)):
        raise SandboxConfigError(f"stdin must be bytes, str or None, got {type(stdin).__name__}.")
    return stdin


class Session(abc.ABC):
    """A persistent interpreter (``kind="python"``) or shell (``kind="bash"``) for one episode.

    Not safe for concurrent ``exec`` calls: one turn at a time (calls are serialised).
    """

    kind: Language

    @abc.abstractmethod
    async def exec(self, code: str, *, timeout_s: float | None = None) -> ExecResult:
        """Run ``code`` in the session; returns only what this call printed.

        For ``python`` the code runs like a REPL cell (the value of a trailing expression is
        not echoed; use print). For ``bash`` it is a shell snippet; ``exit_code`` is ``$?``.
        ``timeout_s`` overrides the session's ``Limits.timeout_s`` for this call.
        Never raises for program misbehaviour; timeouts/crashes restart the session.
        """

    @abc.abstractmethod
    async def put_files(self, files: FileMap) -> None:
        """Write files (relative path -> content) into the work dir, creating parent dirs."""

    @abc.abstractmethod
    async def get_file(self, path: str, *, max_bytes: int = 16 << 20) -> bytes:
        """Read one regular file from the work dir. Raises FileNotFoundError, UnsafePathError."""

    @abc.abstractmethod
    async def put_dir(self, local_dir: str | Path, dest: str = ".") -> None:
        """Copy a host directory tree into the work dir at ``dest`` (symlinks are refused)."""

    @abc.abstractmethod
    async def get_dir(self, path: str, local_dir: str | Path) -> list[str]:
        """Copy a directory of the work dir to the host; returns the relative paths written.

        Symlinks, devices and entries escaping ``local_dir`` are skipped, never followed.
        """

    @abc.abstractmethod
    async def restart(self) -> None:
        """Kill the session and start a clean one (empty work dir, fresh interpreter)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Kill everything the session started. Idempotent."""

    # Sync wrappers for gymnasium-style code.
    def exec_sync(self, code: str, *, timeout_s: float | None = None) -> ExecResult:
        return run_sync(self.exec(code, timeout_s=timeout_s))

    def put_files_sync(self, files: FileMap) -> None:
        run_sync(self.put_files(files))

    def get_file_sync(self, path: str, *, max_bytes: int = 16 << 20) -> bytes:
        return run_sync(self.get_file(path, max_bytes=max_bytes))

    def close_sync(self) -> None:
        run_sync(self.close())

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Sandbox(abc.ABC):
    """A backend that runs untrusted code. Construct through :func:`agentrl.sandboxes.get_sandbox`.

    Subclasses set ``name`` and implement the abstract methods. ``limits`` given here are the
    defaults for every call; each call may pass its own.

    The arguments are checked here, once for every backend: :meth:`run` and :meth:`session`
    refuse a closed sandbox (``self._closed``), an unknown language, limits that are not a
    :class:`Limits`, code that is not UTF-8 text or bytes, unsafe file paths and bad stdin
    (SandboxConfigError / UnsafePathError, before anything starts), then call the backend's
    :meth:`_run_checked` / :meth:`_session_checked` with the checked values.
    """

    name: str = ""
    _closed: bool = False

    def __init__(self, *, limits: Limits | None = None) -> None:
        self.limits = check_limits(limits, Limits())

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxConfigError(f"this {type(self).__name__} is closed; create a new one with get_sandbox({self.name!r}).")

    async def run(
        self,
        code: str | bytes,
        *,
        language: Language = "python",
        stdin: bytes | str | None = None,
        files: FileMap | None = None,
        limits: Limits | None = None,
    ) -> ExecResult:
        """Run ``code`` once in a fresh sandbox and return its result. Never raises for
        anything the program does; raises SandboxConfigError for bad arguments."""
        from .worker_client import encode_code  # worker_client imports this module

        self._check_open()
        check_language(language)
        limits = check_limits(limits, self.limits)
        data = encode_code(code)
        file_map = _files.normalize_files(files)
        return await self._run_checked(data, language, check_stdin(stdin), file_map, limits)

    @abc.abstractmethod
    async def _run_checked(
        self, code: bytes, language: Language, stdin: bytes | bytearray | None, files: dict[str, bytes], limits: Limits
    ) -> ExecResult:
        """:meth:`run` with checked arguments: the code as bytes, files as ``{normalised path: bytes}``."""

    async def session(
        self,
        kind: Language = "python",
        *,
        files: FileMap | None = None,
        limits: Limits | None = None,
    ) -> Session:
        """Start a persistent session (see :class:`Session`)."""
        self._check_open()
        check_language(kind, "session kind")
        limits = check_limits(limits, self.limits)
        _files.normalize_files(files)  # bad paths fail here, before anything starts
        return await self._session_checked(kind, files, limits)

    @abc.abstractmethod
    async def _session_checked(self, kind: Language, files: FileMap | None, limits: Limits) -> Session:
        """:meth:`session` with checked arguments (``files`` as given, their paths checked)."""

    @abc.abstractmethod
    async def health(self) -> dict[str, object]:
        """Check the backend can run a trivial program; returns {"ok": bool, ...details}."""

    @abc.abstractmethod
    def metrics(self) -> dict[str, float]:
        """Counters and latency stats since creation, keys prefixed ``sandbox/``
        (``sandbox/calls``, ``sandbox/timeouts``, ``sandbox/ooms``, ``sandbox/latency_p50_s``...)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release everything (workers, containers). Idempotent."""

    # Sync wrappers.
    def run_sync(self, code: str | bytes, **kwargs: object) -> ExecResult:
        return run_sync(self.run(code, **kwargs))  # type: ignore[arg-type]

    def session_sync(self, kind: Language = "python", **kwargs: object) -> Session:
        return run_sync(self.session(kind, **kwargs))  # type: ignore[arg-type]

    def close_sync(self) -> None:
        run_sync(self.close())

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
