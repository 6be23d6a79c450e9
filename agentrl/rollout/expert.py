"""Expert trajectories: an env's scripted expert played and tokenized exactly as the agent loop
tokenizes sampled episodes (prompt, then per turn the action + end-of-turn, then the env's
delta), for SFT warm starts and sanity baselines."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from agentrl.models.chat import ChatFormat
from agentrl.sandboxes import SandboxError
from agentrl.types import Trajectory

from .context import ContextPolicy, turn_prompt
from .faults import EpisodeFailure, check_reset, check_step, within

log = logging.getLogger(__name__)


def transcript_to_trajectory(chat: ChatFormat, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *, task_id: str, env_id: str = "") -> Trajectory:
    """Token-in/token-out tokenization of a finished transcript ``[system, user, (assistant,
    env messages...)*]``; assistant tokens get ``loss_mask`` True (logprobs 0, version -1)."""
    if len(messages) < 3 or messages[2]["role"] != "assistant":
        raise ValueError("a transcript must start with system and user messages followed by an assistant turn")
    traj = Trajectory(task_id=task_id, env_id=env_id, messages=list(messages))
    traj.append(chat.prompt_ids(messages[:2], tools), generated=False)
    turn = 0
    i = 2
    while i < len(messages):
        ids = chat.encode(messages[i]["content"]) + [chat.eos_token_id]
        traj.append(ids, generated=True, turn=turn, logprobs=[0.0] * len(ids), version=-1)
        j = i + 1
        while j < len(messages) and messages[j]["role"] != "assistant":
            j += 1
        if j < len(messages):  # the env reply is context for the next turn
            traj.append(chat.delta_ids(messages[i + 1 : j]), generated=False)
            turn += 1
        i = j
    return traj


async def _expert_episode(env: Any, chat: ChatFormat, env_id: str, options: dict[str, Any], seed: int, tools_in_prompt: bool,
                          step_timeout_s: float | None, reset_timeout_s: float | None, context: ContextPolicy | None = None,
                          max_total_tokens: int = 4096) -> Trajectory:
    core = env.unwrapped
    if context is not None and not context.full:
        return await _expert_episode_turns(core, chat, env_id, options, seed, tools_in_prompt, step_timeout_s, reset_timeout_s, context, max_total_tokens)

    def timeout(what: str, own: float | None) -> float | None:
        return own if own is not None else getattr(core, f"{what}_timeout_s", 300.0)

    obs, info = check_reset(await within(core.areset(seed=seed, options=options), timeout("reset", reset_timeout_s), "env_timeout", "env.reset"))
    policy = core.expert()
    rewards: list[float] = []
    terminated = truncated = False
    step_info: dict[str, Any] = {}
    while not (terminated or truncated):
        obs, reward, terminated, truncated, step_info = check_step(await within(core.astep(policy(obs)), timeout("step", step_timeout_s), "env_timeout", "env.step"))
        rewards.append(reward)
        if any(c.get("status") == "sandbox_error" for c in step_info.get("tool_calls", [])):
            raise EpisodeFailure("sandbox_error", "a tool call reported sandbox_error: the sandbox failed")
    tools = info["tools"] if tools_in_prompt else None
    traj = transcript_to_trajectory(chat, list(core.transcript), tools, task_id=info["task_id"], env_id=env_id)
    traj.turn_rewards = rewards
    traj.success = bool(step_info.get("success", False))
    traj.terminated, traj.truncated = bool(terminated), bool(truncated)
    return traj


async def _expert_episode_turns(core: Any, chat: ChatFormat, env_id: str, options: dict[str, Any], seed: int, tools_in_prompt: bool,
                                step_timeout_s: float | None, reset_timeout_s: float | None, context: ContextPolicy,
                                max_total_tokens: int) -> Trajectory:
    """An expert episode under a turn-level context policy: each turn one segment, its prompt
    built by the policy from the env's state at that turn (as the agent loop builds it), then
    the expert's action tokens (trained) and the end-of-turn token."""

    def timeout(what: str, own: float | None) -> float | None:
        return own if own is not None else getattr(core, f"{what}_timeout_s", 300.0)

    obs, info = check_reset(await within(core.areset(seed=seed, options=options), timeout("reset", reset_timeout_s), "env_timeout", "env.reset"))
    tools = info["tools"] if tools_in_prompt else None
    traj = Trajectory(task_id=info["task_id"], env_id=env_id)
    policy = core.expert()
    head, turns = list(obs), []
    terminated = truncated = False
    step_info: dict[str, Any] = {}
    turn = 0
    while not (terminated or truncated):
        prompt, _, _ = turn_prompt(chat, context, head, turns, core, tools, max_total_tokens)
        action = policy(obs)
        ids = chat.encode(action) + [chat.eos_token_id]
        if len(prompt) + len(ids) > max_total_tokens:  # as an RL episode would be cut here
            traj.truncated = True
            break
        traj.append(prompt, generated=False)
        traj.append(ids, generated=True, turn=turn, logprobs=[0.0] * len(ids), version=-1)
        traj.segments.append(len(prompt) + len(ids))
        obs, reward, terminated, truncated, step_info = check_step(await within(core.astep(action), timeout("step", step_timeout_s), "env_timeout", "env.step"))
        traj.turn_rewards.append(reward)
        if any(c.get("status") == "sandbox_error" for c in step_info.get("tool_calls", [])):
            raise EpisodeFailure("sandbox_error", "a tool call reported sandbox_error: the sandbox failed")
        turns.append([{"role": "assistant", "content": action}, *obs])
        turn += 1
    traj.messages = list(core.transcript)
    traj.success = bool(step_info.get("success", False))
    traj.terminated, traj.truncated = bool(terminated), bool(truncated) or traj.truncated
    return traj


