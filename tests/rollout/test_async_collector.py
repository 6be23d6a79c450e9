"""AsyncCollector's scheduling on a fake rollout: episodes of very mixed lengths whose tokens
carry the fake engine's version when they are "sampled". Checks the staleness guarantee
(acceptance item 2 of issue 7) over many train_steps for both orders, the admission capacity,
the max_staleness=0 equivalence with synchronous batches, and checkpoint/resume of the
groups in flight. The training-level tests are in tests/train/test_async.py."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from agentrl.rollout.async_collector import AsyncCollector
from agentrl.rollout.tasks import TaskSampler
from agentrl.types import Trajectory

pytestmark = pytest.mark.timeout(300)


class FakeRollout:
    """``play`` emits one token per turn, ``turn_s`` apart, stamped with the current version;
    the number of turns is a seeded draw from ``lengths`` per (task, sample)."""

    turn_samples = False  # FakeTurnRollout: each turn its own sample

    def __init__(self, lengths=(1, 2, 3, 12), turn_s: float = 0.004) -> None:
        self.version = 0
        self.lengths, self.turn_s = lengths, turn_s
        self.started: list[tuple[int, int]] = []  # (seed, sample_index) in start order
        self.running = 0
        self.max_running = 0

    async def play(self, spec):
        self.started.append((spec.seed, spec.sample_index))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        n = random.Random(spec.seed * 31 + spec.sample_index).choice(self.lengths)
        t = Trajectory(task_id=f"task/{spec.seed}", sample_index=spec.sample_index)
        if not self.turn_samples:
            t.append([1], generated=False)
        try:
            for turn in range(n):
                await asyncio.sleep(self.turn_s)
                if self.turn_samples:  # this turn's prompt, then its sampled ids: one sample
                    t.append([1], generated=False)
                    t.segments.append(3)
                t.append([2, 3], generated=True, turn=turn, logprobs=[-0.5, -0.5], version=self.version)
                t.turn_rewards.append(0.0)
        finally:
            self.running -= 1
        return t


def run_steps(collector, fake, steps, *, train_s=(0.0, 0.02), seed=0, start=0):
    """Drive the collector like train.py; returns [(version, trajectories, metrics)]."""
    rng = random.Random(seed)
    out = []
    for version in range(start, start + steps):
        trajs, metrics = collector.next_batch(version)
        out.append((version, trajs, metrics))
        time.sleep(rng.uniform(*train_s))  # the learner "trains"
        fake.version = version + 1  # sync_weights
    return out


def ages(version, trajs):
    return [version - v for t in trajs for v, m in zip(t.policy_versions, t.loss_mask) if m]


@pytest.mark.parametrize("order", ["completion", "fifo"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_no_trained_token_is_older_than_max_staleness(order, k):
    fake = FakeRollout()
    sampler = TaskSampler(1000, seed=k)
    c = AsyncCollector(fake, sampler, group_size=2, tasks_per_step=2, max_staleness=k, order=order)
    try:
        steps = run_steps(c, fake, 30, seed=k)
    finally:
        c.close()
    seen = []
    for version, trajs, m in steps:
        assert len(trajs) == 4 and len({t.task_id for t in trajs}) == 2  # two whole groups
        a = ages(version, trajs)
        assert min(a) >= 0 and max(a) <= k, (version, max(a))
        assert m["async/staleness_max"] == max(a) and m["async/groups_in_flight"] <= (k + 1) * 2
        assert m["async/staleness_hist/0"] + sum(m[f"async/staleness_hist/{i}"] for i in range(1, k + 1)) == pytest.approx(1.0)
        seen += [t.task_id for t in trajs[::2]]
    assert len(seen) == len(set(seen))  # no group trained twice
    assert max(m["async/staleness_max"] for _, _, m in steps) >= 1  # it really ran off-policy
    assert any(m["async/partial_frac"] > 0 for _, _, m in steps)  # episodes crossed weight updates
    if order == "fifo":  # admission order, exactly the synchronous task order
        positions = [int(tid.split("/")[1]) - k * 1_000_003 for _, trajs, _ in steps for tid in [t.task_id for t in trajs[::2]]]
        assert positions == list(range(60))


def test_completion_order_prefers_finished_groups_and_forces_the_due_ones():
    """Lengths 1 and 30 turns: short groups finish first and are trained first (the length
    bias shows in the metrics), but a long group is never left beyond its deadline."""
    fake = FakeRollout(lengths=(1, 30), turn_s=0.003)
    c = AsyncCollector(fake, TaskSampler(1000, seed=5), group_size=1, tasks_per_step=2, max_staleness=2, order="completion")
    try:
        steps = run_steps(c, fake, 25, train_s=(0.01, 0.01))
    finally:
        c.close()
    assert max(m["async/staleness_max"] for _, _, m in steps) <= 2
    assert any(m["async/forced_groups"] > 0 for _, _, m in steps)
    early = [m["async/length_bias/tokens_ratio"] for _, _, m in steps[:3]]
    assert all(r > 0 for r in early)


def test_admission_capacity_is_max_staleness_plus_one_batches():
    fake = FakeRollout(lengths=(50,), turn_s=0.002)
    c = AsyncCollector(fake, TaskSampler(100), group_size=2, tasks_per_step=3, max_staleness=1, order="fifo")
    try:
        c.next_batch(0)
        time.sleep(0.05)
        state = c.state_dict()
    finally:
        c.close()
    # after one batch: (0 + 1 + 1) * 3 groups admitted in all, 3 trained, 3 in flight
    assert fake.max_running <= 2 * 3 * 2
    assert len(state["pending"]) == 3 and state["position"] == 6


def test_staleness_zero_plays_the_synchronous_batches():
    """max_staleness 0: each batch is exactly the next tasks_per_step tasks of the sampler,
    and no episode of batch V+1 starts before version V+1."""
    fake = FakeRollout()
    sampler, reference = TaskSampler(50, seed=3), TaskSampler(50, seed=3)
    c = AsyncCollector(fake, sampler, group_size=2, tasks_per_step=3, max_staleness=0)
    try:
        for version, trajs, m in run_steps(c, fake, 5):
            want = reference.next_specs(3, 2)
            assert [(t.task_id, t.sample_index) for t in trajs] == [(f"task/{s.seed}", s.sample_index) for s in want]
            assert set(ages(version, trajs)) == {0}
    finally:
        c.close()
    assert fake.started[:30] == [(s.seed, s.sample_index) for s in TaskSampler(50, seed=3).next_specs(15, 2)]


def test_resume_replays_the_groups_in_flight_first():
    """A checkpoint holds the positions of the groups in flight; a resumed collector plays
    them again first, in order, then continues with new tasks: none lost, none twice."""
    def position(t):
        return int(t.task_id.split("/")[1]) - 1_000_003

    fake = FakeRollout(lengths=(1, 40), turn_s=0.002)
    c = AsyncCollector(fake, TaskSampler(100, seed=1), group_size=2, tasks_per_step=2, max_staleness=2, order="completion")
    try:
        before = [position(t) for _, trajs, _ in run_steps(c, fake, 2) for t in trajs[::2]]
        state = c.state_dict()
    finally:
        c.close()
    pending = state["pending"]
    assert pending and state["position"] == len(pending) + 4 and not set(pending) & set(before)
    fake2 = FakeRollout(lengths=(2,))
    c2 = AsyncCollector(fake2, TaskSampler(100, seed=1), group_size=2, tasks_per_step=2, max_staleness=2, order="fifo")
    c2.load_state_dict(state)
    try:
        after = [position(t) for _, trajs, _ in run_steps(c2, fake2, 3, start=2) for t in trajs[::2]]
    finally:
        c2.close()
    assert after[: len(pending)] == pending
    assert after[len(pending):] == list(range(state["position"], state["position"] + 6 - len(pending)))
    assert sorted(before + after) == sorted(set(before + after))


# ---------------------------------------------------------------- batches counted in turns
class FakeTurnRollout(FakeRollout):
    """FakeRollout under a turn-level context policy: each turn one turn sample (a one-token
    prompt, then the two sampled tokens), ``segments`` their lengths."""

    turn_samples = True


def samples(trajs):
    return sum(len(t.segments) for t in trajs)


@pytest.mark.parametrize("order", ["completion", "fifo"])
@pytest.mark.parametrize("k", [1, 2])
def test_turn_batches_hold_the_turns_asked_and_keep_the_staleness_bound(order, k):
    """Episodes of 1 to 12 turns, batches of at least 12 turn samples: each batch is whole
    groups, holds >= 12 samples, and no trained token is more than k versions old; episodes
    running at a cut go on with the next weights (partial rollouts) and are trained later."""
    fake = FakeTurnRollout()
    c = AsyncCollector(fake, TaskSampler(1000, seed=k), group_size=2, tasks_per_step=2, max_staleness=k, order=order,
                       turns_per_step=12)
    try:
        steps = run_steps(c, fake, 25, seed=k)
    finally:
        c.close()
    seen, sizes = [], []
    for version, trajs, m in steps:
        groups = [t.task_id for t in trajs[::2]]
        assert [t.task_id for t in trajs[1::2]] == groups  # whole groups, members in order
        assert samples(trajs) >= 12
        a = ages(version, trajs)
        assert min(a) >= 0 and max(a) <= k, (version, max(a))
        seen += groups
        sizes.append(len(groups))
    assert len(seen) == len(set(seen))  # no group trained twice
    assert len(set(sizes)) > 1  # the number of groups per batch follows the episodes' lengths
    assert any(m["async/partial_frac"] > 0 for _, _, m in steps)  # episodes crossed weight updates


def test_turn_batches_at_staleness_zero_are_the_synchronous_rounds():
    """max_staleness 0: rounds of tasks_per_step groups, each played to the end, until the batch
    holds turns_per_step samples; the tasks of the synchronous loop, in its order, all on-policy."""
    fake = FakeTurnRollout(lengths=(1, 2, 3))
    sampler, reference = TaskSampler(200, seed=4), TaskSampler(200, seed=4)
    c = AsyncCollector(fake, sampler, group_size=2, tasks_per_step=2, max_staleness=0, turns_per_step=10)
    lengths = {}
    try:
        for version, trajs, m in run_steps(c, fake, 6):
            want, n = [], 0
            while n < 10:  # the synchronous rounds (agentrl.train.collect_batch)
                specs = reference.next_specs(2, 2)
                want += specs
                n += sum(random.Random(s.seed * 31 + s.sample_index).choice((1, 2, 3)) for s in specs)
            assert [(t.task_id, t.sample_index) for t in trajs] == [(f"task/{s.seed}", s.sample_index) for s in want]
            assert samples(trajs) == n and set(ages(version, trajs)) == {0}
            lengths[version] = len(want) // 4
    finally:
        c.close()
    assert max(lengths.values()) >= 2  # some step needed more than one round


def test_turns_per_step_is_checked():
    with pytest.raises(ValueError, match="turns_per_step must be >= 1 or None, got 0"):
        AsyncCollector(FakeTurnRollout(), TaskSampler(10), group_size=2, tasks_per_step=2, max_staleness=1, turns_per_step=0)
