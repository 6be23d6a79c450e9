"""The one result type, the per-call limits and the errors shared by every sandbox backend.

This module imports only the standard library: ``agentrl.sandboxes`` must never import torch,
ray, vllm or anything else from the project (checked by ``tests/test_layout.py``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field


class SandboxError(Exception):
    """Base class of every error the sandbox layer raises to its caller.

    A program that misbehaves inside a sandbox never raises: that is an :class:`ExecResult`
    with a status. These exceptions are for callers that misuse the API (bad limits, an
    unknown backend) or for a backend that cannot start at all (no daemon).
    """


class SandboxConfigError(SandboxError, ValueError):
    """Invalid limits, an unknown backend name, or other bad input from the caller."""


class BackendUnavailableError(SandboxError, RuntimeError):
    """The backend cannot run on this machine (no bwrap binary, no Docker daemon, ...)."""


class UnsafePathError(SandboxError, ValueError):
    """A file transfer named a path outside the work dir (``..``, absolute, or a symlink out)."""


class Status(str, enum.Enum):
    """How a sandboxed call ended. One value per call; see ``ExecResult``.

    - ``ok``: the program exited 0.
    - ``runtime_error``: the program exited non-zero or died of a signal it brought on itself.
    - ``timeout``: the wall-clock deadline passed and the sandbox killed everything it started.
    - ``memory_limit``: the memory cap (cgroup or rlimit) was hit: OOM kill or MemoryError.
    - ``output_limit``: stdout or stderr passed ``max_output_bytes``; the program was stopped.
    - ``resource_limit``: the process/thread cap (pids) stopped the program (fork bomb).
    - ``sandbox_error``: the sandbox itself failed (could not start, worker died, daemon gone).
      Never the model's fault: trainers must not score it as a wrong answer.
    """

    OK = "ok"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    RESOURCE_LIMIT = "resource_limit"
    SANDBOX_ERROR = "sandbox_error"

    def __str__(self) -> str:  # "timeout", not "Status.TIMEOUT", in tables and logs
        return self.value


# Upper bounds beyond which a limit is "absurd" on any machine we target; they exist so a typo
# (timeout_s=3600000) fails loudly instead of wedging a training run.
_MAX = {
    "timeout_s": 24 * 3600.0,
    "memory_limit_mb": 1024 * 1024,
    "max_processes": 65536,
    "max_output_bytes": 1 << 34,
    "max_file_size_mb": 1024 * 1024,
    "max_open_files": 1 << 20,
    "work_dir_size_mb": 1024 * 1024,
    "cpus": 1024.0,
}


@dataclass(frozen=True)
class Limits:
    """Per-call resource limits. Every backend enforces every field (or documents why not).

    Attributes:
        timeout_s: wall-clock deadline in seconds for one call; on expiry everything the call
            started is killed and the status is ``timeout``.
        memory_limit_mb: memory cap in MiB for all processes of the call, tmpfs pages included
            where the backend charges them (cgroup); exceeding it gives ``memory_limit``.
        max_processes: cap on processes plus threads (pids cgroup / RLIMIT_NPROC).
        max_output_bytes: cap per stream (stdout and stderr each); past it the program is
            stopped, the stream is cut at the cap and its ``*_truncated`` flag is set.
        max_file_size_mb: largest file the program may write (RLIMIT_FSIZE), in MiB.
        max_open_files: RLIMIT_NOFILE.
        work_dir_size_mb: size of the tmpfs mounted at the work dir and /tmp, in MiB.
        cpus: CPU quota in cores (cgroup cpu.cfs_quota or docker nano_cpus).
        network: False (default) means no network namespace access at all.
    """

    timeout_s: float = 10.0
    memory_limit_mb: int = 512
    max_processes: int = 128
    max_output_bytes: int = 1 << 20
    max_file_size_mb: int = 64
    max_open_files: int = 256
    work_dir_size_mb: int = 256
    cpus: float = 1.0
    network: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "network":
                if not isinstance(self.network, bool):
                    raise SandboxConfigError(
                        f"Limits.network must be a bool, got {self.network!r} "
                        f"({type(self.network).__name__}); pass network=True or network=False."
                    )
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SandboxConfigError(
                    f"Limits.{f.name} must be a number, got {value!r} ({type(value).__name__})."
                )
            if not math.isfinite(value) or value <= 0:
                raise SandboxConfigError(
                    f"Limits.{f.name} must be a positive finite number, got {value!r}; "
                    f"use e.g. {f.name}={f.default!r}."
                )
            if value > _MAX[f.name]:
                raise SandboxConfigError(
                    f"Limits.{f.name}={value!r} is absurd (more than {_MAX[f.name]!r}); "
                    f"the default is {f.default!r}. Fix the value or the unit "
                    f"(seconds for *_s, MiB for *_mb, bytes for *_bytes)."
                )

    def replace(self, **changes: object) -> Limits:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass
class ExecResult:
    """What one sandboxed call produced. Same type from every backend.

    Attributes:
        status: how the call ended (see :class:`Status`).
        exit_code: the program's exit code, or None if it never exited on its own
            (killed for timeout/limits, or the sandbox failed).
        signal: the signal number that killed the program, if any.
        stdout, stderr: decoded as UTF-8 with replacement characters, each cut at
            ``Limits.max_output_bytes`` bytes.
        stdout_truncated, stderr_truncated: True when that stream was cut at the cap.
        wall_time_s: wall-clock seconds from start to the end of the call, seconds.
        cpu_time_s: user+system CPU seconds of everything the call ran, seconds.
        peak_memory_mb: peak memory in MiB where the backend can measure it, else None.
        backend: name of the backend that ran the call.
        detail: a human-readable reason for non-ok statuses ("killed after 2.0 s", ...).
    """

    status: Status
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    peak_memory_mb: float | None = None
    backend: str = ""
    detail: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        return d


def sandbox_error(backend: str, detail: str, wall_time_s: float = 0.0) -> ExecResult:
    """An ``ExecResult`` for a failure of the sandbox itself (never the program's fault)."""
    return ExecResult(
        status=Status.SANDBOX_ERROR, backend=backend, detail=detail, wall_time_s=wall_time_s
    )
