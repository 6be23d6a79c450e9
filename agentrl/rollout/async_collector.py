"""Asynchronous rollouts (``run.mode: async``): episodes keep running while the learner trains.

``train.py`` calls :meth:`AsyncCollector.next_batch` where the synchronous loop collects a batch.
A producer coroutine on the sandbox runtime's background loop (where env steps already run)
admits groups and plays their episodes through the rollout's streaming API (``play(spec)``,
LocalRollout and RayRollout); the learner trains in the main thread meanwhile, and after each
train_step ``rollout.sync_weights`` swaps the engine's weights, so episodes in flight go on with
the new weights (partial rollouts) and every token keeps the version that sampled it.

Admission (AReaL-style capacity, no drop-and-requeue): the unit is a group (the G trajectories
of one task). With the learner at version V (completed train_steps) a new group may start only
while ``groups_admitted < (V + max_staleness + 1) * tasks_per_step``. Each train_step consumes
``tasks_per_step`` finished groups.

Staleness guarantee: no trained token is more than ``max_staleness`` (k) versions older than
the weights it is trained from. A group's *deadline* is ``o + k`` where ``o`` is the version
of its oldest token (a lower bound while it runs: its admission version); it must be trained
at a version <= its deadline. ``async_order: fifo`` trains groups in admission order, which
meets every deadline (the group admitted n-th starts at version >= n // tasks_per_step - k and
is trained at version n // tasks_per_step). ``async_order: completion`` trains finished groups
first, in finishing order, but first includes the fewest groups with the earliest deadlines
such that, after this step, at most ``j * tasks_per_step`` of the remaining groups have a
deadline within j versions (j = 1 .. k-1, and none is due now); the learner waits for those
groups to finish. Admission bounds the rest, so the forced set never exceeds a batch
(docs/async.md has the argument). ``max_staleness: 0`` admits one batch per version and trains
exactly it: the synchronous loop, same tasks, seeds and order.

Batches counted in turns (``rollout.turns_per_step`` N, turn-level context policies): a
train_step takes finished groups until the batch holds at least N turn samples, and always
every group whose deadline is now (so a batch has no upper bound and no group outlives its
deadline: the staleness guarantee needs no look-ahead). ``completion``: the due groups, then
finished groups in finishing order; ``fifo``: finished groups in admission order (waiting for
the oldest). Episodes still running at the cut go on with the next weights and are trained in
a later batch, every token keeping the version that sampled it (``async/partial_frac``).
Admission allows ``tasks_per_step + max_staleness x G`` groups in flight and untrained, G the
mean number of groups the batches so far took (``tasks_per_step`` before the first), so work
in flight follows the episodes' lengths; when a batch cannot form and nothing is running,
``tasks_per_step`` more groups start (a round). With ``max_staleness: 0`` that is exactly the
synchronous loop's rounds (:func:`agentrl.train.collect_batch`).

Checkpoints: :meth:`state_dict` holds the sampler position and the sampler positions of the
groups admitted but not yet trained; after a resume those groups are played again from the
start (their partial episodes are discarded), before any new task, so nothing is lost or
trained twice, and the restart is deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from agentrl.types import Trajectory

from .agent_loop import EpisodeSpec
from .tasks import TaskSampler

log = logging.getLogger(__name__)

ORDERS = ("completion", "fifo")


@dataclass
class _Group:
    """One admitted group: its admission index ``order`` (over the run), sampler ``position``,
    the collector version at admission, specs, and the trajectories as they finish."""

    order: int
    position: int
    admitted_version: int
    specs: list[EpisodeSpec]
    trajs: list[Trajectory | None] = field(default_factory=list)
    finished_seq: int | None = None  # completion order among groups; None while running
    tasks: list[asyncio.Task] = field(default_factory=list)
    oldest: list[float] = field(default_factory=list)  # per member: its oldest trained token's version

    def __post_init__(self) -> None:
        self.trajs = [None] * len(self.specs)
        self.oldest = [float(self.admitted_version)] * len(self.specs)

    def finish_member(self, i: int, traj: Trajectory) -> None:
        """Record member ``i``'s trajectory and, once, the version of its oldest trained token
        (inf when it generated nothing): the per-token scan happens here, not on every
        scheduling decision."""
        self.trajs[i] = traj
        self.oldest[i] = min((v for v, m in zip(traj.policy_versions, traj.loss_mask) if m), default=float("inf"))

    @property
    def finished(self) -> bool:
        return self.finished_seq is not None

    def oldest_version(self) -> float:
        """Lower bound on the version of the group's oldest token: exact for finished members
        (inf when a member generated nothing), the admission version for running ones."""
        return min(self.oldest, default=float("inf"))


class AsyncCollector:
    """Produces training batches asynchronously; the loop calls :meth:`next_batch`.

    Args:
        rollout: LocalRollout or RayRollout (needs ``async play(spec) -> Trajectory``).
        sampler: the run's TaskSampler (advanced one group at a time, from the producer).
        group_size, tasks_per_step: G and groups per train_step.
        max_staleness: k, in versions (train_steps).
        order: "completion" (finished first, deadlines forced) or "fifo" (admission order).
        turns_per_step: batches counted in turn samples (module docstring); None: tasks_per_step
            groups per batch.
    """

    def __init__(self, rollout: Any, sampler: TaskSampler, *, group_size: int, tasks_per_step: int, max_staleness: int, order: str = "completion",
                 turns_per_step: int | None = None) -> None:
        if order not in ORDERS:
            raise ValueError(f"async order must be one of {ORDERS}, got {order!r}")
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if turns_per_step is not None and turns_per_step < 1:
            raise ValueError(f"turns_per_step must be >= 1 or None, got {turns_per_step}")
        self.rollout, self.sampler = rollout, sampler
        self.G, self.tps, self.k, self.order = group_size, tasks_per_step, max_staleness, order
        self.turns = turns_per_step
        self._batch_groups: list[int] = []  # groups each batch took (turns mode: the admission estimate)
        self._round = 0  # turns mode: groups still to admit for a round (a batch could not form, nothing running)
        self._between = False  # a batch was taken and the learner has not asked for the next one
        self._groups: dict[int, _Group] = {}  # admitted, not yet trained, by order
        self._pending: list[int] = []  # sampler positions to replay first (from a checkpoint)
        self._version = 0
        self._consumed = 0  # groups trained so far (over the run)
        self._next_order = 0
        self._finish_seq = 0
        self._producer: asyncio.Task | None = None
        self._wake_producer: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._running = 0  # episodes admitted and not finished
        self._idle_since: float | None = None
        self._idle_s = 0.0
        self._finished_stats = [0, 0.0, 0.0]  # trajectories, tokens, turns (all finished so far)
        self._failed_total = 0  # failed episodes trained so far (over this collector's life)
        self._error: BaseException | None = None  # what a play() raised: the rollout cannot go on

    # ------------------------------------------------------------------ the loop's interface
    def next_batch(self, version: int) -> tuple[list[Trajectory], dict[str, float]]:
        """The trajectories to train the weights of ``version`` on (``tasks_per_step`` groups,
        by admission order, members by sample index) and the ``async/*`` metrics. Blocks until
        the batch is ready; also tells the producer the learner is at ``version``.

        Raises RuntimeError when an episode's ``play`` raised (rollouts return failures as
        failed Trajectories, so an exception means the rollout cannot go on, e.g. a Ray worker
        that keeps dying while it starts) or the producer crashed."""
        from agentrl.sandboxes import run_sync

        t0 = time.perf_counter()
        groups, forced, in_flight, idle_s = run_sync(self._take(version))
        wait_s = time.perf_counter() - t0
        trajs = [t for g in groups for t in g.trajs if t is not None]
        metrics = self._metrics(trajs, version)
        metrics.update({
            "async/learner_wait_s": wait_s, "async/rollout_idle_s": idle_s, "async/forced_groups": float(forced),
            "async/groups_in_flight": float(in_flight), "async/version": float(version),
        })
        return trajs, metrics

    def state_dict(self) -> dict[str, Any]:
        """Sampler position and the positions of admitted, untrained groups (replayed first on
        resume). Stored where the synchronous loop stores the sampler's state."""
        from agentrl.sandboxes import run_sync

        async def snapshot() -> dict[str, Any]:
            pending = [g.position for g in sorted(self._groups.values(), key=lambda g: g.order)] + list(self._pending)
            return {**self.sampler.state_dict(), "pending": pending}

        return run_sync(snapshot())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore before the first :meth:`next_batch` (a synchronous run's sampler state works too)."""
        if self._producer is not None:
            raise RuntimeError("AsyncCollector.load_state_dict must be called before the first next_batch")
        self.sampler.load_state_dict(state)
        self._pending = [int(p) for p in state.get("pending", [])]

    def close(self) -> None:
        """Stop admitting and cancel the episodes in flight (their work is discarded)."""
        from agentrl.sandboxes import run_sync

        if self._producer is not None:
            run_sync(self._shutdown())

    # ------------------------------------------------------------------ on the event loop
    def _start(self, version: int) -> None:
        self._consumed = version * self.tps  # every train_step trained tasks_per_step groups
        self._next_order = self._consumed
        self._wake_producer, self._changed = asyncio.Event(), asyncio.Event()
        self._idle_since = time.perf_counter()
        self._producer = asyncio.get_running_loop().create_task(self._produce())
        self._producer.add_done_callback(lambda _: self._changed.set())  # a crashed producer wakes _take

    def _capacity_left(self) -> int:
        if self.turns is None:
            return (self._version + self.k + 1) * self.tps - (self._consumed + len(self._groups))
        if self.k == 0 and self._between:  # batch V is taken: a group started now would first train at V + 1
            return 0
        return max(self._turns_capacity(), self._round)

    def _turns_capacity(self) -> int:
        """Turns mode: groups that may still start, beside a round's (module docstring)."""
        per_batch = sum(self._batch_groups) / len(self._batch_groups) if self._batch_groups else self.tps
        return self.tps + math.ceil(self.k * per_batch) - len(self._groups)

    async def _produce(self) -> None:
        while True:
            while self._capacity_left() <= 0:
                self._wake_producer.clear()
                await self._wake_producer.wait()
            self._admit()

    def _admit(self) -> None:
        if self._pending:
            position = self._pending.pop(0)
        else:
            position = self.sampler.position
            self.sampler.position += 1
        self._round = max(self._round - 1, 0)
        g = _Group(self._next_order, position, self._version, self.sampler.group_specs(position, self.G))
        self._next_order += 1
        self._groups[g.order] = g
        loop = asyncio.get_running_loop()
        for i, spec in enumerate(g.specs):
            if self._running == 0 and self._idle_since is not None:
                self._idle_s += time.perf_counter() - self._idle_since
                self._idle_since = None
            self._running += 1
            g.tasks.append(loop.create_task(self._play(g, i, spec)))

    async def _play(self, g: _Group, i: int, spec: EpisodeSpec) -> None:
        try:
            traj = await self.rollout.play(spec)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # play returns failures as failed Trajectories; raising means it cannot go on
            log.error("episode %s#%d raised %s: %s; stopping", spec.options, spec.sample_index, type(e).__name__, e)
            if self._error is None:
                self._error = e
            self._changed.set()
            return
        g.finish_member(i, traj)
        self._running -= 1
        if self._running == 0:
            self._idle_since = time.perf_counter()
        if not traj.failed:
            s = self._finished_stats
            s[0], s[1], s[2] = s[0] + 1, s[1] + len(traj.input_ids), s[2] + traj.num_turns
        if all(t is not None for t in g.trajs):
            g.finished_seq = self._finish_seq
            self._finish_seq += 1
            self._changed.set()

    async def _take(self, version: int) -> tuple[list[_Group], int, int, float]:
        if self._producer is None:
            self._start(version)
        self._version, self._between = version, False
        self._wake_producer.set()
        while True:
            if self._error is not None:
                raise RuntimeError(f"an episode of the async rollout raised {type(self._error).__name__}: {self._error}") from self._error
            chosen, forced = self._choose()
            if chosen is not None:
                break
            if self.turns is not None and self._running == 0 and self._round == 0 and self._turns_capacity() <= 0:
                self._round = self.tps  # too few turn samples and nothing running: start a round
                self._wake_producer.set()
            if self._producer.done() and not self._producer.cancelled() and self._producer.exception() is not None:
                raise RuntimeError("the async rollout producer failed") from self._producer.exception()
            self._changed.clear()
            await self._changed.wait()
        for g in chosen:
            del self._groups[g.order]
        self._consumed += len(chosen)
        self._batch_groups.append(len(chosen))
        self._between = True
        self._wake_producer.set()
        idle = self._idle_s + (time.perf_counter() - self._idle_since if self._idle_since is not None else 0.0)
        self._idle_s = 0.0
        if self._idle_since is not None:
            self._idle_since = time.perf_counter()
        return sorted(chosen, key=lambda g: g.order), forced, len(self._groups), idle

    @staticmethod
    def _turn_samples(g: _Group) -> int:
        """Training rows of a finished group: one per turn sample, failed episodes none."""
        return sum(t.num_samples for t in g.trajs if t is not None)

    def _choose_turns(self, by_order: list[_Group]) -> tuple[list[_Group] | None, int]:
        """Turns mode (module docstring): every due group, then finished groups until the batch
        holds ``turns_per_step`` turn samples."""
        V = self._version
        due = [g for g in by_order if g.oldest_version() + self.k <= V]
        if not all(g.finished for g in due):
            return None, len(due)
        if self.order == "fifo":
            rest = []
            for g in by_order:
                if not g.finished:
                    break
                rest.append(g)
        else:
            rest = sorted((g for g in by_order if g.finished), key=lambda g: g.finished_seq)
        chosen, n = list(due), sum(self._turn_samples(g) for g in due)
        for g in rest:
            if n >= self.turns:
                break
            if g not in due:
                chosen.append(g)
                n += self._turn_samples(g)
        return (chosen if n >= self.turns else None), len(due)

    def _choose(self) -> tuple[list[_Group] | None, int]:
        """The batch if it can be formed now (else None), and how many groups were forced."""
        by_order = sorted(self._groups.values(), key=lambda g: g.order)
        if self.turns is not None:
            return self._choose_turns(by_order)
        if self.order == "fifo":
            head = by_order[: self.tps]
            return (head if len(head) == self.tps and all(g.finished for g in head) else None), 0
        forced = self._forced(by_order)
        if not all(g.finished for g in forced):
            return None, len(forced)
        rest = sorted((g for g in by_order if g.finished and g not in forced), key=lambda g: g.finished_seq)
        chosen = forced + rest[: self.tps - len(forced)]
        return (chosen if len(chosen) == self.tps else None), len(forced)

    def _forced(self, groups: list[_Group]) -> list[_Group]:
        """The fewest earliest-deadline groups this batch must hold so that no group outlives
        its deadline: for j = 0 .. max(k-1, 0), at most j * tasks_per_step groups with a deadline
        <= version + j may remain after this step."""
        V = self._version
        deadline = {g.order: g.oldest_version() + self.k for g in groups}
        need = 0
        for j in range(max(self.k, 1)):
            due = sum(1 for g in groups if deadline[g.order] <= V + j)
            need = max(need, due - j * self.tps)
        if need > self.tps:  # cannot happen under admission control; keep going, loudly
            log.warning("async: %d groups are due but a batch holds %d; the staleness bound will be exceeded", need, self.tps)
            need = self.tps
        return sorted(groups, key=lambda g: (deadline[g.order], g.order))[:need]

    async def _shutdown(self) -> None:
        tasks = [t for g in self._groups.values() for t in g.tasks if not t.done()]
        if self._producer is not None:
            tasks.append(self._producer)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._producer = None

    # ------------------------------------------------------------------ metrics
    def _metrics(self, trajs: list[Trajectory], version: int) -> dict[str, float]:
        """Staleness of the trained tokens (age = ``version`` - the version that sampled the
        token), partial rollouts, failed episodes (this batch, and all trained by this
        collector), and the length bias: tokens and turns of this batch against all
        trajectories finished so far (failed ones left out)."""
        ages = [version - v for t in trajs if not t.failed for v, m in zip(t.policy_versions, t.loss_mask) if m]
        out: dict[str, float] = {
            "async/staleness_mean": sum(ages) / len(ages) if ages else 0.0,
            "async/staleness_max": float(max(ages, default=0)),
        }
        for a in range(self.k + 1):
            out[f"async/staleness_hist/{a}"] = sum(1 for x in ages if x == a) / max(len(ages), 1)
        ok = [t for t in trajs if not t.failed]
        self._failed_total += len(trajs) - len(ok)
        out["async/failed_episodes"] = float(len(trajs) - len(ok))
        out["async/failed_episodes_total"] = float(self._failed_total)
        spans = [len({v for v, m in zip(t.policy_versions, t.loss_mask) if m}) > 1 for t in ok]
        out["async/partial_frac"] = sum(spans) / max(len(spans), 1)
        n, tokens, turns = self._finished_stats
        if ok and n:
            bt, bn = sum(len(t.input_ids) for t in ok) / len(ok), sum(t.num_turns for t in ok) / len(ok)
            ft, fn = tokens / n, turns / n
            out.update({
                "async/length_bias/batch_tokens_mean": bt, "async/length_bias/finished_tokens_mean": ft,
                "async/length_bias/tokens_ratio": bt / ft if ft else 1.0,
                "async/length_bias/batch_turns_mean": bn, "async/length_bias/finished_turns_mean": fn,
                "async/length_bias/turns_ratio": bn / fn if fn else 1.0,
            })
        return out
