"""Values at masked positions never matter: NaN and +-inf there change no output and no gradient.

Every registered component of every registry (:data:`agentrl.algorithms.registry.REGISTRIES`, so
a newly registered one is covered without editing this file) is run on one small deterministic
batch, once with finite junk at the masked positions of every float input and once for each of
NaN, +inf, -inf, a mix of the three, the mix with finite junk, and the mix in one input at a time
(finite junk in the others). Its outputs (losses, metrics, masks, advantages, controller outputs
and states; any tuple/list/dict/dataclass is flattened into its tensors) must be equal and
finite at unmasked positions, and so must the gradients with respect to every float input; the
gradients at masked positions must be exactly zero. A component whose inputs this file
cannot build fails (it is never skipped): add a builder for the new input name below.

Which positions are masked, per input:

* ``[B, T]`` token tensors (``logprobs``, ``advantages``, ``entropy`` ...) where ``loss_mask`` is
  False (a prompt token, a tool token between turns, a masked tail, one fully masked row);
* ``[B, S]`` turn tensors (``turn_advantages``, ``step_entropy``, ``turn_returns``; ``anchor_ids``
  get other integers) where ``turn_mask`` is False;
* ``[B]`` row tensors (``rewards``) on the fully masked row (a failed episode), when the
  component is told which rows count (``valid``, ``token_counts``, ``turn_mask``, ``loss_mask``).

A component that takes no mask at all (the per-token KL estimators) is element-wise: junk at a
masked token may only reach the output at that token, so its outputs and gradients are compared
at the unmasked tokens only. The whole composition is run too: ``build_algorithm`` for every
config in ``configs/methods`` (and a few option variants), phase 1 and phase 2 with junk at the
masked positions of every float tensor of the RolloutBatch and the MicroBatch.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
import yaml
from torch import Tensor

from agentrl.algorithms import MicroBatch, RolloutBatch, build_algorithm
from agentrl.algorithms.aggregation import make_aggregate
from agentrl.algorithms.controllers import Controller, LossView, StepStats
from agentrl.algorithms.registry import REGISTRIES, RESERVED_PARAMS

ROOT = Path(__file__).resolve().parents[2]

B, T, S = 5, 7, 4  # distinct, so an output's shape says which mask it lives on
LOSS_MASK = torch.tensor([
    [0, 1, 1, 1, 0, 1, 0],  # prompt, a tool token between two turns, a masked tail
    [1, 1, 1, 1, 0, 0, 0],  # a long masked tail
    [0, 0, 0, 0, 0, 0, 0],  # a fully masked row (a failed episode)
    [0, 0, 1, 1, 1, 1, 1],
    [0, 1, 0, 1, 1, 0, 0],
], dtype=torch.bool)
TURN_IDS = torch.tensor([
    [-1, 0, 0, 0, -1, 1, -1],
    [0, 0, 1, 1, -1, -1, -1],
    [-1, -1, -1, -1, -1, -1, -1],
    [-1, -1, 0, 0, 1, 2, 2],
    [-1, 0, -1, 1, 1, -1, -1],
])
TURN_MASK = torch.stack([(TURN_IDS == s).any(dim=1) for s in range(S)], dim=1)  # turn 3 never exists
ROW_MASK = LOSS_MASK.any(dim=1)
assert bool((TURN_MASK.any(dim=1) == ROW_MASK).all())
GROUP_IDS = torch.tensor([0, 0, 0, 1, 1])  # the failed row shares a group with two valid rows
CORRECT = torch.tensor([True, False, False, True, False])

TOKEN_FLOATS = ("logprobs", "proximal_logprobs", "ref_logprobs", "behavior_logprobs", "advantages", "entropy",
                "per_token", "token_weights")
TURN_FLOATS = ("turn_advantages", "step_entropy", "turn_returns", "turn_rewards")
ROW_FLOATS = ("rewards",)
#: mask inputs: a component given one of these knows which positions (and rows) count
ROW_MASK_INPUTS = ("loss_mask", "turn_mask", "valid", "token_counts")
PATTERNS = ("nan", "+inf", "-inf", "mixed", "partly")
#: and one input at a time: "alone:<name>" puts the mix in that input, finite junk in all others
#: (a finite masked logprob meets an infinite masked advantage, whatever the cycles above align)
FIXED = {  # inputs that are the same in every run (no masked positions or not values)
    "loss_mask": LOSS_MASK, "turn_mask": TURN_MASK, "valid": ROW_MASK, "token_counts": LOSS_MASK.sum(dim=1),
    "group_ids": GROUP_IDS, "correct": CORRECT, "num_tokens": None, "num_seqs": None,
    "episode_tokens": None, "num_episodes": None,
}


def _clean_values(seed: int = 0) -> dict[str, Tensor]:
    """Finite values everywhere; only the unmasked positions are used."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 3 - 0.05
    return {
        "logprobs": logp,
        "proximal_logprobs": logp + 0.5 * torch.randn(B, T, generator=g),
        "ref_logprobs": logp + 0.3 * torch.randn(B, T, generator=g),
        "behavior_logprobs": logp + 0.4 * torch.randn(B, T, generator=g),
        "advantages": torch.randn(B, T, generator=g),
        "entropy": torch.rand(B, T, generator=g) * 2,
        "per_token": torch.randn(B, T, generator=g),
        "token_weights": torch.rand(B, T, generator=g).round() * torch.rand(B, T, generator=g) + 0.1,
        "turn_advantages": torch.randn(B, S, generator=g),
        "step_entropy": torch.rand(B, S, generator=g) * 2,
        "turn_returns": torch.randn(B, S, generator=g),
        "turn_rewards": torch.rand(B, S, generator=g).round(),
        "rewards": torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0]),
    }


