"""Rollouts in the training process (``run.backend: local``): one engine, ``env.num_envs``
env instances, episodes run concurrently on the sandbox event loop."""

from __future__ import annotations

import copy
import logging
import statistics
from typing import Any

from agentrl.config import TrainConfig
from agentrl.models.chat import ChatFormat
from agentrl.types import Trajectory

from .agent_loop import AgentLoop, EpisodeSpec
from .context import policy_of
from .engines import Engine, HFEngine, SamplingParams
from .faults import FAILURE_KINDS, FaultInjector

log = logging.getLogger(__name__)


def make_engine(cfg: TrainConfig, model: Any, tokenizer: Any) -> Engine:
    """The configured engine; "hf" shares ``model`` with the learner (no weight copies)."""
    if cfg.rollout.engine == "hf":
        return HFEngine(model, pad_token_id=tokenizer.pad_token_id, max_batch_size=max(cfg.env.num_envs, 1), seed=cfg.run.seed,
                        kv_cache=cfg.rollout.kv_cache)
    if cfg.rollout.engine == "vllm":
        from .vllm_engine import VLLMEngine

        # dtype: the learner's unless rollout.vllm sets it (vLLM's "auto" serves a float32 config as float16)
        return VLLMEngine(cfg.model.path, seed=cfg.run.seed, **{"dtype": cfg.model.dtype, **cfg.rollout.vllm})
    if cfg.rollout.engine == "openai":
        from .openai_engine import OpenAIEngine

        return OpenAIEngine(cfg.rollout.openai_base_url or "http://localhost:8000/v1", model=cfg.model.path)
    raise ValueError(f"unknown rollout.engine {cfg.rollout.engine!r}; use 'hf', 'vllm' or 'openai'")


def make_agent_loop(cfg: TrainConfig, engine: Engine, chat: ChatFormat, *, evaluation: bool = False, num_envs: int | None = None, vocab_size: int | None = None) -> AgentLoop:
    """The AgentLoop of a rollout, as configured: ``num_envs`` (default ``env.num_envs``) env
    instances of ``env.id`` (``env.eval_kwargs`` for held-out ``evaluation``), the sampling
    settings, token budget, timeouts and injected faults of the config. Local and Ray rollouts
    both build theirs here."""
    import agentrl.envs as envs

    e, r = cfg.env, cfg.rollout
    kwargs = e.eval_kwargs if evaluation and e.eval_kwargs is not None else e.kwargs
    params = SamplingParams(temperature=r.eval_temperature if evaluation else r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens)
    return AgentLoop(
        [envs.make(e.id, **kwargs) for _ in range(e.num_envs if num_envs is None else num_envs)], engine, chat, params,
        max_total_tokens=r.max_total_tokens, tools_in_prompt=r.tools_in_prompt, step_timeout_s=e.step_timeout_s,
        reset_timeout_s=e.reset_timeout_s, generate_timeout_s=r.generate_timeout_s, close_timeout_s=e.close_timeout_s,
        vocab_size=vocab_size, env_factory=lambda: envs.make(e.id, **kwargs), faults=FaultInjector(r.faults, evaluation=evaluation),
        context=policy_of(r.context),
    )


