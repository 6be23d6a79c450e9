"""The multi-turn agent loop: chat template -> generate -> env.step -> append -> repeat.

Token-in/token-out: the ids the engine sampled are appended as they are (``loss_mask`` True,
with their turn id, behavior logprob and policy version); only the env's new messages are
tokenized (:meth:`ChatFormat.delta_ids`, ``loss_mask`` False). The context of every turn is
exactly the prefix of the final ``input_ids``, so what the learner trains on is what was
sampled.

Many episodes run at once: each episode is a coroutine; generation requests from all of them
are batched by the engine, and env steps (sandbox calls) run concurrently. A failure outside
the policy (engine error, env exception, a ``sandbox_error`` tool status) ends that episode as
``failed`` with its reason; the other episodes go on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agentrl.models.chat import ChatFormat
from agentrl.types import Trajectory

from .engines import Engine, SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeSpec:
    """Which task to play: ``options`` for ``env.reset`` (task_index, split), the group member
    ``sample_index`` and a ``seed`` for the env and the sampler."""

    options: dict[str, Any]
    sample_index: int = 0
    seed: int = 0


def anchor_key(messages: Sequence[dict[str, Any]]) -> str:
    """Hash of an observation (the env messages a turn was taken from): GiGPO's anchor state."""
    blob = json.dumps([[m.get("role"), m.get("content")] for m in messages], ensure_ascii=False)
    return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()


def _request_seed(seed: int, sample_index: int, turn: int) -> int:
    h = hashlib.blake2b(f"{seed}/{sample_index}/{turn}".encode(), digest_size=7).digest()
    return int.from_bytes(h, "little")