def _fill(x: Tensor, masked: Tensor, pattern: str, offset: int) -> Tensor:
    """``x`` with its masked positions set by ``pattern``: "finite" (a junk value, different
    at every position), "nan", "+inf", "-inf", "mixed" (the three cycled, shifted by ``offset``
    so that two inputs meet, e.g., +inf with -inf) or "partly" (the three and a finite junk
    value cycled: a non-finite value of one input meets a finite one of another, as a finite
    masked logprob with an infinite masked advantage)."""
    n = x.numel()
    finite = 7.25 + 3.5 * torch.arange(n, dtype=x.dtype).reshape(x.shape).remainder(5) - 9 * offset
    if pattern == "finite":
        junk = finite
    elif pattern in ("mixed", "partly"):
        cycle = torch.tensor([math.nan, math.inf, -math.inf, 0.0][: 3 if pattern == "mixed" else 4], dtype=x.dtype)
        k = (torch.arange(n) + offset).remainder(cycle.numel()).reshape(x.shape)
        junk = torch.where(k == 3, finite, cycle[k])
    else:
        junk = torch.full_like(x, {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}[pattern])
    return torch.where(masked, junk, x)


def _pattern_for(pattern: str, name: str) -> str:
    if pattern.startswith("alone:"):
        return "mixed" if pattern[len("alone:"):] == name else "finite"
    return pattern


def _masked_positions(name: str) -> Tensor | None:
    if name in TOKEN_FLOATS:
        return ~LOSS_MASK
    if name in TURN_FLOATS:
        return ~TURN_MASK
    if name in ROW_FLOATS:
        return ~ROW_MASK
    return None


def _inputs(pattern: str, row_masked: bool = True) -> dict[str, Tensor | None]:
    """Every input this file can build, junk (``pattern``) at its masked positions. The float
    inputs are fresh leaves with ``requires_grad``. ``row_masked=False``: rewards keep their
    clean value on the failed row (for a component that is not told which rows count)."""
    out: dict[str, Any] = dict(FIXED)
    for i, (name, x) in enumerate(sorted(_clean_values().items())):
        masked = _masked_positions(name)
        if name in ROW_FLOATS and not row_masked:
            masked = torch.zeros_like(masked)
        out[name] = _fill(x, masked, _pattern_for(pattern, name), i).requires_grad_(True)
    anchors = torch.tensor([[0, 1, 0, 2], [1, 1, 2, 0], [0, 0, 1, 1], [0, 2, 1, 0], [1, 0, 2, 2]])
    out["anchor_ids"] = torch.where(TURN_MASK, anchors, 0 if pattern == "finite" else 97)
    return out