@dataclass
class ExpertData:
    """The outcome of :func:`expert_trajectories`: the demonstrations that completed, in
    episode order, and the ones that failed (``failures``: one dict per failed episode with
    ``episode``, ``task_index``, ``kind`` and ``reason``)."""

    trajectories: list[Trajectory]
    failures: list[dict[str, Any]] = field(default_factory=list)
    episodes: int = 0

    @property
    def failed_frac(self) -> float:
        return len(self.failures) / self.episodes if self.episodes else 0.0

    def failure_counts(self) -> dict[str, int]:
        """Failed episodes by kind (``FAILURE_KINDS``)."""
        out: dict[str, int] = {}
        for f in self.failures:
            out[f["kind"]] = out.get(f["kind"], 0) + 1
        return out


def expert_trajectories(
    env_id: str, chat: ChatFormat, *, episodes: int, env_kwargs: dict[str, Any] | None = None, split: str = "train",
    seed: int = 0, concurrency: int = 16, tools_in_prompt: bool = True, step_timeout_s: float | None = None,
    reset_timeout_s: float | None = None, max_failed_frac: float | None = None,
) -> list[Trajectory]:
    """Play ``episodes`` expert episodes on ``split`` (cycling through its tasks from ``seed``),
    ``concurrency`` at a time (each on its own env instance); returns the completed ones in
    episode order. ``tools_in_prompt`` must match the rollout's (see :class:`AgentLoop`).

    An episode whose env raises, times out (``step_timeout_s`` / ``reset_timeout_s``, default
    the env class's) or returns a malformed result is skipped, counted and logged (one warning
    line per kind); :func:`play_experts` returns the counts too. Raises
    :class:`ExpertFailures` when more than ``max_failed_frac`` of the episodes failed (None: any
    fraction is accepted, but all failing is always an error)."""
    return play_experts(
        env_id, chat, episodes=episodes, env_kwargs=env_kwargs, split=split, seed=seed, concurrency=concurrency,
        tools_in_prompt=tools_in_prompt, step_timeout_s=step_timeout_s, reset_timeout_s=reset_timeout_s, max_failed_frac=max_failed_frac,
    ).trajectories


class ExpertFailures(RuntimeError):
    """Too many expert episodes failed to make a warm start (``stage``: "SFT warm start") or a
    tokenizer corpus ("tokenizer corpus") from them."""

    def __init__(self, message: str, stage: str = "SFT warm start") -> None:
        super().__init__(message)
        self.stage = stage


def play_experts(
    env_id: str, chat: ChatFormat, *, episodes: int, env_kwargs: dict[str, Any] | None = None, split: str = "train",
    seed: int = 0, concurrency: int = 16, tools_in_prompt: bool = True, step_timeout_s: float | None = None,
    reset_timeout_s: float | None = None, max_failed_frac: float | None = None, context: ContextPolicy | None = None,
    max_total_tokens: int = 4096,
) -> ExpertData:
    """:func:`expert_trajectories` with the failures: returns :class:`ExpertData`. With a
    turn-level ``context`` policy each demonstration is tokenized as turn samples, whose
    prompts the policy builds as in RL, capped at ``max_total_tokens`` per turn."""
    import asyncio

    import agentrl.envs as envs
    from agentrl.sandboxes import run_sync

    pool = [envs.make(env_id, **(env_kwargs or {})) for _ in range(max(1, min(concurrency, episodes)))]
    n = pool[0].unwrapped.num_tasks(split)
    failures: list[dict[str, Any]] = []

    async def play_all() -> list[Trajectory | None]:
        free: asyncio.Queue = asyncio.Queue()
        for env in pool:
            free.put_nowait(env)

        async def one(k: int) -> Trajectory | None:
            env = await free.get()
            options = {"task_index": (seed + k) % n, "split": split}
            try:
                return await _expert_episode(env, chat, env_id, options, seed + k, tools_in_prompt, step_timeout_s, reset_timeout_s,
                                             context, max_total_tokens)
            except Exception as e:  # a failing demonstration is skipped, not a crash of SFT
                kind = e.kind if isinstance(e, EpisodeFailure) else "sandbox_error" if isinstance(e, SandboxError) else "env_error"
                failures.append({"episode": k, "task_index": options["task_index"], "kind": kind, "reason": f"{type(e).__name__}: {e}"})
                return None
            finally:
                free.put_nowait(env)

        return list(await asyncio.gather(*(one(k) for k in range(episodes))))

    try:
        played = run_sync(play_all())
    finally:
        for env in pool:
            env.close()
    data = ExpertData([t for t in played if t is not None], sorted(failures, key=lambda f: f["episode"]), episodes)
    if failures:
        for kind, count in sorted(data.failure_counts().items()):
            first = next(f for f in data.failures if f["kind"] == kind)
            log.warning("expert episodes of %s: %d of %d failed (%s), skipped; first: episode %d (task %d): %s",
                        env_id, count, episodes, kind, first["episode"], first["task_index"], first["reason"][:200])
    limit = 1.0 if max_failed_frac is None else max_failed_frac
    if episodes and (not data.trajectories or data.failed_frac > limit):
        first = data.failures[0]
        raise ExpertFailures(
            f"{len(failures)} of {episodes} expert episodes of {env_id} failed ({data.failed_frac:.0%}, more than the "
            f"{limit:.0%} allowed by sft.max_failed_frac): {data.failure_counts()}; first: {first['reason'][:300]}. "
            "Fix the env (run `agentrl envs check` on it) or raise sft.max_failed_frac."
        )
    return data
