"""A synthetic multi-turn rollout batch and micro-batches with every optional field filled."""

from __future__ import annotations

import torch

from agentrl.algorithms import MicroBatch, RolloutBatch


def multi_turn_batch(b: int = 8, t: int = 24, s: int = 3, group_size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows: 2 prompt tokens, then per turn 1-4 policy tokens and 1-2 tool tokens, then padding."""
    g = torch.Generator().manual_seed(seed)
    turn_ids = torch.full((b, t), -1, dtype=torch.long)
    n_turns = torch.randint(1, s + 1, (b,), generator=g)
    for i in range(b):
        pos = 2
        for k in range(int(n_turns[i])):
            n_pol = int(torch.randint(1, 5, (1,), generator=g))
            n_tool = int(torch.randint(1, 3, (1,), generator=g))
            end = min(pos + n_pol, t)
            turn_ids[i, pos:end] = k
            pos = end + n_tool
            if pos >= t:
                break
    loss_mask = turn_ids >= 0
    turn_mask = torch.zeros(b, s, dtype=torch.bool)
    for i in range(b):
        for k in range(s):
            turn_mask[i, k] = bool((turn_ids[i] == k).any())
    turn_rewards = torch.where(turn_mask, torch.rand(b, s, generator=g).round(), torch.zeros(()))
    logp = -torch.rand(b, t, generator=g) * 3
    return {
        "rewards": turn_rewards.sum(1),
        "group_ids": torch.arange(b) // group_size,
        "loss_mask": loss_mask,
        "turn_ids": turn_ids,
        "turn_rewards": turn_rewards,
        "anchor_ids": torch.where(turn_mask, torch.randint(0, 3, (b, s), generator=g), -1),
        "correct": turn_rewards.sum(1) > 0.5,
        "response_lengths": loss_mask.sum(1) * 40,
        "terminated": torch.ones(b, dtype=torch.bool),
        "truncated": torch.zeros(b, dtype=torch.bool),
        "proximal_logprobs": logp,
        "behavior_logprobs": logp + 0.05 * torch.randn(b, t, generator=g),
        "entropy": torch.rand(b, t, generator=g) * 2,
        "ref_logprobs": logp + 0.1 * torch.randn(b, t, generator=g),
        "logprobs": logp + 0.2 * torch.randn(b, t, generator=g),
    }


def rollout_batch(d: dict[str, torch.Tensor]) -> RolloutBatch:
    keys = ("rewards", "group_ids", "loss_mask", "turn_ids", "turn_rewards", "anchor_ids", "correct",
            "response_lengths", "terminated", "truncated", "proximal_logprobs", "behavior_logprobs", "entropy")
    return RolloutBatch(**{k: d[k] for k in keys})


def micro_batch(d: dict[str, torch.Tensor], advantages: torch.Tensor, loss_mask: torch.Tensor, rows=slice(None),
                token_mask: torch.Tensor | None = None, logprobs: torch.Tensor | None = None,
                entropy: torch.Tensor | None = None) -> MicroBatch:
    lp = d["logprobs"][rows] if logprobs is None else logprobs
    ent = d["entropy"][rows] if entropy is None else entropy
    return MicroBatch(logprobs=lp, proximal_logprobs=d["proximal_logprobs"][rows], advantages=advantages[rows],
                      loss_mask=loss_mask[rows], entropy=ent, ref_logprobs=d["ref_logprobs"][rows],
                      behavior_logprobs=d["behavior_logprobs"][rows],
                      token_mask=None if token_mask is None else token_mask[rows])
