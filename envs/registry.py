"""Environment registration: versioned Gymnasium ids plus an entry-point group for plugins.

Built-in envs are registered as ``agentrl/<Name>-v<version>`` pointing at ``"module:Class"``
strings, so importing ``agentrl.envs`` imports no env implementation (nor Java, nor data).

A third-party package adds envs without touching agentrl by declaring, in its pyproject::

    [project.entry-points."agentrl.envs"]
    mypkg = "mypkg.envs:register"      # a function that calls agentrl.envs.register_env(...)
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import inspect
import logging
import re
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


class EnvOptionError(TypeError):
    """An env option (constructor keyword) the env does not accept; the message names it,
    suggests the closest accepted one and lists them."""


def check_id(id: str) -> None:
    """Raise ``gymnasium.error.NameNotFound`` for an unregistered id, with close matches and
    the registered agentrl ids."""
    load_plugins()
    if id in gym.registry:
        return
    known = list_envs()
    short = [k.split("/", 1)[-1] for k in known]
    hint = suggest(id, known) or suggest(id.split("/", 1)[-1], short)
    raise gym.error.NameNotFound(
        f"Unknown environment id {id!r}.{hint} Registered agentrl envs: {', '.join(known) or '(none)'}. "
        f"Ids look like 'agentrl/ShellQuest-v0'; run `agentrl envs list`."
    )


#: keywords ``gymnasium.make`` itself takes besides the env's options (max_episode_steps, ...)
_MAKE_KEYWORDS = tuple(
    p.name for p in inspect.signature(gym.make).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY or (p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name != "id")
)


@functools.lru_cache(maxsize=256)
def _constructor_options(entry_point: Any) -> tuple[tuple[str, ...], bool]:
    """(option names, complete) of an entry point: the keyword parameters of its ``__init__``
    and, where that takes ``**kwargs``, of the next ``__init__`` up the MRO (the pattern of
    ``super().__init__(**kwargs)`` into :class:`ToolEnv`). ``complete`` is False when the chain
    ends in ``**kwargs`` (the env may accept anything)."""
    if isinstance(entry_point, str):
        from gymnasium.envs.registration import load_env_creator

        entry_point = load_env_creator(entry_point)
    if isinstance(entry_point, type):
        inits = [c.__dict__["__init__"] for c in entry_point.__mro__ if c is not object and "__init__" in c.__dict__]
        skip_first = True
    else:
        inits, skip_first = [entry_point], False
    names: list[str] = []
    for fn in inits:
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # a builtin without a signature
            return tuple(names), False
        names += [p.name for p in params[int(skip_first):] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return tuple(dict.fromkeys(names)), True
    return tuple(dict.fromkeys(names)), False


def env_options(id: str) -> list[str] | None:
    """The options (constructor keywords) the env ``id`` accepts, or None when its constructor
    takes ``**kwargs`` that reach no constructor with a fixed signature. Imports the env's
    module (not the env's heavy resources: nothing is constructed)."""
    check_id(id)
    names, complete = _constructor_options(gym.spec(id).entry_point)
    return sorted(names) if complete else None


def _unknown_option_message(id: str, keys: list[str], accepted: list[str]) -> str:
    parts = []
    for key in keys:
        close = difflib.get_close_matches(key, accepted, n=1)
        parts.append(f"unknown option {key!r} for {id}." + (f" Did you mean {close[0]!r}?" if close else ""))
    return " ".join(parts) + f" Options: {', '.join(accepted)}."


def check_options(id: str, options: dict[str, Any]) -> None:
    """Raise :class:`EnvOptionError` (a TypeError) when ``options`` holds a keyword the env
    ``id`` does not accept, e.g. "unknown option 'horizn' for agentrl/ShellQuest-v0. Did you
    mean 'horizon'?". Envs whose constructor takes arbitrary ``**kwargs`` are not checked.
    Values are not checked here (the constructor does that)."""
    accepted = env_options(id)
    if accepted is None:
        return
    unknown = [k for k in options if k not in accepted and k not in _MAKE_KEYWORDS]
    if unknown:
        raise EnvOptionError(_unknown_option_message(id, unknown, accepted))


def make(id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` with agentrl's errors: an unknown id lists close matches and the
    registered ids; an unknown option (:class:`EnvOptionError`) names it with the closest
    accepted one."""
    check_id(id)
    check_options(id, kwargs)
    try:
        return gym.make(id, **kwargs)
    except TypeError as e:
        m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if m:
            names, _ = _constructor_options(gym.spec(id).entry_point)
            raise EnvOptionError(_unknown_option_message(id, [m.group(1)], sorted(names))) from e
        raise
