"""Masked reductions, quantiles and group statistics without host syncs.

Every function here is pure torch, works on any device, and never moves a value to the host
(no ``.item()``, no ``nonzero``/``unique``, no boolean-mask indexing, no data-dependent Python
control flow), so losses built on them can run under ``torch.cuda.set_sync_debug_mode("error")``.

Mask polarity everywhere: ``mask`` is a bool tensor, True on the entries that count.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "reduce_sums",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_quantile",
    "clamped_log_ratio",
    "compact_ids",
    "segment_sum",
    "segment_stats",
    "first_true_index",
    "zero_masked",
]

LOG_RATIO_CLAMP = 20.0  # verl clamps log(pi/pi_prox) to [-20, 20] before exp


def zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` where ``mask`` else 0, such that values (even inf/nan) at masked-out positions
    reach neither the result nor the gradient."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Tensor:
    """Sum of ``x`` over ``mask == True``; masked-out values never leak (see :func:`zero_masked`)."""
    z = zero_masked(x, mask)
    return z.sum() if dim is None else z.sum(dim=dim, keepdim=keepdim)


def reduce_sums(sums: dict[str, Tensor], all_reduce: Callable[[Tensor], Tensor] | None) -> dict[str, Tensor]:
    """``sums`` (0-dim tensors, or equal-shaped ones) summed across data-parallel ranks in one
    all-reduce (keys sorted, so every rank packs alike); unchanged without ``all_reduce``."""
    if all_reduce is None or not sums:
        return dict(sums)
    keys = sorted(sums)
    summed = all_reduce(torch.stack([sums[k].float() for k in keys]))
    return {k: summed[i] for i, k in enumerate(keys)}


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Tensor:
    """Mean over ``mask == True``; 0 where nothing is selected (the count is clamped to >= 1)."""
    count = mask.sum() if dim is None else mask.sum(dim=dim, keepdim=keepdim)
    return masked_sum(x, mask, dim, keepdim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over all ``mask == True`` entries (scalar); 0 when fewer than 2 (unbiased) entries."""
    n = mask.sum().to(x.dtype)
    mean = masked_sum(x, mask) / n.clamp(min=1)
    ss = masked_sum((x - mean) ** 2, mask)
    return ss / (n - 1).clamp(min=1) if unbiased else ss / n.clamp(min=1)