class AgentLoop:
    """Runs episodes of one env id with one engine and chat format.

    Args:
        envs: env instances (``gymnasium.make`` results); one episode at a time per instance,
            so ``len(envs)`` is the number of concurrent episodes.
        engine: generation engine.
        chat: the tokenizer's chat format.
        params: sampling parameters (``max_new_tokens`` is per turn).
        max_total_tokens: token budget of an episode (prompt included); reaching it truncates.
        tools_in_prompt: render the env's tool schemas into the prompt (the chat template's
            ``tools=``). False suits tiny models trained from scratch, which learn the tool
            format from SFT data and would spend most of their context on the schemas.
    """

    def __init__(self, envs: Sequence[Any], engine: Engine, chat: ChatFormat, params: SamplingParams, *, max_total_tokens: int = 4096, tools_in_prompt: bool = True) -> None:
        if not envs:
            raise ValueError("AgentLoop needs at least one env instance")
        self.envs = list(envs)
        self.engine = engine
        self.chat = chat
        self.params = replace(params, stop_token_ids=tuple(sorted(set(params.stop_token_ids) | set(chat.stop_token_ids))))
        self.max_total_tokens = max_total_tokens
        self.tools_in_prompt = tools_in_prompt
        self.env_id = getattr(getattr(self.envs[0], "spec", None), "id", "") or type(self.envs[0].unwrapped).__name__
        self._free: asyncio.Queue | None = None  # env instances not playing, on the loop in self._free_loop
        self._free_loop: asyncio.AbstractEventLoop | None = None

    async def run_episode(self, env: Any, spec: EpisodeSpec) -> Trajectory:
        core = env.unwrapped
        traj = Trajectory(task_id="", sample_index=spec.sample_index, env_id=self.env_id)
        t0 = time.perf_counter()
        gen_time = env_time = 0.0
        errors: dict[str, int] = {}
        try:
            obs, info = await core.areset(seed=spec.seed, options=spec.options)
            traj.task_id = info["task_id"]
            tools = info.get("tools") if self.tools_in_prompt else None
            messages: list[dict[str, Any]] = list(obs)
            traj.append(self.chat.prompt_ids(messages, tools), generated=False)
            last_obs: Sequence[dict[str, Any]] = obs[-1:]
            turn = 0
            while True:
                budget = self.max_total_tokens - len(traj.input_ids)
                if budget <= 0:
                    traj.truncated = True
                    traj.metrics["truncated_token_budget"] = 1.0
                    break
                params = replace(self.params, max_new_tokens=min(self.params.max_new_tokens, budget), seed=_request_seed(spec.seed, spec.sample_index, turn))
                g0 = time.perf_counter()
                gen = await self.engine.agenerate(traj.input_ids, params)
                gen_time += time.perf_counter() - g0
                traj.append(gen.ids, generated=True, turn=turn, logprobs=gen.logprobs, version=gen.version)
                body = gen.ids[:-1] if gen.finish_reason == "stop" else gen.ids
                if gen.finish_reason != "stop":  # cut off mid-turn: close the turn (not trained on)
                    traj.append([self.chat.eos_token_id], generated=False)
                    traj.metrics["turns_cut_at_max_tokens"] = traj.metrics.get("turns_cut_at_max_tokens", 0.0) + 1
                text = self.chat.tokenizer.decode(body, skip_special_tokens=False)
                traj.anchor_keys.append(anchor_key(last_obs))
                e0 = time.perf_counter()
                obs, reward, terminated, truncated, info = await core.astep(text)
                env_time += time.perf_counter() - e0
                traj.turn_rewards.append(float(reward))
                for call in info.get("tool_calls", []):
                    status = call.get("status") or "ok"
                    if status != "ok":
                        errors[status] = errors.get(status, 0) + 1
                messages.append({"role": "assistant", "content": text})
                messages.extend(obs)
                if errors.get("sandbox_error"):
                    traj.failed, traj.failure_reason = True, "sandbox_error: the sandbox failed (not the policy's fault)"
                if terminated or truncated:
                    traj.terminated, traj.truncated = bool(terminated), bool(truncated)
                    traj.success = bool(info.get("success", False))
                    break
                delta = self.chat.delta_ids(list(obs))
                if len(traj.input_ids) + len(delta) >= self.max_total_tokens:
                    traj.truncated = True
                    traj.metrics["truncated_token_budget"] = 1.0
                    break
                traj.append(delta, generated=False)
                last_obs = obs
                turn += 1
        except Exception as e:  # engine error, env exception: data, not a crash of the batch
            log.warning("episode %s#%d failed: %s: %s", traj.task_id or spec.options, spec.sample_index, type(e).__name__, e)
            traj.failed = True
            traj.failure_reason = f"{type(e).__name__}: {e}"
        traj.messages = messages if "messages" in locals() else []
        traj.metrics.update(
            {
                "wall_time_s": time.perf_counter() - t0,
                "generate_time_s": gen_time,
                "env_time_s": env_time,
                "tool_errors": float(sum(errors.values())),
                "generated_tokens": float(traj.num_generated_tokens),
                "total_tokens": float(len(traj.input_ids)),
            }
        )
        for k, v in errors.items():
            traj.metrics[f"tool_status/{k}"] = float(v)
        return traj

    async def play(self, spec: EpisodeSpec) -> Trajectory:
        """One episode on the next free env instance; when all ``len(envs)`` are busy, callers
        wait in the order they called. The streaming form of :meth:`collect` (asynchronous
        training submits episodes one by one and takes them as they finish)."""
        loop = asyncio.get_running_loop()
        if self._free is None or self._free_loop is not loop:
            self._free, self._free_loop = asyncio.Queue(), loop
            for env in self.envs:
                self._free.put_nowait(env)
        free = self._free
        env = await free.get()
        try:
            return await self.run_episode(env, spec)
        finally:
            free.put_nowait(env)

    async def collect(self, specs: Sequence[EpisodeSpec], *, on_done: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        """Play every spec, ``len(envs)`` at a time; returns trajectories in spec order."""
        results: list[Trajectory | None] = [None] * len(specs)

        async def one(i: int, spec: EpisodeSpec) -> None:
            results[i] = await self.play(spec)
            if on_done is not None:
                on_done(results[i])  # type: ignore[arg-type]

        await asyncio.gather(*(one(i, s) for i, s in enumerate(specs)))
        return [r for r in results if r is not None]

    def close(self) -> None:
        for env in self.envs:
            env.close()