# ------------------------------------------------------------------------------ flatten, compare
def flatten(obj: Any, prefix: str = "out") -> Iterator[tuple[str, Any]]:
    """``(path, leaf)`` for every tensor (and plain value) in a nest of tuples, lists, dicts,
    dataclasses and plain objects, including the extra attributes of a tuple subclass (a loss's
    ``LossOutput.clipped``), so a change of a component's return type keeps being covered."""
    if isinstance(obj, Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        yield prefix, obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from flatten(getattr(obj, f.name), f"{prefix}.{f.name}")
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from flatten(obj[k], f"{prefix}[{k!r}]")
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}[{i}]")
        for k, v in sorted(getattr(obj, "__dict__", {}).items()):
            yield from flatten(v, f"{prefix}.{k}")
    elif hasattr(obj, "__dict__"):
        for k, v in sorted(vars(obj).items()):
            if not k.startswith("_"):
                yield from flatten(v, f"{prefix}.{k}")
    else:
        raise TypeError(f"{prefix}: cannot flatten a {type(obj).__name__}")


MASKED, ELEMENTWISE, UNMASKED = "masked", "elementwise", "unmasked"


def _positions(x: Tensor, mode: str = MASKED) -> Tensor:
    """Where an output is compared: its unmasked positions when its shape is a masked one
    (``MASKED``: the component is given the masks; ``ELEMENTWISE``: a mask-free per-token
    component, whose outputs must be ``[B, T]``), everywhere for ``UNMASKED`` (nothing was masked)."""
    shape = tuple(x.shape)
    if mode == UNMASKED:
        return torch.ones(shape, dtype=torch.bool)
    for mask in (LOSS_MASK, TURN_MASK, ROW_MASK):
        if shape == tuple(mask.shape):
            return mask
    if mode == ELEMENTWISE:
        raise AssertionError(f"an element-wise (mask-free) component returned shape {shape}, not [B, T]")
    return torch.ones(shape, dtype=torch.bool)


def _objective(outputs: dict[str, Any], mode: str) -> Tensor | None:
    """A fixed linear function of every differentiable output at its compared positions."""
    total = None
    for path, x in outputs.items():
        if isinstance(x, Tensor) and x.requires_grad:
            w = torch.linspace(0.5, 1.5, x.numel(), dtype=x.dtype).reshape(x.shape)
            term = (torch.where(_positions(x, mode), x, torch.zeros((), dtype=x.dtype)) * w).sum()
            total = term if total is None else total + term
    return total


def _grads(objective: Tensor | None, leaves: dict[str, Tensor]) -> dict[str, Tensor]:
    names = sorted(leaves)
    if objective is None:
        return {n: torch.zeros_like(leaves[n]) for n in names}
    got = torch.autograd.grad(objective, [leaves[n] for n in names], allow_unused=True)
    return {n: torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(names, got)}


def _check_same(ref: dict[str, Any], got: dict[str, Any], what: str, mode: str = MASKED) -> None:
    assert ref.keys() == got.keys(), f"{what}: outputs {sorted(set(ref) ^ set(got))} appear in one run only"
    for path, a in ref.items():
        b = got[path]
        if not isinstance(a, Tensor):
            assert isinstance(b, type(a)) and (a == b or (a != a and b != b)), f"{what} {path}: {a!r} != {b!r}"
            continue
        assert isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype, f"{what} {path}: {b!r} vs {a!r}"
        sel = _positions(a, mode)
        a_, b_ = a.detach()[sel], b.detach()[sel]
        if a.dtype.is_floating_point:
            assert bool(torch.isfinite(b_).all()), f"{what} {path}: non-finite at unmasked positions: {b.detach()}"
            assert bool(torch.isfinite(a_).all()), f"{what} {path}: non-finite with finite junk: {a.detach()}"
            torch.testing.assert_close(b_, a_, atol=1e-6, rtol=1e-6, msg=lambda m: f"{what} {path}: {m}")
        else:
            assert torch.equal(a_, b_), f"{what} {path}: {b.detach()} != {a.detach()} at unmasked positions"


