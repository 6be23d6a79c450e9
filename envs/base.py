"""``ToolEnv``: the Gymnasium base class of every agentrl text tool environment.

One step is one assistant turn: ``step(action)`` takes the assistant's text, parses its tool
calls (Hermes ``<tool_call>{json}</tool_call>`` by default), runs them (possibly in a sandbox),
and returns the new messages (tool results) as the observation::

    obs, info = env.reset(seed=0)            # obs: (system, user) messages; info["tools"]: schemas
    obs, reward, terminated, truncated, info = env.step('<tool_call>{"name": ...}</tool_call>')

Observations are tuples of ``{"role", "content"[, "name"]}`` dicts (space :class:`Messages`);
actions are any string (space :class:`UnicodeText`). Nothing the model writes raises: a malformed
call, an unknown tool, bad arguments, a tool that crashes or a sandbox timeout become a tool
message saying what went wrong, counted in ``info["errors"]``; the episode goes on.

``terminated`` is True when the task ended by its own rule (an answer was submitted, the goal
reached or failed for good); ``truncated`` when ``max_turns`` ran out (or
``max_episode_chars``). The rollout enforces token budgets and marks truncation itself.

Subclass contract (see docs/add_env.md for a complete example):

- ``num_tasks(split)`` and ``get_task(split, index) -> Task``; tasks are a pure function of
  (split, index) so the same seed gives the same episode;
- tools: methods decorated with :func:`~agentrl.envs.tools.tool`;
- ``expert()``: a scripted policy for the current episode (obs -> assistant text);
- optional ``setup(task)`` / ``teardown()`` coroutines (open and close sandbox sessions),
  ``system_prompt(task)``, ``on_text_only(content)``.

``step``/``reset`` are sync wrappers over ``astep``/``areset``, which run on the sandbox
background loop (:mod:`agentrl.sandboxes.runtime`), so many envs can be stepped concurrently
with ``asyncio.gather(*(env.astep(a) for ...))`` from any event loop.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym

from agentrl.sandboxes import Limits, Sandbox, SandboxError, Session, arun, get_sandbox, run_sync

from .parsing import ToolCall, get_parser
from .spaces import Messages, UnicodeText
from .tools import Tool, ToolOutput

log = logging.getLogger(__name__)

Message = dict[str, str]
Observation = tuple[Message, ...]
Policy = Callable[[Observation], str]

ERROR_KINDS = ("parse", "no_tool_call", "unknown_tool", "bad_arguments", "tool_error", "sandbox")
RESET_OPTIONS = ("task_index", "split")


@dataclass(frozen=True)
class Task:
    """One task instance. ``task_id`` is unique and stable across runs (it keys GRPO groups).

    Attributes:
        task_id: stable id, e.g. ``"HumanEval/12"`` or ``"shellquest/train/37"``.
        split: "train" or "test" (or another split the env defines).
        index: position within the split.
        prompt: the user message that states the task.
        data: env-specific payload (gold answer, file tree, database, ...).
    """

    task_id: str
    split: str
    index: int
    prompt: str
    data: Any = None


@dataclass
class EpisodeStats:
    turn: int = 0
    episode_return: float = 0.0
    chars: int = 0
    errors: dict[str, int] = field(default_factory=lambda: {k: 0 for k in ERROR_KINDS})
    tool_calls: int = 0
    sandbox_time_s: float = 0.0
    done: bool = False


_SANDBOXES: dict[tuple[str, Limits | None], Sandbox] = {}


def shared_sandbox(backend: str | Sandbox, limits: Limits | None = None) -> Sandbox:
    """One sandbox backend object per (backend name, limits) in this process, shared by envs."""
    if isinstance(backend, Sandbox):
        return backend
    key = (backend, limits)
    if key not in _SANDBOXES:
        _SANDBOXES[key] = get_sandbox(backend, **({"limits": limits} if limits else {}))
    return _SANDBOXES[key]


class ToolEnv(gym.Env[Observation, str]):
    """Base class of text tool envs; see the module docstring for the contract."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    #: Total reward of a fully solved episode; ``info["success"]`` is return >= this.
    full_reward: ClassVar[float] = 1.0
    #: Printed by ``agentrl envs list``.
    description: ClassVar[str] = ""
    #: Longest one ``step`` (its tool calls included) / ``reset`` may take in a rollout before
    #: the episode is recorded as failed (``env_timeout``); the config's ``env.step_timeout_s``
    #: / ``env.reset_timeout_s`` override them. Raise them for envs with slow tools or resets.
    step_timeout_s: ClassVar[float] = 300.0
    reset_timeout_s: ClassVar[float] = 300.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a subclass that overrides the synchronous Gymnasium ``step``/``reset`` only:
        rollouts, SFT and the tokenizer corpus call ``astep``/``areset``, so the override would
        be skipped silently in training (a bug would never show, nor be contained)."""
        super().__init_subclass__(**kwargs)
        own = [k for k in cls.__mro__ if k is not ToolEnv and issubclass(k, ToolEnv)]
        for sync, async_ in (("step", "astep"), ("reset", "areset")):
            if any(sync in k.__dict__ for k in own) and not any(async_ in k.__dict__ for k in own):
                raise TypeError(
                    f"{cls.__qualname__} overrides ToolEnv.{sync}() but not {async_}(): training calls the async "
                    f"{async_}() (step() and reset() are thin sync wrappers of it), so this override would never run. "
                    f"Override `async def {async_}(self, ...)` instead (call `await super().{async_}(...)` for the default), "
                    f"or put the logic in a tool (docs/add_env.md)."
                )

    def __init__(
        self,
        *,
        split: str = "train",
        max_turns: int = 20,
        parser: str = "hermes",
        sandbox: str | Sandbox = "bwrap",
        sandbox_limits: Limits | dict[str, Any] | None = None,
        max_tool_output_chars: int = 4000,
        max_calls_per_turn: int = 4,
        max_episode_chars: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        if split not in self.splits:
            raise ValueError(f"{type(self).__name__}: unknown split {split!r}; this env has splits {list(self.splits)}.")
        for name, value in (("max_turns", max_turns), ("max_tool_output_chars", max_tool_output_chars), ("max_calls_per_turn", max_calls_per_turn)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive int, got {value!r}.")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}.")
        self.split = split
        self.max_turns = max_turns
        self.parser = get_parser(parser)
        self.max_tool_output_chars = max_tool_output_chars
        self.max_calls_per_turn = max_calls_per_turn
        self.max_episode_chars = max_episode_chars
        self.render_mode = render_mode
        if isinstance(sandbox_limits, dict):
            sandbox_limits = Limits(**sandbox_limits)
        self._sandbox_spec = sandbox
        self._sandbox_limits = sandbox_limits
        self.observation_space = Messages()
        self.action_space = UnicodeText()
        self._tools: dict[str, Tool] = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr, None)
            if callable(fn) and hasattr(fn, "__agentrl_tool__"):
                self._tools[fn.__agentrl_tool__] = Tool(getattr(self, attr), name=fn.__agentrl_tool__)
        self.task: Task | None = None
        self.stats = EpisodeStats()
        self.transcript: list[Message] = []
        self._closed = False
        self._sessions: list[Session] = []  # opened by open_session, for kill_sessions

    # ----------------------------------------------------------------- subclass API
    def num_tasks(self, split: str) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement num_tasks(split)")

    def get_task(self, split: str, index: int) -> Task:
        raise NotImplementedError(f"{type(self).__name__} must implement get_task(split, index)")

    def expert(self) -> Policy:
        """A scripted policy that solves the current episode (call after ``reset``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement expert()")

    def system_prompt(self, task: Task) -> str:
        return (
            "You are an agent that solves tasks by calling tools. Call a tool with\n"
            '<tool_call>\n{"name": "<tool name>", "arguments": {<JSON arguments>}}\n</tool_call>\n'
            "You may think before calling. Tool results come back in the next message."
        )

    async def setup(self, task: Task) -> None:
        """Prepare the episode for ``task`` (open sandbox sessions, write files)."""

    async def teardown(self) -> None:
        """Release per-episode resources. Must be idempotent."""

    def on_text_only(self, content: str) -> ToolOutput | None:
        """The turn had no tool call. Default: tell the model how to call a tool; counted as
        ``no_tool_call``. Return a ToolOutput to handle it otherwise (e.g. a final answer)."""
        return None

    # ----------------------------------------------------------------- helpers for subclasses
    @property
    def sandbox(self) -> Sandbox:
        return shared_sandbox(self._sandbox_spec, self._sandbox_limits)

    async def open_session(self, kind: str = "bash", files: dict[str, bytes | str] | None = None) -> Session:
        session = await self.sandbox.session(kind, files=files, limits=self._sandbox_limits)  # type: ignore[arg-type]
        self._sessions = [s for s in self._sessions if not getattr(s, "_closed", False)] + [session]
        return session

    async def kill_sessions(self) -> int:
        """Kill every sandbox session this env opened and has not closed (what a sandbox crash
        does; used by fault injection). Later tool calls on them report ``sandbox_error``
        until the next ``reset`` opens new ones. Returns how many were killed."""
        sessions, self._sessions = self._sessions, []

        async def kill() -> None:
            for s in sessions:
                await s.close()

        await arun(kill())
        return len(sessions)

    @property
    def tools(self) -> dict[str, Tool]:
        return self._tools

    @property
    def tool_schemas(self) -> list[dict[str, Any]]:
        return [t.schema for t in self._tools.values()]

    def call(self, name: str, **arguments: Any) -> str:
        """The assistant text calling tool ``name`` in this env's format (for experts)."""
        return self.parser.format(name, arguments)

    # ----------------------------------------------------------------- Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Observation, dict[str, Any]]:
        super().reset(seed=seed)
        return run_sync(self._areset(options))

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        return run_sync(self._astep(action))

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Observation, dict[str, Any]]:
        super().reset(seed=seed)
        return await arun(self._areset(options))

    async def astep(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        return await arun(self._astep(action))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        run_sync(self.teardown())

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"[{m['role']}] {m['content']}" for m in self.transcript)

    # ----------------------------------------------------------------- internals
    def _pick_task(self, options: dict[str, Any]) -> Task:
        unknown = set(options) - set(RESET_OPTIONS)
        if unknown:
            key = sorted(unknown)[0]
            close = difflib.get_close_matches(key, RESET_OPTIONS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{type(self).__name__}.reset: unknown option {key!r}; known options: {list(RESET_OPTIONS)}.{hint}")
        split = options.get("split", self.split)
        if split not in self.splits:
            raise ValueError(f"{type(self).__name__}.reset: unknown split {split!r}; this env has splits {list(self.splits)}.")
        n = self.num_tasks(split)
        if "task_index" in options:
            index = options["task_index"]
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
                raise IndexError(
                    f"{type(self).__name__}.reset: task_index {index!r} is out of range; "
                    f"split {split!r} has {n} tasks (valid indices 0..{n - 1})."
                )
        else:
            index = int(self.np_random.integers(0, n))
        return self.get_task(split, index)

    async def _areset(self, options: dict[str, Any] | None) -> tuple[Observation, dict[str, Any]]:
        if self._closed:
            self._closed = False
        task = self._pick_task(dict(options or {}))
        await self.teardown()
        self.task = task
        self.stats = EpisodeStats()
        await self.setup(task)
        obs: Observation = (
            {"role": "system", "content": self.system_prompt(task)},
            {"role": "user", "content": task.prompt},
        )
        self.transcript = list(obs)
        self.stats.chars = sum(len(m["content"]) for m in obs)
        info = {
            "tools": self.tool_schemas,
            "task_id": task.task_id,
            "split": task.split,
            "task_index": task.index,
            "max_turns": self.max_turns,
        }
        return obs, info

    def _call_example(self) -> str:
        """A call of the first tool in the env's own format, its required arguments filled with
        ``<name>`` placeholders (an example that names no required argument would itself fail)."""
        tool = next(iter(self._tools.values()), None)
        if tool is None:
            return self.parser.format("tool", {})
        return self.parser.format(tool.name, {k: f"<{k}>" for k in tool.parameters.get("required", [])})

    def _truncate(self, text: str) -> str:
        cap = self.max_tool_output_chars
        if len(text) <= cap:
            return text
        head = text[: cap // 2]
        tail = text[-(cap // 2) :]
        return f"{head}\n... [{len(text) - len(head) - len(tail)} characters cut] ...\n{tail}"

    async def _run_call(self, call: ToolCall) -> tuple[ToolOutput, str]:
        """Run one call; returns (output, error kind or "")."""
        tool = self._tools.get(call.name)
        if tool is None:
            close = difflib.get_close_matches(call.name, self._tools, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            msg = f"Error: unknown tool {call.name!r}. Available tools: {', '.join(self._tools)}.{hint}"
            return ToolOutput(msg, status="unknown_tool"), "unknown_tool"
        errors = tool.validate(call.arguments)
        if errors:
            return ToolOutput(f"Error: bad arguments for {call.name}: " + "; ".join(errors), status="bad_arguments"), "bad_arguments"
        try:
            out = await tool(**call.arguments)
        except SandboxError as e:  # the sandbox under the tool failed: not the policy's fault
            log.warning("tool %s: sandbox failed: %s", call.name, e)
            return ToolOutput(f"Error: the sandbox failed while running {call.name}: {e}", status="sandbox_error"), "sandbox"
        except Exception as e:  # a bug or a crash inside the tool is data, not a crash
            log.warning("tool %s raised %s: %s", call.name, type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
            return ToolOutput(f"Error: tool {call.name} failed: {type(e).__name__}: {e}", status="tool_error"), "tool_error"
        if isinstance(out, str):
            out = ToolOutput(out)
        if not isinstance(out, ToolOutput):
            return ToolOutput(f"Error: tool {call.name} returned {type(out).__name__}", status="tool_error"), "tool_error"
        # A program's own failure (non-zero exit) is ordinary feedback; limits hit (timeout,
        # memory, output, pids) and sandbox failures are counted as "sandbox" errors.
        if out.status in ("ok", "runtime_error"):
            kind = ""
        elif out.status == "tool_error":
            kind = "tool_error"
        else:
            kind = "sandbox"
        return out, kind

    async def _astep(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        if self.task is None:
            raise RuntimeError(f"{type(self).__name__}.step() called before reset(); call env.reset() first.")
        if self.stats.done:
            raise RuntimeError(f"{type(self).__name__}.step() called after the episode ended; call env.reset().")
        if not isinstance(action, str):
            raise TypeError(f"{type(self).__name__}.step() takes the assistant's text (str), got {type(action).__name__}.")
        stats = self.stats
        stats.turn += 1
        self.transcript.append({"role": "assistant", "content": action})
        parsed = self.parser.parse(action)
        messages: list[Message] = []
        calls_info: list[dict[str, Any]] = []
        reward = 0.0
        terminated = False
        extra: dict[str, Any] = {}
        for err in parsed.errors:
            stats.errors["parse"] += 1
            messages.append({"role": "tool", "name": "error", "content": f"Error: malformed tool call: {err}"})
            calls_info.append({"name": None, "arguments": None, "status": "parse_error", "wall_time_s": 0.0})
        calls = parsed.calls
        if len(calls) > self.max_calls_per_turn:
            messages.append({"role": "tool", "name": "error", "content": f"Error: at most {self.max_calls_per_turn} tool calls per turn; only the first {self.max_calls_per_turn} were run."})
            stats.errors["bad_arguments"] += 1
            calls = calls[: self.max_calls_per_turn]
        if not calls and not parsed.errors:
            out = self.on_text_only(parsed.content)
            if out is None:
                stats.errors["no_tool_call"] += 1
                out = ToolOutput("Error: no tool call found. Call a tool like this:\n" + self._call_example(), status="no_tool_call")
            messages.append({"role": "user", "content": self._truncate(out.content)})
            reward += out.reward
            terminated |= out.terminated
            extra.update(out.info)
        for call in calls:
            if terminated:
                break
            t0 = time.perf_counter()
            out, kind = await self._run_call(call)
            wall = time.perf_counter() - t0
            stats.tool_calls += 1
            if kind:
                stats.errors[kind] += 1
            if out.sandbox:
                stats.sandbox_time_s += float(out.sandbox.get("wall_time_s", 0.0) or 0.0)
            reward += out.reward
            terminated |= out.terminated
            extra.update(out.info)
            messages.append({"role": "tool", "name": call.name, "content": self._truncate(out.content)})
            calls_info.append(
                {"name": call.name, "arguments": call.arguments, "status": out.status, "wall_time_s": wall, "sandbox": out.sandbox}
            )
        stats.episode_return += reward
        stats.chars += len(action) + sum(len(m["content"]) for m in messages)
        truncated = False
        reason = None
        if not terminated and stats.turn >= self.max_turns:
            truncated, reason = True, "max_turns"
        elif not terminated and self.max_episode_chars is not None and stats.chars >= self.max_episode_chars:
            truncated, reason = True, "max_episode_chars"
        stats.done = terminated or truncated
        self.transcript.extend(messages)
        info: dict[str, Any] = {
            "turn": stats.turn,
            "tool_calls": calls_info,
            "errors": dict(stats.errors),
            "step_errors": sum(1 for c in calls_info if c["status"] != "ok"),
            "episode_return": stats.episode_return,
            "sandbox_time_s": stats.sandbox_time_s,
            **extra,
        }
        if stats.done:
            info["success"] = stats.episode_return >= self.full_reward - 1e-9
            info["truncated_reason"] = reason
        return tuple(messages), float(reward), terminated, truncated, info

    # ----------------------------------------------------------------- validation
    def validate(self, task_index: int = 0, split: str | None = None, seed: int = 0) -> float:
        """Run the expert on one task; returns the episode return (full reward when the gold
        solution is right). Used by ``agentrl envs check`` and the tests."""
        return run_episode(self, self.expert, seed=seed, options={"task_index": task_index, "split": split or self.split})["return"]


def run_episode(
    env: gym.Env, make_policy: Callable[[], Policy] | None = None, *, policy: Policy | None = None,
    seed: int | None = None, options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Play one episode with ``policy`` (or ``make_policy()`` built after reset, e.g. an
    env's expert). Returns {"return", "turns", "success", "terminated", "truncated", "errors"}."""
    obs, info = env.reset(seed=seed, options=options)
    pol = policy if policy is not None else make_policy()  # type: ignore[misc]
    total, terminated, truncated, step_info = 0.0, False, False, {}
    while not (terminated or truncated):
        obs, reward, terminated, truncated, step_info = env.step(pol(obs))
        total += reward
    return {
        "return": total,
        "turns": step_info.get("turn", 0),
        "success": bool(step_info.get("success", False)),
        "terminated": terminated,
        "truncated": truncated,
        "errors": step_info.get("errors", {}),
        "task_id": info.get("task_id"),
    }


def suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""