def masked_quantile(x: Tensor, mask: Tensor, q: float, dim: int | None = None) -> Tensor:
    """Quantile ``q`` of the ``mask == True`` entries with linear interpolation, matching
    ``torch.quantile`` / ``torch.nanquantile`` on the selected values.

    ``dim=None``: over all selected entries (scalar). ``dim=d``: per slice along ``d`` (result
    has ``d`` removed), as ``torch.nanquantile`` with NaN on the masked entries. A slice with no
    selected entry gives NaN. Uses a partial sort (``topk``) of the side of the distribution
    that holds the quantile, sized from the shape alone (the number of selected entries stays
    on the device), so there is no host sync and no size limit.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    if dim is None:
        x, mask, dim = x.reshape(-1), mask.reshape(-1), 0
    size = x.shape[dim]
    n = mask.sum(dim=dim, keepdim=True)
    pos = (n - 1).clamp(min=0).to(torch.float64) * q
    lo = pos.floor()
    frac = (pos - lo).to(x.dtype)
    lo_i = lo.long()
    hi_i = torch.minimum(lo_i + 1, (n - 1).clamp(min=0))
    top = q >= 0.5  # the quantile sits in the upper part: partial sort from the top
    k = min(size, math.ceil((1.0 - q if top else q) * max(size - 1, 0)) + 2)
    fill = torch.full((), -math.inf if top else math.inf, dtype=x.dtype, device=x.device)
    vals = torch.topk(torch.where(mask, x, fill), k, dim=dim, largest=top, sorted=True).values
    if top:  # descending: ascending rank a sits at n - 1 - a
        lo_idx, hi_idx = (n - 1 - lo_i).clamp(0, k - 1), (n - 1 - hi_i).clamp(0, k - 1)
    else:
        lo_idx, hi_idx = lo_i.clamp(max=k - 1), hi_i.clamp(max=k - 1)
    out = torch.lerp(vals.gather(dim, lo_idx), vals.gather(dim, hi_idx), frac)
    out = torch.where(n > 0, out, torch.full((), float("nan"), dtype=x.dtype, device=x.device))
    return out.squeeze(dim)


def clamped_log_ratio(logprobs: Tensor, proximal_logprobs: Tensor) -> Tensor:
    """``clamp(logprobs - proximal_logprobs, -20, 20)``: verl's guard before ``exp``."""
    return torch.clamp(logprobs - proximal_logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def compact_ids(*keys: Tensor) -> Tensor:
    """Dense ids in ``[0, N)`` for the distinct tuples ``(keys[0][i], keys[1][i], ...)``.

    All keys are 1-D integer (or bool) tensors of the same length N. Equal tuples get equal ids.
    Built by a lexicographic stable sort and a cumulative sum, so the number of distinct groups
    never has to be known on the host. Ids are ordered by the sorted key tuples.
    """
    if not keys:
        raise ValueError("compact_ids needs at least one key")
    n = keys[0].numel()
    device = keys[0].device
    order = torch.arange(n, device=device)
    for k in reversed(keys):
        order = order[torch.argsort(k.reshape(-1)[order], stable=True)]
    ks = torch.stack([k.reshape(-1)[order].long() for k in keys])
    new = torch.ones(n, dtype=torch.bool, device=device)
    if n > 1:
        new[1:] = (ks[:, 1:] != ks[:, :-1]).any(dim=0)
    ranks = new.long().cumsum(0) - 1
    return torch.empty_like(ranks).scatter_(0, order, ranks)


def segment_sum(values: Tensor, ids: Tensor, num_segments: int) -> Tensor:
    """Per-segment sums: ``out[g] = sum(values[ids == g])``; ``values`` and ``ids`` are 1-D."""
    return torch.zeros(num_segments, dtype=values.dtype, device=values.device).index_add_(0, ids, values)


def segment_stats(values: Tensor, ids: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-element group count, mean and unbiased std, each gathered back to ``values``' shape.

    ``values [N]`` float, ``ids [N]`` long dense ids in ``[0, N)`` (see :func:`compact_ids`),
    ``weights [N]`` optional non-negative frequency weights (an element with weight w counts as
    w rows; weight 0 removes it). The std of a group of size 1 is returned as NaN-free 0; callers
    apply their own singleton rule.
    """
    n = values.shape[0]
    w = torch.ones_like(values) if weights is None else weights.to(values.dtype)
    values = torch.where(w > 0, values, torch.zeros((), dtype=values.dtype, device=values.device))  # 0 * nan is nan
    count = segment_sum(w, ids, n)
    mean = segment_sum(w * values, ids, n) / count.clamp(min=1e-12)
    dev = values - mean[ids]
    ss = segment_sum(w * dev * dev, ids, n)
    std = torch.sqrt(torch.where(count > 1, ss / (count - 1).clamp(min=1e-12), 1.0).clamp(min=0))  # no sqrt(0) grad
    std = torch.where(count > 1, std, torch.zeros_like(std))
    return count[ids], mean[ids], std[ids]


def first_true_index(flags: Tensor, dim: int = -1) -> Tensor:
    """Index of the first True along ``dim``; the last index when none is True."""
    size = flags.shape[dim]
    idx = torch.arange(size, device=flags.device)
    shape = [1] * flags.dim()
    shape[dim] = size
    idx = idx.view(shape).expand_as(flags)
    big = torch.full_like(idx, size - 1)
    return torch.where(flags, idx, big).amin(dim=dim)
