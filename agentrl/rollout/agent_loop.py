"""The multi-turn agent loop: chat template -> generate -> env.step -> append -> repeat.

Token-in/token-out: the ids the engine sampled are appended as they are (``loss_mask`` True,
with their turn id, behavior logprob and policy version); only the env's new messages are
tokenized (:meth:`ChatFormat.delta_ids`, ``loss_mask`` False). The context of every turn is
exactly the prefix of the final ``input_ids``, so what the learner trains on is what was
sampled.

Many episodes run at once: each episode is a coroutine; generation requests from all of them
are batched by the engine, and env steps (sandbox calls) run concurrently.

Failure containment: anything that goes wrong outside the policy ends *that* episode as
``failed`` and the others go on, never an exception out of :meth:`AgentLoop.run_episode`:
an engine that raises, hangs (``generate_timeout_s``) or returns malformed tokens; an env
that raises, hangs (``step_timeout_s`` / ``reset_timeout_s``) or returns a malformed result; a
sandbox that fails under a tool (status ``sandbox_error``, or a ``SandboxError`` raised by the
env). The trajectory keeps what was recorded, in a consistent state (:meth:`Trajectory.mark_failed`),
with ``failure_kind`` and ``failure_reason`` (:mod:`agentrl.rollout.faults`). An env instance
whose step timed out is replaced by a fresh one. Faults can be injected at every stage
(``rollout.faults``) to check this on a new env or setup.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agentrl.models.chat import ChatFormat
from agentrl.sandboxes import SandboxError
from agentrl.types import Trajectory

from .context import ContextPolicy, turn_prompt
from .engines import Engine, Generation, SamplingParams
from .faults import EpisodeFailure, FaultInjector, check_generation, check_reset, check_step, within

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


_STAGE_KINDS = {"reset": "env_reset", "generate": "engine", "after_generate": "rollout", "step": "env_step"}
"""The failure kind of an exception raised at each stage of an episode."""


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
        step_timeout_s, reset_timeout_s: longest ``env.step`` / ``env.reset`` (seconds); past
            it the episode fails (``env_timeout``). None: the env class's ``step_timeout_s`` /
            ``reset_timeout_s`` (300 s for ToolEnv envs).
        generate_timeout_s: longest wait for one generation request (0: no limit).
        close_timeout_s: longest ``env.close()`` at :meth:`close`; a close past it is abandoned.
        vocab_size: token ids the model has; generated ids outside ``[0, vocab_size)`` fail the
            episode (``engine_invalid_output``) instead of the learner. Default: the engine's
            ``vocab_size`` attribute when it has one, else unchecked above.
        env_factory: builds a fresh env instance; an instance whose step or reset timed out
            (it may still be busy) is replaced by one from it and closed in the background.
            None: the instance is kept and reset as usual.
        faults: injected faults (``rollout.faults``, :class:`~agentrl.rollout.faults.FaultInjector`).
        context: the context policy (``rollout.context``, :mod:`agentrl.rollout.context`).
            None or ``full``: one growing sequence per episode. Otherwise each turn's prompt
            is built by the policy and each turn is one sample of the trajectory
            (``Trajectory.segments``); ``max_total_tokens`` then caps each turn's prompt plus
            its generation, and the episode ends by the env's own turn limit.
    """

    def __init__(
        self, envs: Sequence[Any], engine: Engine, chat: ChatFormat, params: SamplingParams, *, max_total_tokens: int = 4096,
        tools_in_prompt: bool = True, step_timeout_s: float | None = None, reset_timeout_s: float | None = None,
        generate_timeout_s: float = 0.0, close_timeout_s: float = 60.0, vocab_size: int | None = None,
        env_factory: Callable[[], Any] | None = None, faults: FaultInjector | None = None, context: ContextPolicy | None = None,
    ) -> None:
        if not envs:
            raise ValueError("AgentLoop needs at least one env instance")
        self.envs = list(envs)
        self.engine = engine
        self.chat = chat
        self.params = replace(params, stop_token_ids=tuple(sorted(set(params.stop_token_ids) | set(chat.stop_token_ids))))
        self.max_total_tokens = max_total_tokens
        self.tools_in_prompt = tools_in_prompt
        self.step_timeout_s, self.reset_timeout_s = step_timeout_s, reset_timeout_s
        self.generate_timeout_s, self.close_timeout_s = generate_timeout_s, close_timeout_s
        self.vocab_size = vocab_size if vocab_size is not None else getattr(engine, "vocab_size", None)
        self.env_factory = env_factory
        self.faults = faults or FaultInjector(())
        self.context = context if context is not None and not context.full else None
        if self.context is not None:
            for env in self.envs:
                self.context.check_env(env.unwrapped)
        self.env_id = getattr(getattr(self.envs[0], "spec", None), "id", "") or type(self.envs[0].unwrapped).__name__
        self.close_failures: dict[str, int] = {}  # env instances whose close raised ("error") or hung ("timeout")
        self.replaced_envs = 0  # instances replaced after a timeout
        self._closed = False
        self._free: asyncio.Queue | None = None  # env instances not playing, on the loop in self._free_loop
        self._free_loop: asyncio.AbstractEventLoop | None = None

    def _timeout(self, core: Any, what: str) -> float | None:
        own = self.step_timeout_s if what == "step" else self.reset_timeout_s
        return own if own is not None else getattr(core, f"{what}_timeout_s", 300.0)

    async def _reset(self, core: Any, spec: EpisodeSpec) -> tuple[Any, dict[str, Any]]:
        fault = self.faults.at("reset", spec.seed, spec.sample_index)

        async def reset() -> Any:
            if fault is not None:
                await self.faults.strike(fault, "reset")
            result = await core.areset(seed=spec.seed, options=spec.options)
            return self.faults.garbage_reset(result) if fault is not None and fault.kind == "garbage" else result

        return check_reset(await within(reset(), self._timeout(core, "reset"), "env_timeout", "env.reset"))

    async def _generate(self, ids: list[int], params: SamplingParams, spec: EpisodeSpec, turn: int) -> Generation:
        fault = self.faults.at("before_generate", spec.seed, spec.sample_index, turn)

        async def generate() -> Generation:
            if fault is not None:
                await self.faults.strike(fault, "before_generate")
            return await self.engine.agenerate(ids, params)

        return await within(generate(), self.generate_timeout_s, "engine_timeout", "a generation request")

    async def _after_generate(self, core: Any, gen: Generation, spec: EpisodeSpec, turn: int) -> Generation:
        fault = self.faults.at("after_generate", spec.seed, spec.sample_index, turn)
        if fault is not None:
            if fault.kind == "garbage":
                gen = self.faults.garbage_generation(gen)
            elif fault.kind == "kill_sandbox":
                await self.faults.kill_sandbox(core)
            else:
                await self.faults.strike(fault, "after_generate")
        check_generation(gen, vocab_size=self.vocab_size)
        return gen

    async def _step(self, core: Any, text: str, spec: EpisodeSpec, turn: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        fault = self.faults.at("step", spec.seed, spec.sample_index, turn)

        async def step() -> Any:
            if fault is not None and fault.kind != "garbage":
                await self.faults.strike(fault, "step")
            result = await core.astep(text)
            return self.faults.garbage_step(result) if fault is not None and fault.kind == "garbage" else result

        return check_step(await within(step(), self._timeout(core, "step"), "env_timeout", "env.step"))

    async def run_episode(self, env: Any, spec: EpisodeSpec) -> Trajectory:
        """Play one episode on ``env``. Never raises for a failure of the engine, the env or
        the sandbox: the trajectory comes back ``failed`` (``failure_kind``, ``failure_reason``;
        see :mod:`agentrl.rollout.faults`) with what was recorded up to the failure.

        Every request of the episode carries one fresh ``params.cache_key`` (the engine may
        keep the episode's KV cache between turns); ``engine.release(key)`` is called when the
        episode ends, however it ends. ``traj.metrics`` sums the engine's per-request cache
        accounting: ``prefill_tokens``, ``cached_tokens``, ``cache_misses`` (any reason) and
        ``cache_evictions`` (misses because the cache was evicted)."""
        key = uuid.uuid4().hex
        try:
            return await self._run_episode(env, spec, key)
        finally:
            try:
                self.engine.release(key)
            except Exception as e:  # e.g. a dead remote worker: its caches went with it
                log.warning("releasing the engine cache of an episode failed: %s: %s", type(e).__name__, e)

    async def _run_episode(self, env: Any, spec: EpisodeSpec, key: str) -> Trajectory:
        """One episode. With one sequence (no context policy) every turn's prompt is the
        trajectory so far and only the env's reply is tokenized anew. Under a turn-level
        context policy each turn's prompt is the policy's messages for the episode so far,
        rendered anew (:func:`~agentrl.rollout.context.turn_prompt`), and the trajectory
        holds one segment per turn: that prompt (not trained), then the ids sampled for it
        (trained, as they came from the engine); the engine cache key is then per turn, since
        the prompts are not prefixes of each other."""
        core = env.unwrapped
        turns_mode = self.context is not None
        traj = Trajectory(task_id="", sample_index=spec.sample_index, env_id=self.env_id)
        cache = {"prefill_tokens": 0.0, "cached_tokens": 0.0, "cache_misses": 0.0, "cache_evictions": 0.0}
        t0 = time.perf_counter()
        gen_time = env_time = 0.0
        errors: dict[str, int] = {}
        messages: list[dict[str, Any]] = []
        context_tokens: list[int] = []  # turn mode: each prompt's length
        dropped = left_out = 0  # turn mode: turns left out to fit the cap; turns not shown, over all prompts
        stage = "reset"
        try:
            obs, info = await self._reset(core, spec)
            traj.task_id = str(info["task_id"])
            tools = info.get("tools") if self.tools_in_prompt else None
            messages = list(obs)
            head, turns = list(obs), []  # turn mode: the reset observation and the finished turns
            if not turns_mode:
                traj.append(self.chat.prompt_ids(messages, tools), generated=False)
            last_obs: Sequence[dict[str, Any]] = obs[-1:]
            turn = 0
            while True:
                if turns_mode:
                    prompt, keep, fit = turn_prompt(self.chat, self.context, head, turns, core, tools, self.max_total_tokens)
                    dropped, left_out = dropped + fit, left_out + len(turns) - keep
                    request_key = f"{key}/{turn}"
                else:
                    prompt, request_key = traj.input_ids, key
                budget = self.max_total_tokens - len(prompt)
                if budget <= 0:  # the episode (turn mode: the head and memory alone) fills the context
                    traj.truncated = True
                    traj.metrics["truncated_token_budget"] = 1.0
                    break
                if turns_mode:
                    context_tokens.append(len(prompt))
                params = replace(self.params, max_new_tokens=min(self.params.max_new_tokens, budget), seed=_request_seed(spec.seed, spec.sample_index, turn), cache_key=request_key)
                stage = "generate"
                g0 = time.perf_counter()
                try:
                    gen = await self._generate(prompt, params, spec, turn)
                finally:
                    if turns_mode:
                        self.engine.release(request_key)
                gen_time += time.perf_counter() - g0
                cache["prefill_tokens"] += float(getattr(gen, "prefill_tokens", 0) or 0)
                cache["cached_tokens"] += float(getattr(gen, "cached_tokens", 0) or 0)
                miss = getattr(gen, "cache_miss", "")
                cache["cache_misses"] += float(bool(miss))
                cache["cache_evictions"] += float(miss == "evicted")
                stage = "after_generate"
                gen = await self._after_generate(core, gen, spec, turn)
                if turns_mode:
                    traj.append(prompt, generated=False)
                traj.append(gen.ids, generated=True, turn=turn, logprobs=gen.logprobs, version=gen.version)
                body = gen.ids[:-1] if gen.finish_reason == "stop" else gen.ids
                if gen.finish_reason != "stop":  # cut off mid-turn: close the turn (not trained on)
                    traj.append([self.chat.eos_token_id], generated=False)
                    traj.metrics["turns_cut_at_max_tokens"] = traj.metrics.get("turns_cut_at_max_tokens", 0.0) + 1
                if turns_mode:
                    traj.segments.append(len(traj.input_ids) - sum(traj.segments))
                text = self.chat.tokenizer.decode(body, skip_special_tokens=False)
                traj.anchor_keys.append(anchor_key(last_obs))
                stage = "step"
                e0 = time.perf_counter()
                obs, reward, terminated, truncated, info = await self._step(core, text, spec, turn)
                env_time += time.perf_counter() - e0
                traj.turn_rewards.append(reward)
                for call in info.get("tool_calls", []):
                    status = call.get("status") or "ok"
                    if status != "ok":
                        errors[status] = errors.get(status, 0) + 1
                assistant = {"role": "assistant", "content": text}
                messages.append(assistant)
                messages.extend(obs)
                turns.append([assistant, *obs])
                if errors.get("sandbox_error"):  # nothing more to learn from this episode
                    traj.mark_failed("sandbox_error", "sandbox_error: the sandbox failed (not the policy's fault)")
                    break
                if terminated or truncated:
                    traj.terminated, traj.truncated = terminated, truncated
                    traj.success = bool(info.get("success", False))
                    break
                if not turns_mode:
                    delta = self.chat.delta_ids(list(obs))
                    if len(traj.input_ids) + len(delta) >= self.max_total_tokens:
                        traj.truncated = True
                        traj.metrics["truncated_token_budget"] = 1.0
                        break
                    traj.append(delta, generated=False)
                last_obs = obs
                turn += 1
        except EpisodeFailure as e:  # a timeout or a malformed result, already classified
            traj.mark_failed(e.kind, f"{e.kind}: {e}")
        except Exception as e:  # engine error, env exception: data, not a crash of the batch
            kind = "sandbox_error" if isinstance(e, SandboxError) and stage in ("reset", "step") else _STAGE_KINDS[stage]
            traj.mark_failed(kind, f"{type(e).__name__}: {e}")
        if traj.failed:
            log.warning("episode %s#%d failed (%s): %s", traj.task_id or spec.options, spec.sample_index, traj.failure_kind, traj.failure_reason)
        traj.messages = messages
        traj.metrics.update(
            {
                "wall_time_s": time.perf_counter() - t0,
                "generate_time_s": gen_time,
                "env_time_s": env_time,
                "tool_errors": float(sum(errors.values())),
                "generated_tokens": float(traj.num_generated_tokens),
                "total_tokens": float(len(traj.input_ids)),
                **cache,
            }
        )
        if turns_mode:
            traj.metrics.update({
                "samples": float(len(traj.segments)),
                "context_tokens_mean": float(sum(context_tokens) / len(context_tokens)) if context_tokens else 0.0,
                "context_tokens_max": float(max(context_tokens, default=0)),
                "context_dropped_turns": float(dropped),
                "context_left_out_turns": float(left_out),
            })
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
            traj = await self.run_episode(env, spec)
        except BaseException:
            free.put_nowait(env)
            raise
        if traj.failure_kind == "env_timeout" and self.env_factory is not None:
            env = self._replace(env)
        free.put_nowait(env)
        return traj

    def _replace(self, env: Any) -> Any:
        """A fresh instance in place of ``env`` (whose step or reset timed out and may still be
        running); ``env`` is closed on a background thread. If building one fails, ``env`` stays."""
        try:
            new = self.env_factory()  # type: ignore[misc]
        except Exception as e:
            log.warning("could not build a replacement for a timed-out env instance (%s: %s); keeping it", type(e).__name__, e)
            return env
        self.envs[self.envs.index(env)] = new
        self.replaced_envs += 1
        threading.Thread(target=self._close_one, args=(env, -1), daemon=True, name="agentrl-env-close").start()
        return new

    def _close_one(self, env: Any, index: int) -> None:
        fault = self.faults.at("close", index, 0) if index >= 0 else None
        try:
            if fault is not None:
                from agentrl.sandboxes import run_sync

                run_sync(self.faults.strike(fault, "close"))
            env.close()
        except Exception as e:
            log.warning("closing env instance %d failed: %s: %s", index, type(e).__name__, e)
            self.close_failures["error"] = self.close_failures.get("error", 0) + 1

    async def collect(self, specs: Sequence[EpisodeSpec], *, on_done: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        """Play every spec, ``len(envs)`` at a time; returns trajectories in spec order."""
        results: list[Trajectory | None] = [None] * len(specs)

        async def one(i: int, spec: EpisodeSpec) -> None:
            results[i] = await self.play(spec)
            if on_done is not None:
                on_done(results[i])  # type: ignore[arg-type]

        await asyncio.gather(*(one(i, s) for i, s in enumerate(specs)))
        return [r for r in results if r is not None]

    def close(self) -> dict[str, int]:
        """Close every env instance, each on its own thread, waiting at most
        ``close_timeout_s`` in all: a close that raises is logged and counted ("error"), one
        still running then is abandoned ("timeout"). Idempotent. Returns the counts."""
        if self._closed:
            return dict(self.close_failures)
        self._closed = True
        threads = [threading.Thread(target=self._close_one, args=(env, i), daemon=True, name="agentrl-env-close") for i, env in enumerate(self.envs)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.close_timeout_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        hung = sum(t.is_alive() for t in threads)
        if hung:
            log.warning("%d env instance(s) of %s did not close within %g s; abandoned", hung, self.env_id, self.close_timeout_s)
            self.close_failures["timeout"] = self.close_failures.get("timeout", 0) + hung
        return dict(self.close_failures)