def _check_grads(ref: dict[str, Tensor], got: dict[str, Tensor], what: str, checked: set[str]) -> None:
    """Gradients equal and finite at unmasked positions; zero and finite at the masked positions
    of the inputs in ``checked`` (those whose mask the component is given)."""
    for name, a in ref.items():
        b = got[name]
        masked = _masked_positions(name)
        keep = ~masked if masked is not None else torch.ones_like(a, dtype=torch.bool)
        assert bool(torch.isfinite(b[keep]).all()), f"{what}: d/d{name} non-finite at unmasked positions: {b}"
        torch.testing.assert_close(b[keep], a[keep], atol=1e-6, rtol=1e-6, msg=lambda m: f"{what}: d/d{name}: {m}")
        if name in checked and masked is not None:
            assert bool(torch.isfinite(b).all()), f"{what}: d/d{name} non-finite at masked positions: {b}"
            assert not b[masked].any(), f"{what}: d/d{name} non-zero at masked positions: {b}"
            assert not a[masked].any(), f"{what}: d/d{name} non-zero at masked positions (finite junk): {a}"


# ------------------------------------------------------------------------------ running a component
#: extra option sets worth covering besides the defaults: (registry, name) -> list of options
OPTION_VARIANTS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("controllers", "bapo"): [{"metric": "paper"}],
    ("controllers", "skywork"): [{"measure": "entropy", "coef_init": 0.004}],
    ("controllers", "entropic"): [{"target_entropy": 0.5, "ki": 0.5, "high_prob_threshold": 0.2}],
    ("controllers", "prorl"): [{"reset_interval_steps": 1, "reset_kl_threshold": 0.01}],
    ("estimators", "grpo"): [{"normalize_std": False}],
    ("estimators", "gigpo"): [{"mode": "mean_std_norm", "episode_stats_over": "trajectories"}],
    ("losses", "cispo"): [{"semantics": "trl", "eps_high": 1.3}],
    ("losses", "archer"): [{"kl_coef_low": 0.5, "kl_coef_high": 0.25}],
    ("losses", "clip_cov"): [{"clip_cov_ratio": 0.5, "clip_cov_lb": -10.0, "clip_cov_ub": 10.0}],
    ("losses", "kl_cov"): [{"kl_cov_ratio": 0.3}],
    ("token_masks", "forking_tokens"): [{"top_quantile": 0.5}],
    ("aggregations", "seq-mean-token-sum-norm"): [{"norm_length": 16.0}],
}

STEP_STATS = dict(step=0, rollout_nll=torch.tensor(0.3), rollout_entropy=torch.tensor(0.4),
                  entropy=torch.tensor(0.15), kl_ref=torch.tensor(0.02))


def _run_controller(cls: type, options: dict[str, Any], x: dict[str, Any]) -> dict[str, Any]:
    """A controller's whole protocol: on its own (``micro_batch`` is its mini-batch) and inside
    ``mini_batch_stats`` / ``begin_mini_batch``, then ``end_train_step`` and ``state_dict``."""
    assert issubclass(cls, Controller), f"{cls!r} is registered as a controller but is no Controller"
    view = LossView(logprobs=x["logprobs"], proximal_logprobs=x["proximal_logprobs"], advantages=x["advantages"],
                    loss_mask=LOSS_MASK, aggregate=make_aggregate("token-mean"), entropy=x["entropy"])
    out: dict[str, Any] = {}
    alone = cls(**options)
    out["alone.micro_batch"] = alone.micro_batch(view)
    out["alone.end_train_step"] = alone.end_train_step(StepStats(**STEP_STATS))
    out["alone.state"] = alone.state_dict()
    inside = cls(**options)
    if hasattr(inside, "mini_batch_stats"):  # the mini-batch protocol (older controllers lack it)
        stats = inside.mini_batch_stats(view)
        inside.begin_mini_batch(stats)
        out["mini_batch_stats"] = stats
    out["inside.micro_batch"] = inside.micro_batch(view)
    out["inside.end_train_step"] = inside.end_train_step(StepStats(**STEP_STATS))
    out["inside.state"] = inside.state_dict()
    return out


