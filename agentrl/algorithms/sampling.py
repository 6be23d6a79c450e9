"""DAPO's batch-level reward tools: soft overlong punishment and dynamic sampling.

Both are pure functions over per-trajectory tensors ``[B]``; the generation-round loop of
dynamic sampling (generate more groups until enough are kept) belongs to the training loop,
which calls :func:`dynamic_sampling_keep` on each round.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ops import compact_ids, segment_sum

__all__ = ["overlong_penalty", "dynamic_sampling_keep"]


def overlong_penalty(*, response_lengths: Tensor, max_response_tokens: int, buffer_tokens: int,
                     penalty_factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment ``R_len [B]`` (arXiv 2503.14476 Sec. 3.4; verl
    ``DAPORewardManager``): ``min(-(|y| - (L_max - L_cache)) / L_cache * penalty_factor, 0)``.

    response_lengths ``[B]`` int: response tokens counted against ``max_response_tokens``
    (prompt and padding excluded). Since the rollout caps ``|y| <= L_max`` the result lies in
    ``[-penalty_factor, 0]``. docs/methods.md §1e (20480/4096): 16384 -> 0, 18432 -> -0.5, 20480 -> -1.
    Raises ValueError unless ``0 < buffer_tokens <= max_response_tokens``.
    """
    if not 0 < buffer_tokens <= max_response_tokens:
        raise ValueError(f"need 0 < buffer_tokens <= max_response_tokens, got {buffer_tokens}, {max_response_tokens}")
    expected = max_response_tokens - buffer_tokens
    exceed = response_lengths.to(torch.float64) - expected
    return torch.clamp(-exceed / buffer_tokens * penalty_factor, max=0.0).float()


def dynamic_sampling_keep(*, metric: Tensor, group_ids: Tensor, valid: Tensor | None = None) -> Tensor:
    """DAPO dynamic sampling filter ``keep [B] bool`` (verl-recipe ``dapo_ray_trainer.fit``):
    a group is kept when its metric is not uniform (std > 0) or when it has a single member.

    metric ``[B]`` float (``acc`` by default, or the shaped sequence reward), group_ids ``[B]``.
    Uniformity is tested exactly (max == min), not through a float std (numpy's std of equal
    floats can be a tiny non-zero). ``valid [B] bool`` (optional): only these rows count (failed
    episodes do not make a group look mixed); invalid rows are never kept.
    docs/methods.md §1e: acc [1, 1, 1, 1] dropped, [1, 0, 0, 1] kept.
    """
    ids = compact_ids(group_ids)
    n = metric.shape[0]
    m = metric.to(torch.float64)
    ok = torch.ones(n, dtype=torch.bool, device=m.device) if valid is None else valid.bool()
    inf = torch.full((), torch.inf, dtype=m.dtype, device=m.device)
    gmax = torch.full((n,), -torch.inf, dtype=m.dtype, device=m.device).scatter_reduce(0, ids, torch.where(ok, m, -inf), "amax")
    gmin = torch.full((n,), torch.inf, dtype=m.dtype, device=m.device).scatter_reduce(0, ids, torch.where(ok, m, inf), "amin")
    count = segment_sum(ok.to(m.dtype), ids, n)
    return ((gmax > gmin) | (count == 1))[ids] & ok
