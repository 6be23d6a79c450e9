"""``ShellQuestEnv``: the Gymnasium env around the quest generators (see the package docstring)."""

from __future__ import annotations

from typing import Any

from agentrl.sandboxes import ExecResult, Session, Status

from ..base import Policy, Task, ToolEnv, suggest
from ..tools import ToolOutput, tool
from . import full, small
from .quest import CwdCheck, FileCheck, Quest, quest_rng, split_of

VOCABS = ("full", "small")
REWARDS = ("sparse", "partial")
DIFFICULTIES = (1, 2, 3)
DEFAULT_HORIZON = {"full": 11, "small": 6}
MAX_HORIZON = 1000
#: Tool output cap (characters) per vocabulary: small keeps a tiny model's context short.
DEFAULT_OUTPUT_CHARS = {"full": 4000, "small": 300}
_GENERATORS = {"full": full, "small": small}


def _choose(name: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed:
        hint = suggest(str(value), [str(a) for a in allowed])
        raise ValueError(f"ShellQuest: {name} must be one of {list(allowed)}, got {value!r}.{hint}")
    return value


class ShellQuestEnv(ToolEnv):
    """Explore a generated file tree with a persistent bash shell; write answer files; submit.

    Args:
        vocab: "full" (a realistic server tree and shell chores) or "small" (a clue chain
            through directories named after 16 animals, for tiny models).
        difficulty: 1, 2 or 3 (see :mod:`.full` and :mod:`.small` for what each adds).
        horizon: the number of turns the expert takes (exactly in small mode; ``2K + 1`` for
            ``K = (horizon - 1) // 2`` stages in full mode). Default 11 (full), 6 (small).
            ``[lo, hi]`` mixes horizons: each task's horizon is drawn uniformly from lo..hi, a
            pure function of (lo, hi, split, index) (:meth:`task_horizon`), and the task is
            then exactly the fixed-horizon env's task of that horizon and index (same quest,
            same task id). For episodes of very different lengths in one run (async training).
        reward: "sparse" (1.0 at submit when every answer is right, else 0) or "partial"
            (``1/(n+1)`` when each of the n sub-goals is first completed, the rest at a
            correct submit; the return is 1.0 exactly when the task is solved).
        num_train_tasks, num_test_tasks: size of each split (tasks are generated lazily).
        command_timeout_s: wall-clock limit of one shell command.
        max_turns: default ``horizon + max(4, horizon // 2)`` (per task with mixed horizons).
        max_tool_output_chars: default 4000 (full), 300 (small).
        **kwargs: the rest of :class:`~agentrl.envs.base.ToolEnv`'s options (sandbox, ...).
    """

    description = "bash chores in a generated file tree; horizon 5-100+ turns; small-vocab mode for tiny models"

    def __init__(
        self,
        *,
        vocab: str = "full",
        difficulty: int = 1,
        horizon: int | list[int] | tuple[int, int] | None = None,
        reward: str = "sparse",
        num_train_tasks: int = 100_000,
        num_test_tasks: int = 1_000,
        command_timeout_s: float = 10.0,
        max_turns: int | None = None,
        max_tool_output_chars: int | None = None,
        expert_noise: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.vocab = _choose("vocab", vocab, VOCABS)
        self.difficulty = _choose("difficulty", difficulty, DIFFICULTIES)
        self.reward_mode = _choose("reward", reward, REWARDS)
        gen = _GENERATORS[vocab]
        horizon = DEFAULT_HORIZON[vocab] if horizon is None else horizon
        lo = gen.min_horizon(difficulty)

        def valid(h: Any) -> bool:
            return isinstance(h, int) and not isinstance(h, bool) and lo <= h <= MAX_HORIZON

        if isinstance(horizon, (list, tuple)):
            if len(horizon) != 2 or not all(valid(h) for h in horizon) or horizon[0] > horizon[1]:
                raise ValueError(
                    f"ShellQuest: a mixed horizon must be [lo, hi] with ints {lo} <= lo <= hi <= {MAX_HORIZON} for "
                    f"vocab={vocab!r}, difficulty={difficulty}, got {list(horizon)!r}, e.g. horizon=[5, 50]."
                )
            self.horizon_range: tuple[int, int] = (horizon[0], horizon[1])
        elif valid(horizon):
            self.horizon_range = (horizon, horizon)
        else:
            raise ValueError(
                f"ShellQuest: horizon must be an int in [{lo}, {MAX_HORIZON}] for vocab={vocab!r}, "
                f"difficulty={difficulty}, got {horizon!r}. It is the expert's number of turns, e.g. horizon=10 "
                f"(or [lo, hi] for horizons mixed per task)."
            )
        #: the fixed horizon; None when horizons are mixed (see :meth:`task_horizon`)
        self.horizon: int | None = horizon if isinstance(horizon, int) else None
        self._fixed_max_turns = max_turns
        hi = self.horizon_range[1]
        for name, n in (("num_train_tasks", num_train_tasks), ("num_test_tasks", num_test_tasks)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"ShellQuest: {name} must be a positive int, got {n!r}.")
        if not isinstance(command_timeout_s, (int, float)) or not 0 < command_timeout_s <= 600:
            raise ValueError(f"ShellQuest: command_timeout_s must be in (0, 600] seconds, got {command_timeout_s!r}.")
        self._num_tasks = {"train": num_train_tasks, "test": num_test_tasks}
        self.command_timeout_s = float(command_timeout_s)
        if not isinstance(expert_noise, (int, float)) or not 0.0 <= expert_noise <= 1.0:
            raise ValueError(f"ShellQuest: expert_noise must be a probability in [0, 1], got {expert_noise!r}.")
        self.expert_noise = float(expert_noise)
        super().__init__(
            max_turns=max_turns if max_turns is not None else hi + max(4, hi // 2),
            max_tool_output_chars=max_tool_output_chars or DEFAULT_OUTPUT_CHARS[vocab],
            **kwargs,
        )
        self._cache: dict[tuple[str, int], Task] = {}
        self._session: Session | None = None
        self._done = 0  # sub-goals credited so far (partial reward)
        self._credit = 0.0

    # ----------------------------------------------------------------- tasks
    def num_tasks(self, split: str) -> int:
        return self._num_tasks[split]

    def get_task(self, split: str, index: int) -> Task:
        if (split, index) not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[split, index] = self._generate(split, index)
        return self._cache[split, index]

    def task_horizon(self, split: str, index: int) -> int:
        """The expert's number of turns for this task: the fixed horizon, or with ``horizon=[lo,
        hi]`` a uniform draw from lo..hi seeded by (lo, hi, split, index)."""
        lo, hi = self.horizon_range
        return lo if lo == hi else quest_rng("shellquest-horizon", lo, hi, split, index).randint(lo, hi)

    def _generate(self, split: str, index: int) -> Task:
        gen = _GENERATORS[self.vocab]
        horizon = self.task_horizon(split, index)
        tid = f"shellquest-{self.vocab}-d{self.difficulty}-h{horizon}/{split}/{index}"
        # Small quests come from a small space, so two seeds can draw the same quest: keep
        # drawing until the quest's content hashes into this split (split_of), which makes the
        # splits disjoint by content. Full quests carry random ids and numbers everywhere, so
        # their splits are disjoint by seed alone.
        for attempt in range(10_000):
            quest = gen.generate(quest_rng("shellquest", self.vocab, self.difficulty, horizon, split, index, attempt), self.difficulty, horizon)
            if self.vocab == "full" or split_of(quest.signature) == split:
                return Task(tid, split, index, quest.prompt, data=quest)
        raise RuntimeError(f"ShellQuest: no {split} quest found for {tid} after 10000 draws")  # pragma: no cover

    @property
    def quest(self) -> Quest:
        if self.task is None:
            raise RuntimeError("ShellQuest: no task yet; call reset() first.")
        return self.task.data

    def system_prompt(self, task: Task) -> str:
        if self.vocab == "small":
            return small.SYSTEM_PROMPT
        return (
            super().system_prompt(task)
            + "\nYou work in a bash shell whose working directory is /work; the directory, variables and files "
            "persist between shell calls. Answers are read from the files you write, not from what you print."
        )

    # ----------------------------------------------------------------- episode
    async def setup(self, task: Task) -> None:
        if self.horizon is None and self._fixed_max_turns is None:  # mixed horizons: each task its own default
            h = self.task_horizon(task.split, task.index)
            self.max_turns = h + max(4, h // 2)
        self._session = await self.open_session("bash", files=task.data.files)
        self._done, self._credit = 0, 0.0
        self._found: list[str] = []

    async def teardown(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _require_session(self) -> Session:
        if self._session is None:
            raise RuntimeError("ShellQuest: the shell is closed; call reset() first.")
        return self._session

    @tool
    async def shell(self, command: str) -> ToolOutput:
        """Run a bash command in the task's shell; the directory, variables and files persist between calls.

        Args:
            command: the bash command line to run
        """
        session = self._require_session()
        res = await session.exec(command, timeout_s=self.command_timeout_s)
        text = _format(res, self.command_timeout_s)
        if res.status is Status.OK and res.exit_code in (0, None) and res.stdout.strip():  # a clue read (state_summary)
            self._found.append(f"{command[:40]} -> {res.stdout.strip().splitlines()[0][:60]}")
        if res.extra.get("restarted") or res.extra.get("alive") is False:
            await session.put_files(self.quest.files)
            text += "\n[the shell was restarted: the file tree is back to its start, your answer files are gone]"
        sandbox = {k: v for k, v in res.to_dict().items() if k not in ("stdout", "stderr")}
        reward, info = 0.0, {}
        if self.reward_mode == "partial":
            reward, probe_s = await self._credit_progress()
            sandbox["wall_time_s"] = float(sandbox["wall_time_s"]) + probe_s
            info = {"subgoals_done": self._done, "subgoals_total": len(self.quest.subgoals)}
        return ToolOutput(text, reward=reward, status=str(res.status), sandbox=sandbox, info=info)

    @tool
    async def submit(self) -> ToolOutput:
        """Finish the task: the env checks the answer files you wrote, and the episode ends."""
        quest = self.quest
        passed = [check.passes(await self._read(check.path)) for check in quest.checks]
        success = all(passed)
        if self.reward_mode == "sparse":
            reward = 1.0 if success else 0.0
        elif success:
            reward = 1.0 - self._credit
            self._done = len(quest.subgoals)
        else:
            reward = (await self._credit_progress())[0]
        if success:
            content = "correct"
        elif len(passed) == 1:
            content = "wrong"
        else:
            content = f"wrong: {sum(passed)} of {len(passed)} answers are right"
        info = {"checks_passed": sum(passed), "checks_total": len(passed), "subgoals_done": self._done, "subgoals_total": len(quest.subgoals)}
        return ToolOutput(content, reward=reward, terminated=True, info=info)

    def state_summary(self) -> str:
        """The memory of ``rollout.context.policy: summary`` (docs/long_horizons.md): the
        first line of what each successful command printed, the last 8, with its command (the
        notes read and where), so a prompt that shows only the last turns keeps the clue chain."""
        found = getattr(self, "_found", [])
        return "found so far: " + " | ".join(found[-8:]) if found else "found so far: nothing"

    def expert(self) -> Policy:
        """Replays the quest's planned commands, then submits (the plan is the gold solution).

        With ``expert_noise=p`` (env option, default 0) the episode is, with probability p drawn
        from the env's seeded RNG, a flawed demonstration: the final answer is wrong (small
        vocabulary: a decoy word is written instead of the key; full: the last answer is not
        written). Use it for SFT data that is imperfect the way real demonstrations are, so
        RL has something to improve on.
        """
        commands = list(self.quest.commands)
        if self.expert_noise and self.np_random.random() < self.expert_noise:
            commands = self._flawed(commands)
        actions = [self.call("shell", command=c) for c in commands] + [self.call("submit")]
        turn = 0

        def policy(obs: Any) -> str:
            nonlocal turn
            turn += 1
            return actions[min(turn, len(actions)) - 1]

        return policy

    def _flawed(self, commands: list[str]) -> list[str]:
        last = commands[-1]
        if self.vocab == "small" and last.startswith("echo "):
            right = last.split()[1]
            wrong = [w for w in small.WORDS if w != right]
            return commands[:-1] + [last.replace(f"echo {right} ", f"echo {wrong[int(self.np_random.integers(len(wrong)))]} ", 1)]
        return commands[:-1]

    # ----------------------------------------------------------------- checks
    async def _read(self, path: str) -> bytes | None:
        """The bytes of an answer file via the sandbox's file API (None if missing/unsafe)."""
        try:
            return await self._require_session().get_file(path, max_bytes=1 << 20)
        except (OSError, ValueError):  # missing, a directory, too large, a symlink out (UnsafePathError)
            return None

    async def _cwd(self) -> tuple[str | None, float]:
        """The shell's physical working directory, asked of the shell itself.

        Trust: the answer comes from the model's own shell, so a model that redefines
        ``builtin`` (or the DEBUG trap) could fake it. It only feeds partial credit; success
        is decided by answer files read through the sandbox file API.
        """
        res = await self._require_session().exec("builtin pwd -P", timeout_s=self.command_timeout_s)
        lines = res.stdout.strip().splitlines()
        return (lines[-1] if res.status is Status.OK and lines else None), res.wall_time_s

    async def _credit_progress(self) -> tuple[float, float]:
        """Credit newly completed leading sub-goals; returns (reward, sandbox seconds used)."""
        subgoals = self.quest.subgoals
        share = 1.0 / (len(subgoals) + 1)
        seconds, cwd_cache = 0.0, None
        start = self._done
        while self._done < len(subgoals):
            goal = subgoals[self._done]
            if isinstance(goal, CwdCheck):
                if cwd_cache is None:
                    cwd, secs = await self._cwd()
                    cwd_cache, seconds = (cwd,), seconds + secs
                ok = goal.passes(cwd_cache[0])
            else:
                assert isinstance(goal, FileCheck)
                ok = goal.passes(await self._read(goal.path))
            if not ok:
                break
            self._done += 1
        reward = share * (self._done - start)
        self._credit += reward
        return reward, seconds


def _format(res: ExecResult, timeout_s: float) -> str:
    """stdout, then stderr, then a note for a non-zero exit or a limit hit."""
    text = (res.stdout + res.stderr).rstrip("\n")
    if res.status is Status.TIMEOUT:
        text += f"\n[timed out after {timeout_s:g} s]"
    elif res.status not in (Status.OK, Status.RUNTIME_ERROR):
        text += f"\n[{res.status}: {res.detail}]" if res.detail else f"\n[{res.status}]"
    elif res.exit_code not in (0, None):
        text += f"\n[exit code {res.exit_code}]"
    text = text.strip("\n")
    return text or "(no output)"
