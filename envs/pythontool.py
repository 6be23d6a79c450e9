"""PythonTool: answer procedurally generated reasoning questions with a Python session.

Source: reasoning-gym (Stojanovski et al. 2025, "REASONING GYM: Reasoning Environments for
Reinforcement Learning with Verifiable Rewards"), the ``reasoning-gym`` package's procedural
generators. Default tasks (all solvable by a short program): ``basic_arithmetic``,
``count_primes``, ``letter_counting``, ``number_sorting``, ``prime_factorization``,
``base_conversion``, ``shortest_path`` (grid BFS) and ``rotten_oranges`` (multi-source BFS).
Any other registered reasoning-gym dataset can be named in ``tasks``.

Task: the generator's question. Tools: ``python(code)`` runs code in one persistent,
sandboxed Python session per episode (variables, imports and files survive between turns; a
crash or timeout is reported and the session restarts clean) and ``answer(answer)`` ends the
episode.

Reward: reasoning-gym's own ``score_answer(answer, entry)`` for the generator, in [0, 1]
(1.0 for the exact answer; some generators give partial credit), paid once on ``answer``.
No reward on truncation.

Tasks and split: task index ``i`` of a split is item ``i // len(tasks)`` of generator
``tasks[i % len(tasks)]``, so tasks interleave. Items are a pure function of
(generator, config, seed): reasoning-gym draws item ``j`` from ``random.Random(seed + j)``,
with ``seed = data_seed`` for ``train`` and ``data_seed + 10_000_000`` for ``test``, so the two
splits never share an item seed (``train_size``/``test_size`` items each, default 1000/200).
Distinct seeds can still draw the same question from a small space (``prime_factorization``
draws one number in [2, 1000]: 6 of its 25 default test items were train questions), so the
test split skips every generator item whose question is also one of that generator's train
questions: test item ``k`` is the k-th such survivor, still a pure function of the options.
A generator whose space is too small to leave ``test_size`` unseen questions raises ValueError.

Difficulty: ``level=k`` sets every attribute of the generator's reasoning-gym curriculum to
level k (``curriculum.set_global_level``; clamped to each attribute's last level), e.g. more
terms, bigger numbers or grids; ``task_config={"count_primes": {"max_n": 100}}`` overrides
single config fields. ``level=None`` (default) uses each generator's own defaults.

Horizon: the expert takes 3 turns (store the gold answer in a variable, print it in the next
turn, submit what was printed; long answers are printed in chunks, one more turn each, e.g.
up to 8 turns for ``number_sorting`` at level 3); ``max_turns`` (default 10) bounds the
episode.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import Policy, Task, ToolEnv, suggest
from .exec_output import exec_info, format_exec
from .tools import ToolOutput, tool

DEFAULT_TASKS = (
    "basic_arithmetic", "count_primes", "letter_counting", "number_sorting",
    "prime_factorization", "base_conversion", "shortest_path", "rotten_oranges",
)
TEST_SEED_OFFSET = 10_000_000
_MANAGED_FIELDS = ("seed", "size")


def _test_scan_limit(need: int) -> int:
    """How many test items are looked at to find ``need`` that are not train questions."""
    return 4 * need + 100


@functools.cache
def _registry() -> tuple[dict[str, Any], dict[str, Any]]:
    import reasoning_gym  # noqa: F401 - registers every dataset (~1-2 s, first use only)
    from reasoning_gym.factory import CURRICULA, DATASETS

    return DATASETS, CURRICULA


def build_dataset(name: str, *, seed: int, size: int, level: int | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """A reasoning-gym dataset, validated; raises ValueError with the fix on bad options."""
    datasets, curricula = _registry()
    if name not in datasets:
        raise ValueError(
            f"unknown reasoning-gym task {name!r}.{suggest(name, list(datasets))} "
            f"Known tasks ({len(datasets)}): {', '.join(sorted(datasets))}."
        )
    dataset_cls, config_cls = datasets[name]
    overrides = dict(overrides or {})
    fields = [f.name for f in dataclasses.fields(config_cls) if f.name not in _MANAGED_FIELDS]
    for key in overrides:
        if key not in fields:
            hint = suggest(key, fields)
            managed = " (seed and size are set by the env: use data_seed, train_size, test_size)" if key in _MANAGED_FIELDS else ""
            raise ValueError(f"task_config[{name!r}]: unknown field {key!r}{managed}.{hint} Fields of {config_cls.__name__}: {fields}.")
    base = {"seed": seed, "size": size}
    if level is not None:
        if name not in curricula:
            raise ValueError(f"level={level} needs a reasoning-gym curriculum, and task {name!r} has none; use task_config instead.")
        curriculum = curricula[name]()
        curriculum.set_global_level(level)
        config = curriculum.generate_configuration(base)
        config = dataclasses.replace(config, **overrides)
    else:
        config = config_cls(**base, **overrides)
    try:
        return dataset_cls(config=config)
    except (AssertionError, ValueError, TypeError) as e:
        raise ValueError(f"invalid reasoning-gym config for task {name!r}: {type(e).__name__}: {e}") from e


SYSTEM_PROMPT = """You solve problems with the help of a Python sandbox. Tools: python (run code in a persistent
session: variables and imports survive between calls; print what you want to see) and answer
(submit your final answer as a string; this ends the episode). Call a tool with
<tool_call>
{"name": "<tool name>", "arguments": {<JSON arguments>}}
</tool_call>
You may think before calling. Tool results come back in the next message."""


class PythonToolEnv(ToolEnv):
    """reasoning-gym questions with a stateful Python tool; see the module docstring."""

    description = "reasoning-gym procedural tasks (8 generators) with a stateful Python session; scorer reward; horizon 3-10"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(
        self,
        *,
        tasks: Sequence[str] = DEFAULT_TASKS,
        level: int | None = None,
        task_config: dict[str, dict[str, Any]] | None = None,
        train_size: int = 1000,
        test_size: int = 200,
        data_seed: int = 0,
        timeout_s: float = 10.0,
        max_turns: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_turns=max_turns, **kwargs)
        if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"PythonToolEnv: tasks must be a non-empty list of reasoning-gym task names, got {tasks!r}.")
        if level is not None and (not isinstance(level, int) or isinstance(level, bool) or level < 0):
            raise ValueError(f"PythonToolEnv: level must be None or an int >= 0, got {level!r}.")
        for name, value in (("train_size", train_size), ("test_size", test_size)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < TEST_SEED_OFFSET:
                raise ValueError(f"PythonToolEnv: {name} must be an int in [1, {TEST_SEED_OFFSET}), got {value!r}.")
        task_config = dict(task_config or {})
        for name in task_config:
            if name not in tasks:
                raise ValueError(f"PythonToolEnv: task_config names {name!r}, which is not in tasks {list(tasks)}.{suggest(name, list(tasks))}")
        self.tasks = tuple(tasks)
        self.level = level
        self.timeout_s = float(timeout_s)
        self._sizes = {"train": train_size, "test": test_size}
        seeds = {"train": data_seed, "test": data_seed + TEST_SEED_OFFSET}
        per_task = {split: math.ceil(self._sizes[split] / len(self.tasks)) for split in self.splits}
        # the test datasets' (virtual, lazily generated) size leaves room to skip train questions
        scan = {"train": per_task["train"], "test": _test_scan_limit(per_task["test"])}
        self._datasets = {
            (split, name): build_dataset(name, seed=seeds[split], size=scan[split], level=level, overrides=task_config.get(name))
            for split in self.splits for name in self.tasks
        }
        self._per_task = per_task
        self._test_items: dict[str, list[int]] = {}
        self._session = None

    def _test_item(self, name: str, item_index: int) -> int:
        """The test dataset index of test item ``item_index`` of generator ``name``: items whose
        question is one of the generator's train questions are skipped (computed once per
        generator, on first use: ~0.1 ms per item)."""
        if name not in self._test_items:
            train = self._datasets[("train", name)]
            seen = {train[j]["question"] for j in range(self._per_task["train"])}
            test, need = self._datasets[("test", name)], self._per_task["test"]
            kept = [j for j in range(len(test)) if test[j]["question"] not in seen][:need]
            if len(kept) < need:
                raise ValueError(
                    f"PythonToolEnv: task {name!r} has too few questions for disjoint splits: only {len(kept)} of "
                    f"its first {len(test)} test items are not train questions, and the test split needs {need} "
                    f"(test_size={self._sizes['test']} over {len(self.tasks)} task(s)). Lower train_size or "
                    "test_size, or widen the generator with level/task_config."
                )
            self._test_items[name] = kept
        return self._test_items[name][item_index]

    # ----------------------------------------------------------------- tasks
    def num_tasks(self, split: str) -> int:
        return self._sizes[split]

    def get_task(self, split: str, index: int) -> Task:
        name = self.tasks[index % len(self.tasks)]
        item_index = index // len(self.tasks)
        dataset = self._datasets[(split, name)]
        entry = dataset[self._test_item(name, item_index) if split == "test" else item_index]
        level = "" if self.level is None else f"@L{self.level}"
        prompt = (
            f"{entry['question']}\n\nUse the python tool to work it out, then give your final answer "
            "with the answer tool (just the answer, in the format the question asks for)."
        )
        return Task(f"{name}{level}/{split}/{item_index}", split, index, prompt, data={"name": name, "entry": entry, "dataset": dataset})

    def system_prompt(self, task: Task) -> str:
        return SYSTEM_PROMPT

    async def teardown(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ----------------------------------------------------------------- tools
    @tool
    async def python(self, code: str) -> ToolOutput:
        """Run Python code in your persistent session (variables and imports survive between calls).
        Print the values you want to see.

        Args:
            code: Python source to run
        """
        if self._session is None:
            self._session = await self.open_session("python")
        result = await self._session.exec(code, timeout_s=self.timeout_s)
        return ToolOutput(format_exec(result), status=str(result.status), sandbox=exec_info(result))

    @tool
    def answer(self, answer: str) -> ToolOutput:
        """Submit your final answer; it is scored and the episode ends.

        Args:
            answer: the final answer, exactly in the format the question asks for
        """
        assert self.task is not None
        data = self.task.data
        try:
            score = float(data["dataset"].score_answer(answer, data["entry"]))
        except Exception as e:  # noqa: BLE001 - a scorer crash on odd input is a wrong answer
            score, error = 0.0, f"{type(e).__name__}: {e}"
        else:
            error = ""
        score = min(1.0, max(0.0, score)) if math.isfinite(score) else 0.0
        info = {"score": score, "task_name": data["name"], **({"scorer_error": error} if error else {})}
        verdict = "correct" if score >= 1.0 else ("partly correct" if score > 0 else "wrong")
        return ToolOutput(f"Your answer is {verdict}. Reward {score:g}.", reward=score, terminated=True, info=info)

    # ----------------------------------------------------------------- expert
    def expert(self) -> Policy:
        """Store the gold answer in the session, print it back in the next turn(s), submit what was
        printed.

        Exercises the session's state and the sandbox's output path: the submitted string is the
        one that came back from the sandbox, not the gold answer itself. An answer longer than
        half of ``max_tool_output_chars`` is printed in chunks, one turn each, so the horizon
        grows with the answer's length (3 turns for most items).
        """
        assert self.task is not None
        gold = self.task.data["entry"]["answer"]
        size = max(1, self.max_tool_output_chars // 2 - 10)  # json escapes at most double a chunk
        chunks = [(a, a + size) for a in range(0, len(gold), size)] or [(0, 0)]
        plan = [self.call("python", code=f"answer = {gold!r}")]
        plan += [self.call("python", code=f"import json\nprint(json.dumps(answer[{a}:{b}], ensure_ascii=False))") for a, b in chunks]
        steps = iter(plan)
        received: list[str] = []

        def policy(obs: Any) -> str:
            if len(received) < len(chunks) and obs[-1].get("name") == "python" and obs[-1]["content"].startswith('"'):
                try:
                    received.append(json.loads(obs[-1]["content"]))
                except ValueError:
                    received.append("")
            step = next(steps, None)
            return step if step is not None else self.call("answer", answer="".join(received))

        return policy


def known_tasks() -> list[str]:
    """Every reasoning-gym task name this env accepts."""
    return sorted(_registry()[0])


__all__ = ["DEFAULT_TASKS", "PythonToolEnv", "build_dataset", "known_tasks"]
