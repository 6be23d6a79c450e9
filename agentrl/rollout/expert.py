"""Expert trajectories: an env's scripted expert played and tokenized exactly as the agent loop
tokenizes sampled episodes (prompt, then per turn the action + end-of-turn, then the env's
delta), for SFT warm starts and sanity baselines."""

from __future__ import annotations

from typing import Any

from agentrl.models.chat import ChatFormat
from agentrl.types import Trajectory


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


async def _expert_episode(env: Any, chat: ChatFormat, env_id: str, options: dict[str, Any], seed: int, tools_in_prompt: bool) -> Trajectory:
    core = env.unwrapped
    obs, info = await core.areset(seed=seed, options=options)
    policy = core.expert()
    rewards: list[float] = []
    terminated = truncated = False
    step_info: dict[str, Any] = {}
    while not (terminated or truncated):
        obs, reward, terminated, truncated, step_info = await core.astep(policy(obs))
        rewards.append(float(reward))
    tools = info["tools"] if tools_in_prompt else None
    traj = transcript_to_trajectory(chat, list(core.transcript), tools, task_id=info["task_id"], env_id=env_id)
    traj.turn_rewards = rewards
    traj.success = bool(step_info.get("success", False))
    traj.terminated, traj.truncated = bool(terminated), bool(truncated)
    return traj


def expert_trajectories(
    env_id: str, chat: ChatFormat, *, episodes: int, env_kwargs: dict[str, Any] | None = None, split: str = "train",
    seed: int = 0, concurrency: int = 16, tools_in_prompt: bool = True,
) -> list[Trajectory]:
    """Play ``episodes`` expert episodes on ``split`` (cycling through its tasks from ``seed``),
    ``concurrency`` at a time (each on its own env instance); returns them in episode order.
    ``tools_in_prompt`` must match the rollout's (see :class:`AgentLoop`)."""
    import asyncio

    import agentrl.envs as envs
    from agentrl.sandboxes import run_sync

    pool = [envs.make(env_id, **(env_kwargs or {})) for _ in range(max(1, min(concurrency, episodes)))]
    n = pool[0].unwrapped.num_tasks(split)

    async def play_all() -> list[Trajectory]:
        free: asyncio.Queue = asyncio.Queue()
        for env in pool:
            free.put_nowait(env)

        async def one(k: int) -> Trajectory:
            env = await free.get()
            try:
                return await _expert_episode(env, chat, env_id, {"task_index": (seed + k) % n, "split": split}, seed + k, tools_in_prompt)
            finally:
                free.put_nowait(env)

        return list(await asyncio.gather(*(one(k) for k in range(episodes))))

    try:
        return run_sync(play_all())
    finally:
        for env in pool:
            env.close()