def _run_function(fn: Callable[..., Any], inputs: tuple[str, ...], options: dict[str, Any], x: dict[str, Any],
                  stats_fn: Callable[..., Any] | None) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    missing = [n for n in inputs if n not in x]
    assert not missing, f"no input builder for {missing}: add them to this file's inputs"
    required = [p.name for p in params.values() if p.default is p.empty and p.name not in inputs
                and p.name not in RESERVED_PARAMS and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    assert not required, f"required parameters {required} are neither inputs nor composition keywords"
    unknown = sorted(set(params) & RESERVED_PARAMS - {"aggregate", "token_weights", "generator", "mini_batch_stats"})
    assert not unknown, f"composition keywords {unknown}: teach this file how the composition layer passes them"
    kwargs = {n: x[n] for n in inputs}
    calls: dict[str, dict[str, Any]] = {"plain": {}}
    if "aggregate" in params:
        calls["global_counts"] = {"aggregate": make_aggregate("token-mean", num_tokens=torch.tensor(14.0),
                                                              num_seqs=torch.tensor(4.0))}
        calls["plain"]["aggregate"] = make_aggregate("token-mean")
    if "token_weights" in params:
        calls["weighted"] = {"token_weights": x["token_weights"]}
    if "num_tokens" in inputs:  # an aggregation: also with the mini-batch's global counts
        calls["global_counts"] = {"num_tokens": torch.tensor(14.0), "num_seqs": torch.tensor(4.0)}
    if "episode_tokens" in inputs:  # turn samples: rows 0 and 1 one episode, 3 and 4 another
        calls["episode_counts"] = {"episode_tokens": torch.tensor([8.0, 8.0, 0.0, 8.0, 8.0]), "num_episodes": torch.tensor(2.0)}
    out: dict[str, Any] = {}
    if stats_fn is not None:
        out["stats"] = stats_fn(**kwargs, **options)
        calls["with_stats"] = {"mini_batch_stats": {k: v * 2 for k, v in out["stats"].items()}}
    for name, extra in calls.items():
        kw = {**kwargs, **options, **extra}
        if "aggregate" in params and "aggregate" not in kw:
            kw["aggregate"] = make_aggregate("token-mean")
        if "generator" in params:
            kw["generator"] = torch.Generator().manual_seed(3)
        out[name] = fn(**kw)
    return out


def _component(registry: str, name: str, options: dict[str, Any], pattern: str) -> tuple[dict, dict, set, str]:
    """``(outputs, gradients, inputs whose mask the component gets, comparison mode)``."""
    entry = REGISTRIES[registry].get(name)
    if inspect.isclass(entry.obj):
        x = _inputs(pattern, row_masked=False)
        result = _run_controller(entry.obj, options, x)
        used = {"logprobs", "proximal_logprobs", "advantages", "entropy"}
        masks = {"loss_mask"}
    else:
        inputs = tuple(entry.inputs)
        assert inputs, f"{registry} {name!r} declares no tensor inputs (inputs=...): the test cannot call it"
        masks = set(inputs) & set(ROW_MASK_INPUTS)
        x = _inputs(pattern, row_masked=bool(masks))
        result = _run_function(entry.obj, inputs, options, x, entry.extra.get("stats"))
        used = set(inputs) | ({"token_weights"} if "token_weights" in inspect.signature(entry.obj).parameters else set())
    if masks:
        mode = MASKED
    elif used & (set(TOKEN_FLOATS) | set(TURN_FLOATS)):
        mode = ELEMENTWISE  # junk reaches it at masked positions, but it is not told where they are
    else:
        mode = UNMASKED  # nothing of its input is masked (PSR: rewards and correct only)
    checked = set()
    for n in used:
        governing = ("loss_mask" if n in TOKEN_FLOATS else "turn_mask" if n in TURN_FLOATS else None)
        if (governing in masks) or (n in ROW_FLOATS and masks):
            checked.add(n)
    outputs = dict(flatten(result))
    leaves = {n: x[n] for n in used if isinstance(x.get(n), Tensor) and x[n].dtype.is_floating_point}
    return outputs, _grads(_objective(outputs, mode), leaves), checked, mode


CASES = [(reg, e.name, {}) for reg, registry in REGISTRIES.items() for e in registry]
CASES += [(reg, name, opts) for (reg, name), variants in sorted(OPTION_VARIANTS.items()) for opts in variants]


def test_every_registered_component_is_covered_and_variants_name_registered_ones():
    assert {(r, n) for r, n, _ in CASES} == {(r, e.name) for r, reg in REGISTRIES.items() for e in reg}
    assert len(CASES) >= 25


@pytest.mark.parametrize("registry,name,options", CASES,
                         ids=[f"{r}-{n}" + ("-" + "-".join(f"{k}={v}" for k, v in o.items()) if o else "")
                              for r, n, o in CASES])
def test_component_ignores_masked_values(registry, name, options):
    ref, ref_grads, checked, mode = _component(registry, name, options, "finite")
    assert any(isinstance(v, Tensor) for v in ref.values()), f"{registry} {name!r} returned no tensor"
    for pattern in PATTERNS + tuple(f"alone:{n}" for n in sorted(ref_grads)):
        got, grads, _, _ = _component(registry, name, options, pattern)
        what = f"{registry} {name!r} {options or ''} with {pattern} at masked positions"
        _check_same(ref, got, what, mode)
        _check_grads(ref_grads, grads, what, checked)


# ------------------------------------------------------------------------------ the composition
METHOD_CONFIGS = {p.stem: yaml.safe_load(p.read_text())["algorithm"] for p in sorted((ROOT / "configs" / "methods").glob("*.yaml"))}
COMPOSED_VARIANTS = {  # terms the shipped configs leave off
    "kl_and_entropy_bonus": {"kl": {"coef": 0.05}, "entropy_coef": 0.01},
    "off_policy_is": {"off_policy": {"behavior_is_cap": 2.0}},
    "forking_proximal_kept": {"token_mask": {"name": "forking_tokens", "entropy_source": "proximal", "normalize": "kept"}},
    "forking_current_kept": {"token_mask": {"name": "forking_tokens", "entropy_source": "current", "normalize": "kept"}},
    "entropy_advantage_current": {"shaping": [{"name": "entropy_advantage", "entropy_source": "current"}]},
    "archer_kl_both_groups": {"loss": {"name": "archer", "kl_coef_low": 0.5, "kl_coef_high": 0.25}},
    "skywork_entropy_measure": {"controllers": [{"name": "skywork", "coef_init": 0.004, "measure": "entropy"}]},
    "bapo_paper_kl": {"controllers": [{"name": "bapo", "metric": "paper"}], "kl": {"coef": 0.05}},
    "dynamic_sampling_seq_reward": {"dynamic_sampling": {"enabled": True, "metric": "seq_reward"}},
    "seq_mean_token_sum": {"aggregation": "seq-mean-token-sum"},
}
COMPOSED = {**METHOD_CONFIGS, **COMPOSED_VARIANTS}


def _composed(config: dict[str, Any], pattern: str) -> tuple[dict[str, Any], dict[str, Tensor], Tensor]:
    """Phase 1 and phase 2 of one mini-batch; ``(outputs, gradients, phase-2 loss_mask)``."""
    algo = build_algorithm(config)
    x = _inputs(pattern)
    junk_ids = torch.where(LOSS_MASK, TURN_IDS, torch.arange(T).remainder(S).expand(B, T))
    batch = RolloutBatch(
        rewards=x["rewards"].detach(), group_ids=GROUP_IDS, loss_mask=LOSS_MASK,
        turn_ids=TURN_IDS if pattern == "finite" else junk_ids,
        turn_rewards=x["turn_rewards"].detach(), anchor_ids=x["anchor_ids"], correct=CORRECT,
        response_lengths=LOSS_MASK.sum(dim=1) * 300, terminated=torch.ones(B, dtype=torch.bool),
        truncated=torch.zeros(B, dtype=torch.bool), proximal_logprobs=x["proximal_logprobs"].detach(),
        behavior_logprobs=x["behavior_logprobs"].detach(), entropy=(x["entropy"] * 0.9).detach())
    adv = algo.compute_advantages(batch)
    mask = adv.loss_mask
    offset = {"finite": 0}.get(pattern, 1)
    leaves = {"logprobs": x["logprobs"], "entropy": x["entropy"]}
    advantages = _fill(adv.advantages, ~mask, _pattern_for(pattern, "advantages"), offset)
    token_mask = None
    if adv.token_mask is not None:  # the batch-scope mask slice: other bools at masked positions
        token_mask = torch.where(mask, adv.token_mask, pattern != "finite")
    mb = MicroBatch(logprobs=leaves["logprobs"], proximal_logprobs=x["proximal_logprobs"].detach(),
                    advantages=advantages, loss_mask=mask, entropy=leaves["entropy"],
                    ref_logprobs=x["ref_logprobs"].detach(), behavior_logprobs=x["behavior_logprobs"].detach(),
                    token_mask=token_mask)
    loss = algo.loss(mb, num_tokens=mask.sum(), num_seqs=mask.any(dim=1).sum())
    grads = _grads(loss.loss if hasattr(loss, "loss") else loss[0], leaves)
    step = algo.end_train_step()
    outputs = dict(flatten({"advantages": adv, "loss": loss, "step": step, "state": algo.state_dict()["controllers"]}))
    return outputs, grads, mask


def test_every_method_config_is_composed():
    assert set(METHOD_CONFIGS) == {p.stem for p in (ROOT / "configs" / "methods").glob("*.yaml")} and len(METHOD_CONFIGS) >= 20
    assert set(METHOD_CONFIGS) <= set(COMPOSED)


@pytest.mark.parametrize("name", sorted(COMPOSED))
def test_composed_method_ignores_masked_values(name):
    ref, ref_grads, ref_mask = _composed(COMPOSED[name], "finite")
    assert ref_grads["logprobs"].abs().sum() > 0, f"{name}: the reference gradient is zero: the case tests nothing"
    alone = ("logprobs", "proximal_logprobs", "ref_logprobs", "behavior_logprobs", "advantages", "entropy", "rewards",
             "turn_rewards")
    for pattern in PATTERNS + tuple(f"alone:{n}" for n in alone):
        got, grads, mask = _composed(COMPOSED[name], pattern)
        what = f"method {name} with {pattern} at masked positions"
        assert torch.equal(mask, ref_mask), f"{what}: phase 1 dropped other rows"
        _check_same(ref, got, what)
        for key in ("logprobs", "entropy"):
            a, b = ref_grads[key], grads[key]
            assert bool(torch.isfinite(b).all()), f"{what}: d/d{key} non-finite: {b}"
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6, msg=lambda m: f"{what}: d/d{key}: {m}")
            assert not b[~mask].any(), f"{what}: d/d{key} non-zero at masked positions: {b}"


