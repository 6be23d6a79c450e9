"""Step-level credit: turn ids on every token, per-turn rewards, discounting, turn reductions.

A trajectory is one row ``b`` of ``[B, T]`` token tensors; the assistant turns (steps) it
contains are numbered by ``turn_ids [B, T] long``: the index of the assistant turn that generated
the token, ``-1`` on every non-policy token (prompt, tool output, padding). Per-turn quantities
are ``[B, S]`` with S at least the number of turns of the longest trajectory; ``turn_mask [B, S]
bool`` marks the turns that exist (have at least one policy token).

Everything here is vectorised over tokens (scatter/gather; no Python loop over tokens or turns).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "default_turn_ids",
    "turn_token_counts",
    "turn_means",
    "broadcast_turns",
    "last_turn_index",
    "place_on_last_turn",
    "discounted_turn_returns",
]


def default_turn_ids(loss_mask: Tensor) -> Tensor:
    """Single-turn data: turn 0 on every policy token, -1 elsewhere."""
    return torch.where(loss_mask, 0, -1).long()


def _valid_turn_tokens(turn_ids: Tensor, loss_mask: Tensor, num_turns: int) -> tuple[Tensor, Tensor]:
    valid = loss_mask & (turn_ids >= 0) & (turn_ids < num_turns)
    return valid, turn_ids.clamp(0, num_turns - 1)


def turn_token_counts(turn_ids: Tensor, loss_mask: Tensor, num_turns: int) -> Tensor:
    """``[B, S]`` float: policy tokens per turn (0 for turns that do not exist)."""
    valid, idx = _valid_turn_tokens(turn_ids, loss_mask, num_turns)
    out = torch.zeros(turn_ids.shape[0], num_turns, dtype=torch.float32, device=turn_ids.device)
    return out.scatter_add_(1, idx, valid.float())


def turn_means(values: Tensor, turn_ids: Tensor, loss_mask: Tensor, num_turns: int) -> tuple[Tensor, Tensor]:
    """Mean of ``values [B, T]`` over each turn's policy tokens: ``([B, S] means, [B, S] counts)``.

    E.g. the step entropy ``H_step`` of EMPG from per-token entropy. Turns
    with no token get mean 0 (check ``counts > 0``).
    """
    valid, idx = _valid_turn_tokens(turn_ids, loss_mask, num_turns)
    counts = torch.zeros(values.shape[0], num_turns, dtype=values.dtype, device=values.device)
    counts.scatter_add_(1, idx, valid.to(values.dtype))
    sums = torch.zeros_like(counts).scatter_add_(1, idx, torch.where(valid, values, torch.zeros_like(values)))
    return sums / counts.clamp(min=1), counts


def broadcast_turns(turn_values: Tensor, turn_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """``[B, S]`` per-turn values -> ``[B, T]`` per-token values (0 on non-policy tokens and on
    tokens whose turn id is outside ``[0, S)``)."""
    num_turns = turn_values.shape[1]
    valid, idx = _valid_turn_tokens(turn_ids, loss_mask, num_turns)
    out = turn_values.gather(1, idx)
    return torch.where(valid, out, torch.zeros_like(out))


def last_turn_index(turn_mask: Tensor) -> Tensor:
    """``[B]`` long: index of the last existing turn of each row (-1 for a row with none)."""
    s = torch.arange(turn_mask.shape[1], device=turn_mask.device).expand_as(turn_mask)
    return torch.where(turn_mask, s, torch.full_like(s, -1)).amax(dim=1)


def place_on_last_turn(rewards: Tensor, turn_mask: Tensor) -> Tensor:
    """``[B, S]`` turn rewards holding the trajectory reward ``rewards [B]`` on the last turn."""
    last = last_turn_index(turn_mask)
    s = torch.arange(turn_mask.shape[1], device=turn_mask.device).expand_as(turn_mask)
    hit = (s == last.unsqueeze(1)) & turn_mask
    return torch.where(hit, rewards.unsqueeze(1).to(torch.float32), torch.zeros((), device=rewards.device))


def discounted_turn_returns(turn_rewards: Tensor, turn_mask: Tensor, gamma: float) -> Tensor:
    """Return-to-go per turn, ``G_s = r_s + gamma * G_{s+1}`` within each row (GiGPO Eq. 5,
    arXiv 2505.10978; verl-agent ``compute_step_discounted_returns``).

    ``turn_rewards [B, S]`` float, ``turn_mask [B, S]`` bool; rewards at missing turns are
    ignored and their returns are 0. Computed as ``r @ D`` with the ``[S, S]`` upper-triangular
    discount matrix ``D[s', s] = gamma^(s'-s)`` for ``s' >= s`` (float64), so there is no loop.
    Hand-derived: reward 1 two turns later with gamma 0.95 gives 0.9025.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    num_turns = turn_rewards.shape[1]
    s = torch.arange(num_turns, device=turn_rewards.device, dtype=torch.float64)
    diff = s.unsqueeze(1) - s.unsqueeze(0)  # [s', s] = s' - s
    disc = torch.where(diff >= 0, torch.pow(float(gamma), diff.clamp(min=0)),
                       torch.zeros((), dtype=torch.float64))
    r = torch.where(turn_mask, turn_rewards.to(torch.float64), torch.zeros((), dtype=torch.float64))
    ret = r @ disc
    return torch.where(turn_mask, ret, torch.zeros_like(ret)).to(torch.float32)
