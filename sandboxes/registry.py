"""Backends by name. The registered name is the single source of truth."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from .base import Sandbox
from .types import SandboxConfigError

# name -> "module:Class", imported lazily so a missing optional dependency of one backend
# never breaks the others.
_BACKENDS: dict[str, str] = {
    "bwrap": "agentrl.sandboxes.bwrap:BwrapSandbox",
    "docker": "agentrl.sandboxes.docker_backend:DockerSandbox",
}

DEFAULT_BACKEND = "bwrap"


def register_backend(name: str, target: str) -> None:
    """Register a backend class given as ``"module:Class"`` (a third-party backend)."""
    if ":" not in target:
        raise SandboxConfigError(
            f"register_backend({name!r}, {target!r}): target must look like 'package.module:Class'."
        )
    _BACKENDS[name] = target


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def backend_class(name: str) -> type[Sandbox]:
    if name not in _BACKENDS:
        close = difflib.get_close_matches(name, _BACKENDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SandboxConfigError(
            f"Unknown sandbox backend {name!r}; known backends: {', '.join(available_backends())}.{hint}"
        )
    module, _, cls = _BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_sandbox(name: str = DEFAULT_BACKEND, **kwargs: Any) -> Sandbox:
    """Create a sandbox backend by name (``"bwrap"``, ``"docker"``, ...).

    Keyword arguments go to the backend's constructor (``limits=Limits(...)`` for all).
    Raises SandboxConfigError for an unknown name (listing the known ones) and
    BackendUnavailableError when the backend cannot run here (with how to fix it).
    """
    return backend_class(name)(**kwargs)
