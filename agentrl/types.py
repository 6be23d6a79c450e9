"""The data that flows from rollout to learner: trajectories as tokens, and their batch form.

A :class:`Trajectory` is one episode, stored token-in/token-out: ``input_ids`` is exactly the
sequence the engine saw and produced, in order (prompt, then for each turn the sampled tokens
followed by the tokenized env reply). Per-token lists all have the same length T_i.

``collate`` pads trajectories into a :class:`TrainBatch` of ``[B, T]`` tensors (right padding).
Group ids come from the task id: the G trajectories sampled for the same task form a group
(GRPO); ``sample_index`` tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch


@dataclass
class Trajectory:
    """One episode as tokens plus its per-turn outcome.

    Attributes:
        task_id: stable task id (groups are formed by it).
        sample_index: index of this sample within its group (0..G-1).
        env_id: the Gymnasium id of the env that produced it.
        input_ids: all tokens, prompt included.
        loss_mask: True on tokens the policy generated (trained on); False on prompt,
            env/tool tokens and anything the template added.
        turn_ids: index (0-based) of the assistant turn that generated each token; -1 on
            tokens the policy did not generate.
        behavior_logprobs: log-probability of each generated token under the sampler (at the
            sampling temperature); 0.0 where ``loss_mask`` is False.
        policy_versions: version of the weights that sampled each token (train_step count at
            sampling time); -1 where ``loss_mask`` is False.
        turn_rewards: reward returned by ``env.step`` for each turn, length S (= num turns).
        anchor_keys: per turn, a hash of the observation the turn was taken from (GiGPO step
            groups); length S.
        terminated, truncated: Gymnasium's flags at the end of the episode.
        success: the env's ``info["success"]`` at the end.
        failed: True when the episode could not be completed for a reason outside the policy
            (sandbox crash, engine error, env exception); such trajectories are kept for
            metrics and masked out of the loss.
        failure_reason: why it failed (exception type and message), else None.
        failure_kind: what failed, one of ``agentrl.rollout.faults.FAILURE_KINDS``
            (``env_step``, ``engine_timeout``, ``sandbox_error``, ...), else None; counted per
            train_step as ``rollout/failed/<kind>``.
        metrics: per-episode numbers for logging (tool errors, sandbox time, ...).
        messages: the chat transcript (for debugging, eval reports, SFT data).
        segments: empty for an episode played as one sequence (``rollout.context.policy:
            full``). Under a turn-level context policy, the lengths of its turn samples in
            order: ``input_ids`` is their concatenation, each one prompt (``loss_mask``
            False) then the ids sampled for that turn; :func:`collate` makes each its own row.
    """

    task_id: str
    sample_index: int = 0
    env_id: str = ""
    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[bool] = field(default_factory=list)
    turn_ids: list[int] = field(default_factory=list)
    behavior_logprobs: list[float] = field(default_factory=list)
    policy_versions: list[int] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    anchor_keys: list[str] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    failed: bool = False
    failure_reason: str | None = None
    failure_kind: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)

    @property
    def reward(self) -> float:
        """Episode return: the sum of turn rewards."""
        return float(sum(self.turn_rewards))

    @property
    def num_turns(self) -> int:
        return len(self.turn_rewards)

    @property
    def num_samples(self) -> int:
        """Training rows this trajectory gives: one per turn sample (one when it is played as one
        sequence); 0 when it failed (its rows train nothing)."""
        return 0 if self.failed else (len(self.segments) or 1)

    @property
    def num_generated_tokens(self) -> int:
        return sum(self.loss_mask)

    def append(self, ids: list[int], *, generated: bool, turn: int = -1, logprobs: list[float] | None = None, version: int = -1) -> None:
        """Append tokens; ``generated`` ones carry their turn, logprobs and policy version."""
        n = len(ids)
        if generated and (logprobs is None or len(logprobs) != n):
            raise ValueError(f"generated tokens need one logprob each: got {n} ids and {None if logprobs is None else len(logprobs)} logprobs")
        self.input_ids.extend(ids)
        self.loss_mask.extend([generated] * n)
        self.turn_ids.extend([turn if generated else -1] * n)
        self.behavior_logprobs.extend(logprobs if generated else [0.0] * n)  # type: ignore[arg-type]
        self.policy_versions.extend([version if generated else -1] * n)

    def mark_failed(self, kind: str, reason: str) -> None:
        """End this episode as failed (``kind`` from ``FAILURE_KINDS``, ``reason`` a message),
        keeping what was recorded consistent: a failure after a turn started (its anchor key
        recorded, its reward not) drops that turn's anchor, so :meth:`check` holds. The first
        failure of an episode is the one recorded."""
        if not self.failed:
            self.failed, self.failure_kind, self.failure_reason = True, kind, reason
        del self.anchor_keys[self.num_turns :]

    def check(self) -> None:
        """Raise ValueError if the per-token lists disagree in length."""
        n = len(self.input_ids)
        for name in ("loss_mask", "turn_ids", "behavior_logprobs", "policy_versions"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"trajectory {self.task_id}#{self.sample_index}: {name} has {len(getattr(self, name))} entries, input_ids has {n}")
        if self.segments and sum(self.segments) != n:
            raise ValueError(f"trajectory {self.task_id}#{self.sample_index}: its {len(self.segments)} turn samples hold "
                             f"{sum(self.segments)} tokens, input_ids has {n}")
        if len(self.anchor_keys) not in (0, len(self.turn_rewards)):
            raise ValueError(f"trajectory {self.task_id}#{self.sample_index}: {len(self.anchor_keys)} anchor keys for {len(self.turn_rewards)} turns")

    def turn_samples(self) -> list[Trajectory]:
        """Each segment as a trajectory of its own (one row; the episode's outcome copied), or
        ``[self]`` without segments: for SFT, whose batch size and token cap count samples."""
        if not self.segments:
            return [self]
        out, start = [], 0
        for n in self.segments:
            end = start + n
            out.append(Trajectory(
                task_id=self.task_id, sample_index=self.sample_index, env_id=self.env_id, input_ids=self.input_ids[start:end],
                loss_mask=self.loss_mask[start:end], turn_ids=self.turn_ids[start:end], behavior_logprobs=self.behavior_logprobs[start:end],
                policy_versions=self.policy_versions[start:end], turn_rewards=list(self.turn_rewards), anchor_keys=list(self.anchor_keys),
                terminated=self.terminated, truncated=self.truncated, success=self.success, failed=self.failed,
                failure_reason=self.failure_reason, failure_kind=self.failure_kind))
            start = end
        return out

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class TrainBatch:
    """Padded tensors for the learner. B trajectories, T padded tokens, S max turns.

    Per-token ``[B, T]``: input_ids (long), attention_mask (bool, True on real tokens),
    loss_mask (bool, True on generated tokens of non-failed trajectories), turn_ids (long, -1
    off-policy), behavior_logprobs (float32), policy_versions (long, -1 off-policy).
    Per-trajectory ``[B]``: rewards (float32), group_ids (long, same value = same task),
    sample_index (long), terminated / truncated / success / failed (bool).
    Per-turn ``[B, S]``: turn_rewards (float32, 0 past the last turn), turn_mask (bool),
    anchor_ids (long, equal ids = identical anchor observation; -1 past the last turn).
    episode_ids ``[B]`` (long): the episode (index into collate's list) a row comes from.

    Under a turn-level context policy a row is one *turn sample*, not an episode: B counts
    samples, each episode has as many rows as turns, and every per-trajectory and per-turn
    tensor holds a copy of its episode's values on each of its rows. ``episode_ids`` then
    repeats; with one sequence per episode it is ``arange(B)``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    turn_ids: torch.Tensor
    behavior_logprobs: torch.Tensor
    policy_versions: torch.Tensor
    rewards: torch.Tensor
    group_ids: torch.Tensor
    sample_index: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    success: torch.Tensor
    failed: torch.Tensor
    turn_rewards: torch.Tensor
    turn_mask: torch.Tensor
    anchor_ids: torch.Tensor
    episode_ids: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def turn_samples(self) -> bool:
        """True when rows are turn samples (some episode has more than one row)."""
        return bool(self.episode_ids.numel()) and int(self.episode_ids.max()) + 1 < self.batch_size

    def select(self, index: torch.Tensor | slice | list[int]) -> TrainBatch:
        """Rows ``index`` of every tensor (a micro-batch)."""
        return TrainBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: torch.device | str) -> TrainBatch:
        return TrainBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def collate(trajectories: list[Trajectory], *, pad_token_id: int) -> TrainBatch:
    """Right-pad trajectories into a :class:`TrainBatch`: one row per trajectory, or, for a
    trajectory with ``segments`` (a turn-level context policy), one row per turn sample, each
    with a copy of its episode's per-trajectory and per-turn values and its ``episode_ids``.

    Failed trajectories keep their rows (for shapes and metrics) with ``loss_mask`` all False.
    Group ids number the distinct task ids in order of first appearance. Anchor ids number
    the distinct (task id, anchor key) pairs, so only turns of the same task can share a step
    group.
    """
    if not trajectories:
        raise ValueError("collate() got no trajectories")
    for t in trajectories:
        t.check()
    spans: list[tuple[int, int, int]] = []  # (episode, start, end) of every row
    for e, t in enumerate(trajectories):
        start = 0
        for n in t.segments or [len(t.input_ids)]:
            spans.append((e, start, start + n))
            start += n
    B = len(spans)
    T = max(end - start for _, start, end in spans)
    S = max(max(t.num_turns for t in trajectories), 1)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.bool)
    loss_mask = torch.zeros((B, T), dtype=torch.bool)
    turn_ids = torch.full((B, T), -1, dtype=torch.long)
    behavior_logprobs = torch.zeros((B, T), dtype=torch.float32)
    policy_versions = torch.full((B, T), -1, dtype=torch.long)
    turn_rewards = torch.zeros((len(trajectories), S), dtype=torch.float32)
    turn_mask = torch.zeros((len(trajectories), S), dtype=torch.bool)
    anchor_ids = torch.full((len(trajectories), S), -1, dtype=torch.long)
    groups: dict[str, int] = {}
    anchors: dict[tuple[str, str], int] = {}
    for i, (e, start, end) in enumerate(spans):
        t, n = trajectories[e], end - start
        input_ids[i, :n] = torch.tensor(t.input_ids[start:end], dtype=torch.long)
        attention_mask[i, :n] = True
        if not t.failed:
            loss_mask[i, :n] = torch.tensor(t.loss_mask[start:end], dtype=torch.bool)
        turn_ids[i, :n] = torch.tensor(t.turn_ids[start:end], dtype=torch.long)
        behavior_logprobs[i, :n] = torch.tensor(t.behavior_logprobs[start:end], dtype=torch.float32)
        policy_versions[i, :n] = torch.tensor(t.policy_versions[start:end], dtype=torch.long)
    for e, t in enumerate(trajectories):
        s = t.num_turns
        if s:
            turn_rewards[e, :s] = torch.tensor(t.turn_rewards, dtype=torch.float32)
            turn_mask[e, :s] = True
        for j, key in enumerate(t.anchor_keys):
            anchor_ids[e, j] = anchors.setdefault((t.task_id, key), len(anchors))
        groups.setdefault(t.task_id, len(groups))
    episode = torch.tensor([e for e, _, _ in spans], dtype=torch.long)

    def per_episode(values: list[Any], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype)[episode]

    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        turn_ids=turn_ids,
        behavior_logprobs=behavior_logprobs,
        policy_versions=policy_versions,
        rewards=per_episode([t.reward for t in trajectories], torch.float32),
        group_ids=per_episode([groups[t.task_id] for t in trajectories], torch.long),
        sample_index=per_episode([t.sample_index for t in trajectories], torch.long),
        terminated=per_episode([t.terminated for t in trajectories], torch.bool),
        truncated=per_episode([t.truncated for t in trajectories], torch.bool),
        success=per_episode([t.success for t in trajectories], torch.bool),
        failed=per_episode([t.failed for t in trajectories], torch.bool),
        turn_rewards=turn_rewards[episode],
        turn_mask=turn_mask[episode],
        anchor_ids=anchor_ids[episode],
        episode_ids=episode,
    )
