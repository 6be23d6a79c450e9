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

Turn samples (``rollout.context`` other than ``full``) put each turn of an episode on its own
row. ``episode-mean-token-mean`` then weighs every *episode* equally: it takes, per row, the
policy tokens of the row's whole episode in the mini-batch (``episode_tokens``) and the number
of episodes in the mini-batch (``num_episodes``), which the learner computes from
``RolloutBatch.episode_ids`` before the first micro-batch. Without them each row is its own
episode and it equals ``seq-mean-token-mean``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor

from .ops import masked_sum
from .registry import AGGREGATIONS

__all__ = ["token_mean", "seq_mean_token_mean", "episode_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm",
           "make_aggregate"]

Aggregate = Callable[[Tensor, Tensor], Tensor]
_AGG_INPUTS = ("per_token", "loss_mask", "num_tokens", "num_seqs")
_EPISODE_INPUTS = ("episode_tokens", "num_episodes")


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
    "episode-mean-token-mean",
    summary="mean over episodes of each episode's token mean; turn samples of one episode share its weight",
    paper="arXiv 2402.03300 (DeepSeekMath) GRPO objective, with the episode as the sequence",
    source="agentrl (turn samples); verl core_algos.agg_loss seq-mean-token-mean for one row per episode",
    inputs=_AGG_INPUTS + _EPISODE_INPUTS,
    split_invariant=True,
)
def episode_mean_token_mean(per_token: Tensor, loss_mask: Tensor, *, num_tokens: Tensor | float | None = None,
                            num_seqs: Tensor | float | None = None, episode_tokens: Tensor | None = None,
                            num_episodes: Tensor | float | None = None) -> Tensor:
    """``(1/E) sum_rows( sum_t L*mask / episode_tokens[row] )``: each episode's token mean,
    averaged over the E episodes with at least one policy token.

    per_token [B, T] float; loss_mask [B, T] bool (True on policy tokens); ``episode_tokens``
    [B] float: policy tokens of the row's whole episode in the mini-batch (all its turn
    samples, on any micro-batch), default the row's own count (one row per episode);
    ``num_episodes``: episodes in the mini-batch, default ``num_seqs``, then this call's rows
    with a policy token. Hand-derived: episode A with turn rows [1, 1] and [1], episode B with
    one row [0, 0, 0, 0] -> (3/3 + 0/4) / 2 = 0.5, where seq-mean-token-mean gives
    (1 + 1 + 0) / 3 = 2/3 and token-mean 3/7. Paper: the GRPO objective's ``1/G sum_i 1/|o_i|
    sum_t`` (arXiv 2402.03300 Eq. 3) with ``o_i`` the policy tokens of episode i over all its
    turns; docs/methods.md §14.
    """
    if episode_tokens is None:
        ep_tok = loss_mask.sum(dim=-1).to(per_token.dtype)
    else:
        if episode_tokens.shape != per_token.shape[:1]:
            raise ValueError(f"episode_tokens must be [B] = [{per_token.shape[0]}] (one count per row), "
                             f"got shape {list(episode_tokens.shape)}")
        ep_tok = episode_tokens.to(per_token.dtype)
    rows = masked_sum(per_token, loss_mask, dim=-1) / ep_tok.clamp(min=1)
    if num_episodes is None:
        num_episodes = num_seqs
    return rows.sum() / _denominator(num_episodes, _seq_count(loss_mask, per_token.dtype))


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
                   episode_tokens: Tensor | None = None, num_episodes: Tensor | float | None = None,
                   **options: float) -> Aggregate:
    """``aggregate(per_token, loss_mask)`` for the registered aggregation ``name`` with global
    denominators bound. ``episode_tokens`` [B] / ``num_episodes`` go only to an aggregation
    that takes them (its registry ``inputs``). Unknown names/options raise
    :class:`UnknownNameError`."""
    entry = AGGREGATIONS.get(name)
    entry.check_options(options)
    extra = {k: v for k, v in (("episode_tokens", episode_tokens), ("num_episodes", num_episodes))
             if k in entry.inputs and v is not None}
    return partial(entry.obj, num_tokens=num_tokens, num_seqs=num_seqs, **extra, **options)