def summarize(trajs: list[Trajectory], env_id: str = "", prefix: str = "rollout") -> dict[str, float]:
    """Rollout metrics: reward, success, turns, tokens, truncation, failures, tool errors, and
    the engine's cache accounting summed over ``trajs`` (failed episodes included: their
    prefill was spent): ``prefill_tokens``, ``cached_tokens``, ``cache_misses``,
    ``cache_evictions`` (0 for engines that do not report them). Under a turn-level context
    policy also ``samples`` (turn samples of the non-failed episodes: the rows trained),
    ``context_tokens_mean``/``_max`` (prompt tokens per turn), ``context_left_out_turns_mean``
    (turns not shown, summed over an episode's prompts) and ``context_dropped_turns`` (turns
    left out to fit the token cap, beyond the policy's window)."""
    if not trajs:
        return {}
    ok = [t for t in trajs if not t.failed] or trajs

    def mean(xs: list[float]) -> float:
        return float(statistics.fmean(xs)) if xs else 0.0

    out = {
        f"{prefix}/reward_mean": mean([t.reward for t in ok]),
        f"{prefix}/reward_std": float(statistics.pstdev([t.reward for t in ok])) if len(ok) > 1 else 0.0,
        f"{prefix}/success": mean([float(t.success) for t in ok]),
        f"{prefix}/turns_mean": mean([t.num_turns for t in ok]),
        f"{prefix}/turns_max": float(max(t.num_turns for t in ok)),
        f"{prefix}/generated_tokens_mean": mean([t.num_generated_tokens for t in ok]),
        f"{prefix}/total_tokens_mean": mean([len(t.input_ids) for t in ok]),
        f"{prefix}/truncated_frac": mean([float(t.truncated) for t in ok]),
        f"{prefix}/failed_frac": mean([float(t.failed) for t in trajs]),
        f"{prefix}/tool_errors_mean": mean([t.metrics.get("tool_errors", 0.0) for t in ok]),
        f"{prefix}/episodes": float(len(trajs)),
    }
    for k in ("prefill_tokens", "cached_tokens", "cache_misses", "cache_evictions"):
        out[f"{prefix}/{k}"] = float(sum(t.metrics.get(k, 0.0) for t in trajs))
    if any(t.segments for t in trajs):  # a turn-level context policy: one training sample per turn
        turns = [t for t in ok if t.segments]
        out[f"{prefix}/samples"] = float(sum(len(t.segments) for t in trajs if not t.failed))
        out[f"{prefix}/context_tokens_mean"] = (sum(t.metrics.get("context_tokens_mean", 0.0) * len(t.segments) for t in turns)
                                               / max(sum(len(t.segments) for t in turns), 1))
        out[f"{prefix}/context_tokens_max"] = float(max((t.metrics.get("context_tokens_max", 0.0) for t in turns), default=0.0))
        out[f"{prefix}/context_left_out_turns_mean"] = mean([t.metrics.get("context_left_out_turns", 0.0) for t in turns])
        out[f"{prefix}/context_dropped_turns"] = float(sum(t.metrics.get("context_dropped_turns", 0.0) for t in trajs))
    for t in trajs:
        if t.failed:
            key = f"{prefix}/failed/{t.failure_kind if t.failure_kind in FAILURE_KINDS else 'other'}"
            out[key] = out.get(key, 0.0) + 1.0
    if env_id:
        short = env_id.split("/", 1)[-1]
        out[f"env/{short}/success"] = out[f"{prefix}/success"]
        out[f"env/{short}/reward_mean"] = out[f"{prefix}/reward_mean"]
    return out


