"""Loss aggregation: per-token losses ``[B, T]`` -> one scalar (verl ``core_algos.agg_loss``).

Aggregation is its own function, never a branch inside a loss: every policy loss takes an
``aggregate`` callable (``aggregate(per_token, loss_mask) -> scalar``) built from one of these
by :func:`make_aggregate`.

Global denominators. With gradient accumulation, pass the denominator of the whole mini-batch
(``num_tokens`` = policy tokens in the mini-batch, ``num_seqs`` = sequences with at least one
policy token) to every micro-batch call: the micro-batch losses then *sum* to the mini-batch
loss and the accumulated gradient equals the whole-batch gradient (recent verl does the same
with its global token count). With the defaults (``None``) each call uses its own micro-batch
counts, like older verl forks; then the result depends on how the batch is split.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor

from .ops import masked_sum
from .registry import AGGREGATIONS

__all__ = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "make_aggregate"]

Aggregate = Callable[[Tensor, Tensor], Tensor]
_AGG_INPUTS = ("per_token", "loss_mask", "num_tokens", "num_seqs")


def _denominator(value: Tensor | float | None, fallback: Tensor) -> Tensor:
    if value is None:
        return fallback.clamp(min=1)
    return torch.as_tensor(value, dtype=fallback.dtype, device=fallback.device).clamp(min=1e-12)


@AGGREGATIONS.register(
    "token-mean",
    summary="sum(L*mask)/N_tok over all policy tokens of the batch (DAPO token-level loss)",
    paper="arXiv 2503.14476 (DAPO) Sec. 3.3, token-level policy gradient loss",
    source="verl core_algos.agg_loss",
    inputs=_AGG_INPUTS,
    split_invariant=True,
)
def token_mean(per_token: Tensor, loss_mask: Tensor, *, num_tokens: Tensor | float | None = None,
               num_seqs: Tensor | float | None = None) -> Tensor:
    """``sum(L * mask) / N_tok``.

    per_token [B, T] float; loss_mask [B, T] bool (True on policy tokens); ``num_tokens``: the
    global token count (see module doc), default ``loss_mask.sum()``. Worked value:
    losses a=[1, 1], b=[0, 0, 0, 0] give 2/6. Paper: DAPO, arXiv 2503.14476 Sec. 3.3, Eq. 12
    (docs/methods.md §14).
    """
    fallback = loss_mask.sum().to(per_token.dtype)
    return masked_sum(per_token, loss_mask) / _denominator(num_tokens, fallback)


def _seq_count(loss_mask: Tensor, dtype: torch.dtype) -> Tensor:
    return (loss_mask.sum(dim=-1) > 0).sum().to(dtype)


@AGGREGATIONS.register(
    "seq-mean-token-mean",
    summary="mean over sequences of each sequence's token mean (original GRPO)",
    paper="arXiv 2402.03300 (DeepSeekMath) GRPO objective",
    source="verl core_algos.agg_loss",
    inputs=_AGG_INPUTS,
    split_invariant=True,
)
def seq_mean_token_mean(per_token: Tensor, loss_mask: Tensor, *, num_tokens: Tensor | float | None = None,
                        num_seqs: Tensor | float | None = None) -> Tensor:
    """``mean_i( sum_t L*mask / sum_t mask )`` over sequences with at least one policy token.

    ``num_seqs``: global sequence count (see module doc). Hand-derived: a=[1, 1], b=[0,0,0,0] -> 0.5.
    Paper: the GRPO objective, arXiv 2402.03300 Eq. 3 (``1/G sum_i 1/|o_i| sum_t``).
    """
    n_tok = loss_mask.sum(dim=-1).to(per_token.dtype)
    seq = masked_sum(per_token, loss_mask, dim=-1) / n_tok.clamp(min=1)
    return seq.sum() / _denominator(num_seqs, _seq_count(loss_mask, per_token.dtype))


@AGGREGATIONS.register(
    "seq-mean-token-sum",
    summary="mean over sequences of each sequence's token sum",
    paper="verl loss_agg_mode (no paper equation)",
    source="verl core_algos.agg_loss",
    inputs=_AGG_INPUTS,
    split_invariant=True,
)
def seq_mean_token_sum(per_token: Tensor, loss_mask: Tensor, *, num_tokens: Tensor | float | None = None,
                       num_seqs: Tensor | float | None = None) -> Tensor:
    """``mean_i( sum_t L*mask )`` over sequences with at least one policy token (``num_seqs``:
    the global sequence count, see module doc). Longer sequences weigh more. No paper defines it
    (a ``loss_agg_mode`` of verl); docs/methods.md §14a is its reference."""
    seq = masked_sum(per_token, loss_mask, dim=-1)
    return seq.sum() / _denominator(num_seqs, _seq_count(loss_mask, per_token.dtype))


@AGGREGATIONS.register(
    "seq-mean-token-sum-norm",
    summary="sum(L*mask)/const with const = max length unless fixed (Dr. GRPO)",
    paper="arXiv 2503.20783 (Dr. GRPO) constant normaliser",
    source="verl core_algos.agg_loss",
    inputs=_AGG_INPUTS,
    split_invariant=True,
)
def seq_mean_token_sum_norm(per_token: Tensor, loss_mask: Tensor, *, num_tokens: Tensor | float | None = None,
                            num_seqs: Tensor | float | None = None, norm_length: float | None = None) -> Tensor:
    """``sum(L * mask) / norm_length`` (the module docstring). ``norm_length`` default: T, the padded
    length of this call; set it (e.g. to ``max_response_tokens``) so the constant does not change
    with padding across micro-batches. Paper: Dr. GRPO's constant normaliser, arXiv 2503.20783
    (section and equation number unverified; docs/methods.md §14f)."""
    const = float(per_token.shape[-1]) if norm_length is None else float(norm_length)
    return masked_sum(per_token, loss_mask) / const


def make_aggregate(name: str, *, num_tokens: Tensor | float | None = None, num_seqs: Tensor | float | None = None,
                   **options: float) -> Aggregate:
    """``aggregate(per_token, loss_mask)`` for the registered aggregation ``name`` with global
    denominators bound. Unknown names/options raise :class:`UnknownNameError`."""
    entry = AGGREGATIONS.get(name)
    entry.check_options(options)
    return partial(entry.obj, num_tokens=num_tokens, num_seqs=num_seqs, **options)
