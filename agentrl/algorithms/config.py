"""Typed config of the ``algorithm:`` section and its loader.

YAML form (every key optional; defaults below). A component is ``{name: <registered name>,
<option>: <value>, ...}``; its options are the keyword options of the registered function or
class, with the defaults written there::

    algorithm:
      estimator: {name: grpo, normalize_std: true}
      credit: {gamma: 1.0, turn_rewards: env}
      loss: {name: ppo, eps_low: 0.2, eps_high: 0.28, clip_ratio_c: 10.0}
      token_mask: null                       # or {name: forking_tokens, top_quantile: 0.2}
      shaping: []                            # e.g. [{name: empg, zeta: 0.1}]
      controllers: []                        # e.g. [{name: bapo}]
      aggregation: {name: token-mean}
      kl: {estimator: k3, coef: 0.0}
      entropy_coef: 0.0
      dynamic_sampling: {enabled: false, metric: acc, max_num_gen_batches: 10}
      overlong: {enabled: false, max_response_tokens: 20480, buffer_tokens: 4096, penalty_factor: 1.0, filter_truncated: false}
      off_policy: {behavior_is_cap: null, proximal: recompute}
      seed: 0

Unknown keys, names and options raise :class:`~agentrl.algorithms.registry.UnknownNameError`
with a suggestion. Numeric strings such as ``1e-4`` (which PyYAML reads as strings) are
converted where a number is expected. Every value must have the type of its default and lie
in its range (:data:`SECTION_RANGES` for the sections here, ``OPTION_RANGES`` in the registry
for component options); errors are ValueErrors of one line naming the full key
(``algorithm.loss.eps_high must be >= 0, got -1.0``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import (AGGREGATIONS, CONTROLLERS, ESTIMATORS, KL_ESTIMATORS, LOSSES, SHAPING, TOKEN_MASKS, Registry,
                       UnknownNameError, suggest, value_problem)

__all__ = [
    "ComponentSpec",
    "CreditConfig",
    "KLConfig",
    "DynamicSamplingConfig",
    "OverlongConfig",
    "OffPolicyConfig",
    "AlgorithmConfig",
    "SECTION_RANGES",
    "load_algorithm_config",
]


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Convert PyYAML's numeric strings ('1e-4') when the default is a number."""
    if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return float(value) if isinstance(default, float) or any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if default is None and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass
class ComponentSpec:
    """A registered component by name plus its options (``{name: ppo, eps_high: 0.28}`` in YAML)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any, registry: Registry, where: str) -> "ComponentSpec":
        if isinstance(raw, str):
            raw = {"name": raw}
        if isinstance(raw, ComponentSpec):
            raw = raw.to_dict()
        if not isinstance(raw, dict) or "name" not in raw:
            raise ValueError(f"{where}: expected a mapping with a 'name' key (e.g. {{name: ...}}), got {raw!r}")
        options = dict(raw)
        name = options.pop("name")
        try:
            entry = registry.get(name)
            entry.check_options(options)
        except UnknownNameError as e:
            raise UnknownNameError(f"{where}: {e}") from None
        defaults = entry.options()
        options = {k: _coerce(v, defaults[k], f"{where}.{k}") for k, v in options.items()}
        return cls(name, options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass
class CreditConfig:
    """Step-level credit: how per-turn rewards become per-turn returns (used by step-level
    estimators such as GiGPO).

    gamma: discount across turns, ``G_s = r_s + gamma * G_{s+1}`` (GiGPO paper 0.95, unverified).
    turn_rewards: ``"env"`` uses the rollout's per-turn rewards when given (else the trajectory
    reward sits on the last turn); ``"final"`` always puts the trajectory reward on the last turn.
    """

    gamma: float = 1.0
    turn_rewards: str = "env"


@dataclass
class KLConfig:
    """KL penalty to the reference policy, added as ``coef * aggregate(kl)``.

    estimator: registered KL estimator (``k1``, ``k2``, ``k3``); coef: beta (0 disables, and no
    reference logprobs are needed); options: estimator options (e.g. ``clamp`` for k3).
    """

    estimator: str = "k3"
    coef: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DynamicSamplingConfig:
    """DAPO dynamic sampling: drop groups whose metric is uniform.

    enabled: apply the filter in ``compute_advantages``; metric: ``"acc"`` (the rollout's
    ``correct`` flags, default) or ``"seq_reward"`` (the shaped trajectory reward);
    max_num_gen_batches: generation rounds the training loop may run to fill the batch (0 =
    unlimited); consumed by the training loop, kept here so one file holds the method.
    """

    enabled: bool = False
    metric: str = "acc"
    max_num_gen_batches: int = 10


@dataclass
class OverlongConfig:
    """DAPO overlong handling.

    enabled: add the soft overlong punishment to the trajectory reward; max_response_tokens
    (L_max) and buffer_tokens (L_cache) in tokens; penalty_factor; filter_truncated: drop
    truncated trajectories from the loss ("overlong filtering"), independent of ``enabled``.
    """

    enabled: bool = False
    max_response_tokens: int = 20480
    buffer_tokens: int = 4096
    penalty_factor: float = 1.0
    filter_truncated: bool = False


@dataclass
class OffPolicyConfig:
    """Decoupled off-policy correction for asynchronous training.

    behavior_is_cap: when set and the micro-batch carries ``behavior_logprobs``, each token's
    policy loss is multiplied by ``sg(min(exp(proximal - behavior), cap))`` (truncated IS from
    the sampler to the proximal snapshot, the decoupled PPO objective); null disables.
    proximal: what the ratio ``exp(logprobs - proximal_logprobs)`` is taken against.
    ``"recompute"`` (default): the learner's policy before this batch's first update (its
    logprobs recomputed by the learner when they can differ from the current policy: several
    updates per batch, or async mode, where the sampler is up to ``max_staleness`` versions
    older and the gap is corrected by the behavior IS weight above: the decoupled objective,
    Hilton et al. 2021; AReaL). ``"behavior"``: the sampler's own logprobs (the coupled
    objective of plain PPO without recomputation): the clip, BAPO's bounds and CISPO's cap then
    act on the whole off-policy ratio, stale versions included; the behavior IS weight is 1.
    """

    behavior_is_cap: float | None = None
    proximal: str = "recompute"


UINT32 = "[0, 4294967295]"

SECTION_RANGES: dict[type, dict[str, str]] = {
    CreditConfig: {"gamma": "[0, 1]"},
    KLConfig: {"coef": ">= 0; 0 disables the KL penalty"},
    DynamicSamplingConfig: {"max_num_gen_batches": ">= 0; 0: unlimited"},
    OverlongConfig: {"max_response_tokens": ">= 1", "buffer_tokens": ">= 0", "penalty_factor": ">= 0"},
    OffPolicyConfig: {"behavior_is_cap": "> 0"},
}
"""Ranges of the numeric fields of the sections (notation of
:func:`~agentrl.algorithms.registry.range_problem`; an optional field also takes null).
``entropy_coef`` and ``seed`` of :class:`AlgorithmConfig` are added below it."""


def _field_problem(obj: Any, name: str, where: str) -> str | None:
    f = next(f for f in dataclasses.fields(obj) if f.name == name)
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    spec = SECTION_RANGES.get(type(obj), {}).get(name)
    return value_problem(getattr(obj, name), default, spec, where, nullable="None" in str(f.type))


_SECTIONS = {"credit": CreditConfig, "kl": KLConfig, "dynamic_sampling": DynamicSamplingConfig,
             "overlong": OverlongConfig, "off_policy": OffPolicyConfig}


def _parse_section(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    out = {}
    for key, value in raw.items():
        if key not in fields:
            raise UnknownNameError(f"unknown key {where}.{key}.{suggest(key, list(fields))} "
                                   f"Known keys: {', '.join(fields)}.")
        out[key] = _coerce(value, getattr(defaults, key), f"{where}.{key}")
    return cls(**out)


@dataclass
class AlgorithmConfig:
    """The ``algorithm:`` section: which components run and with which options.

    estimator: advantage estimator (``ESTIMATORS``); credit: :class:`CreditConfig`;
    loss: policy loss (``LOSSES``); token_mask: optional token selection (``TOKEN_MASKS``);
    shaping: advantage shaping, applied in order within its level (turn-level before
    token-level) (``SHAPING``); controllers: stateful controllers (``CONTROLLERS``);
    aggregation: ``AGGREGATIONS`` name (+ options); kl: :class:`KLConfig`;
    entropy_coef: plain entropy bonus ``- entropy_coef * aggregate(H)`` (verl ``entropy_coeff``);
    dynamic_sampling / overlong / off_policy: see their classes; seed: seeds the generator of
    stochastic components (Clip-Cov).
    """

    estimator: ComponentSpec = field(default_factory=lambda: ComponentSpec("grpo"))
    credit: CreditConfig = field(default_factory=CreditConfig)
    loss: ComponentSpec = field(default_factory=lambda: ComponentSpec("ppo"))
    token_mask: ComponentSpec | None = None
    shaping: list[ComponentSpec] = field(default_factory=list)
    controllers: list[ComponentSpec] = field(default_factory=list)
    aggregation: ComponentSpec = field(default_factory=lambda: ComponentSpec("token-mean"))
    kl: KLConfig = field(default_factory=KLConfig)
    entropy_coef: float = 0.0
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    off_policy: OffPolicyConfig = field(default_factory=OffPolicyConfig)
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "AlgorithmConfig":
        """Parse and validate the ``algorithm:`` mapping (not the whole file)."""
        raw = dict(raw or {})
        known = [f.name for f in dataclasses.fields(cls)]
        for key in raw:
            if key not in known:
                raise UnknownNameError(f"unknown key algorithm.{key}.{suggest(key, known)} Known keys: {', '.join(known)}.")
        kw: dict[str, Any] = {}
        for key, reg in (("estimator", ESTIMATORS), ("loss", LOSSES), ("aggregation", AGGREGATIONS)):
            if key in raw:
                kw[key] = ComponentSpec.parse(raw[key], reg, f"algorithm.{key}")
        if raw.get("token_mask") is not None:
            kw["token_mask"] = ComponentSpec.parse(raw["token_mask"], TOKEN_MASKS, "algorithm.token_mask")
        for key, reg in (("shaping", SHAPING), ("controllers", CONTROLLERS)):
            items = raw.get(key) or []
            if not isinstance(items, list):
                raise ValueError(f"algorithm.{key}: expected a list, got {items!r}")
            kw[key] = [ComponentSpec.parse(x, reg, f"algorithm.{key}[{i}]") for i, x in enumerate(items)]
        for key, section in _SECTIONS.items():
            if key in raw:
                kw[key] = _parse_section(section, raw[key], f"algorithm.{key}")
        for key in ("entropy_coef", "seed"):
            if key in raw:
                kw[key] = _coerce(raw[key], getattr(cls(), key), f"algorithm.{key}")
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Value and cross-field checks; raises ValueError (or UnknownNameError) of one line
        naming the key and the fix."""
        fields = [(self, name, f"algorithm.{name}") for name in ("entropy_coef", "seed")]
        fields += [(getattr(self, key), f.name, f"algorithm.{key}.{f.name}")
                   for key in _SECTIONS for f in dataclasses.fields(_SECTIONS[key])]
        for obj, name, where in fields:
            problem = _field_problem(obj, name, where)
            if problem:
                raise ValueError(problem)
        try:
            kl_entry = KL_ESTIMATORS.get(self.kl.estimator)
            kl_entry.check_options(self.kl.options)
        except UnknownNameError as e:
            raise UnknownNameError(f"algorithm.kl: {e}") from None
        kl_entry.check_values(self.kl.options, "algorithm.kl.options")
        for where, spec, reg in self._components():
            reg.get(spec.name).check_values(spec.options, where)
        if self.aggregation.name == "episode-mean-token-mean" and self.token_mask is not None:
            tm_opts = {**TOKEN_MASKS.get(self.token_mask.name).options(), **self.token_mask.options}
            if tm_opts.get("normalize", "all") == "kept":
                raise ValueError(f"algorithm.aggregation 'episode-mean-token-mean' cannot be combined with algorithm.token_mask "
                                 f"{self.token_mask.name!r} normalize: kept (the episode token counts are over all policy "
                                 f"tokens, not the kept ones); set token_mask normalize: all, or aggregation "
                                 f"'seq-mean-token-mean'")
        if self.credit.turn_rewards not in ("env", "final"):
            raise ValueError(f"algorithm.credit.turn_rewards must be 'env' or 'final', got {self.credit.turn_rewards!r}")
        if self.dynamic_sampling.metric not in ("acc", "seq_reward"):
            raise ValueError(f"algorithm.dynamic_sampling.metric must be 'acc' or 'seq_reward', got {self.dynamic_sampling.metric!r}")
        for kind, specs in (("shaping", self.shaping), ("controllers", self.controllers)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"algorithm.{kind} lists a component twice: {names}")
        for spec in self.controllers:
            cls = CONTROLLERS.get(spec.name).obj
            compatible = cls.compatible_losses
            if compatible is not None and self.loss.name not in compatible:
                raise ValueError(f"controller {spec.name!r} works with loss {' or '.join(compatible)}, "
                                 f"not {self.loss.name!r}; set algorithm.loss.name: {compatible[0]}")
            cls.check_config(self)  # the controller's own cross-field checks (ProRL: kl.coef > 0)
        if self.off_policy.proximal not in ("recompute", "behavior"):
            raise ValueError(f"algorithm.off_policy.proximal must be 'recompute' or 'behavior', got {self.off_policy.proximal!r}")
        if self.overlong.enabled and not 0 < self.overlong.buffer_tokens <= self.overlong.max_response_tokens:
            raise ValueError(f"algorithm.overlong: need 0 < buffer_tokens <= max_response_tokens, got buffer_tokens "
                             f"{self.overlong.buffer_tokens} and max_response_tokens {self.overlong.max_response_tokens}")
        for i, spec in enumerate(self.controllers):
            # the controllers check their options together in __init__ (BAPO's bounds and grid
            # size, Skywork's coefficient interval): build each once here, before any work
            try:
                CONTROLLERS.get(spec.name).obj(**spec.options)
            except (ValueError, TypeError) as e:
                raise ValueError(f"algorithm.controllers[{i}] ({spec.name}): {e}") from None

    def _components(self) -> list[tuple[str, ComponentSpec, Registry]]:
        """(key, spec, registry) of every component of the config, e.g. ``("algorithm.shaping[0]", ...)``."""
        out = [("algorithm.estimator", self.estimator, ESTIMATORS), ("algorithm.loss", self.loss, LOSSES),
               ("algorithm.aggregation", self.aggregation, AGGREGATIONS)]
        if self.token_mask is not None:
            out.append(("algorithm.token_mask", self.token_mask, TOKEN_MASKS))
        out += [(f"algorithm.shaping[{i}]", s, SHAPING) for i, s in enumerate(self.shaping)]
        out += [(f"algorithm.controllers[{i}]", c, CONTROLLERS) for i, c in enumerate(self.controllers)]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping that :meth:`from_dict` reads back (for saving the resolved config)."""
        out: dict[str, Any] = {
            "estimator": self.estimator.to_dict(),
            "credit": dataclasses.asdict(self.credit),
            "loss": self.loss.to_dict(),
            "token_mask": None if self.token_mask is None else self.token_mask.to_dict(),
            "shaping": [s.to_dict() for s in self.shaping],
            "controllers": [c.to_dict() for c in self.controllers],
            "aggregation": self.aggregation.to_dict(),
            "kl": dataclasses.asdict(self.kl),
            "entropy_coef": self.entropy_coef,
        }
        for key in ("dynamic_sampling", "overlong", "off_policy"):
            out[key] = dataclasses.asdict(getattr(self, key))
        out["seed"] = self.seed
        return out


SECTION_RANGES[AlgorithmConfig] = {"entropy_coef": ">= 0", "seed": UINT32}


def load_algorithm_config(path: str | Path) -> AlgorithmConfig:
    """Read a YAML file and parse its ``algorithm:`` section (other sections are ignored here;
    the training config owns them). Raises ValueError when the section is missing."""
    import yaml  # local import: the algorithms package itself depends only on torch

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or "algorithm" not in data:
        raise ValueError(f"{path}: no 'algorithm:' section")
    return AlgorithmConfig.from_dict(data["algorithm"])
