"""Advantage estimators: rewards of grouped trajectories -> advantages.

A group is the G trajectories sampled for the same task: ``group_ids [B] long`` (any integer
values; equal value = same group; the sample index distinguishes members). Each estimator
returns an :class:`EstimatorOutput` whose ``advantages`` are per trajectory ``[B]``
(``level="trajectory"``, broadcast to every policy token of the row) or per turn ``[B, S]``
(``level="turn"``, broadcast to each turn's tokens through turn ids). ``keep [B] bool`` marks
rows to train on (PSR/NSR drop rows; others keep all). Rewards are float ``[B]``.

``needs_group=True`` on a registration declares that the estimator's baseline is the other
members of the group (GRPO, RLOO, GiGPO): with ``rollout.group_size`` 1 there are none, and
``agentrl.config`` refuses such a config. Option ranges: ``OPTION_RANGES`` in
:mod:`~agentrl.algorithms.registry`.

All estimators are vectorised with sort-based group ids (:func:`~agentrl.algorithms.ops.compact_ids`),
compute statistics in float64 and return float32; none syncs with the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .ops import compact_ids, segment_stats
from .registry import ESTIMATORS

__all__ = ["EstimatorOutput", "grpo", "rloo", "reinforce_pp_baseline", "psr", "nsr", "w_reinforce", "gigpo"]


@dataclass
class EstimatorOutput:
    """advantages: ``[B]`` (level "trajectory") or ``[B, S]`` (level "turn"), float32;
    keep: ``[B]`` bool rows to train on, or None for all; metrics: detached 0-dim tensors."""

    advantages: Tensor
    level: str = "trajectory"
    keep: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)


def _group_moments(values: Tensor, group_ids: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    return segment_stats(values.to(torch.float64), compact_ids(group_ids), weights)


def _valid_weights(valid: Tensor | None) -> Tensor | None:
    return None if valid is None else valid.to(torch.float64)


def _finish(adv: Tensor, valid: Tensor | None, group_ids: Tensor | None = None) -> Tensor:
    """Zero the advantages of rows that are not ``valid``, and of every row of a group left
    with fewer than 2 valid rows by failures (``group_ids`` given): such a group has no
    baseline, so it is dropped rather than trained with ``A = R``."""
    adv = adv.float()
    if valid is None:
        return adv
    keep = valid.bool()
    if group_ids is not None:
        keep = keep & ~_lone(group_ids, keep)
    return torch.where(keep, adv, torch.zeros_like(adv))


def _lone(group_ids: Tensor, valid: Tensor) -> Tensor:
    """``[B]`` bool: rows of a group of more than one row of which at most one is valid (the
    survivor of failed siblings). A group of one row by design (group_size 1) is not lone."""
    ids = compact_ids(group_ids)
    n = int(ids.numel())
    rows = torch.zeros(n, dtype=torch.long, device=ids.device).scatter_add_(0, ids, torch.ones_like(ids))
    ok = torch.zeros(n, dtype=torch.long, device=ids.device).scatter_add_(0, ids, valid.long())
    return ((rows > 1) & (ok <= 1))[ids]


@ESTIMATORS.register(
    "grpo",
    summary="(R - group mean) / (group std + eps); normalize_std=false gives Dr. GRPO's R - mean",
    paper="arXiv 2402.03300 (GRPO, outcome supervision); arXiv 2503.20783 (Dr. GRPO, no std)",
    source="verl core_algos.compute_grpo_outcome_advantage",
    inputs=("rewards", "group_ids", "valid"),
    needs_group=True,
)
def grpo(*, rewards: Tensor, group_ids: Tensor, valid: Tensor | None = None, normalize_std: bool = True,
         eps: float = 1e-6) -> EstimatorOutput:
    """GRPO: ``A_i = (R_i - mean_g R) / (std_g R + eps)``, unbiased std (``torch.std``).

    A group of size 1 gets mean 0 and std 1 (so ``A = R / (1 + eps)``), as verl. All-equal
    rewards give A = 0. ``normalize_std=False``: ``A_i = R_i - mean_g R`` (Dr. GRPO).
    Hand-derived: rewards [1, 0, 0, 1] -> +/-0.8660. ``valid [B] bool`` (optional): rows that
    count; others (failed episodes with no policy tokens) are left out of the group statistics
    and get 0; a group that failures leave with a single valid row is dropped (A = 0: no
    baseline exists), unlike a group of size 1 by design. Paper: arXiv 2402.03300 Sec. 4.1.2
    (outcome supervision, inside the objective Eq. 3); Dr. GRPO arXiv 2503.20783 (section and
    equation number unverified).
    """
    count, mean, std = _group_moments(rewards, group_ids, _valid_weights(valid))
    single = count <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    adv = (rewards.to(torch.float64) if valid is None else torch.where(valid.bool(), rewards.to(torch.float64), 0.0)) - mean
    if normalize_std:
        adv = adv / (std + eps)
    return EstimatorOutput(_finish(adv, valid, group_ids))


@ESTIMATORS.register(
    "rloo",
    summary="leave-one-out baseline: R_i - mean of the other group members",
    paper="arXiv 2402.14740 (Back to Basics: RLOO)",
    source="verl core_algos.compute_rloo_outcome_advantage",
    inputs=("rewards", "group_ids", "valid"),
    needs_group=True,
)
def rloo(*, rewards: Tensor, group_ids: Tensor, valid: Tensor | None = None) -> EstimatorOutput:
    """RLOO: ``A_i = R_i - (sum_g R - R_i) / (n - 1)`` = ``n/(n-1) * (R_i - mean_g R)``.

    A group of size 1 has no baseline: ``A = R`` (verl leaves the score unchanged). ``valid``:
    as in :func:`grpo` (a group that failures leave with one valid row is dropped). Paper:
    arXiv 2402.14740, the leave-one-out estimator (section and equation number unverified).
    """
    count, mean, _ = _group_moments(rewards, group_ids, _valid_weights(valid))
    r = rewards.to(torch.float64)
    loo = count / (count - 1).clamp(min=1) * (r - mean)
    return EstimatorOutput(_finish(torch.where(count > 1, loo, r), valid, group_ids))


@ESTIMATORS.register(
    "reinforce_pp",
    summary="REINFORCE++ baseline: R - group mean, then whitened over all policy tokens of the batch",
    paper="arXiv 2501.03262 (REINFORCE++)",
    source="verl core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage",
    inputs=("rewards", "group_ids", "token_counts"),
)
def reinforce_pp_baseline(*, rewards: Tensor, group_ids: Tensor, token_counts: Tensor, eps: float = 1e-8) -> EstimatorOutput:
    """REINFORCE++-baseline: ``A0_i = R_i - mean_g R`` (singleton mean 0), then the token-level
    whitening of verl's ``masked_whiten``: ``(A0 - mu) / sqrt(var + eps)`` with mu and the
    unbiased var over *all policy tokens of the batch*.

    Because A0 is constant within a row, token-level statistics equal row statistics weighted
    by ``token_counts [B]`` (policy tokens per row; 0 removes a row from the group and batch
    statistics). Batch-dependent by design:
    the whitening uses the whole batch given. Paper: arXiv 2501.03262, the REINFORCE++-baseline
    advantage (section and equation number unverified).
    """
    count, mean, _ = _group_moments(rewards, group_ids, (token_counts > 0).to(torch.float64))
    a0 = rewards.to(torch.float64) - torch.where(count > 1, mean, torch.zeros_like(mean))
    w = token_counts.to(torch.float64)
    a0 = torch.where(w > 0, a0, torch.zeros_like(a0))  # rows without tokens never reach the whitening (0 * nan)
    n = w.sum()
    mu = (w * a0).sum() / n.clamp(min=1)
    var = (w * (a0 - mu) ** 2).sum() / (n - 1).clamp(min=1)
    return EstimatorOutput(_finish((a0 - mu) * torch.rsqrt(var + eps), token_counts > 0))


def _correct(rewards: Tensor, correct: Tensor | None, success_threshold: float) -> Tensor:
    return correct.bool() if correct is not None else rewards > success_threshold


_PSR_PAPER = "arXiv 2506.01347 (PSR/NSR decomposition of RLVR)"
_PSR_SOURCE = "TianHongZXY/RLVR-Decomposed core_algos.compute_psr_nsr_outcome_advantage"


@ESTIMATORS.register("psr", summary="positive sample reinforcement: train only on correct samples, A = +1",
                     paper=_PSR_PAPER, source=_PSR_SOURCE, inputs=("rewards", "correct"))
def psr(*, rewards: Tensor, correct: Tensor | None = None, success_threshold: float = 0.5) -> EstimatorOutput:
    """PSR: keep correct rows only (``keep``), ``A = 1``; no baseline, no std.

    ``correct [B] bool`` if given, else ``rewards > success_threshold`` (0.5 works for both 0/1
    and -1/+1 rewards). Hand-derived: [1, 0, 0, 1] -> [1, -, -, 1]. Paper: arXiv 2506.01347, the
    PSR term of its decomposition (section and equation number unverified); checked against the
    authors' code (RLVR-Decomposed).
    """
    ok = _correct(rewards, correct, success_threshold)
    return EstimatorOutput(torch.where(ok, 1.0, 0.0).float(), keep=ok)


@ESTIMATORS.register("nsr", summary="negative sample reinforcement: train only on incorrect samples, A = -1",
                     paper=_PSR_PAPER, source=_PSR_SOURCE, inputs=("rewards", "correct"))
def nsr(*, rewards: Tensor, correct: Tensor | None = None, success_threshold: float = 0.5) -> EstimatorOutput:
    """NSR: keep incorrect rows only, ``A = -1``. Hand-derived: [1, 0, 0, 1] -> [-, -1, -1, -].

    Paper: arXiv 2506.01347, the NSR term of its decomposition (section and equation number
    unverified); checked against the authors' code (RLVR-Decomposed).
    """
    ok = _correct(rewards, correct, success_threshold)
    return EstimatorOutput(torch.where(ok, 0.0, -1.0).float(), keep=~ok)


@ESTIMATORS.register("w_reinforce", summary="weighted REINFORCE: A = lambda if correct else -1 (lambda 0.1)",
                     paper=_PSR_PAPER, source=_PSR_SOURCE, inputs=("rewards", "correct"))
def w_reinforce(*, rewards: Tensor, correct: Tensor | None = None, success_threshold: float = 0.5,
                positive_weight: float = 0.1) -> EstimatorOutput:
    """W-REINFORCE: ``L = lambda * L_PSR + L_NSR``, i.e. ``A = lambda`` for correct rows and -1 for
    incorrect ones, all rows kept (all-correct and all-wrong groups included, unlike DAPO).
    ``positive_weight`` is lambda (code ``positive_advantage_weight``, README 0.1).
    Hand-derived: [1, 0, 0, 1] -> [0.1, -1, -1, 0.1]. Paper: arXiv 2506.01347, the W-REINFORCE
    objective (section and equation number unverified); checked against the authors' code.
    """
    ok = _correct(rewards, correct, success_threshold)
    return EstimatorOutput(torch.where(ok, float(positive_weight), -1.0).float())


@ESTIMATORS.register(
    "gigpo",
    summary="GiGPO: episode advantage + step advantage within anchor-state groups (multi-turn)",
    paper="arXiv 2505.10978 (GiGPO) Eqs. 3, 5-8",
    source="verl-agent gigpo/core_gigpo.py (fork Elrond1701/verl-agent)",
    inputs=("rewards", "group_ids", "turn_returns", "turn_mask", "anchor_ids"),
    needs_group=True,
)
def gigpo(*, rewards: Tensor, group_ids: Tensor, turn_returns: Tensor, turn_mask: Tensor, anchor_ids: Tensor,
          step_weight: float = 1.0, mode: str = "mean_norm", episode_stats_over: str = "steps",
          eps: float = 1e-6) -> EstimatorOutput:
    """GiGPO combined per-turn advantage ``A = A_E + step_weight * A_S`` (``[B, S]``).

    * Episode (Eq. 3): ``A_E = R - mean_g(R)`` (``mode="mean_norm"``, code default) or divided by
      ``std + eps`` (``"mean_std_norm"``). ``episode_stats_over="steps"`` (code default,
      ``compute_mean_std_cross_steps=True``) counts each trajectory once per turn, so longer
      trajectories weigh more; ``"trajectories"`` counts each once. A group with a single row
      (counted as above) gets mean 0, std 1, i.e. ``A_E = R``.
    * Step groups (Eq. 6): turns of the same group with equal ``anchor_ids [B, S] long`` (a hash
      of the observation the turn was taken from, exact match; the similarity mode is not
      implemented). ``turn_returns [B, S]`` are the discounted returns (Eq. 5, see
      :func:`~agentrl.algorithms.credit.discounted_turn_returns`).
    * Step (Eq. 7): ``A_S = G - mean_stepgroup(G)`` (std-divided in ``"mean_std_norm"``); a
      singleton step group uses its own value as mean (``A_S = 0``) and std 1.

    Missing turns (``turn_mask`` False) get 0, and so does a group that failed episodes (no
    turns trained) leave with one trajectory. Hand-derived: R = [1, 0, 1] with returns
    [0.9025, 0, 0.95] from one shared state -> A_E = [1/3, -2/3, 1/3], A_S = [0.285, -0.6175, 0.3325].
    Paper: arXiv 2505.10978, equation numbers as the verl-agent code comments cite them (the paper
    text was not read). docs/methods.md §13.
    """
    if mode not in ("mean_norm", "mean_std_norm"):
        raise ValueError(f"gigpo mode must be 'mean_norm' or 'mean_std_norm', got {mode!r}")
    if episode_stats_over not in ("steps", "trajectories"):
        raise ValueError(f"gigpo episode_stats_over must be 'steps' or 'trajectories', got {episode_stats_over!r}")
    use_std = mode == "mean_std_norm"
    n_turns = turn_mask.sum(dim=1)
    weights = n_turns if episode_stats_over == "steps" else (n_turns > 0).long()
    count, mean, std = _group_moments(rewards, group_ids, weights)
    single = count <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    a_e = torch.where(n_turns > 0, rewards.to(torch.float64), 0.0) - mean  # a row without turns never reaches the std
    if use_std:
        a_e = a_e / (std + eps)

    b, s = turn_mask.shape
    flat_valid = turn_mask.reshape(-1)
    uniq = torch.arange(b * s, device=turn_mask.device)
    key_valid = torch.where(flat_valid, torch.zeros_like(uniq), uniq + 1)  # missing turns never share a group
    key_group = group_ids.reshape(b, 1).expand(b, s).reshape(-1)
    step_ids = compact_ids(key_valid, key_group, anchor_ids.reshape(-1))
    g = torch.where(flat_valid, turn_returns.reshape(-1).to(torch.float64), 0.0)  # missing turns: any value
    s_count, s_mean, s_std = segment_stats(g, step_ids)
    s_std = torch.where(s_count <= 1, torch.ones_like(s_std), s_std)
    a_s = g - s_mean
    if use_std:
        a_s = a_s / (s_std + eps)
    adv = a_e.unsqueeze(1) + step_weight * a_s.reshape(b, s)
    lone = _lone(group_ids, n_turns > 0)  # the only survivor of failed siblings: no baseline, dropped
    adv = torch.where(turn_mask & ~lone.unsqueeze(1), adv, torch.zeros_like(adv)).float()
    sizes = torch.where(flat_valid, s_count, torch.zeros_like(s_count))
    metrics = {
        "gigpo/step_group_size_mean": (sizes.sum() / flat_valid.sum().clamp(min=1)).float().detach(),
        "gigpo/singleton_frac": ((s_count <= 1) & flat_valid).sum().float().div(flat_valid.sum().clamp(min=1)).detach(),
    }
    return EstimatorOutput(adv, level="turn", metrics=metrics)
