"""Isolated execution of untrusted code for agentrl environments.

Public API::

    from agentrl.sandboxes import get_sandbox, Limits, Status
    sb = get_sandbox("bwrap")                       # or "docker"; see available_backends()
    result = sb.run_sync("print(1 + 1)")            # or: await sb.run(...)
    assert result.status is Status.OK and result.stdout == "2\\n"

This package imports only the standard library and its own modules (never torch/ray/vllm,
never the rest of agentrl).
"""

from .base import WORK_DIR, Sandbox, Session
from .registry import available_backends, get_sandbox, register_backend
from .runtime import arun, run_sync
from .types import (
    BackendUnavailableError,
    ExecResult,
    Limits,
    SandboxConfigError,
    SandboxError,
    Status,
    UnsafePathError,
)

__all__ = [
    "WORK_DIR",
    "BackendUnavailableError",
    "ExecResult",
    "Limits",
    "Sandbox",
    "SandboxConfigError",
    "SandboxError",
    "Session",
    "Status",
    "UnsafePathError",
    "arun",
    "available_backends",
    "get_sandbox",
    "register_backend",
    "run_sync",
]