@pytest.mark.parametrize("metric", ["code", "paper"])
def test_bapo_search_ignores_masked_ratios(metric):
    """BAPO's bound search itself (public ``search``, fed a ratio that is NaN/inf at padding):
    masked ratios and advantages were multiplied by zero weights, so a NaN there sent both
    bounds to their maxima."""
    from agentrl.algorithms.controllers import BAPOController

    g = torch.Generator().manual_seed(3)  # stops inside the grid: code (0.6, 1.2), paper (0.8, 1.6)
    ratio = torch.exp(0.5 * torch.randn(B, T, generator=g, dtype=torch.float64))
    advantages = torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = BAPOController(metric=metric).search(ratio=_fill(ratio, ~LOSS_MASK, "finite", 0),
                                               advantages=_fill(advantages, ~LOSS_MASK, "finite", 1), loss_mask=LOSS_MASK)
    assert float(ref[0]) < 0.8 or float(ref[1]) < 2.0, "the clean search ends at both maxima: the case tests nothing"
    for pattern in PATTERNS:
        got = BAPOController(metric=metric).search(ratio=_fill(ratio, ~LOSS_MASK, pattern, 0),
                                                   advantages=_fill(advantages, ~LOSS_MASK, pattern, 1), loss_mask=LOSS_MASK)
        for a, b in zip(ref, got):
            assert torch.equal(a, b), f"{metric} with {pattern} at masked positions: {got} != {ref}"
