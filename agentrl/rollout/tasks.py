"""Which tasks each train_step plays: a seeded, resumable walk over the train split."""

from __future__ import annotations

import random

from .agent_loop import EpisodeSpec


class TaskSampler:
    """Shuffles the split's task indices once per epoch (seeded by (seed, epoch)) and hands
    them out in order; ``position`` (tasks handed out so far) is the whole state, so a resumed
    run continues with exactly the tasks an uninterrupted run would have played."""

    def __init__(self, num_tasks: int, *, seed: int = 0, split: str = "train", position: int = 0) -> None:
        if num_tasks < 1:
            raise ValueError(f"split {split!r} has no tasks")
        self.num_tasks, self.seed, self.split, self.position = num_tasks, seed, split, position
        self._order: tuple[int, list[int]] | None = None  # (epoch, its shuffled task order)

    def _index(self, k: int) -> int:
        epoch, offset = divmod(k, self.num_tasks)
        cached = self._order
        if cached is None or cached[0] != epoch:  # one shuffle per epoch, not per task (100k-task splits)
            order = list(range(self.num_tasks))
            random.Random(f"{self.seed}/{epoch}").shuffle(order)
            self._order = cached = (epoch, order)
        return cached[1][offset]

    def next_tasks(self, n: int) -> list[int]:
        out = [self._index(self.position + i) for i in range(n)]
        self.position += n
        return out

    def next_specs(self, tasks: int, group_size: int) -> list[EpisodeSpec]:
        """``tasks`` x ``group_size`` episode specs; group members share the task and differ in
        sample_index (and so in sampling seed)."""
        start = self.position
        self.position += tasks
        return [spec for k in range(start, start + tasks) for spec in self.group_specs(k, group_size)]

    def group_specs(self, position: int, group_size: int) -> list[EpisodeSpec]:
        """The ``group_size`` specs of the task handed out at ``position`` (a pure function of
        seed, split and position; the sampler does not move). Async training restarts the
        groups a checkpoint left unfinished from their positions."""
        index = self._index(position)
        return [EpisodeSpec({"task_index": index, "split": self.split}, sample_index=g, seed=self.seed * 1_000_003 + position) for g in range(group_size)]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


def eval_specs(num_tasks: int, episodes: int, *, split: str = "test", seed: int = 0) -> list[EpisodeSpec]:
    """A fixed set of held-out episodes (the same before and after training)."""
    indices = [(i * max(num_tasks // max(episodes, 1), 1)) % num_tasks for i in range(episodes)]
    return [EpisodeSpec({"task_index": idx, "split": split}, sample_index=0, seed=10_000 + seed + i) for i, idx in enumerate(indices)]
