"""Failure containment for episodes: failure kinds, output checks, and fault injection.

An episode can fail for reasons outside the policy: the engine raises or hangs, the env raises
or hangs in ``reset``/``step``, the sandbox under a tool dies, an engine or env returns
something malformed. :class:`~agentrl.rollout.agent_loop.AgentLoop` turns each of these into a
*failed* trajectory (``Trajectory.failed``, with ``failure_kind`` from :data:`FAILURE_KINDS`
and a ``failure_reason`` message) and the other episodes go on. Failed trajectories keep their
rows in the batch but train nothing (``loss_mask`` all False) and are left out of group
statistics (see ``agentrl.algorithms.estimators``: GRPO/RLOO baselines are computed over the
group's non-failed members only). ``rollout/failed/<kind>`` counts them per train_step.

:class:`FaultInjector` injects such failures on purpose (``rollout.faults`` in the config,
docs/faults.md), so a new env or setup can be checked against them before a long run.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from typing import Any

#: ``Trajectory.failure_kind`` values, and what each means.
FAILURE_KINDS: dict[str, str] = {
    "env_reset": "env.reset raised",
    "env_step": "env.step raised",
    "env_error": "the env or its scripted expert raised (expert episodes of an SFT warm start)",
    "env_timeout": "env.reset or env.step took longer than env.reset_timeout_s / env.step_timeout_s",
    "env_invalid_output": "env.reset or env.step returned a malformed result (observation, reward, flags or info)",
    "engine": "the engine raised while generating",
    "engine_timeout": "a generation request took longer than rollout.generate_timeout_s",
    "engine_invalid_output": "the engine returned malformed tokens (ids outside the vocabulary, logprobs missing or not finite)",
    "engine_aborted": "the engine aborted the request (vLLM finish_reason 'abort'); not a truncated turn",
    "engine_prompt_too_long": "the prompt left no room for a generated token in the engine's context (vLLM max_model_len)",
    "rollout": "the agent loop failed between generation and the env step (decoding, bookkeeping)",
    "sandbox_error": "a tool call reported sandbox_error: the sandbox itself failed",
    "worker_died": "a Ray worker this episode ran on died",
    "worker_error": "a Ray worker raised while running the episode (outside the agent loop)",
    "episode_timeout": "the episode ran past ray.episode_timeout_s",
}

FINISH_REASONS = ("stop", "length")


class EpisodeFailure(Exception):
    """Ends an episode as failed with ``kind`` (one of :data:`FAILURE_KINDS`)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class InjectedFault(RuntimeError):
    """The exception an injected ``raise`` fault throws."""


def check_generation(gen: Any, *, vocab_size: int | None) -> None:
    """Raise :class:`EpisodeFailure` ("engine_invalid_output") unless ``gen`` is a well-formed
    :class:`~agentrl.rollout.engines.Generation`: at least one id, every id an int in
    ``[0, vocab_size)`` (upper bound unchecked when ``vocab_size`` is None), one finite logprob
    <= 1e-4 per id, a known finish reason. A token id outside the vocabulary would otherwise
    crash the learner's embedding lookup for the whole batch."""

    def bad(why: str) -> EpisodeFailure:
        return EpisodeFailure("engine_invalid_output", f"engine returned {why}")

    ids, logprobs = getattr(gen, "ids", None), getattr(gen, "logprobs", None)
    if not isinstance(ids, list) or not ids:
        raise bad(f"no token ids (got {type(ids).__name__} {str(ids)[:80]})")
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool) or t < 0 or (vocab_size is not None and t >= vocab_size):
            raise bad(f"token id {t!r} outside the vocabulary [0, {vocab_size if vocab_size is not None else 'inf'})")
    if not isinstance(logprobs, list) or len(logprobs) != len(ids):
        raise bad(f"{len(logprobs) if isinstance(logprobs, list) else type(logprobs).__name__} logprobs for {len(ids)} ids")
    for lp in logprobs:
        if not isinstance(lp, (int, float)) or not math.isfinite(lp) or lp > 1e-4:
            raise bad(f"logprob {lp!r} (a finite log-probability <= 0 was expected)")
    if getattr(gen, "finish_reason", None) not in FINISH_REASONS:
        raise bad(f"finish_reason {getattr(gen, 'finish_reason', None)!r} (expected one of {list(FINISH_REASONS)})")


def _check_messages(obs: Any, where: str) -> None:
    if isinstance(obs, (str, bytes)) or not isinstance(obs, Sequence):
        raise EpisodeFailure("env_invalid_output", f"{where} returned an observation of type {type(obs).__name__}; expected a sequence of chat messages")
    for m in obs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise EpisodeFailure("env_invalid_output", f"{where} returned the message {str(m)[:120]!r}; expected a dict with str 'role' and 'content'")


