"""One registry per kind of component; the registered name is the single source of truth.

A component is registered once, next to its definition, with a one-line summary and its paper
reference::

    @LOSSES.register("ppo", summary="...", paper="arXiv 1707.06347 Eq. 7", inputs=(...))
    def ppo_loss(*, logprobs, proximal_logprobs, advantages, loss_mask, eps_low=0.2, ...):

Configs refer to components by that name only. The tunable options of a component are the
keyword-only parameters of its function (or of its class ``__init__``) that are not tensor
inputs; their defaults are the documented defaults, so there is no second list to keep in sync.
Unknown names and unknown options raise :class:`UnknownNameError` with the known list and a
close-match suggestion.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

__all__ = [
    "Entry",
    "Registry",
    "UnknownNameError",
    "suggest",
    "ESTIMATORS",
    "LOSSES",
    "TOKEN_MASKS",
    "SHAPING",
    "CONTROLLERS",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "REGISTRIES",
]

# Keyword parameters the composition layer supplies itself; never user options.
RESERVED_PARAMS = frozenset({"aggregate", "generator", "token_weights", "all_reduce"})


class UnknownNameError(ValueError):
    """An unknown component name or option: says what was received, the known ones, and the
    closest match."""


def suggest(name: str, known: list[str] | tuple[str, ...]) -> str:
    """`` did you mean 'x'?`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class Entry:
    """One registered component.

    ``obj`` is the function (or class) itself; ``inputs`` names the tensors the composition
    layer passes to it (DESIGN.md words: ``logprobs``, ``proximal_logprobs``, ``advantages``,
    ``loss_mask``, ``entropy``, ``ref_logprobs`` ...); ``paper`` is the arXiv id and equation;
    ``source`` the reference code read for it.
    """

    name: str
    kind: str
    obj: Callable[..., Any]
    summary: str
    paper: str
    source: str = ""
    inputs: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """Tunable options and their defaults, read from the signature."""
        target = self.obj.__init__ if inspect.isclass(self.obj) else self.obj
        out: dict[str, Any] = {}
        for p in inspect.signature(target).parameters.values():
            if p.name in ("self",) or p.name in self.inputs or p.name in RESERVED_PARAMS:
                continue
            if p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                continue
            if p.default is p.empty:
                continue
            out[p.name] = p.default
        return out

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise :class:`UnknownNameError` for an option this component does not take."""
        known = self.options()
        for key in options:
            if key not in known:
                raise UnknownNameError(
                    f"unknown option {key!r} for {self.kind} {self.name!r}.{suggest(key, list(known))}"
                    f" Known options: {', '.join(sorted(known)) or '(none)'}."
                )


class Registry:
    """Name -> :class:`Entry` for one kind of component (losses, estimators, ...)."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        *,
        summary: str,
        paper: str,
        source: str = "",
        inputs: tuple[str, ...] = (),
        **extra: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``obj`` under ``name``; a duplicate name raises ValueError."""

        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name].obj!r})")
            if "\n" in summary:
                raise ValueError(f"{self.kind} {name!r}: summary must be one line")
            self._entries[name] = Entry(name, self.kind, obj, summary, paper, source, tuple(inputs), dict(extra))
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and experiments only)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> Entry:
        """The entry for ``name``; raises :class:`UnknownNameError` listing the known names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = self.names()
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{suggest(name, known)} Known {self.plural}: {', '.join(known)}."
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)


ESTIMATORS = Registry("estimator")
LOSSES = Registry("loss", "losses")
TOKEN_MASKS = Registry("token mask")
SHAPING = Registry("shaping", "shaping methods")
CONTROLLERS = Registry("controller")
AGGREGATIONS = Registry("aggregation")
KL_ESTIMATORS = Registry("kl estimator")

# Ordered for `agentrl methods list`.
REGISTRIES: dict[str, Registry] = {
    "estimators": ESTIMATORS,
    "losses": LOSSES,
    "token_masks": TOKEN_MASKS,
    "shaping": SHAPING,
    "controllers": CONTROLLERS,
    "aggregations": AGGREGATIONS,
    "kl": KL_ESTIMATORS,
}
