"""The checks every registered env must pass (``agentrl envs check ID`` and the tests).

1. ``gymnasium.utils.env_checker.check_env`` on the unwrapped env;
2. seeded determinism: the same seed gives the same task and the same expert episode;
3. truncation at ``max_turns`` (with actions that never end the task);
4. ``close()`` twice is fine;
5. random strings as actions never raise;
6. the expert reaches full reward on a sample of tasks of every split;
7. no task id is in two splits (a union split such as "all" aside); a prompt in two splits is noted.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gymnasium.utils.env_checker import check_env

from .base import ToolEnv, run_episode
from .registry import make

#: Strings that break naive parsers: unclosed tags, bad JSON, wrong types, huge input.
NASTY_ACTIONS = [
    "",
    "hello",
    "<tool_call>",
    "<tool_call>{}</tool_call>",
    "<tool_call>not json</tool_call>",
    '<tool_call>{"name": 3}</tool_call>',
    '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "x", "arguments": "{bad"}</tool_call>',
    '<tool_call>[1, 2]</tool_call><tool_call>{"name": null}</tool_call>',
    "</tool_call><tool_call>" * 50,
    "\x00\udcff\ufffd" * 10,
    "x" * 20000,
]


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    wall_time_s: float


def random_actions(n: int, seed: int = 0, tool_names: Iterable[str] = ()) -> list[str]:
    """Random strings plus random, mostly invalid, tool calls."""
    rng = random.Random(seed)
    alphabet = "abc{}[]<>\":,_/ \n\\\x00é\u2028"
    names = list(tool_names) + ["", "zzz"]
    out = []
    for _ in range(n):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        if rng.random() < 0.5:
            junk = f'<tool_call>{{"name": "{rng.choice(names)}", "arguments": {{"{junk[:5]}": "{junk[5:20]}"}}}}</tool_call>'
        out.append(junk)
    return out


def _timed(name: str, fn: Callable[[], str]) -> CheckResult:
    t0 = time.perf_counter()
    try:
        detail = fn()
        return CheckResult(name, True, detail, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a check failure is reported, not raised
        tb = traceback.format_exc(limit=3)
        return CheckResult(name, False, f"{type(e).__name__}: {e}\n{tb}", time.perf_counter() - t0)


def check_gymnasium(env_id: str, **kwargs: Any) -> str:
    env = make(env_id, **kwargs)
    try:
        check_env(env.unwrapped, skip_render_check=True)
    finally:
        env.close()
    return "gymnasium check_env passed"


def check_determinism(env_id: str, seed: int = 123, **kwargs: Any) -> str:
    runs = []
    for _ in range(2):
        env = make(env_id, **kwargs)
        try:
            result = run_episode(env, env.unwrapped.expert, seed=seed)
            runs.append((result, list(env.unwrapped.transcript)))
        finally:
            env.close()
    (r1, t1), (r2, t2) = runs
    if t1 != t2 or r1["return"] != r2["return"]:
        diff = next((i for i, (a, b) in enumerate(zip(t1, t2)) if a != b), min(len(t1), len(t2)))
        raise AssertionError(f"same seed, different episodes: first difference at message {diff}")
    return f"seed {seed}: identical {len(t1)}-message episodes, return {r1['return']}"


def check_truncation(env_id: str, max_turns: int = 3, **kwargs: Any) -> str:
    env = make(env_id, max_turns=max_turns, **kwargs)
    try:
        env.reset(seed=0)
        for turn in range(1, max_turns + 1):
            _, _, terminated, truncated, info = env.step("I am thinking, no tool call yet.")
            if terminated:
                raise AssertionError(f"a text-only turn terminated the episode at turn {turn}")
            if truncated != (turn == max_turns):
                raise AssertionError(f"truncated={truncated} at turn {turn} with max_turns={max_turns}")
        if info.get("truncated_reason") != "max_turns":
            raise AssertionError(f"truncated_reason is {info.get('truncated_reason')!r}, expected 'max_turns'")
    finally:
        env.close()
    return f"truncated at turn {max_turns}"


def check_close_twice(env_id: str, **kwargs: Any) -> str:
    env = make(env_id, **kwargs)
    env.reset(seed=0)
    env.close()
    env.close()
    return "close() twice ok"


def check_random_actions(env_id: str, actions: Iterable[str] | None = None, **kwargs: Any) -> str:
    env = make(env_id, max_turns=1000, **kwargs)
    n = 0
    try:
        _, info = env.reset(seed=0)
        names = [t["function"]["name"] for t in info["tools"]]
        for action in actions if actions is not None else NASTY_ACTIONS + random_actions(30, tool_names=names):
            obs, reward, terminated, truncated, _ = env.step(action)
            n += 1
            if not env.observation_space.contains(obs):
                raise AssertionError(f"observation outside the space after action {action[:80]!r}")
            if terminated or truncated:
                env.reset(seed=n)
    finally:
        env.close()
    return f"{n} random actions, no exception"


def check_expert(env_id: str, n_tasks: int = 3, splits: Iterable[str] | None = None, **kwargs: Any) -> str:
    env = make(env_id, **kwargs)
    core: ToolEnv = env.unwrapped  # type: ignore[assignment]
    lines = []
    try:
        for split in splits or core.splits:
            total = core.num_tasks(split)
            indices = sorted({int(i * total / n_tasks) for i in range(min(n_tasks, total))})
            for idx in indices:
                result = run_episode(env, core.expert, seed=idx, options={"task_index": idx, "split": split})
                if not result["success"]:
                    raise AssertionError(f"expert failed {result['task_id']}: return {result['return']}, errors {result['errors']}")
                lines.append(f"{result['task_id']}:{result['turns']}t")
    finally:
        env.close()
    return f"expert solved {len(lines)} tasks ({', '.join(lines)})"


#: Splits that are the union of the others by design (CodeRepair's "all"): not compared.
UNION_SPLITS = ("all",)


def _spread(n: int) -> Iterator[int]:
    """Every index of ``range(n)`` once: the first five (where a held-out split built with the
    train seeds repeats train), then ever finer halvings (n/2, n/4, 3n/4, ...), so a sample cut
    short by time covers the whole split evenly."""
    seen: set[int] = set()
    head = range(min(5, n))
    seen.update(head)
    yield from head
    k = 1
    while len(seen) < n and 2 ** (k - 1) < n:
        for j in range(1, 2**k, 2):
            i = j * n // 2**k
            if i not in seen:
                seen.add(i)
                yield i
        k += 1
    for i in range(n):  # nothing left after the halvings; a guard, not a second pass
        if i not in seen:
            yield i


def _few(items: list[str], shown: int = 5) -> str:
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def check_split_overlap(env_id: str, budget_s: float = 20.0, min_tasks: int = 5, **kwargs: Any) -> str:
    """No task id in two splits; fails naming the shared ids. Prompts that name one task of
    their split (not GuessNumber's, which every task shares) and recur in another split are
    reported as a note. Every task is compared when that fits in ``budget_s``; past it, at
    least ``min_tasks`` per split, spread over the split (the detail says how many)."""
    env = make(env_id, **kwargs)
    core: ToolEnv = env.unwrapped  # type: ignore[assignment]
    try:
        splits = [s for s in core.splits if s not in UNION_SPLITS]
        if len(splits) < 2:
            return f"one split ({', '.join(splits) or 'none'}): nothing to compare"
        totals = {s: core.num_tasks(s) for s in splits}
        orders = {s: _spread(totals[s]) for s in splits}
        ids: dict[str, dict[str, int]] = {s: {} for s in splits}
        prompts: dict[str, dict[str, list[str]]] = {s: {} for s in splits}
        t0, open_splits = time.perf_counter(), list(splits)
        while open_splits:
            for split in list(open_splits):
                index = next(orders[split], None)
                if index is None or (len(ids[split]) >= min_tasks and time.perf_counter() - t0 > budget_s):
                    open_splits.remove(split)
                    continue
                task = core.get_task(split, index)
                ids[split].setdefault(task.task_id, index)
                prompts[split].setdefault(task.prompt, []).append(task.task_id)
    finally:
        env.close()
    problems, notes = [], []
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            shared = sorted(set(ids[a]) & set(ids[b]))
            if shared:
                problems.append(f"{a} and {b} share {len(shared)} task id(s): {_few(shared)}")
            same = [f"{prompts[a][p][0]} = {prompts[b][p][0]}" for p in prompts[a].keys() & prompts[b].keys()
                    if len(prompts[a][p]) == 1 and len(prompts[b][p]) == 1 and prompts[a][p] != prompts[b][p]]
            if same:
                notes.append(f"{a} and {b} give {len(same)} task(s) the same prompt: {_few(sorted(same))}")
    seen = ", ".join(f"{s} {len(ids[s])}" + ("" if len(ids[s]) == totals[s] else f" of {totals[s]}") for s in splits)
    if problems:
        raise AssertionError(
            "; ".join(problems) + f" (tasks compared: {seen}). A held-out task must not also be a train task: "
            "give each split its own seeds or items, and the split in the task id when ids repeat per split"
        )
    skipped = [s for s in core.splits if s in UNION_SPLITS]
    union = f"; {', '.join(skipped)} (union of the others) not compared" if skipped else ""
    # Same prompt, different id: the same task when the prompt is all of it (a question), not
    # when the task lives in its data (a file tree); a note to look at, not a failure.
    note = f". Note: {'; '.join(notes)}; the same task unless their data differs" if notes else ""
    return f"no task id shared between splits (tasks compared: {seen}{union}){note}"


CHECKS: dict[str, Callable[..., str]] = {
    "gymnasium": check_gymnasium,
    "determinism": check_determinism,
    "truncation": check_truncation,
    "close_twice": check_close_twice,
    "random_actions": check_random_actions,
    "expert": check_expert,
    "split_overlap": check_split_overlap,
}


def run_checks(env_id: str, *, only: Iterable[str] | None = None, n_tasks: int = 3, **kwargs: Any) -> list[CheckResult]:
    """Run every check (or ``only`` these) on ``env_id``; never raises for a failing check."""
    names = list(only) if only else list(CHECKS)
    results = []
    for name in names:
        fn = CHECKS[name]
        extra = {"n_tasks": n_tasks} if name == "expert" else {}
        results.append(_timed(name, lambda fn=fn, extra=extra: fn(env_id, **extra, **kwargs)))
    return results
