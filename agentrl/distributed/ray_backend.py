"""RayRollout: the driver side of ``run.backend: ray`` rollouts (same interface as LocalRollout).

- Scheduling: one Ray call per episode. Each EnvWorker gets at most as many episodes in flight
  as it has env instances; the rest wait in the driver and go to whichever worker frees up,
  so a slow worker never holds back queued episodes and a dead one loses only its in-flight
  episodes.
- Weights by version: ``sync_weights(model, version)`` puts the state dict in the object store
  once and every GenerationWorker loads it from there; the driver remembers the latest
  (version, ObjectRef) so a replacement worker starts from it. Local mode's HF engine shares
  the driver's model, so it always samples the current weights; to behave the same, a rollout
  whose driver model changed since the last sync (SFT warm start before the first evaluation)
  re-syncs it first, under the last version number (detected by parameter version counters).
- Fault handling: a supervisor pass between waits pings every worker (``ray.health_check_s``).
  A dead EnvWorker's in-flight episodes come back as failed Trajectories ("env worker 1
  died") and a new EnvWorker takes its index; a dead GenerationWorker's in-flight requests fail
  their episodes (:class:`~agentrl.distributed.workers.WorkerDied`), a new one is started with
  the latest weights and wired into the EnvWorkers, whose next requests wait for it. Workers
  are re-created explicitly (``max_restarts=0``), so ``ray.kill``, a crash and an OOM kill are
  handled the same way.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentrl.config import TrainConfig
from agentrl.models.chat import ChatFormat
from agentrl.rollout.agent_loop import EpisodeSpec
from agentrl.types import Trajectory

from .cluster import cpu_state_dict, init_ray, is_actor_death, param_versions, wait_ready
from .workers import EnvWorker, GenerationWorker

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    """One worker index: the current actor, whether it has started, its pending ping."""

    handle: Any
    ready_ref: Any
    ready: bool = False
    ping_ref: Any = None
    ping_at: float = 0.0
    restarts: int = 0
    failed_starts: int = 0  # replacements in a row that died before they were ready
    inflight: set = field(default_factory=set)


MAX_FAILED_STARTS = 3


def split_evenly(n: int, parts: int) -> list[int]:
    """``n`` items over ``parts`` workers, sizes differing by at most one (larger first)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


