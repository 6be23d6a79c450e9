"""The rollout actors: GenerationWorker (an engine) and EnvWorker (env instances + AgentLoop).

Both are Ray *async* actors: their methods are coroutines on one event loop, so an EnvWorker
runs all of its episodes concurrently and a GenerationWorker receives the generation requests
of many episodes at once (its engine batches them, as in local mode).

The classes are plain Python; :mod:`agentrl.distributed.ray_backend` turns them into actors
with ``ray.remote(...)`` and the resources of the ``ray:`` config section.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from agentrl.config import TrainConfig, import_modules
from agentrl.rollout.agent_loop import EpisodeSpec
from agentrl.rollout.engines import Engine, Generation, SamplingParams
from agentrl.types import Trajectory

log = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
    """A Ray worker this episode depended on died; the episode is recorded as failed."""


def build_policy_model(model_config: Any, *, dtype: str, device: str) -> Any:
    """A causal LM of ``model_config``'s architecture with random weights; the real weights
    arrive by version through ``update_weights`` / ``load_state_dict``."""
    import torch
    from transformers import AutoModelForCausalLM

    from agentrl.learner.policy import DTYPES

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config, dtype=DTYPES[dtype])
    return model


class GenerationWorker:
    """Hosts one :class:`Engine` and serves ``generate`` calls from EnvWorkers.

    The engine starts without policy weights: ``generate`` waits until the first
    ``update_weights`` (so a worker restarted mid-rollout never samples from random weights),
    then every Generation carries the version of the weights that produced it.
    """

    def __init__(self, cfg: TrainConfig, model_config: Any, tokenizer: Any, index: int) -> None:
        import torch

        torch.set_num_threads(cfg.run.num_threads)  # as in the driver: see RunConfig.num_threads
        import_modules(cfg.run.imports)
        self.cfg, self.index = cfg, index
        self._weights_ready = asyncio.Event()
        self.engine = self._make_engine(cfg, model_config, tokenizer)
        self.version: int | None = None

    @staticmethod
    def _make_engine(cfg: TrainConfig, model_config: Any, tokenizer: Any) -> Engine:
        from agentrl.rollout.local import make_engine

        if cfg.rollout.engine != "hf":  # vLLM loads the architecture from model.path; OpenAI is remote
            return make_engine(cfg, None, tokenizer)
        device = "cuda" if cfg.ray.gpus_per_generation_worker > 0 else "cpu"
        model = build_policy_model(model_config, dtype=cfg.model.dtype, device=device).eval()
        return make_engine(cfg, model, tokenizer)

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "engine": type(self.engine).__name__}

    async def ping(self) -> int | None:
        return self.version

    async def update_weights(self, state_dict: dict[str, Any], version: int) -> int:
        """Load ``state_dict`` (resolved by Ray from the driver's ObjectRef) as ``version``."""
        t0 = time.perf_counter()
        await asyncio.to_thread(self.engine.update_weights, state_dict, version)
        self.version = version
        self._weights_ready.set()
        log.debug("generation worker %d: weights v%d loaded in %.2fs", self.index, version, time.perf_counter() - t0)
        return version

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        if not self._weights_ready.is_set():
            try:
                await asyncio.wait_for(self._weights_ready.wait(), timeout=self.cfg.ray.startup_timeout_s)
            except asyncio.TimeoutError:
                raise RuntimeError(f"generation worker {self.index} received no weights within {self.cfg.ray.startup_timeout_s:.0f}s") from None
        return await self.engine.agenerate(prompt_ids, params)  # params.cache_key travels with the request

    async def release(self, cache_key: str) -> None:
        """Drop what the engine keeps for episode ``cache_key`` (its KV cache)."""
        self.engine.release(cache_key)

    def stats(self) -> dict[str, Any]:
        return dict(getattr(self.engine, "stats", {}))

    def close(self) -> None:
        self.engine.close()


class RemoteEngine(Engine):
    """The Engine an EnvWorker's AgentLoop talks to: each ``agenerate`` is one call on a
    GenerationWorker actor. When that actor dies, the requests in flight raise
    :class:`WorkerDied` (their episodes fail); later requests wait up to ``wait_s`` for the
    driver to wire in a replacement (:meth:`set_worker`)."""

    def __init__(self, handle: Any, index: int, *, wait_s: float) -> None:
        self._handle, self._index, self._wait_s = handle, index, wait_s
        self._alive = asyncio.Event()
        self._alive.set()

    def set_worker(self, handle: Any, index: int) -> None:
        self._handle, self._index = handle, index
        self._alive.set()

    async def agenerate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        from agentrl.distributed.cluster import is_actor_death

        if not self._alive.is_set():
            try:
                await asyncio.wait_for(self._alive.wait(), timeout=self._wait_s)
            except asyncio.TimeoutError:
                raise WorkerDied(f"generation worker {self._index} is dead and no replacement arrived within {self._wait_s:.0f}s") from None
        handle, index = self._handle, self._index
        try:
            gen = await handle.generate.remote(prompt_ids, params)
        except Exception as e:
            if not is_actor_death(e):
                raise
            if handle is self._handle:  # not yet replaced: make the next requests wait
                self._alive.clear()
            raise WorkerDied(f"generation worker {index} died while generating ({type(e).__name__})") from None
        self.version = gen.version
        return gen

    def release(self, cache_key: str) -> None:
        """Ask the GenerationWorker to drop episode ``cache_key``'s cache; fire and forget (a
        dead worker's caches went with it)."""
        try:
            self._handle.release.remote(cache_key)
        except Exception as e:
            log.debug("release(%s) on generation worker %d failed: %s", cache_key, self._index, e)


class EnvWorker:
    """A slice of the env instances, running episodes on request.

    ``run_episode(spec, evaluation)`` plays one episode on a free instance (training or
    held-out evaluation envs, each ``num_envs`` of them) and returns its Trajectory; the driver
    never sends more concurrent episodes than instances.
    """

    def __init__(self, cfg: TrainConfig, tokenizer: Any, num_envs: int, generation_worker: Any, generation_index: int, index: int, vocab_size: int | None = None) -> None:
        import_modules(cfg.run.imports)
        from agentrl.models.chat import ChatFormat
        from agentrl.rollout.local import EnvLoops

        self.cfg, self.index, self.num_envs, self.vocab_size = cfg, index, num_envs, vocab_size
        self.chat = ChatFormat(tokenizer)
        self.engine = RemoteEngine(generation_worker, generation_index, wait_s=cfg.ray.startup_timeout_s)
        self.loops = EnvLoops(cfg, self.engine, self.chat, num_envs=num_envs, vocab_size=vocab_size)

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "num_envs": self.num_envs}

    async def ping(self) -> int:
        return self.index

    def set_generation_worker(self, handle: Any, index: int) -> None:
        self.engine.set_worker(handle, index)

    def num_tasks(self, split: str) -> int:
        return self.loops.num_tasks(split)

    def task_id(self, options: dict[str, Any]) -> str:
        """The task id an episode with these reset options would have (for failed episodes)."""
        return self.loops.train.envs[0].unwrapped.get_task(options.get("split", self.cfg.env.train_split), options["task_index"]).task_id

    async def run_episode(self, spec: EpisodeSpec, evaluation: bool = False) -> Trajectory:
        """One episode on a free instance of the training (or evaluation) envs; failures come
        back as failed Trajectories (:meth:`EnvLoops.play`, shared with local rollouts)."""
        return await self.loops.play(spec, evaluation)

    def sandbox_metrics(self) -> dict[str, float]:
        return self.loops.sandbox_metrics()

    def close(self) -> dict[str, int]:
        """Close the env instances; returns the closes that failed, by kind (EnvLoops.close)."""
        return self.loops.close()
