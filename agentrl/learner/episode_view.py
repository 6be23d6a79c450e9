"""Phase 1 on episodes when the batch's rows are turn samples.

Under a turn-level context policy (``rollout.context.policy`` not ``full``) each row of a
:class:`~agentrl.types.TrainBatch` is one turn of an episode: its own prompt, then the ids
sampled for that turn. Advantages, step-level credit and batch-scope token masks are defined
on episodes (a GRPO group is G episodes, GiGPO's step groups and EMPG's step entropy are per
turn of an episode), so phase 1 runs on an *episode view*: per episode, the policy tokens of
its rows concatenated in turn order (exactly the tokens a one-sequence episode would train,
without the prompts), with the episode's reward, group, turn rewards and anchors. The
per-token results (advantages, the cleared loss mask, token masks) are then put back on the
rows, token for token. Every estimator, credit method and token mask therefore sees the same
inputs as it would for the same episodes played as one sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from agentrl.algorithms import AdvantageResult, RolloutBatch


@dataclass
class EpisodeView:
    """Where each episode's policy tokens sit in the row batch.

    index [E, L] long: flat positions (``row * T + column``) of episode e's policy tokens in
    turn order, 0 past its last token; valid [E, L] bool; first [E] long: the first row of
    each episode (its copy of the per-episode values); episode_ids [R] long (row -> episode);
    shape: (R, T) of the rows.
    """

    index: Tensor
    valid: Tensor
    first: Tensor
    episode_ids: Tensor
    shape: tuple[int, int]

    @classmethod
    def of(cls, loss_mask: Tensor, episode_ids: Tensor) -> EpisodeView:
        """The view of rows ``loss_mask`` [R, T] bool (True on trained tokens) with
        ``episode_ids`` [R] long: the rows of an episode are consecutive and in turn order
        (as :func:`agentrl.types.collate` writes them); raises ValueError otherwise."""
        R, T = loss_mask.shape
        if R and bool((episode_ids[1:] < episode_ids[:-1]).any()):
            raise ValueError("the rows of an episode must be consecutive, in turn order (agentrl.types.collate writes them so)")
        E = int(episode_ids.max()) + 1 if R else 0
        pos = loss_mask.reshape(-1).nonzero().squeeze(1)  # row-major: episode by episode, turn by turn
        ep = episode_ids[pos // T]
        counts = torch.bincount(ep, minlength=E)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(pos.numel(), device=pos.device) - starts[ep]
        L = max(int(counts.max()) if E else 0, 1)
        index = torch.zeros((E, L), dtype=torch.long, device=loss_mask.device)
        valid = torch.zeros((E, L), dtype=torch.bool, device=loss_mask.device)
        index[ep, rank] = pos
        valid[ep, rank] = True
        rows = torch.arange(R, device=episode_ids.device)
        first = torch.full((E,), R, dtype=torch.long, device=episode_ids.device).scatter_reduce(0, episode_ids, rows, "amin")
        return cls(index, valid, first, episode_ids, (R, T))

    def gather(self, x: Tensor | None, fill: float | bool | int = 0) -> Tensor | None:
        """Per-token row values [R, T] -> [E, L] in the view (``fill`` past each episode's tokens)."""
        if x is None:
            return None
        out = x.reshape(-1)[self.index]
        return torch.where(self.valid, out, torch.as_tensor(fill, dtype=x.dtype, device=x.device))

    def scatter(self, y: Tensor, fill: float | bool | int = 0) -> Tensor:
        """View values [E, L] -> rows [R, T], ``fill`` on every position that is not a policy token."""
        R, T = self.shape
        out = torch.full((R * T,), fill, dtype=y.dtype, device=y.device)
        out[self.index[self.valid]] = y[self.valid]
        return out.view(R, T)

    def rollout_batch(self, rows: RolloutBatch) -> RolloutBatch:
        """The episode-level phase-1 input from the row-level one."""
        f = self.first

        def ep(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[f]

        return RolloutBatch(
            rewards=rows.rewards[f], group_ids=rows.group_ids[f], loss_mask=self.valid.clone(),
            turn_ids=self.gather(rows.turn_ids, -1) if rows.turn_ids is not None else None,
            turn_rewards=ep(rows.turn_rewards), anchor_ids=ep(rows.anchor_ids), correct=ep(rows.correct),
            response_lengths=ep(rows.response_lengths), terminated=ep(rows.terminated), truncated=ep(rows.truncated),
            proximal_logprobs=self.gather(rows.proximal_logprobs), behavior_logprobs=self.gather(rows.behavior_logprobs),
            entropy=self.gather(rows.entropy),
        )

    def rows_result(self, adv: AdvantageResult) -> AdvantageResult:
        """The episode-level phase-1 output put back on the rows: per-token tensors scattered,
        per-episode and per-turn ones copied to each of the episode's rows."""
        e = self.episode_ids
        return replace(
            adv, advantages=self.scatter(adv.advantages, 0.0), loss_mask=self.scatter(adv.loss_mask, False), keep=adv.keep[e],
            rewards=adv.rewards[e], turn_advantages=adv.turn_advantages[e],
            token_mask=self.scatter(adv.token_mask, False) if adv.token_mask is not None else None,
        )
