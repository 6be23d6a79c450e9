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


def expert_trajectories(
    env_id: str, chat: ChatFormat, *, episodes: int, env_kwargs: dict[str, Any] | None = None, split: str = "train", seed: int = 0
) -> list[Trajectory]:
    """Play ``episodes`` expert episodes on ``split`` (cycling through its tasks from ``seed``)."""
    import agentrl.envs as envs

    env = envs.make(env_id, **(env_kwargs or {}))
    core = env.unwrapped
    n = core.num_tasks(split)
    out = []
    try:
        for k in range(episodes):
            index = (seed + k) % n
            result = envs.run_episode(env, core.expert, seed=seed + k, options={"task_index": index, "split": split})
            traj = transcript_to_trajectory(chat, list(core.transcript), core.tool_schemas, task_id=result["task_id"], env_id=env_id)
            traj.success = result["success"]
            # per-turn rewards are not kept by run_episode: put the return on the last turn
            turns = sum(1 for m in traj.messages if m["role"] == "assistant")
            traj.turn_rewards = [0.0] * (turns - 1) + [float(result["return"])]
            traj.terminated, traj.truncated = result["terminated"], result["truncated"]
            out.append(traj)
    finally:
        env.close()
    return out