class EnvLoops:
    """The env instances of one rollout process and the episodes run on them: the training
    AgentLoop and the held-out evaluation AgentLoop (built on first use), each ``num_envs``
    instances (default ``env.num_envs``). :class:`LocalRollout` holds one; so does each Ray
    ``EnvWorker`` (agentrl/distributed/workers.py) for its slice of the instances."""

    def __init__(self, cfg: TrainConfig, engine: Engine, chat: ChatFormat, *, num_envs: int | None = None, vocab_size: int | None = None) -> None:
        self.cfg, self.engine, self.chat, self.num_envs, self.vocab_size = cfg, engine, chat, num_envs, vocab_size
        self.train = make_agent_loop(cfg, engine, chat, num_envs=num_envs, vocab_size=vocab_size)
        self._eval: AgentLoop | None = None

    def loop(self, evaluation: bool = False) -> AgentLoop:
        """The training loop, or the evaluation loop (``env.eval_kwargs``, eval temperature)."""
        if not evaluation:
            return self.train
        if self._eval is None:
            self._eval = make_agent_loop(self.cfg, self.engine, self.chat, evaluation=True, num_envs=self.num_envs, vocab_size=self.vocab_size)
        return self._eval

    def num_tasks(self, split: str) -> int:
        return self.train.envs[0].unwrapped.num_tasks(split)

    async def play(self, spec: EpisodeSpec, evaluation: bool = False) -> Trajectory:
        """One episode on a free instance (the others wait for one in call order); failures come
        back as failed Trajectories (:meth:`AgentLoop.run_episode`)."""
        return await self.loop(evaluation).play(spec)

    async def collect(self, specs: list[EpisodeSpec], *, evaluation: bool = False, on_done: Any = None) -> list[Trajectory]:
        return await self.loop(evaluation).collect(specs, on_done=on_done)

    def sandbox_metrics(self) -> dict[str, float]:
        """The sandbox metrics of the training envs (their shared sandbox), and the env instances
        replaced after a timeout (``rollout/env_instances_replaced``, over the run)."""
        out = {"rollout/env_instances_replaced": float(self.train.replaced_envs)}
        env = self.train.envs[0].unwrapped
        try:
            out.update(env.sandbox.metrics() if hasattr(env, "sandbox") else {})
        except Exception:  # an env without a sandbox
            pass
        return out

    def close(self) -> dict[str, int]:
        """Close both loops' env instances (within ``env.close_timeout_s``). Returns the env
        closes that failed, by kind ("error", "timeout"), summed over the loops."""
        failures = self.train.close()
        if self._eval is not None:
            for k, v in self._eval.close().items():
                failures[k] = failures.get(k, 0) + v
        return failures


class LocalRollout:
    """Engine + env instances for training and held-out evaluation."""

    def __init__(self, cfg: TrainConfig, model: Any, tokenizer: Any, *, engine: Engine | None = None) -> None:
        self.cfg = cfg
        self.chat = ChatFormat(tokenizer)
        if engine is None and cfg.run.mode == "async" and cfg.rollout.engine == "hf":
            # the learner trains while episodes sample: the engine gets its own copy of the
            # weights, replaced at each sync_weights (docs/async.md)
            engine = make_engine(cfg, copy.deepcopy(model), tokenizer)
        self.engine = engine or make_engine(cfg, model, tokenizer)
        self._shares_model = isinstance(self.engine, HFEngine) and self.engine.model is model
        self._vocab_size = model.config.vocab_size if model is not None and hasattr(model, "config") else None
        self.loops = EnvLoops(cfg, self.engine, self.chat, vocab_size=self._vocab_size)
        self._engine_closed = False

    def num_tasks(self, split: str) -> int:
        return self.loops.num_tasks(split)

    def collect(self, specs: list[EpisodeSpec], on_done: Any = None) -> list[Trajectory]:
        from agentrl.sandboxes import run_sync

        return run_sync(self.loops.collect(specs, on_done=on_done))

    async def play(self, spec: EpisodeSpec) -> Trajectory:
        """The streaming API (asynchronous training): one training episode, a coroutine to run
        on the sandbox runtime's background loop; at most ``env.num_envs`` play at once, the
        others wait for an instance in call order. Failures come back as failed Trajectories."""
        return await self.loops.play(spec)

    def evaluate(self, specs: list[EpisodeSpec], on_done: Any = None) -> list[Trajectory]:
        from agentrl.sandboxes import run_sync

        return run_sync(self.loops.collect(specs, evaluation=True, on_done=on_done))

    def sync_weights(self, model: Any, version: int) -> None:
        """An HF engine sharing the module (sync mode): only the version changes. An engine
        with its own weights (async mode's copy, vLLM) loads them."""
        self.engine.update_weights(None if self._shares_model else model.state_dict(), version)

    def sandbox_metrics(self) -> dict[str, float]:
        return self.loops.sandbox_metrics()

    def close(self) -> dict[str, int]:
        """Close env instances (within ``env.close_timeout_s``) and the engine. Idempotent.
        Returns the env closes that failed, by kind ("error", "timeout")."""
        failures = self.loops.close()
        if not self._engine_closed:
            self._engine_closed = True
            self.engine.close()
        return failures
