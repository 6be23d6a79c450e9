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
- Asynchronous training (``run.mode: async``): :meth:`RayRollout.play` is the streaming form,
  one episode per call on the driver's event loop, under the same capacity, supervision and
  failure rules; the GenerationWorkers keep their own weights, so an episode in flight across a
  :meth:`~RayRollout.sync_weights` continues with the new version (partial rollouts).
- Fault handling: a supervisor pass between waits pings every worker (``ray.health_check_s``).
  A dead EnvWorker's in-flight episodes come back as failed Trajectories ("env worker 1
  died") and a new EnvWorker takes its index; a dead GenerationWorker's in-flight requests fail
  their episodes (:class:`~agentrl.distributed.workers.WorkerDied`), a new one is started with
  the latest weights and wired into the EnvWorkers, whose next requests wait for it. Workers
  are re-created explicitly (``max_restarts=0``), so ``ray.kill``, a crash and an OOM kill are
  handled the same way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
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


@dataclass
class _PlayState:
    """:meth:`RayRollout.play`'s state on one event loop: free env instances (as worker
    indices, one entry per instance), the supervisor task, and the error that stopped it."""

    loop: Any
    free: Any
    supervisor: Any = None
    error: BaseException | None = None


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
        # play() runs on an event loop thread while the training loop calls sync_weights and
        # sandbox_metrics: worker replacement happens under this lock, once per dead actor
        self._lock = threading.RLock()
        self._play_state: _PlayState | None = None
        self._closed = False

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
        vocab = getattr(self._model_config, "vocab_size", None)
        handle = cls.remote(self.cfg, self._tokenizer, self._env_sizes[i], self._gen[g].handle, g, i, vocab)
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

    def _replace_generation_worker(self, i: int, reason: str, dead: _Slot) -> None:
        """Replace generation worker ``i`` if ``dead`` is still its slot (another thread may
        have replaced it already)."""
        with self._lock:
            if self._gen[i] is not dead:
                return
            log.warning("generation worker %d died (%s); starting a replacement", i, reason)
            failed_starts = self._failed_starts(dead, f"generation worker {i}", reason)
            self._gen[i] = self._start_generation_worker(i)
            self._gen[i].restarts, self._gen[i].failed_starts = dead.restarts + 1, failed_starts
            self.failures["generation_worker_restarts"] += 1
            for j, slot in enumerate(self._env):  # starting ones too: the call runs after their __init__
                if j % len(self._gen) == i:
                    slot.handle.set_generation_worker.remote(self._gen[i].handle, i)

    def _replace_env_worker(self, i: int, reason: str, dead: _Slot) -> None:
        """Replace env worker ``i`` if ``dead`` is still its slot."""
        with self._lock:
            if self._env[i] is not dead:
                return
            log.warning("env worker %d died (%s); starting a replacement", i, reason)
            failed_starts = self._failed_starts(dead, f"env worker {i}", reason)
            self._env[i] = self._start_env_worker(i)
            self._env[i].restarts, self._env[i].failed_starts = dead.restarts + 1, failed_starts
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
        with self._lock:
            for i, slot in enumerate(self._gen):
                why = self._check(slot)
                if why is not None:
                    self._replace_generation_worker(i, why, slot)
            for i, slot in enumerate(self._env):
                why = self._check(slot)
                if why is not None:
                    self._replace_env_worker(i, why, slot)

    # ------------------------------------------------------------------ rollouts
    def num_tasks(self, split: str) -> int:
        return int(self._ray.get(self._env[0].handle.num_tasks.remote(split), timeout=self.cfg.ray.startup_timeout_s))

    def collect(self, specs: list[EpisodeSpec], on_done: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        """Play every spec on the EnvWorkers; trajectories in spec order."""
        return self._run(specs, evaluation=False, on_done=on_done)

    def evaluate(self, specs: list[EpisodeSpec], on_done: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        return self._run(specs, evaluation=True, on_done=on_done)

    def _run(self, specs: list[EpisodeSpec], *, evaluation: bool, on_done: Callable[[Trajectory], None] | None) -> list[Trajectory]:
        ray = self._ray
        if self._model is not None and param_versions(self._model) != self._synced:
            self.sync_weights(self._model, self._weights[0] if self._weights is not None else 0)
        results: list[Trajectory | None] = [None] * len(specs)
        queue = deque(range(len(specs)))
        inflight: dict[Any, tuple[int, int, _Slot, float]] = {}  # ref -> (spec index, worker index, its slot, start time)
        running = [0] * len(self._env)  # this call's episodes per worker (play() may run others meanwhile)
        timeout_s = self.cfg.ray.episode_timeout_s

        def finish(i: int, traj: Trajectory) -> None:
            results[i] = traj
            if on_done is not None:
                on_done(traj)

        while queue or inflight:
            self._supervise()
            for w, slot in enumerate(self._env):
                while slot.ready and queue and running[w] < self._env_sizes[w]:
                    i = queue.popleft()
                    ref = slot.handle.run_episode.remote(specs[i], evaluation)
                    inflight[ref] = (i, w, slot, time.monotonic())
                    slot.inflight.add(ref)
                    running[w] += 1
            if not inflight:  # every worker is (re)starting
                self._wait_for_env_workers()
                continue
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=min(self.cfg.ray.health_check_s, 1.0))
            for ref in done:
                i, w, slot, _ = inflight.pop(ref)
                slot.inflight.discard(ref)
                running[w] -= 1
                try:
                    finish(i, ray.get(ref))
                except Exception as e:
                    if is_actor_death(e):  # replace now: no more episodes go to it
                        self._replace_env_worker(w, f"{type(e).__name__} while running an episode", slot)
                    finish(i, self._failed(specs[i], w, e, self._task_id(specs[i])))
            if timeout_s > 0:
                now = time.monotonic()
                for ref, (i, w, slot, t0) in list(inflight.items()):
                    if now - t0 > timeout_s:
                        ray.cancel(ref, force=False)
                        inflight.pop(ref)
                        slot.inflight.discard(ref)
                        running[w] -= 1
                        finish(i, self._failed(specs[i], w, TimeoutError(f"episode ran longer than ray.episode_timeout_s={timeout_s:g}"), self._task_id(specs[i])))
        return [r for r in results if r is not None]

    def _wait_for_env_workers(self) -> None:
        slots = [s for s in self._env if not s.ready]
        try:
            wait_ready([s.ready_ref for s in slots], f"{len(slots)} replacement env workers", self.cfg.ray.startup_timeout_s)
        except TimeoutError:
            raise
        except Exception:  # died while starting: the next supervisor pass replaces it again
            time.sleep(0.5)

    def _failed(self, spec: EpisodeSpec, worker: int, error: BaseException, task_id: str) -> Trajectory:
        """A failed Trajectory for an episode whose worker died (or that timed out)."""
        if is_actor_death(error):
            kind, reason = "worker_died", f"WorkerDied: env worker {worker} died during the episode ({type(error).__name__})"
            with self._lock:
                self.failures["episodes_lost"] += 1
        else:
            kind = "episode_timeout" if isinstance(error, TimeoutError) else "worker_error"
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        log.warning("episode %s#%d failed: %s", spec.options, spec.sample_index, reason)
        traj = Trajectory(task_id=task_id, sample_index=spec.sample_index, env_id=self.cfg.env.id)
        traj.mark_failed(kind, reason)
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

    async def _atask_id(self, spec: EpisodeSpec) -> str:
        """:meth:`_task_id` without blocking the event loop."""
        for slot in list(self._env):
            if slot.ready:
                try:
                    return str(await asyncio.wait_for(slot.handle.task_id.remote(spec.options), timeout=10))
                except Exception:
                    continue
        return f"unknown:{spec.options}"

    # ------------------------------------------------------------------ streaming (async mode)
    async def play(self, spec: EpisodeSpec) -> Trajectory:
        """The streaming API (asynchronous training): one training episode on an EnvWorker, a
        coroutine for the driver's event loop (the sandbox runtime's background loop, where
        :class:`~agentrl.rollout.async_collector.AsyncCollector` runs it).

        At most as many episodes as an EnvWorker has env instances run on it; further calls
        wait in call order for a free instance on any worker. A supervisor task on the same
        loop pings the workers every ``ray.health_check_s`` (at most 1 s) while this rollout
        lives and replaces dead ones. An episode whose EnvWorker dies, or that runs past
        ``ray.episode_timeout_s``, comes back as a failed Trajectory (counted in
        ``failures["episodes_lost"]`` for a death); one whose GenerationWorker dies fails inside
        the EnvWorker (``WorkerDied``). Raises only when the rollout cannot go on: a worker
        that dies ``MAX_FAILED_STARTS`` times in a row while starting, or a replacement not
        ready within ``ray.startup_timeout_s`` (TimeoutError).
        """
        state = self._play_loop_state()
        if state.error is not None:
            raise state.error
        w = await state.free.get()
        try:
            slot = await self._ready_env_slot(w, state)
            ref = slot.handle.run_episode.remote(spec, False)
            slot.inflight.add(ref)
            timeout_s = self.cfg.ray.episode_timeout_s
            fut = asyncio.wrap_future(ref.future())
            try:
                return await (asyncio.wait_for(fut, timeout_s) if timeout_s > 0 else fut)
            except asyncio.TimeoutError:
                self._ray.cancel(ref, force=False)
                error: BaseException = TimeoutError(f"episode ran longer than ray.episode_timeout_s={timeout_s:g}")
            except asyncio.CancelledError:
                self._ray.cancel(ref, force=False)
                raise
            except Exception as e:
                if is_actor_death(e):  # replace now: no more episodes go to it
                    self._replace_env_worker(w, f"{type(e).__name__} while running an episode", slot)
                error = e
            finally:
                slot.inflight.discard(ref)
            return self._failed(spec, w, error, await self._atask_id(spec))
        finally:
            state.free.put_nowait(w)

    def _play_loop_state(self) -> _PlayState:
        """The free-instance queue and supervisor of the running event loop (made on first use)."""
        loop = asyncio.get_running_loop()
        state = self._play_state
        if state is None or state.loop is not loop:
            if state is not None and not state.loop.is_closed():
                state.loop.call_soon_threadsafe(state.supervisor.cancel)
            free: asyncio.Queue = asyncio.Queue()
            for w, size in enumerate(self._env_sizes):
                for _ in range(size):
                    free.put_nowait(w)
            state = _PlayState(loop=loop, free=free)
            state.supervisor = loop.create_task(self._supervise_forever(state))
            self._play_state = state
        return state

    async def _supervise_forever(self, state: _PlayState) -> None:
        try:
            while True:
                self._supervise()
                await asyncio.sleep(min(self.cfg.ray.health_check_s, 1.0))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a worker that cannot start: every later play() raises it
            log.error("ray rollout supervisor stopped: %s", e)
            state.error = e

    async def _ready_env_slot(self, w: int, state: _PlayState) -> _Slot:
        """EnvWorker ``w``'s current slot once it is ready (a replacement may be starting)."""
        deadline = time.monotonic() + self.cfg.ray.startup_timeout_s
        while True:
            if state.error is not None:
                raise state.error
            slot = self._env[w]
            if slot.ready:
                return slot
            if time.monotonic() > deadline:
                raise TimeoutError(f"replacement env worker {w} did not start within ray.startup_timeout_s={self.cfg.ray.startup_timeout_s:g}s")
            await asyncio.sleep(0.1)

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
        with self._lock:
            calls = [(i, s, s.handle.update_weights.remote(ref, version)) for i, s in enumerate(self._gen)]
        for i, slot, call in calls:
            try:
                ray.get(call, timeout=self.cfg.ray.startup_timeout_s)
            except Exception as e:
                if not is_actor_death(e):
                    raise
                self._replace_generation_worker(i, f"{type(e).__name__} during weight sync", slot)

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

    def close(self) -> dict[str, int]:
        """Close the env instances (sandboxes) and stop every actor of this rollout. Idempotent.
        Returns the env closes that failed, by kind, summed over EnvWorkers (AgentLoop.close)."""
        if self._closed:
            return {}
        self._closed = True
        ray = self._ray
        state, self._play_state = self._play_state, None
        if state is not None and not state.loop.is_closed():
            state.loop.call_soon_threadsafe(state.supervisor.cancel)
        closing = []
        for slot in self._env + self._gen:
            try:
                closing.append(slot.handle.close.remote())
            except Exception:
                pass
        failures: dict[str, int] = {}
        try:
            done, _ = ray.wait(closing, num_returns=len(closing), timeout=self.cfg.env.close_timeout_s + 30)
            for ref in done:
                try:
                    for k, v in (ray.get(ref) or {}).items():
                        failures[k] = failures.get(k, 0) + int(v)
                except Exception:
                    failures["error"] = failures.get("error", 0) + 1
        except Exception:
            pass
        for slot in self._env + self._gen:
            try:
                ray.kill(slot.handle)
            except Exception:
                pass
        return failures
