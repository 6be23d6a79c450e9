"""ScienceWorld (``agentrl/ScienceWorld-v0``): elementary-school science experiments in a text world.

Source: the ``scienceworld`` package (Wang et al., 2022, "ScienceWorld: Is your Agent Smarter
than a 5th Grader?", https://github.com/allenai/ScienceWorld), a simulator written in Scala
whose bundled ``scienceworld.jar`` runs on the machine's Java (1.8+) and is driven over py4j.
30 task types in 10 topics (boil/melt/freeze, thermometers, circuits and conductivity, find or
grow living things, life stages, inclined planes, lifespans, Mendelian genetics, mixing
chemicals and paints), each with 10 to 1386 *variations* (other substances, rooms, objects).
ScienceWorld's own variation splits are kept: ``split="train" | "dev" | "test"`` is its
train / dev / test variations (about 50 / 25 / 25 %). A task is (task type, variation); the
index order within a split is round-robin over the task types, so the first ``len(task_names)``
indices hold one variation of each type. ``task_names`` restricts the types (names such as
``"boil"``, ids such as ``"1-1"``), ``variations_per_task`` caps each type at its first N
variations of the split (a uniform random index then samples task types about equally; without
it types with many variations dominate).

Difficulty knob: ``simplification`` (ScienceWorld's own; default ``"easy"`` = doors open,
self-watering flower pots, a ``teleport to LOC`` action, and no electrical actions except on
the electrical tasks). ``""`` is the full game; a comma-separated subset of
``teleportAction, selfWateringFlowerPots, openContainers, openDoors, noElectricalAction``
picks single simplifications.

Tools: ``act(action)`` performs one game action (``"open door to kitchen"``, ``"pick up
thermometer"``, ``"focus on water"``) and returns the game's text; ``valid_actions(contains)``
lists the actions the simulator accepts right now (optionally filtered). The native
``reset task`` action is disabled (it would undo a failure). One step is one turn; game time
passes only through actions (``wait`` = 10 ticks, ``wait1`` = 1). The system prompt lists the
task's action templates; the first user message is the task, the room and the inventory.

Reward: ScienceWorld's score (0-100, partial credit per sub-goal) scaled by 1/100; each tool
call earns the change in ``max(score, 0) / 100`` since the previous call, so the episode return
is the final score / 100 and a completed task returns ``full_reward`` = 1.0. (Most tasks start
above 0, e.g. 8 when a door is open; that credit is paid on the episode's first tool call.) A
failed task (focusing on the wrong object, a wrong answer) has native score -100: the episode
terminates and the return drops to 0. ``terminated`` when the game says the task is completed
or failed; ``info["score"]`` is the native score, ``info["won"]`` / ``info["failed"]``.

Horizon: long. Turns the expert takes (``"easy"``, 12 variations per type, 4 from each split):
find-* 3-16, lifespan-* 3-8, chemistry-mix-paint-* 6-37, power-component* 7-27,
identify-life-stages-* 8-40, use-thermometer 13-23, test-conductivity* 14-45, chemistry-mix
15-55, measure-melting-point-* 13-95, boil / melt / freeze / change-the-state 17-141,
grow-plant 27-43, grow-fruit 53-84, inclined-plane-determine-angle 54-169,
mendelian-genetics-* 122-134, inclined-plane-friction-unnamed-surfaces 104-226,
inclined-plane-friction-named-surfaces 46-743 (median 66). Over the 357 sampled tasks: median
24, 90th percentile 127, 4 above 200. Without simplifications the grow and genetics paths are
10-20 % longer. ``max_turns`` defaults to 200 (ScienceWorld's own step limit is 100); the
expert logs a warning when a gold path is longer than ``max_turns``.

Expert: ScienceWorld's gold action sequence (``load(..., generateGoldPath=True)``, then
``get_gold_action_sequence()``), one ``act`` call per turn; generating one takes a fresh JVM
and 0.5-20 s, so gold paths are cached on disk (:func:`gold_cache_file`). It reached score 100 on 356 of the
357 ``"easy"`` samples, on 118 of the 120 variations of boil, melt, freeze and
change-the-state, and on 179 of 180 samples without simplifications (6 per type; the exception,
mendelian-genetics-known-plant 30, was the nondeterminism below and succeeds in deterministic
mode). The failures are ``KNOWN_GOLD_FAILURES``: freeze variations 11 (chocolate) and 19
(rubber), with or without simplifications. Their gold path first melts the substance, it
catches fire and burns to ash, and ash never freezes: score 87 and 82.

Determinism: the simulator orders objects by JVM identity hash codes (room listings, which
animal moves or pollinates, the order heat flows), and those depend on everything the JVM did
before. Replaying the same actions in a reused JVM listed objects in another order, pollinated
other flowers or read 26 instead of 27 degrees in 9 of the 30 task types (one probe). A freshly
started JVM is reproducible, so with ``deterministic=True`` (default) every episode starts in a
fresh JVM (a restart costs ~1-2 s per reset, more on a busy machine) and the gold path is
generated in a fresh JVM too: the same seed gives the same task, observations and expert
episode. ``deterministic=False`` reuses one JVM across episodes.

Process model: one ScienceWorld JVM per env object, started on first use, killed by ``close()``
(idempotent; a later ``reset`` starts a new one). ``reset`` blocks its event loop for the first
load of each task (the task prompt needs the simulator); steps run in the tool thread pool.
The package's ``step()`` also computes the full valid-action list after every action (~6x
slower), so steps call the simulator directly (``server.step``, ``getScore``,
``getCompleted``), as the package's ``step`` does.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, ClassVar

from .base import Policy, Task, ToolEnv, suggest
from .tools import ToolOutput, tool

log = logging.getLogger(__name__)

#: ScienceWorld's simplifications; "easy" is all of them that fit the task.
SIMPLIFICATIONS = ("easy", "teleportAction", "selfWateringFlowerPots", "openContainers", "openDoors", "noElectricalAction")
SPLITS = ("train", "dev", "test")
#: Task types that need electrical actions (``noElectricalAction`` cannot be used with them).
ELECTRICAL = ("power-component", "power-component-renewable-vs-nonrenewable-energy", "test-conductivity", "test-conductivity-of-unknown-substances")
#: (task name, variation) whose gold path does not reach score 100, with or without
#: simplifications (found by replaying gold paths; see the module docstring).
KNOWN_GOLD_FAILURES: frozenset[tuple[str, int]] = frozenset({("freeze", 11), ("freeze", 19)})
DISABLED_ACTIONS = ("reset task",)
#: marks a :meth:`ScienceWorldEnv.state_summary` call in an episode's history (no action can
#: equal it: actions are cleaned of control characters), so a replay makes the same free calls
_SUMMARY_CALL = "\x00state_summary"
SUMMARY_CHARS = 300
MAX_ACTION_CHARS = 300
#: The JVM lives for one episode in deterministic mode: C1 only and the serial GC start it in
#: about half the time (~1 s) and run short episodes as fast as the default JIT does. Identity
#: hash codes (which order the simulator's objects) come from per-thread generators seeded, in
#: order, as threads start; compiler threads started on demand (timing-dependent) would shift
#: the seed of the thread that serves py4j, so they are all started up front.
JAVA_OPTS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UseDynamicNumberOfCompilerThreads")
VALID_ACTIONS_SHOWN = 100

_ACTION_HELP = {
    "look around": "describe the room you are in",
    "look at OBJ": "describe an object",
    "look in OBJ": "describe a container's contents",
    "read OBJ": "read a book, note or sign",
    "open OBJ": "open a door or container",
    "close OBJ": "close a door or container",
    "activate OBJ": "turn a device on (stove, sink, ...)",
    "deactivate OBJ": "turn a device off",
    "connect OBJ to OBJ": "connect electrical terminals (e.g. 'connect battery anode to wire terminal 1')",
    "disconnect OBJ": "disconnect an electrical component",
    "use OBJ on OBJ": "use a tool on something (e.g. 'use thermometer on water')",
    "pick up OBJ": "put an object in your inventory",
    "put down OBJ": "drop an object from your inventory",
    "move OBJ to OBJ": "move an object into or onto another",
    "pour OBJ in OBJ": "pour a liquid or the contents of a container",
    "dunk OBJ in OBJ": "dunk an object in a liquid",
    "mix OBJ": "mix the contents of a container",
    "go OBJ": "go to an adjacent location through an open door ('go to kitchen')",
    "teleport OBJ": "go directly to any location ('teleport to kitchen')",
    "eat OBJ": "eat something",
    "flush OBJ": "flush a toilet",
    "focus on OBJ": "declare the object the task is about; focusing on a wrong object FAILS the task",
    "wait": "let 10 time steps pass",
    "wait1": "let 1 time step pass",
    "inventory": "list what you carry",
    "task": "repeat the task description",
}


def _task_catalogue() -> dict[str, str]:
    """Task name -> ScienceWorld task id ("boil" -> "1-1"), from the package's tasks.json."""
    from scienceworld.constants import ID2TASK
    from scienceworld.utils import infer_task

    return {infer_task(name): tid for tid, name in ID2TASK.items()}


