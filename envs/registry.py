"""Environment registration: versioned Gymnasium ids plus an entry-point group for plugins.

Built-in envs are registered as ``agentrl/<Name>-v<version>`` pointing at ``"module:Class"``
strings, so importing ``agentrl.envs`` imports no env implementation (nor Java, nor data).

A third-party package adds envs without touching agentrl by declaring, in its pyproject::

    [project.entry-points."agentrl.envs"]
    mypkg = "mypkg.envs:register"      # a function that calls agentrl.envs.register_env(...)
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

import gymnasium as gym

from .base import suggest

log = logging.getLogger(__name__)

NAMESPACE = "agentrl"
ENTRY_POINT_GROUP = "agentrl.envs"

#: env id -> one-line description (for ``agentrl envs list``)
DESCRIPTIONS: dict[str, str] = {}
_plugins_loaded = False


def env_id(name: str, version: int = 0) -> str:
    return f"{NAMESPACE}/{name}-v{version}"


def register_env(
    name: str,
    entry_point: str | type,
    *,
    version: int = 0,
    kwargs: dict[str, Any] | None = None,
    description: str = "",
) -> str:
    """Register an env under ``agentrl/<name>-v<version>``; returns the id.

    ``entry_point`` is a ``"module:Class"`` string (imported on first ``make``) or a class.
    Re-registering an id replaces it (handy in notebooks), with a debug log line.
    """
    eid = env_id(name, version)
    if eid in gym.registry:
        log.debug("re-registering %s", eid)
        del gym.registry[eid]
    gym.register(id=eid, entry_point=entry_point, kwargs=kwargs or {}, disable_env_checker=False)
    DESCRIPTIONS[eid] = description
    return eid


def load_plugins() -> None:
    """Call the register functions of every installed ``agentrl.envs`` entry point (once).

    A plugin that fails to load is logged and skipped: one broken package must not hide the
    other environments.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()()
        except Exception as e:  # noqa: BLE001 - report and continue, see docstring
            log.warning("agentrl.envs plugin %r (%s) failed to load: %s: %s", ep.name, ep.value, type(e).__name__, e)


def list_envs() -> list[str]:
    """All registered agentrl env ids (built-ins and plugins), sorted."""
    load_plugins()
    return sorted(k for k in gym.registry if k.startswith(NAMESPACE + "/"))


def make(id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` with agentrl's errors: an unknown id lists close matches and the
    registered ids; invalid constructor options say which option and what is accepted."""
    load_plugins()
    known = list_envs()
    if id not in gym.registry:
        short = [k.split("/", 1)[-1] for k in known]
        hint = suggest(id, known) or suggest(id.split("/", 1)[-1], short)
        raise gym.error.NameNotFound(
            f"Unknown environment id {id!r}.{hint} Registered agentrl envs: {', '.join(known) or '(none)'}. "
            f"Ids look like 'agentrl/ShellQuest-v0'; run `agentrl envs list`."
        )
    try:
        return gym.make(id, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            spec = gym.spec(id)
            raise TypeError(f"Invalid option for {id}: {e}. Check the env's constructor ({spec.entry_point}) for accepted options.") from e
        raise
