"""Policy losses: per-token surrogate -> aggregated scalar, a :class:`LossOutput`.

Every loss is a pure function with keyword-only arguments:

* tensors ``[B, T]``: ``logprobs`` (current policy, carries gradient), ``proximal_logprobs``
  (the snapshot the ratio is taken against, detached), ``advantages`` (detached),
  ``loss_mask`` (bool, True only on policy-generated tokens; prompt, tool output and padding are
  False), plus ``entropy`` / ``ref_logprobs`` where a loss needs them;
* scalars: the method's options with docs/methods.md defaults;
* ``aggregate``: ``aggregate(per_token, loss_mask) -> scalar`` (see :mod:`.aggregation`),
  default token-mean over this call;
* ``token_weights [B, T]`` float or None: detached per-token multipliers applied to the
  per-token policy loss before aggregation (the 80/20 token mask, off-policy IS weights). The
  aggregation denominator stays ``loss_mask``: a zero weight removes gradient, not the token's
  place in the denominator (docs/methods.md §3d).

A loss returns :class:`LossOutput` ``(loss, metrics, clipped)``; it unpacks as ``loss, metrics``.
``clipped [B, T]`` bool says which tokens the loss clipped (their ratio left the clip range in
the direction the clip acts on: no gradient through the ratio), or None when the loss has no
such notion (KL-Cov); the learner logs it per turn, so it needs no knowledge of the loss.
A loss whose normaliser is a count over the whole mini-batch that depends on the current
policy (Archer's entropy groups) registers ``stats=fn``: ``fn(**inputs, **options)`` returns
per-call sums (a dict of 0-dim tensors, keys prefixed with the loss name); the composition layer
sums them over the mini-batch's micro-batches (and ranks) and passes the totals back as
``mini_batch_stats``; called alone (``mini_batch_stats=None``) the call is its own mini-batch.

``ratio = exp(clamp(logprobs - proximal_logprobs, -20, 20))`` (verl's guard). Sign convention:
the loss is ``-objective`` and is minimised. Values at ``loss_mask == False`` positions reach
neither the loss nor its gradient (inputs are zeroed there first). Metrics are detached 0-dim
float32 tensors; nothing here syncs with the host.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .aggregation import token_mean
from .kl import kl_estimate
from .ops import clamped_log_ratio, masked_mean, masked_quantile, masked_sum, zero_masked
from .registry import LOSSES

__all__ = ["LossOutput", "ppo_loss", "cispo_loss", "clip_cov_loss", "kl_cov_loss", "archer_loss", "archer_stats", "ppo_per_token"]

Aggregate = Callable[[Tensor, Tensor], Tensor]
_BASE = ("logprobs", "proximal_logprobs", "advantages", "loss_mask")


class LossOutput(tuple):
    """What a policy loss returns: the pair ``(loss, metrics)`` (a tuple: unpacks and indexes as
    one) plus ``clipped``. ``loss``: 0-dim, with gradient; ``metrics``: detached 0-dim float32
    tensors; ``clipped``: ``[B, T]`` bool (False off ``loss_mask``), or None."""

    clipped: Tensor | None

    def __new__(cls, loss: Tensor, metrics: dict[str, Tensor], clipped: Tensor | None = None) -> "LossOutput":
        out = super().__new__(cls, (loss, metrics))
        out.clipped = clipped
        return out

    @property
    def loss(self) -> Tensor:
        return self[0]

    @property
    def metrics(self) -> dict[str, Tensor]:
        return self[1]


def _clean(loss_mask: Tensor, *tensors: Tensor) -> list[Tensor]:
    return [zero_masked(t, loss_mask) for t in tensors]


def _weighted(per_token: Tensor, token_weights: Tensor | None) -> Tensor:
    return per_token if token_weights is None else per_token * token_weights.detach()


def _frac(flags: Tensor, loss_mask: Tensor) -> Tensor:
    return masked_mean(flags.float(), loss_mask).detach()


def ppo_per_token(ratio: Tensor, advantages: Tensor, lower: float | Tensor, upper: float | Tensor,
                  clip_ratio_c: float | None) -> tuple[Tensor, dict[str, Tensor]]:
    """verl's vanilla per-token PPO loss with *absolute* ratio bounds, and the branch flags.

    ``pg1 = -A r``, ``pg2 = -A clip(r, lower, upper)``, ``L = max(pg1, pg2)``; with
    ``clip_ratio_c`` set, ``L = min(L, -A c)`` where ``A < 0`` (dual clip, arXiv 1912.09729).
    Bounds may be floats or tensors broadcastable to ``ratio`` (callers turn epsilons into
    ``1 - eps_low``, ``1 + eps_high``). Flags: ``high`` (A > 0, upper clip active: zero gradient),
    ``low`` (A < 0, lower clip active: zero gradient), ``dual`` (A < 0, dual clip active).
    """
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, lower, upper)
    clipped = pg2 > pg1
    loss = torch.maximum(pg1, pg2)
    pos = advantages > 0
    flags = {"high": clipped & pos, "low": clipped & ~pos}  # clipped implies A != 0
    if clip_ratio_c is not None:
        pg3 = -advantages * clip_ratio_c
        dual = (advantages < 0) & (loss > pg3)
        flags["dual"] = dual
        loss = torch.where(dual, pg3, loss)
    return loss, flags


def _clip_metrics(flags: dict[str, Tensor], loss_mask: Tensor) -> dict[str, Tensor]:
    out = {"policy/clipfrac_low": _frac(flags["low"], loss_mask), "policy/clipfrac_high": _frac(flags["high"], loss_mask)}
    if "dual" in flags:
        out["policy/dualclip_frac"] = _frac(flags["dual"], loss_mask)
    return out


def _check_dual_clip(clip_ratio_c: float | None) -> None:
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c (dual clip) must be > 1 or null to disable, got {clip_ratio_c}")


@LOSSES.register(
    "ppo",
    summary="clipped surrogate with decoupled eps_low/eps_high (DAPO clip-higher) and dual clip",
    paper="arXiv 1707.06347 Eq. 7; arXiv 2503.14476 (DAPO) Sec. 3.1; arXiv 1912.09729 (dual clip)",
    source="verl core_algos.compute_policy_loss_vanilla",
    inputs=_BASE,
    split_invariant=True,
)
def ppo_loss(*, logprobs: Tensor, proximal_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor,
             eps_low: float | Tensor = 0.2, eps_high: float | Tensor = 0.2, clip_ratio_c: float | None = 3.0,
             aggregate: Aggregate = token_mean, token_weights: Tensor | None = None) -> LossOutput:
    """PPO clip: ``L = max(-A r, -A clip(r, 1-eps_low, 1+eps_high))``, dual clip ``min(L, -A c)``
    for ``A < 0`` (verl default ``c = 3``; DAPO scripts 10; ``None`` disables).

    ``eps_*`` are epsilons (bounds ``1 - eps_low``, ``1 + eps_high``), not absolute bounds.
    Gradient rule: a token gets no gradient when A > 0 and r > 1+eps_high, when A < 0 and
    r < 1-eps_low, or when the dual clip is active (A < 0 and r > c). docs/methods.md §1e (eps 0.2/0.28,
    c 10): token-mean 0.078087. Papers: PPO arXiv 1707.06347 Eq. 7; DAPO clip-higher arXiv 2503.14476
    Sec. 3.1, Eq. 10; dual clip arXiv 1912.09729 (equation number unverified).
    """
    _check_dual_clip(clip_ratio_c)
    logprobs, proximal_logprobs, advantages = _clean(loss_mask, logprobs, proximal_logprobs, advantages)
    ratio = torch.exp(clamped_log_ratio(logprobs, proximal_logprobs))
    per_token, flags = ppo_per_token(ratio, advantages, 1.0 - eps_low, 1.0 + eps_high, clip_ratio_c)
    loss = aggregate(_weighted(per_token, token_weights), loss_mask)
    return LossOutput(loss, _clip_metrics(flags, loss_mask), (flags["high"] | flags["low"]) & loss_mask)


@LOSSES.register(
    "cispo",
    summary="REINFORCE with a clipped, stop-gradient IS weight: every token keeps its gradient",
    paper="arXiv 2506.13585 (MiniMax-M1), CISPO objective",
    source="verl core_algos.compute_policy_loss_cispo; TRL grpo_trainer loss_type='cispo'",
    inputs=_BASE,
    split_invariant=True,
)
def cispo_loss(*, logprobs: Tensor, proximal_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor,
               eps_low: float = 10.0, eps_high: float = 0.2, semantics: str = "verl",
               aggregate: Aggregate = token_mean, token_weights: Tensor | None = None) -> LossOutput:
    """CISPO: ``L = -sg(w) * A * logprobs`` with the IS weight ``w`` clipped and detached.

    ``semantics="verl"`` (default, verl example script): ``w = clip(r, 1 - eps_low, 1 + eps_high)``
    with epsilons (defaults 10 / 0.2: lower bound inert, cap 1.2). ``semantics="trl"``: ``eps_high``
    is the *absolute* cap, ``w = min(r, eps_high)`` (TRL ``epsilon_high``, ScaleRL recommends 5.0)
    and ``eps_low`` is unused; a cap below 1 raises ValueError (a verl epsilon ported by mistake).
    The paper's exact eps values for M1 are unverified (docs/methods.md §4c).

    Only the gradient is meaningful: ``dL/dlogp_t = -w_t A_t / N``. docs/methods.md §4e (cap 1.2, N 4):
    gradient [-0.3, -0.125, 0.275, 0.3]. Paper: arXiv 2506.13585 Sec. 3.1, Eq. 4 with the clipped
    weight of Eq. 5; checked against the verl and TRL re-implementations (MiniMax's own code was
    not available).
    """
    if semantics not in ("verl", "trl"):
        raise ValueError(f"cispo semantics must be 'verl' or 'trl', got {semantics!r}")
    if semantics == "trl" and eps_high < 1.0:
        raise ValueError(f"cispo semantics='trl' takes eps_high as the absolute cap on the ratio (e.g. 5.0); "
                         f"got {eps_high}, which would cap every weight below 1. For verl epsilons use semantics='verl'.")
    logprobs, proximal_logprobs, advantages = _clean(loss_mask, logprobs, proximal_logprobs, advantages)
    ratio = torch.exp(clamped_log_ratio(logprobs, proximal_logprobs)).detach()
    if semantics == "verl":
        lower, upper = 1.0 - eps_low, 1.0 + eps_high
        weight = torch.clamp(ratio, lower, upper)
        low_flags = ratio < lower
    else:
        upper = eps_high
        weight = torch.clamp(ratio, max=upper)
        low_flags = torch.zeros_like(loss_mask)
    per_token = -weight * advantages * logprobs
    loss = aggregate(_weighted(per_token, token_weights), loss_mask)
    metrics = {"policy/clipfrac_low": _frac(low_flags, loss_mask), "policy/clipfrac_high": _frac(ratio > upper, loss_mask)}
    return LossOutput(loss, metrics, (low_flags | (ratio > upper)) & loss_mask)  # any capped weight


def _covariance(advantages: Tensor, logprobs: Tensor, loss_mask: Tensor) -> Tensor:
    a = advantages.detach()
    lp = logprobs.detach()
    return (a - masked_mean(a, loss_mask)) * (lp - masked_mean(lp, loss_mask))


def _top_ranked(scores: Tensor, eligible: Tensor, count: Tensor, max_count: int) -> Tensor:
    """Bool mask (shape of ``scores``) of the ``count`` highest-scoring eligible entries.

    ``count`` is a 0-dim tensor (never read on the host); ``max_count`` a static upper bound
    from shapes, so ``topk`` gets a Python int. Ineligible entries are never selected.
    """
    flat = torch.where(eligible, scores, torch.full((), -math.inf, dtype=scores.dtype, device=scores.device)).reshape(-1)
    k = max(1, min(max_count, flat.numel()))
    vals, idx = torch.topk(flat, k, largest=True, sorted=True)
    rank = torch.arange(k, device=scores.device)
    chosen = (rank < count) & (vals > -math.inf)
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device).scatter_(0, idx, chosen)
    return out.reshape(scores.shape)


def _fraction_count(ratio: float, loss_mask: Tensor) -> tuple[Tensor, int]:
    """``max(1, floor(ratio * N_valid))`` as a tensor, and its static bound from the shape."""
    n_valid = loss_mask.sum().to(torch.float64)
    count = torch.clamp(torch.floor(ratio * n_valid), min=1)
    return count, max(1, math.floor(ratio * loss_mask.numel()))


@LOSSES.register(
    "clip_cov",
    summary="Clip-Cov: PPO, plus a random share of high-covariance tokens get no gradient",
    paper="arXiv 2505.22617 (Entropy Mechanism of RL for Reasoning LMs), Clip-Cov",
    source="verl core_algos.compute_policy_loss_clip_cov (PRIME-RL/Entropy-Mechanism-of-RL)",
    inputs=_BASE,
)
def clip_cov_loss(*, logprobs: Tensor, proximal_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor,
                  generator: torch.Generator, eps_low: float = 1.0, eps_high: float = 1.0,
                  clip_cov_ratio: float = 2e-4, clip_cov_lb: float = 1.0, clip_cov_ub: float = 5.0,
                  aggregate: Aggregate = token_mean, token_weights: Tensor | None = None) -> LossOutput:
    """Clip-Cov (docs/methods.md §2a): ``Cov_t = (A_t - mean A)(logp_t - mean logp)`` over the valid tokens
    of *this call*; candidates are valid tokens not already clipped by PPO with
    ``clip_cov_lb < Cov_t < clip_cov_ub``; ``max(1, floor(clip_cov_ratio * N_valid))`` of them,
    drawn uniformly at random with ``generator`` (all of them if fewer), lose their loss and
    gradient. The rest get ``max(-A r, -A clip(r, 1-eps_low, 1+eps_high))``; no dual clip.

    Defaults: ratio 2e-4, lb 1, ub 5 (verl); eps 1/1 (authors' scripts: PPO range [0, 2], so
    Clip-Cov does the work). Batch-dependent by design: the covariance means, N_valid and the
    random draw are per call (per micro-batch), so splitting a batch changes the result.
    The random subset is drawn as the top-k of uniform keys (same distribution as verl's
    ``randperm``, different stream). docs/methods.md §2e with ratio 0.5: token-mean 0.0.
    Paper: arXiv 2505.22617 Sec. 4.2, Eqs. 10-12 (covariance, random selection, detached loss).
    """
    logprobs, proximal_logprobs, advantages = _clean(loss_mask, logprobs, proximal_logprobs, advantages)
    ratio = torch.exp(clamped_log_ratio(logprobs, proximal_logprobs))
    per_token, flags = ppo_per_token(ratio, advantages, 1.0 - eps_low, 1.0 + eps_high, None)
    clip_by_origin = flags["high"] | flags["low"]
    cov = _covariance(advantages, logprobs, loss_mask)
    candidates = loss_mask & ~clip_by_origin & (cov > clip_cov_lb) & (cov < clip_cov_ub)
    count, bound = _fraction_count(clip_cov_ratio, loss_mask)
    keys = torch.rand(cov.shape, generator=generator, device=cov.device)
    selected = _top_ranked(keys, candidates, count, bound)
    per_token = torch.where(selected, torch.zeros_like(per_token), per_token)
    loss = aggregate(_weighted(per_token, token_weights), loss_mask)
    metrics = _clip_metrics(flags, loss_mask)
    metrics["clip_cov/selected_frac"] = _frac(selected, loss_mask)
    metrics["clip_cov/candidate_frac"] = _frac(candidates, loss_mask)
    return LossOutput(loss, metrics, clip_by_origin & loss_mask)


@LOSSES.register(
    "kl_cov",
    summary="KL-Cov: unclipped PG, plus |log ratio| penalty on the top-k covariance tokens",
    paper="arXiv 2505.22617 (Entropy Mechanism of RL for Reasoning LMs), KL-Cov",
    source="verl core_algos.compute_policy_loss_kl_cov (PRIME-RL/Entropy-Mechanism-of-RL)",
    inputs=_BASE,
)
def kl_cov_loss(*, logprobs: Tensor, proximal_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor,
                kl_cov_ratio: float = 2e-4, ppo_kl_coef: float = 1.0,
                aggregate: Aggregate = token_mean, token_weights: Tensor | None = None) -> LossOutput:
    """KL-Cov (docs/methods.md §2a): ``L_t = -A r + ppo_kl_coef * |logp - proximal_logp|`` on the
    ``max(1, floor(kl_cov_ratio * N_valid))`` valid tokens with the largest ``Cov_t``, ``-A r``
    elsewhere. No PPO clipping on any token.

    Units: ``kl_cov_ratio`` is a fraction (verl); the original repo's ``k_percent`` is a percent
    (0.2 there = 2e-3 here). The ``|.|`` term has zero gradient when the log-ratio is exactly 0
    (first on-policy update). Batch-dependent by design (covariance means, N_valid and top-k per
    call). docs/methods.md §2e with ratio 0.25, coef 1: token-mean -0.017976.
    Paper: arXiv 2505.22617 Sec. 4.2, Eqs. 10, 13, 14 (Eq. 14 writes a KL to the rollout policy; the
    authors' code, like this one, penalises ``|log ratio|`` of the sampled token).
    """
    logprobs, proximal_logprobs, advantages = _clean(loss_mask, logprobs, proximal_logprobs, advantages)
    log_ratio = logprobs - proximal_logprobs
    ratio = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
    pg = -advantages * ratio
    cov = _covariance(advantages, logprobs, loss_mask)
    count, bound = _fraction_count(kl_cov_ratio, loss_mask)
    selected = _top_ranked(cov, loss_mask, count, bound)
    per_token = torch.where(selected, pg + ppo_kl_coef * log_ratio.abs(), pg)
    loss = aggregate(_weighted(per_token, token_weights), loss_mask)
    zeros = torch.zeros_like(loss_mask)
    metrics = {
        "policy/clipfrac_low": _frac(zeros, loss_mask),
        "policy/clipfrac_high": _frac(zeros, loss_mask),
        "kl_cov/selected_frac": _frac(selected, loss_mask),
    }
    return LossOutput(loss, metrics, None)  # no clipping


def _archer_groups(entropy: Tensor, loss_mask: Tensor, token_entropy_quantile: float) -> tuple[Tensor, Tensor]:
    """``(low, high)`` ``[B, T]`` bool: per response, ``H > quantile_i`` is high-entropy."""
    ent = zero_masked(entropy.detach(), loss_mask)
    q = masked_quantile(ent, loss_mask, token_entropy_quantile, dim=-1).unsqueeze(-1)
    high = loss_mask & (ent > q)
    return loss_mask & ~high, high


def archer_stats(*, entropy: Tensor, loss_mask: Tensor, token_entropy_quantile: float = 0.8, kl_coef_low: float = 0.001,
                 kl_coef_high: float = 0.0, **_: object) -> dict[str, Tensor]:
    """Per-call token counts of the two entropy groups, the denominators of Archer's KL means
    (summed over the mini-batch by the composition layer); empty when both KL coefficients are 0."""
    if not (kl_coef_low or kl_coef_high):
        return {}
    low, high = _archer_groups(entropy, loss_mask, token_entropy_quantile)
    return {"archer/low_tokens": low.sum().float(), "archer/high_tokens": high.sum().float()}


@LOSSES.register(
    "archer",
    summary="Archer dual-token: wider clip and no KL on each response's top-20% entropy tokens",
    paper="arXiv 2507.15778 (Archer)",
    source="wizard-III/ArcherCodeR dp_actor.update_policy, core_algos.compute_policy_loss",
    inputs=(*_BASE, "entropy", "ref_logprobs"),
    stats=archer_stats,
    split_invariant=True,
)
def archer_loss(*, logprobs: Tensor, proximal_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor,
                entropy: Tensor, ref_logprobs: Tensor | None = None, token_entropy_quantile: float = 0.8,
                low_entropy_eps_low: float = 0.2, low_entropy_eps_high: float = 0.2,
                high_entropy_eps_low: float = 0.5, high_entropy_eps_high: float = 0.5,
                clip_ratio_c: float | None = 10.0, kl_coef_low: float = 0.001, kl_coef_high: float = 0.0,
                kl_estimator: str = "k3", aggregate: Aggregate = token_mean, token_weights: Tensor | None = None,
                mini_batch_stats: dict[str, Tensor] | None = None) -> LossOutput:
    """Archer (docs/methods.md §6a): per response, ``q_i = quantile(H_i over its valid tokens, 0.8)``
    (linear, as ``nanquantile``); tokens with ``H <= q_i`` are low-entropy ("knowledge"), ``H > q_i``
    high-entropy ("reasoning"). PPO clip per token with ``low_entropy_eps_*`` (0.2/0.2) or
    ``high_entropy_eps_*`` (0.5/0.5), dual clip ``c = 10``. KL to the reference (k3) is
    token-meaned separately within each group:
    ``loss = agg(pg) + kl_coef_low * KL_low + kl_coef_high * KL_high``.

    ``entropy [B, T]``: current policy entropy (used detached). ``ref_logprobs`` required when a
    KL coefficient is non-zero (ValueError otherwise). ``KL_g = sum_g(k3) / N_g`` with ``N_g`` the
    group's token count over the whole mini-batch (``mini_batch_stats`` from :func:`archer_stats`;
    this call's own count when None), so the micro-batch terms sum to the mini-batch's KL means
    and neither the micro-batch size nor the number of ranks changes the update (the reference
    code takes both means per micro-batch and scales the micro-batch loss by its share: the
    same at one micro-batch per mini-batch). All four clip values are explicit (the reference
    code's fallbacks cross over, docs/methods.md §6d). ``clipped``: PPO's clip flags with each token's
    own bounds. Paper: arXiv 2507.15778, its method section (response-level entropy split, KL on
    low-entropy tokens, wider clip on high-entropy ones; equation number unverified); checked
    against the authors' code (wizard-III/ArcherCodeR).
    """
    if (kl_coef_low or kl_coef_high) and ref_logprobs is None:
        raise ValueError("archer: kl_coef_low/kl_coef_high are non-zero but ref_logprobs is None; "
                         "compute reference logprobs or set both coefficients to 0")
    _check_dual_clip(clip_ratio_c)
    logprobs, proximal_logprobs, advantages = _clean(loss_mask, logprobs, proximal_logprobs, advantages)
    low, high = _archer_groups(entropy, loss_mask, token_entropy_quantile)
    lower = torch.where(high, 1.0 - high_entropy_eps_low, 1.0 - low_entropy_eps_low)
    upper = torch.where(high, 1.0 + high_entropy_eps_high, 1.0 + low_entropy_eps_high)
    ratio = torch.exp(clamped_log_ratio(logprobs, proximal_logprobs))
    per_token, flags = ppo_per_token(ratio, advantages, lower, upper, clip_ratio_c)
    loss = aggregate(_weighted(per_token, token_weights), loss_mask)
    metrics = _clip_metrics(flags, loss_mask)
    metrics["archer/high_entropy_frac"] = _frac(high, loss_mask)
    if ref_logprobs is not None:
        kl = kl_estimate(kl_estimator, logprobs=logprobs, ref_logprobs=zero_masked(ref_logprobs, loss_mask))
        stats = mini_batch_stats or {}
        n_low = stats.get("archer/low_tokens", low.sum().float())
        n_high = stats.get("archer/high_tokens", high.sum().float())
        kl_low = masked_sum(kl, low) / n_low.to(kl.dtype).clamp(min=1)
        kl_high = masked_sum(kl, high) / n_high.to(kl.dtype).clamp(min=1)
        loss = loss + kl_coef_low * kl_low + kl_coef_high * kl_high
        # logged as this call's group means (like every per-call metric, averaged over micro-batches)
        metrics["archer/kl_low"] = masked_mean(kl.detach(), low)
        metrics["archer/kl_high"] = masked_mean(kl.detach(), high)
    return LossOutput(loss, metrics, (flags["high"] | flags["low"]) & loss_mask)
