"""One registry per kind of component; the registered name is the single source of truth.

A component is registered once, next to its definition, with a one-line summary and its paper
reference::

    @LOSSES.register("ppo", summary="...", paper="arXiv 1707.06347 Eq. 7", inputs=(...))
    def ppo_loss(*, logprobs, proximal_logprobs, advantages, loss_mask, eps_low=0.2, ...):

Configs refer to components by that name only. The tunable options of a component are the
keyword-only parameters of its function (or of its class ``__init__``) that are not tensor
inputs; their defaults are the documented defaults, so there is no second list to keep in sync.
Unknown names and unknown options raise :class:`UnknownNameError` with the known list and a
close-match suggestion. Option *values* are checked when a config is loaded: each option has
the type of its default and a declared range (:data:`OPTION_RANGES`, or ``ranges=`` at
registration), so ``eps_high: -1`` fails before any work with a line naming the key.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from agentrl.ranges import range_problem  # one notation for config fields and method options

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
    "OPTION_RANGES",
    "range_problem",
    "value_problem",
]

# Keyword parameters the composition layer supplies itself; never user options.
RESERVED_PARAMS = frozenset({"aggregate", "generator", "token_weights", "all_reduce", "mini_batch_stats"})


class UnknownNameError(ValueError):
    """An unknown component name or option: says what was received, the known ones, and the
    closest match."""


def suggest(name: str, known: list[str] | tuple[str, ...]) -> str:
    """`` did you mean 'x'?`` for the closest known name, or an empty string."""
    longer = sorted((k for k in known if str(k).startswith(str(name)) and k != name), key=len)
    if len(longer) == 1:  # a prefix ('seq-mean'): its completions, before any fuzzy match
        return f" Did you mean {longer[0]!r}?"
    if longer:
        return f" Did you mean one of {', '.join(map(repr, longer))}?"
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def value_problem(value: Any, default: Any, spec: str | None, where: str, nullable: bool = False) -> str | None:
    """None when ``value`` suits an option or field whose default is ``default``: a bool for a
    bool, a string for a string, a mapping for a mapping, an integer for an integer, a number for a float (or for a
    ``None`` default with a range), within ``spec`` (:func:`range_problem`) when given; null
    where ``nullable``. Else the one-line message naming ``where``."""
    if value is None:
        return None if nullable or default is None else f"{where}: expected a value, got null"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{where}: expected true or false, got {type(value).__name__} {value!r}"
    if isinstance(default, str):
        return None if isinstance(value, str) else f"{where}: expected a string, got {type(value).__name__} {value!r}"
    if isinstance(default, dict):
        return None if isinstance(value, dict) else f"{where}: expected a mapping, got {type(value).__name__} {value!r}"
    if not (isinstance(default, (int, float)) or spec is not None):
        return None
    if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{where}: expected an integer, got {type(value).__name__} {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{where}: expected a number, got {type(value).__name__} {value!r}"
    return None if spec is None else range_problem(value, spec, where, nullable)


@dataclass(frozen=True)
class Entry:
    """One registered component.

    ``obj`` is the function (or class) itself; ``inputs`` names the tensors the composition
    layer passes to it (the words of docs/design.md §3: ``logprobs``, ``proximal_logprobs``, ``advantages``,
    ``loss_mask``, ``entropy``, ``ref_logprobs`` ...); ``paper`` is the arXiv id and equation;
    ``source`` the reference code read for it. ``extra`` holds the other keywords of
    :meth:`Registry.register`: ``level`` (shaping), ``needs_group`` (estimators whose baseline
    is the rest of the group), ``ranges`` (option ranges, over :data:`OPTION_RANGES`),
    ``split_invariant`` (True when the component's result depends only on per-token values and
    the mini-batch-wide denominators, so the learner may regroup rows between micro-batches;
    default False: unknown components are treated as batch-dependent), ``stats`` (a loss's
    per-call sums over the whole mini-batch, see :mod:`.losses`).
    """

    name: str
    kind: str
    obj: Callable[..., Any]
    summary: str
    paper: str
    source: str = ""
    inputs: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def _option_params(self) -> list[inspect.Parameter]:
        target = self.obj.__init__ if inspect.isclass(self.obj) else self.obj
        return [p for p in inspect.signature(target).parameters.values()
                if p.name != "self" and p.name not in self.inputs and p.name not in RESERVED_PARAMS
                and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty]

    def options(self) -> dict[str, Any]:
        """Tunable options and their defaults, read from the signature."""
        return {p.name: p.default for p in self._option_params()}

    def nullable_options(self) -> set[str]:
        """Options that take null: a ``None`` default, or ``None`` in the annotation
        (``clip_ratio_c: float | None = 3.0``: null disables the dual clip)."""
        return {p.name for p in self._option_params() if p.default is None or "None" in str(p.annotation)}

    def ranges(self) -> dict[str, str]:
        """Option -> range (:func:`range_problem` notation): :data:`OPTION_RANGES`, updated by
        the ``ranges`` given at registration."""
        return {**OPTION_RANGES.get((self.kind, self.name), {}), **self.extra.get("ranges", {})}

    def check_values(self, options: dict[str, Any], where: str) -> None:
        """Raise ValueError (one line naming ``where.option``) for an option value of the wrong
        type or outside its range. Options must be known (:meth:`check_options`)."""
        defaults, ranges, nullable = self.options(), self.ranges(), self.nullable_options()
        for key, value in options.items():
            problem = value_problem(value, defaults[key], ranges.get(key), f"{where}.{key}", key in nullable)
            if problem:
                raise ValueError(problem)

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
        """Decorator registering ``obj`` under ``name``; a duplicate name raises ValueError.
        ``extra`` keywords are kept on the entry (``level=``, ``needs_group=``, ``ranges=``;
        see :class:`Entry`)."""

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


OPTION_RANGES: dict[tuple[str, str], dict[str, str]] = {
    # (registry kind, component name): {option: range}. Every numeric option of every
    # registered component has an entry (tests/test_config.py checks); "any" where the
    # method gives no bound. Ranges only reject values the method is not defined for; they
    # change no math. A component registered elsewhere passes ranges= to register().
    ("estimator", "grpo"): {"eps": "> 0"},
    ("estimator", "reinforce_pp"): {"eps": "> 0"},
    ("estimator", "psr"): {"success_threshold": "any"},
    ("estimator", "nsr"): {"success_threshold": "any"},
    ("estimator", "w_reinforce"): {"success_threshold": "any", "positive_weight": ">= 0"},
    ("estimator", "gigpo"): {"step_weight": ">= 0", "eps": "> 0"},
    ("loss", "ppo"): {"eps_low": ">= 0", "eps_high": ">= 0", "clip_ratio_c": "> 1; the dual-clip constant, null disables it"},
    # cispo: with semantics "trl" eps_high is an absolute cap, >= 1 (checked by the loss itself)
    ("loss", "cispo"): {"eps_low": ">= 0", "eps_high": ">= 0"},
    ("loss", "clip_cov"): {"eps_low": ">= 0", "eps_high": ">= 0", "clip_cov_ratio": "(0, 1]",
                           "clip_cov_lb": "any", "clip_cov_ub": "any"},
    ("loss", "kl_cov"): {"kl_cov_ratio": "(0, 1]", "ppo_kl_coef": ">= 0"},
    ("loss", "archer"): {"token_entropy_quantile": "[0, 1]",
                         "low_entropy_eps_low": ">= 0", "low_entropy_eps_high": ">= 0",
                         "high_entropy_eps_low": ">= 0", "high_entropy_eps_high": ">= 0",
                         "clip_ratio_c": "> 1; the dual-clip constant, null disables it",
                         "kl_coef_low": ">= 0", "kl_coef_high": ">= 0"},
    ("token mask", "forking_tokens"): {"top_quantile": "[0, 1]"},
    ("shaping", "empg"): {"k": ">= 0", "k_f": ">= 0", "zeta": ">= 0", "eps": "> 0"},
    ("shaping", "entropy_advantage"): {"alpha": "> 0", "kappa": "> 1"},
    # bapo: the four bounds are checked together by BAPOController.__init__ (run at load time
    # by AlgorithmConfig.validate), with a message about absolute bounds
    ("controller", "bapo"): {"target_ratio": ">= 0", "ratio_lower_start": "any", "ratio_lower_max": "any",
                             "ratio_lower_step": ">= 0", "ratio_upper_start": "any", "ratio_upper_max": "any",
                             "ratio_upper_step": ">= 0", "eps": "> 0"},
    # entropic: a negative target_entropy disables the control (the reference config's -1)
    ("controller", "entropic"): {"target_entropy": "any", "kp": ">= 0", "ki": ">= 0",
                                 "high_prob_threshold": "(0, 1)", "alpha_limit": ">= 0"},
    ("controller", "skywork"): {"target_entropy": ">= 0", "delta": ">= 0", "coef_init": ">= 0",
                                "coef_min": ">= 0", "coef_max": ">= 0"},
    ("controller", "prorl"): {"reset_interval_steps": ">= 0; 0: no scheduled resets", "reset_kl_threshold": ">= 0",
                              "min_steps_between_resets": ">= 1"},
    ("aggregation", "seq-mean-token-sum-norm"): {"norm_length": "> 0"},
    ("kl estimator", "k3"): {"clamp": "> 0"},
}
"""Valid values of the numeric options of the shipped components (see :func:`range_problem`)."""

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