class RayRollout:
    """EnvWorker and GenerationWorker actors behind LocalRollout's interface.

    Args:
        cfg: the experiment; ``ray:`` sets worker counts and resources.
        model: the driver's policy (its architecture builds the HF workers' copies; its
            weights arrive with the first :meth:`sync_weights`).
        tokenizer: the tokenizer, chat template applied (sent to every worker).
    """

    def __init__(self, cfg: TrainConfig, model: Any, tokenizer: Any) -> None:
        import ray

        init_ray(cfg)
        self.cfg = cfg
        self.chat = ChatFormat(tokenizer)
        self._tokenizer = tokenizer
        self._model = model
        self._model_config = getattr(model, "config", None)
        self._weights: tuple[int, Any] | None = None
        self._synced: list[int] | None = None
        self._env_sizes = split_evenly(cfg.env.num_envs, cfg.ray.env_workers)
        self._gen: list[_Slot] = [self._start_generation_worker(i) for i in range(cfg.ray.generation_workers)]
        self._env: list[_Slot] = [self._start_env_worker(i) for i in range(cfg.ray.env_workers)]
        what = f"{len(self._gen)} generation and {len(self._env)} env workers"
        wait_ready([s.ready_ref for s in self._gen + self._env], what, cfg.ray.startup_timeout_s)
        for s in self._gen + self._env:
            s.ready = True
        self._ray = ray
        self.failures = {"env_worker_restarts": 0, "generation_worker_restarts": 0, "episodes_lost": 0}

    # ------------------------------------------------------------------ actors
    @property
    def env_workers(self) -> list[Any]:
        """The current EnvWorker actor handles (replacements included)."""
        return [s.handle for s in self._env]

    @property
    def generation_workers(self) -> list[Any]:
        """The current GenerationWorker actor handles (replacements included)."""
        return [s.handle for s in self._gen]

    def _start_generation_worker(self, i: int) -> _Slot:
        import ray

        r = self.cfg.ray
        cls = ray.remote(GenerationWorker).options(num_cpus=r.cpus_per_generation_worker, num_gpus=r.gpus_per_generation_worker, max_restarts=0)
        handle = cls.remote(self.cfg, self._model_config, self._tokenizer, i)
        if self._weights is not None:  # a replacement: start from the latest weights
            version, ref = self._weights
            handle.update_weights.remote(ref, version)
        return _Slot(handle, handle.ready.remote())

    def _start_env_worker(self, i: int) -> _Slot:
        import ray

        g = i % len(self._gen)
        cls = ray.remote(EnvWorker).options(num_cpus=self.cfg.ray.cpus_per_env_worker, max_restarts=0)
        handle = cls.remote(self.cfg, self._tokenizer, self._env_sizes[i], self._gen[g].handle, g, i)
        return _Slot(handle, handle.ready.remote())

    @staticmethod
    def _failed_starts(old: _Slot, what: str, reason: str) -> int:
        """Replacements in a row that died before they were ready, counting ``old``; a worker
        that keeps dying while starting (a broken import, too little memory) stops the run
        instead of being restarted forever."""
        n = 0 if old.ready else old.failed_starts + 1
        if n >= MAX_FAILED_STARTS:
            raise RuntimeError(f"{what} died {n} times in a row before it was ready; last error: {reason}")
        return n

    def _replace_generation_worker(self, i: int, reason: str) -> None:
        log.warning("generation worker %d died (%s); starting a replacement", i, reason)
        old = self._gen[i]
        failed_starts = self._failed_starts(old, f"generation worker {i}", reason)
        self._gen[i] = self._start_generation_worker(i)
        self._gen[i].restarts, self._gen[i].failed_starts = old.restarts + 1, failed_starts
        self.failures["generation_worker_restarts"] += 1
        for j, slot in enumerate(self._env):  # starting ones too: the call runs after their __init__
            if j % len(self._gen) == i:
                slot.handle.set_generation_worker.remote(self._gen[i].handle, i)

    def _replace_env_worker(self, i: int, reason: str) -> None:
        log.warning("env worker %d died (%s); starting a replacement", i, reason)
        old = self._env[i]
        failed_starts = self._failed_starts(old, f"env worker {i}", reason)
        self._env[i] = self._start_env_worker(i)
        self._env[i].restarts, self._env[i].failed_starts = old.restarts + 1, failed_starts
        self.failures["env_worker_restarts"] += 1

    def _check(self, slot: _Slot) -> str | None:
        """Advance ``slot``'s startup / ping; returns why it is dead, or None."""
        ray = self._ray
        ref = slot.ready_ref if not slot.ready else slot.ping_ref
        if ref is None:
            if time.monotonic() >= slot.ping_at:
                slot.ping_ref = slot.handle.ping.remote()
            return None
        done, _ = ray.wait([ref], timeout=0)
        if not done:
            return None
        try:
            ray.get(ref)
        except Exception as e:
            return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if not slot.ready:
            slot.ready = True
        slot.ping_ref, slot.ping_at = None, time.monotonic() + self.cfg.ray.health_check_s
        return None

    def _supervise(self) -> None:
        """Replace dead workers (one pass, no blocking)."""
        for i, slot in enumerate(self._gen):
            why = self._check(slot)
            if why is not None:
                self._replace_generation_worker(i, why)
        for i, slot in enumerate(self._env):
            why = self._check(slot)
            if why is not None:
                self._replace_env_worker(i, why)

    # ------------------------------------------------------------------ rollouts
    def num_tasks(self, split: str) -> int:
        return int(self._ray.get(self._env[0].handle.num_tasks.remote(split), timeout=self.cfg.ray.startup_timeout_s))

    def collect(self, specs: list[EpisodeSpec], on_done: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        """Play every spec on the EnvWorkers; trajectories in spec order."""
        return self._run(specs, evaluation=False, on_done=on_done)

    def evaluate(self, specs: list[EpisodeSpec]) -> list[Trajectory]:
        return self._run(specs, evaluation=True, on_done=None)

    def _run(self, specs: list[EpisodeSpec], *, evaluation: bool, on_done: Callable[[Trajectory], None] | None) -> list[Trajectory]:
        ray = self._ray
        if self._model is not None and param_versions(self._model) != self._synced:
            self.sync_weights(self._model, self._weights[0] if self._weights is not None else 0)
        results: list[Trajectory | None] = [None] * len(specs)
        queue = deque(range(len(specs)))
        inflight: dict[Any, tuple[int, int, _Slot, float]] = {}  # ref -> (spec index, worker index, its slot, start time)
        timeout_s = self.cfg.ray.episode_timeout_s

        def finish(i: int, traj: Trajectory) -> None:
            results[i] = traj
            if on_done is not None:
                on_done(traj)

        while queue or inflight:
            self._supervise()
            for w, slot in enumerate(self._env):
                while slot.ready and queue and len(slot.inflight) < self._env_sizes[w]:
                    i = queue.popleft()
                    ref = slot.handle.run_episode.remote(specs[i], evaluation)
                    inflight[ref] = (i, w, slot, time.monotonic())
                    slot.inflight.add(ref)
            if not inflight:  # every worker is (re)starting
                self._wait_for_env_workers()
                continue
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=min(self.cfg.ray.health_check_s, 1.0))
            for ref in done:
                i, w, slot, _ = inflight.pop(ref)
                slot.inflight.discard(ref)
                try:
                    finish(i, ray.get(ref))
                except Exception as e:
                    if is_actor_death(e) and self._env[w] is slot:  # replace now: no more episodes go to it
                        self._replace_env_worker(w, f"{type(e).__name__} while running an episode")
                    finish(i, self._failed(specs[i], w, e))
            if timeout_s > 0:
                now = time.monotonic()
                for ref, (i, w, slot, t0) in list(inflight.items()):
                    if now - t0 > timeout_s:
                        ray.cancel(ref, force=False)
                        inflight.pop(ref)
                        slot.inflight.discard(ref)
                        finish(i, self._failed(specs[i], w, TimeoutError(f"episode ran longer than ray.episode_timeout_s={timeout_s:g}")))
        return [r for r in results if r is not None]

    def _wait_for_env_workers(self) -> None:
        slots = [s for s in self._env if not s.ready]
        try:
            wait_ready([s.ready_ref for s in slots], f"{len(slots)} replacement env workers", self.cfg.ray.startup_timeout_s)
        except TimeoutError:
            raise
        except Exception:  # died while starting: the next supervisor pass replaces it again
            time.sleep(0.5)

    def _failed(self, spec: EpisodeSpec, worker: int, error: BaseException) -> Trajectory:
        """A failed Trajectory for an episode whose worker died (or that timed out)."""
        if is_actor_death(error):
            reason = f"WorkerDied: env worker {worker} died during the episode ({type(error).__name__})"
            self.failures["episodes_lost"] += 1
        else:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        log.warning("episode %s#%d failed: %s", spec.options, spec.sample_index, reason)
        traj = Trajectory(task_id=self._task_id(spec), sample_index=spec.sample_index, env_id=self.cfg.env.id, failed=True, failure_reason=reason)
        traj.metrics.update({"wall_time_s": 0.0, "generate_time_s": 0.0, "env_time_s": 0.0, "tool_errors": 0.0, "generated_tokens": 0.0, "total_tokens": 0.0})
        return traj

    def _task_id(self, spec: EpisodeSpec) -> str:
        """Best effort: ask a live EnvWorker (task ids are a pure function of split and index)."""
        for slot in self._env:
            if slot.ready:
                try:
                    return str(self._ray.get(slot.handle.task_id.remote(spec.options), timeout=10))
                except Exception:
                    continue
        return f"unknown:{spec.options}"

    # ------------------------------------------------------------------ weights
    def sync_weights(self, model: Any, version: int) -> None:
        """Publish ``model``'s weights as ``version``: one ``ray.put``, every GenerationWorker
        loads them (blocking until all have). A worker that dies meanwhile is replaced by the
        next supervisor pass and starts from these weights."""
        ray = self._ray
        ref = ray.put(cpu_state_dict(model))
        self._weights = (version, ref)
        if model is self._model:
            self._synced = param_versions(model)
        calls = [(i, s.handle.update_weights.remote(ref, version)) for i, s in enumerate(self._gen)]
        for i, call in calls:
            try:
                ray.get(call, timeout=self.cfg.ray.startup_timeout_s)
            except Exception as e:
                if not is_actor_death(e):
                    raise
                self._replace_generation_worker(i, f"{type(e).__name__} during weight sync")

    # ------------------------------------------------------------------ metrics, shutdown
    def sandbox_metrics(self) -> dict[str, float]:
        """Sandbox metrics summed over EnvWorkers (latency keys averaged), plus the run's worker
        restarts so far (``rollout/*_restarts``)."""
        per_worker = []
        for slot in self._env:
            try:
                per_worker.append(self._ray.get(slot.handle.sandbox_metrics.remote(), timeout=30))
            except Exception:
                continue
        out: dict[str, float] = {}
        for m in per_worker:
            for k, v in m.items():
                out[k] = out.get(k, 0.0) + float(v)
        for k in out:
            if "latency" in k or k.endswith("_s"):
                out[k] /= max(sum(1 for m in per_worker if k in m), 1)
        out["rollout/env_worker_restarts"] = float(self.failures["env_worker_restarts"])
        out["rollout/generation_worker_restarts"] = float(self.failures["generation_worker_restarts"])
        out["rollout/episodes_lost_to_dead_env_workers"] = float(self.failures["episodes_lost"])
        return out

    def close(self) -> None:
        """Close the env instances (sandboxes) and stop every actor of this rollout."""
        ray = self._ray
        closing = []
        for slot in self._env + self._gen:
            try:
                closing.append(slot.handle.close.remote())
            except Exception:
                pass
        try:
            ray.wait(closing, num_returns=len(closing), timeout=30)
        except Exception:
            pass
        for slot in self._env + self._gen:
            try:
                ray.kill(slot.handle)
            except Exception:
                pass