def check_reset(result: Any) -> tuple[Any, dict[str, Any]]:
    """``(obs, info)`` from ``env.reset``, checked: obs a sequence of messages, info a dict
    with a ``task_id``. Raises :class:`EpisodeFailure` ("env_invalid_output")."""
    if not isinstance(result, tuple) or len(result) != 2:
        raise EpisodeFailure("env_invalid_output", f"env.reset returned {type(result).__name__} {str(result)[:80]!r}; expected (observation, info)")
    obs, info = result
    _check_messages(obs, "env.reset")
    if not obs:
        raise EpisodeFailure("env_invalid_output", "env.reset returned an empty observation")
    if not isinstance(info, dict) or "task_id" not in info:
        raise EpisodeFailure("env_invalid_output", f"env.reset returned info {str(info)[:80]!r}; expected a dict with 'task_id'")
    return obs, info


def check_step(result: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
    """The five-tuple of ``env.step``, checked: messages, a finite reward, flags, an info dict.
    Raises :class:`EpisodeFailure` ("env_invalid_output")."""
    if not isinstance(result, tuple) or len(result) != 5:
        raise EpisodeFailure("env_invalid_output", f"env.step returned {type(result).__name__} {str(result)[:80]!r}; expected (obs, reward, terminated, truncated, info)")
    obs, reward, terminated, truncated, info = result
    _check_messages(obs, "env.step")
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        raise EpisodeFailure("env_invalid_output", f"env.step returned reward {reward!r}; expected a finite number")
    if not isinstance(info, dict):
        raise EpisodeFailure("env_invalid_output", f"env.step returned info of type {type(info).__name__}; expected a dict")
    return obs, float(reward), bool(terminated), bool(truncated), info


async def within(coro: Any, timeout_s: float | None, kind: str, what: str) -> Any:
    """Await ``coro``, raising :class:`EpisodeFailure` (``kind``) after ``timeout_s`` seconds
    (None or <= 0: no limit). The awaited coroutine is cancelled."""
    if not timeout_s or timeout_s <= 0:
        return await coro
    try:
        return await asyncio.wait_for(coro, timeout_s)
    except asyncio.TimeoutError:
        raise EpisodeFailure(kind, f"{what} took longer than {timeout_s:g} s") from None


HANG_S = 24 * 3600.0  # an injected hang: far longer than any timeout


class FaultInjector:
    """Decides, deterministically, where the configured faults (``rollout.faults``, a list of
    :class:`~agentrl.config.FaultConfig`) strike, and carries them out.

    A fault hits the opportunity (point, episode seed, group member, turn) when a hash of those
    and the fault's index falls below its ``rate``; so runs with faults reproduce, and two
    faults at the same point are independent. ``evaluation``: whether this injector serves
    held-out evaluation episodes (faults apply there only when they ask to).
    """

    def __init__(self, faults: Sequence[Any], *, evaluation: bool = False) -> None:
        self.faults = [f for f in faults if evaluation is False or f.evaluation]
        self.hits: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.faults)

    def at(self, point: str, seed: int, sample_index: int, turn: int = 0) -> Any | None:
        """The first fault that strikes this opportunity, or None."""
        for i, f in enumerate(self.faults):
            if f.point != point or (f.turn is not None and f.turn != turn):
                continue
            h = hashlib.blake2b(f"{i}/{point}/{seed}/{sample_index}/{turn}".encode(), digest_size=8).digest()
            if int.from_bytes(h, "little") / 2**64 < f.rate:
                key = f"{point}/{f.kind}"
                self.hits[key] = self.hits.get(key, 0) + 1
                return f
        return None

    @staticmethod
    async def strike(fault: Any, point: str) -> None:
        """Carry out a ``raise`` or ``hang`` fault (the other kinds act on results)."""
        if fault.kind == "raise":
            raise InjectedFault(f"injected fault: raise at {point}")
        if fault.kind == "hang":
            await asyncio.sleep(HANG_S)

    @staticmethod
    def garbage_generation(gen: Any) -> Any:
        """A copy of ``gen`` with token ids no vocabulary has."""
        from dataclasses import replace

        return replace(gen, ids=[-1] * len(gen.ids))

    @staticmethod
    def garbage_step(result: tuple) -> tuple:
        """An env.step result with a non-message observation and a NaN reward."""
        _, _, terminated, truncated, info = result
        return ("<garbage>", float("nan"), terminated, truncated, info)

    @staticmethod
    def garbage_reset(result: tuple) -> tuple:
        """An env.reset result whose observation is not a list of messages."""
        return (None, result[1])

    @staticmethod
    async def kill_sandbox(core: Any) -> None:
        """Kill the sandbox sessions ``core`` (the unwrapped env) has open, as a crash would:
        its next tool call finds no sandbox (status ``sandbox_error``)."""
        kill = getattr(core, "kill_sessions", None)
        if kill is None:
            raise InjectedFault(f"kill_sandbox: {type(core).__name__} has no sandbox sessions to kill (no kill_sessions())")
        await kill()