def _resolve_task_names(task_names: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    catalogue = _task_catalogue()
    if task_names is None:
        return tuple(catalogue)
    if isinstance(task_names, str):
        task_names = [t for t in task_names.split(",") if t.strip()]
    if not isinstance(task_names, (list, tuple)) or not task_names or not all(isinstance(t, str) for t in task_names):
        raise ValueError(f"ScienceWorld: task_names must be a non-empty list of task names (or one comma-separated string), got {task_names!r}.")
    from scienceworld.utils import infer_task

    ids = {tid: name for name, tid in catalogue.items()}
    out: list[str] = []
    for raw in task_names:
        name = ids.get(raw.strip()) or infer_task(raw.strip())
        if name not in catalogue:
            raise ValueError(
                f"ScienceWorld: unknown task name {raw!r}.{suggest(raw, list(catalogue))} "
                f"Known task names (or ids 1-1..10-2): {', '.join(catalogue)}."
            )
        if name not in out:
            out.append(name)
    return tuple(out)


def _resolve_simplification(simplification: str | list[str] | tuple[str, ...] | None, tasks: tuple[str, ...]) -> str:
    if simplification is None or simplification in ("", "none"):
        return ""
    parts = simplification.split(",") if isinstance(simplification, str) else list(simplification)
    parts = [p.strip() for p in parts if isinstance(p, str) and p.strip()]
    for p in parts:
        if p not in SIMPLIFICATIONS:
            raise ValueError(
                f"ScienceWorld: unknown simplification {p!r}.{suggest(p, SIMPLIFICATIONS)} "
                f"Use 'easy', '' (none) or a comma-separated subset of {list(SIMPLIFICATIONS[1:])}."
            )
    if "noElectricalAction" in parts:
        bad = [t for t in tasks if t in ELECTRICAL]
        if bad:
            raise ValueError(
                f"ScienceWorld: simplification 'noElectricalAction' removes the actions the electrical tasks {bad} need; "
                f"leave those out of task_names or use 'easy' (which keeps electrical actions for them)."
            )
    return ",".join(dict.fromkeys(parts))


_LAUNCH_LOCK = threading.Lock()


def _launch(simulator: Any) -> Any:
    """Start the package's simulator (a JVM) with ``JAVA_OPTS``.

    The package's constructor takes no JVM options, so its module-level ``launch_gateway`` is
    wrapped for the duration of the call (under a lock; only ScienceWorld launches see it).
    """
    import scienceworld.scienceworld as module

    with _LAUNCH_LOCK:
        original = module.launch_gateway
        module.launch_gateway = functools.partial(original, javaopts=list(JAVA_OPTS))
        try:
            return simulator("", envStepLimit=10**9)  # our max_turns does the truncating
        finally:
            module.launch_gateway = original


@functools.lru_cache(maxsize=1)
def _jar_tag() -> str:
    import scienceworld
    from scienceworld.constants import JAR_PATH

    digest = hashlib.sha256(Path(JAR_PATH).read_bytes() + repr(JAVA_OPTS).encode()).hexdigest()[:16]
    return f"{scienceworld.__version__}-{digest}"


def gold_cache_file() -> Path:
    """Where gold paths are cached: ``$AGENTRL_CACHE/scienceworld`` (default
    ``~/.cache/agentrl/scienceworld``), one file per (package version, jar, ``JAVA_OPTS``)."""
    root = os.environ.get("AGENTRL_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "agentrl")
    return Path(root) / "scienceworld" / f"gold-{_jar_tag()}.json"


def _read_gold_cache() -> dict[str, list[str]]:
    try:
        return json.loads(gold_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_gold_cache(key: str, gold: list[str]) -> None:
    """Add one gold path to the cache file (read, merge, write to a temporary name, rename)."""
    path = gold_cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read_gold_cache(), key: gold}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:  # a cache: never fail the episode for it
        log.warning("ScienceWorld: could not write the gold-path cache %s: %s", path, e)


def _clean_action(action: str) -> str:
    """One line of printable text: surrogates and control characters dropped, spaces collapsed."""
    action = action.encode("utf-8", "ignore").decode("utf-8")
    action = "".join(ch if ch.isprintable() else " " for ch in action)
    return re.sub(r"\s+", " ", action).strip()


class ScienceWorldEnv(ToolEnv):
    """ScienceWorld tasks through ``act`` / ``valid_actions`` tools (see the module docstring).

    Args:
        task_names: task types to draw from (names like ``"boil"`` or ids like ``"1-1"``, a
            list or one comma-separated string); ``None`` = all 30.
        simplification: ``"easy"`` (default), ``""`` for none, or a comma-separated subset of
            ScienceWorld's simplifications.
        variations_per_task: keep only the first N variations of each type in each split.
        max_turns: turns before truncation (default 200: above the gold path of all but rare variations).
        deterministic: run every episode in a freshly started JVM (see the module docstring);
            ``False`` reuses the JVM (resets ~1-2 s faster; some task types then vary between runs).
        **kwargs: passed to :class:`~agentrl.envs.base.ToolEnv` (``split``, ``parser``, ...).
    """

    description = "ScienceWorld (30 science task types, train/dev/test variations); native score reward; horizon 3-750 turns"
    splits: ClassVar[tuple[str, ...]] = SPLITS

    # Process-wide caches of pure functions of the jar: variations per (task, split), task
    # intros and gold paths per (task, variation, simplification).
    _VARIATIONS: ClassVar[dict[tuple[str, str], tuple[int, ...]]] = {}
    _INTROS: ClassVar[dict[tuple[str, int, str], dict[str, Any]]] = {}
    _GOLD: ClassVar[dict[tuple[str, int, str], tuple[str, ...]]] = {}

    def __init__(
        self,
        *,
        task_names: str | list[str] | None = None,
        simplification: str | list[str] | None = "easy",
        variations_per_task: int | None = None,
        max_turns: int = 200,
        deterministic: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_turns=max_turns, **kwargs)
        self.task_names = _resolve_task_names(task_names)
        self.simplification = _resolve_simplification(simplification, self.task_names)
        if variations_per_task is not None and (not isinstance(variations_per_task, int) or isinstance(variations_per_task, bool) or variations_per_task < 1):
            raise ValueError(f"ScienceWorld: variations_per_task must be a positive int or None, got {variations_per_task!r}.")
        self.variations_per_task = variations_per_task
        self.deterministic = bool(deterministic)
        self._sw: Any = None  # scienceworld.ScienceWorldEnv, started lazily
        self._lock = threading.RLock()
        self._used = False  # the JVM did something since it started
        self._loaded: tuple[str, int, str] | None = None  # task last loaded (plain) in the JVM
        self._at_start: tuple[str, int, str] | None = None  # the JVM is exactly at this task's canonical start
        self._world: tuple[tuple[str, int, str], int] | None = None  # (task, actions applied since its start)
        self._index: dict[str, list[tuple[str, int]]] = {}
        self._key: tuple[str, int, str] | None = None
        self._history: list[str | None] = []  # this episode's actions (None: a valid_actions call; _SUMMARY_CALL)
        self._summary: tuple[int, str] | None = None
        self._credited = 0  # score (clamped to 0..100) already paid out as reward
        self._over = False

    # ----------------------------------------------------------------- the JVM
    def _use(self) -> Any:
        """The simulator, started if needed; marks that the JVM's history changes."""
        if self._sw is None:
            if shutil.which("java") is None:
                raise RuntimeError("ScienceWorld needs Java (1.8+) on PATH to run its simulator jar; install a JRE (e.g. apt-get install default-jre-headless).")
            try:
                from scienceworld import ScienceWorldEnv as _Simulator
            except ImportError as e:
                raise ImportError("ScienceWorld needs the scienceworld package: pip install scienceworld") from e
            self._sw = _launch(_Simulator)
            self._used, self._loaded, self._at_start, self._world = False, None, None, None
            log.debug("ScienceWorld JVM started (pid %s)", self._sw._gateway.java_process.pid)
        self._used, self._at_start = True, None
        return self._sw

    def _stop_jvm(self) -> None:
        with self._lock:
            sw, self._sw = self._sw, None
            self._used, self._loaded, self._at_start, self._world = False, None, None, None
        if sw is None:
            return
        proc = getattr(sw._gateway, "java_process", None)
        try:
            sw.close()  # shuts the gateway down and tells java to exit
        except Exception as e:  # noqa: BLE001 - the process is killed below either way
            log.debug("ScienceWorld close: %s: %s", type(e).__name__, e)
        sw.close = lambda: None  # its __del__ closes again, and py4j logs tracebacks for that
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _fresh(self) -> None:
        """In deterministic mode, restart the JVM if it has done anything since it started."""
        if self.deterministic and self._sw is not None and self._used:
            self._stop_jvm()

    def close(self) -> None:
        super().close()
        self._stop_jvm()

    def _open(self, key: tuple[str, int, str]) -> dict[str, Any]:
        """Put the JVM at the canonical start of ``key``'s episode; returns the intro seen there.

        Canonical start: (deterministic mode: a fresh JVM,) load, reset, "look around" (what the
        package's ``reset()`` does), then the free task/look/inventory/action-list calls.
        """
        self._fresh()
        sw = self._use()
        if self.deterministic or self._loaded != key:
            sw.load(key[0], key[1], key[2])
            self._loaded = key
        sw.server.reset()
        look = str(sw.server.step("look around"))
        intro = {
            "description": str(sw.get_task_description()).replace("Task Description:", "").strip(),
            "look": look.strip(),
            "inventory": str(sw.inventory()).strip(),
            "actions": [str(a) for a in sw.get_possible_actions() if a not in DISABLED_ACTIONS],
        }
        self._world, self._at_start = (key, 0), key
        return intro

    def _sync_world(self) -> None:
        """Make the JVM hold this episode's state (reopen and replay if something else used it)."""
        assert self._key is not None
        if self._world != (self._key, len(self._history)):
            self._open(self._key)
            sw = self._use()
            for action in self._history:  # None: a valid_actions call (it touches the JVM's state too)
                if action is None:
                    sw.get_valid_action_object_combinations()
                elif action == _SUMMARY_CALL:
                    sw.look(), sw.inventory()
                else:
                    sw.server.step(action)
            self._world = (self._key, len(self._history))

    # ----------------------------------------------------------------- tasks
    def _variations(self, task_name: str, split: str) -> tuple[int, ...]:
        if (task_name, split) not in self._VARIATIONS:
            with self._lock:
                sw = self._use()
                sw.load(task_name, 0, "")
                self._loaded, self._world = None, None
                for s, getter in zip(SPLITS, (sw.get_variations_train, sw.get_variations_dev, sw.get_variations_test)):
                    self._VARIATIONS[(task_name, s)] = tuple(sorted(int(v) for v in getter()))
        return self._VARIATIONS[(task_name, split)]

    def _tasks(self, split: str) -> list[tuple[str, int]]:
        if split not in self._index:
            per_type = [self._variations(t, split)[: self.variations_per_task] for t in self.task_names]
            rounds = max(len(v) for v in per_type)
            self._index[split] = [(t, v[r]) for r in range(rounds) for t, v in zip(self.task_names, per_type) if r < len(v)]
        return self._index[split]

    def num_tasks(self, split: str) -> int:
        return len(self._tasks(split))

    def variation_count(self, task_name: str, split: str) -> int:
        """Number of ScienceWorld variations of ``task_name`` in ``split`` (before ``variations_per_task``)."""
        return len(self._variations(_resolve_task_names([task_name])[0], split))

    def _intro(self, key: tuple[str, int, str]) -> dict[str, Any]:
        if key not in self._INTROS:
            with self._lock:
                self._INTROS[key] = self._open(key)  # leaves the JVM ready for this task's episode
        return self._INTROS[key]

    def get_task(self, split: str, index: int) -> Task:
        tasks = self._tasks(split)
        if not 0 <= index < len(tasks):
            raise IndexError(f"ScienceWorld: task index {index} is out of range; split {split!r} has {len(tasks)} tasks (0..{len(tasks) - 1}).")
        name, variation = tasks[index]
        key = (name, variation, self.simplification)
        intro = self._intro(key)
        prompt = f"{intro['description']}\n\n{intro['look']}\n\n{intro['inventory']}"
        data = {"task_name": name, "variation": variation, "simplification": self.simplification, "actions": intro["actions"]}
        return Task(f"scienceworld/{name}/{variation}/{self.simplification or 'none'}", split, index, prompt, data=data)

    def task_for(self, task_name: str, variation: int) -> tuple[str, int]:
        """(split, index) of ScienceWorld's (task, variation) in this env's task list; errors say
        which variations exist."""
        name = _resolve_task_names([task_name])[0]
        if name not in self.task_names:
            raise ValueError(f"ScienceWorld: task {name!r} is not in this env's task_names {list(self.task_names)}.")
        for split in SPLITS:
            if variation in self._variations(name, split):
                tasks = self._tasks(split)
                if (name, variation) in tasks:
                    return split, tasks.index((name, variation))
                raise IndexError(f"ScienceWorld: variation {variation} of {name!r} is cut by variations_per_task={self.variations_per_task}.")
        total = sum(len(self._variations(name, s)) for s in SPLITS)
        raise IndexError(f"ScienceWorld: variation {variation} is out of range; task {name!r} has variations 0..{total - 1}.")

    # ----------------------------------------------------------------- episode
    async def setup(self, task: Task) -> None:
        self._key = (task.data["task_name"], task.data["variation"], task.data["simplification"])
        self._history, self._credited, self._over = [], 0, False
        self._summary: tuple[int, str] | None = None  # (history length, summary) of the last state_summary()

        def load() -> None:
            with self._lock:
                if self._at_start != self._key:  # else get_task just opened it
                    self._open(self._key)  # type: ignore[arg-type]

        await asyncio.to_thread(load)

    def system_prompt(self, task: Task) -> str:
        lines = [f"  {a}: {_ACTION_HELP[a]}" if a in _ACTION_HELP else f"  {a}" for a in task.data["actions"]]
        return (
            "You are an agent in ScienceWorld, a text-based simulation of a house, a greenhouse, a workshop and the "
            "outdoors, where you carry out elementary-school science tasks. Use the act tool to perform one action per "
            f"call; you have at most {self.max_turns} turns. Actions (OBJ is an object or location named in the game's text):\n"
            + "\n".join(lines)
            + "\nThe valid_actions tool lists the exact actions the game accepts right now. If the game answers with "
            "numbered choices (an ambiguous request), act with the number alone, e.g. \"0\". Focus only on the object "
            "the task asks about. You earn partial credit for progress and full credit when the task is complete.\n\n"
            + super().system_prompt(task)
        )

    def _score(self) -> tuple[int, bool]:
        server = self._sw.server
        return round(100 * server.getScore()), bool(server.getCompleted())

    def _pay(self, score: int) -> float:
        progress = min(max(score, 0), 100)
        reward, self._credited = (progress - self._credited) / 100.0, progress
        return reward

    @tool
    def act(self, action: str) -> ToolOutput:
        """Perform one ScienceWorld action and return what the game says.

        Args:
            action: one action in the game's words, e.g. "open door to kitchen", "pick up thermometer", "focus on water"
        """
        if self._key is None:
            return ToolOutput("Error: no episode; call reset() first.", status="tool_error")
        if self._over:
            return ToolOutput("The task is over; no more actions are accepted.")
        if "\n" in action.strip():
            return ToolOutput("Error: one action per call; this one has several lines. Send them one at a time.")
        text = _clean_action(action)
        if not text:
            return ToolOutput("Error: empty action. Give one action such as \"look around\" or \"go to kitchen\".")
        if len(text) > MAX_ACTION_CHARS:
            return ToolOutput(f"Error: the action is {len(text)} characters long; actions are short phrases such as \"go to kitchen\" (at most {MAX_ACTION_CHARS}).")
        if text.lower() in DISABLED_ACTIONS:
            return ToolOutput(f"The action {text!r} is disabled in this environment.")
        with self._lock:
            self._sync_world()
            observation = str(self._use().server.step(text))
            self._history.append(text)
            self._world = (self._key, len(self._history))
            score, completed = self._score()
        failed = score < 0
        terminated = completed or failed
        if terminated:
            self._over = True
            observation += "\n\n" + ("Task failed." if failed else f"Task completed (score {score}/100).")
        info = {"score": score, "won": completed and not failed and score >= 100, "failed": failed}
        return ToolOutput(observation.strip(), reward=self._pay(score), terminated=terminated, info=info)

    @tool
    def valid_actions(self, contains: str = "") -> ToolOutput:
        """List the actions the game accepts right now.

        Args:
            contains: only list actions containing this text (case-insensitive), e.g. "door" or "thermometer"
        """
        if self._key is None:
            return ToolOutput("Error: no episode; call reset() first.", status="tool_error")
        with self._lock:
            self._sync_world()
            actions = sorted(str(a) for a in self._use().get_valid_action_object_combinations())
            self._history.append(None)
            self._world = (self._key, len(self._history))
            score, _ = self._score()
        needle = _clean_action(contains).lower()
        if needle:
            actions = [a for a in actions if needle in a.lower()]
        shown = actions[:VALID_ACTIONS_SHOWN]
        text = "\n".join(shown) if shown else f"No valid action contains {contains!r}."
        if len(actions) > len(shown):
            text += f"\n... and {len(actions) - len(shown)} more; narrow the list with the contains argument."
        return ToolOutput(text, reward=self._pay(score) if not self._over else 0.0)

    def state_summary(self) -> str:
        """The memory of ``rollout.context.policy: summary`` (docs/long_horizons.md): where the
        agent is and what it carries, e.g. ``"location: kitchen; inventory: a thermometer, an
        orange"`` (at most ``SUMMARY_CHARS`` characters).

        Read with the simulator's free look and inventory calls (no game time passes). They
        are recorded in the episode's history like ``valid_actions`` calls, so a replay of
        the episode (``_sync_world``) repeats them and stays deterministic; a second call
        with no action in between returns the same string without touching the JVM.
        """
        if self._key is None:
            return "location: unknown; inventory: unknown"
        cached = self._summary
        if cached is not None and cached[0] == len(self._history):
            return cached[1]
        with self._lock:
            self._sync_world()
            sw = self._use()
            look, inventory = str(sw.look()), str(sw.inventory())
            self._history.append(_SUMMARY_CALL)
            self._world = (self._key, len(self._history))
        m = re.search(r"called the ([^.\n]+)\.", look)
        place = m.group(1).strip() if m else "unknown"
        items = [line.strip() for line in inventory.splitlines()[1:] if line.strip()]
        text = f"location: {place}; inventory: {', '.join(items) if items else 'nothing'}"
        if len(text) > SUMMARY_CHARS:
            text = text[: SUMMARY_CHARS - 3] + "..."
        self._summary = (len(self._history), text)
        return text

    # ----------------------------------------------------------------- expert
    def gold_actions(self, task: Task | None = None) -> tuple[str, ...]:
        """ScienceWorld's gold action sequence for ``task`` (default: the current one).

        Generated in a fresh JVM in deterministic mode, so it is a pure function of the task
        (for a given jar and JVM), and then kept in the disk cache (:func:`gold_cache_file`).
        """
        task = task or self.task
        if task is None:
            raise RuntimeError("ScienceWorld: gold_actions() needs a task; call reset() first.")
        key = (task.data["task_name"], task.data["variation"], task.data["simplification"])
        if key not in self._GOLD:
            cached = _read_gold_cache().get("/".join(map(str, key)))
            if cached:
                self._GOLD[key] = tuple(cached)
                return self._GOLD[key]
            with self._lock:
                self._fresh()  # so the gold path does not depend on what the JVM did before
                sw = self._use()
                sw.load(*key, generateGoldPath=True)
                self._loaded, self._world = None, None  # the next step reopens and replays
                gold = [str(a) for a in sw.get_gold_action_sequence()]
            if not gold or gold[0].startswith("ERROR"):
                raise RuntimeError(f"ScienceWorld: no gold path for {key}: {gold[:1]}")
            self._GOLD[key] = tuple(gold)
            if self.deterministic:
                _write_gold_cache("/".join(map(str, key)), gold)
        return self._GOLD[key]

    def expert(self) -> Policy:
        gold = self.gold_actions()
        if len(gold) > self.max_turns:
            log.warning("ScienceWorld: the gold path of %s has %d actions, more than max_turns=%d; the expert may be truncated.",
                        self.task.task_id if self.task else "?", len(gold), self.max_turns)
        actions = iter(gold)

        def policy(obs: Any) -> str:
            return self.call("act", action=next(actions, "look around"))

        return policy
