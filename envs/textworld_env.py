"""TextWorld (``agentrl/TextWorld-v0``): procedurally generated text adventures with one quest.

Source: the ``textworld`` package (Côté et al., 2018, "TextWorld: A Learning Environment for
Text-based Games", https://github.com/microsoft/TextWorld). Games are generated offline with its
own generator (``textworld.generator.make_game``: a map of ``world_size`` rooms, ``nb_objects``
objects, a quest of ``quest_length`` actions chained backwards from the goal), compiled to
Z-machine files with the Inform 7 compiler bundled in the package, and played through Jericho.
Each game is a pure function of (seed, world_size, nb_objects, quest_length, textworld
version) and is cached on disk under ``cache_dir`` (default ``$AGENTRL_CACHE/textworld`` or
``~/.cache/agentrl/textworld``), so it is generated once (a few seconds each; generation time
grows steeply with ``quest_length``: ~5 s at 5-10, minutes at 20). Train and test use disjoint
seeds: train game ``i`` has seed ``i``, test game ``i`` seed ``1_000_000 + i``
(``train_games`` / ``test_games`` set how many).

Difficulty and horizon knobs: ``quest_length`` (actions on the shortest solution),
``world_size`` (rooms to explore) and ``nb_objects`` (distractors). ``admissible_commands=True``
(default) adds a tool listing the commands the game accepts (TextWorld's own
``admissible_commands``); turn it off for the harder, parser-only game.

Tools: ``act(command)`` sends one command (``"go north"``, ``"take key from box"``, ``"unlock
door with key"``) and returns the game's text (TextWorld's banner, prompt and status line
removed); ``admissible_commands()`` when enabled.

Reward: TextWorld's score (points for quest goals; generated games have ``max_score`` 1 per
quest) scaled by ``1 / max_score``: each call earns the score change, a won game returns
``full_reward`` = 1.0. ``terminated`` when the game is won or lost (a quest-critical item eaten
or destroyed); ``info["score"]``, ``info["max_score"]``, ``info["won"]``, ``info["lost"]``.

Horizon: the walkthrough (the expert) takes ``quest_length`` commands or a few less (the
defaults, 5 rooms / 10 objects / quest 5: 3-5 turns, median 5 over 30 games; 10 rooms / 20
objects / quest 10: 9-10 turns); an agent that explores needs several times more. ``max_turns``
defaults to ``max(20, 8 * quest_length + 4 * world_size)`` (60 for the defaults).

Process model: one Jericho interpreter per episode, in this process. The first use of a task
generates its game inside ``reset`` (~3-10 s on one core, longer on a busy machine; it blocks
the event loop meanwhile); ``pregenerate(split, indices)`` fills the cache ahead of time.

Expert: the game's walkthrough (``extras=["walkthrough"]``), one ``act`` call per turn. Each
generated game is checked by replaying its walkthrough before it is cached; a game whose
walkthrough does not win (TextWorld sometimes gives two objects names Inform 7's parser cannot
tell apart, e.g. "locker" and "type 0 locker") is replaced by the next generator seed (1 of
the first 30 default games). So the expert wins every task by construction, and a model is
never given a game that cannot be solved by typing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from .base import Policy, Task, ToolEnv
from .tools import ToolOutput, tool

log = logging.getLogger(__name__)

TEST_SEED_OFFSET = 1_000_000
#: Generator seeds tried for task seed s: s, s + STRIDE, s + 2 * STRIDE, ... (disjoint across splits).
ATTEMPT_STRIDE = 2 * TEST_SEED_OFFSET
MAX_ATTEMPTS = 8
MAX_COMMAND_CHARS = 200
_GENERATE_LOCK = threading.Lock()  # textworld's generator keeps global state (knowledge base, rng)

COMMANDS = (
    ("look", "describe the room"),
    ("inventory", "list what you carry"),
    ("go north / go south / go east / go west", "move through an exit"),
    ("examine X", "look at something closely"),
    ("take X  /  take X from Y", "pick something up (from a container or a supporter)"),
    ("drop X", "drop something you carry"),
    ("put X on Y", "put something on a supporter (table, shelf, ...)"),
    ("insert X into Y", "put something in a container (box, chest, ...)"),
    ("open X  /  close X", "open or close a door or container"),
    ("unlock X with Y  /  lock X with Y", "use a key on a door or container"),
    ("eat X", "eat something edible"),
)

_BANNER_LINE = re.compile(r"^[\s$\\|_/<>()`'-]*$")
_END_PROMPT = "Would you like to RESTART, RESTORE a saved game"
_PROMPT_TAIL = re.compile(r"\n>\s*(-=.*?=-\s*-?\d+/\d+)?\s*$", re.DOTALL)


def default_cache_dir() -> Path:
    root = os.environ.get("AGENTRL_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "agentrl")
    return Path(root) / "textworld"


def clean_feedback(text: str) -> str:
    """The game's text without TextWorld's ASCII-art banner, the ``>`` prompt and the status line."""
    text = _PROMPT_TAIL.sub("", text.rstrip())
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if not (_BANNER_LINE.match(ln) and any(c in ln for c in "$\\|_")) and not ln.startswith(_END_PROMPT)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _clean_command(command: str) -> str:
    command = command.encode("utf-8", "ignore").decode("utf-8")
    command = "".join(ch if ch.isprintable() and ord(ch) < 128 else " " for ch in command)
    return re.sub(r"\s+", " ", command).strip()


def _start_game(path: str | Path, infos: Any) -> Any:
    import textworld

    with warnings.catch_warnings():
        # Jericho does not know TextWorld's games and disables its own score tracking;
        # TextWorld tracks the score itself.
        warnings.filterwarnings("ignore", message=r".*is not fully supported", category=Warning)
        return textworld.start(str(path), request_infos=infos)


def _verify(game_file: Path) -> dict[str, Any]:
    """Play the game's walkthrough; returns its intro, walkthrough, max score and whether it won."""
    import textworld

    infos = textworld.EnvInfos(score=True, max_score=True, won=True, lost=True, extras=["walkthrough"])
    game = _start_game(game_file, infos)
    try:
        state = game.reset()
        meta = {"intro": clean_feedback(state.feedback), "walkthrough": list(state["extra.walkthrough"] or []),
                "max_score": int(state["max_score"] or 0)}
        last = ""
        for command in meta["walkthrough"]:
            state, _, done = game.step(command)
            last = clean_feedback(state.feedback)
            if done:
                break
        meta["won"] = bool(state["won"]) and int(state["score"] or 0) == meta["max_score"]
        meta["last_feedback"] = last
    finally:
        game.close()
    return meta


def _compile(seed: int, game_file: Path, *, world_size: int, nb_objects: int, quest_length: int) -> None:
    import textworld
    from textworld.generator import compile_game, make_game

    with tempfile.TemporaryDirectory(dir=game_file.parent, prefix=".tmp-") as tmp:
        options = textworld.GameOptions()
        options.seeds = seed
        options.nb_rooms, options.nb_objects, options.quest_length = world_size, nb_objects, quest_length
        options.path = os.path.join(tmp, game_file.name)
        try:
            compiled = Path(compile_game(make_game(options), options))
        except Exception as e:
            raise RuntimeError(
                f"TextWorld: generating the game with seed {seed}, world_size {world_size}, nb_objects {nb_objects}, "
                f"quest_length {quest_length} failed: {type(e).__name__}: {e}. Try a smaller quest_length or a larger world_size."
            ) from e
        os.replace(compiled.with_suffix(".json"), game_file.with_suffix(".json"))
        os.replace(compiled, game_file)  # last: its presence marks a complete game


def generate_game(seed: int, *, world_size: int, nb_objects: int, quest_length: int, cache_dir: Path) -> dict[str, Any]:
    """The game of task seed ``seed`` (generated, verified and cached on first use).

    Returns its metadata: ``path`` (the compiled ``.z8``), ``generator_seed``, ``intro``,
    ``walkthrough``, ``max_score`` and ``rejected`` (generator seeds skipped). A generated game
    is kept only if replaying its walkthrough wins it: TextWorld sometimes names two objects so
    that Inform 7's parser cannot tell them apart ("locker" and "type 0 locker"), and then its
    own walkthrough fails. Such a game is replaced by the one of the next generator seed
    ``seed + k * ATTEMPT_STRIDE`` (k = 1, 2, ...; the stride keeps train and test seeds
    disjoint). Files are written to a temporary name and moved into place, so concurrent
    generators never see half-written games.
    """
    import textworld

    folder = cache_dir / f"tw{textworld.__version__}" / f"rooms{world_size}-objects{nb_objects}-quest{quest_length}"
    meta_file = folder / f"seed{seed}.meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if (folder / meta["file"]).is_file():
            return {**meta, "path": str(folder / meta["file"])}
    folder.mkdir(parents=True, exist_ok=True)
    rejected: list[dict[str, Any]] = []
    with _GENERATE_LOCK:
        for k in range(MAX_ATTEMPTS):
            generator_seed = seed + k * ATTEMPT_STRIDE
            game_file = folder / f"game{generator_seed}.z8"
            if not game_file.is_file():
                _compile(generator_seed, game_file, world_size=world_size, nb_objects=nb_objects, quest_length=quest_length)
            check = _verify(game_file)
            if check["won"]:
                meta = {"file": game_file.name, "generator_seed": generator_seed, "intro": check["intro"],
                        "walkthrough": check["walkthrough"], "max_score": check["max_score"], "rejected": rejected}
                tmp = meta_file.with_name(f".{meta_file.name}.{os.getpid()}.{threading.get_ident()}")
                tmp.write_text(json.dumps(meta, indent=1))
                os.replace(tmp, meta_file)
                log.info("TextWorld: generated %s (generator seed %d)", game_file, generator_seed)
                return {**meta, "path": str(game_file)}
            log.info("TextWorld: generator seed %d rejected, its walkthrough does not win (%s)", generator_seed, check["last_feedback"][:80])
            rejected.append({"generator_seed": generator_seed, "last_feedback": check["last_feedback"][:200]})
    raise RuntimeError(f"TextWorld: no winnable game for seed {seed} in {MAX_ATTEMPTS} attempts (world_size {world_size}, "
                       f"nb_objects {nb_objects}, quest_length {quest_length}): {rejected}")


class TextWorldEnv(ToolEnv):
    """Generated TextWorld games through an ``act`` tool (see the module docstring).

    Args:
        world_size: rooms in the map.
        nb_objects: objects in the world (quest objects plus distractors).
        quest_length: actions on the quest's shortest solution.
        train_games: number of train games (seeds ``0 .. train_games-1``).
        test_games: number of test games (seeds ``1_000_000 + i``).
        cache_dir: where generated games are kept (default :func:`default_cache_dir`).
        admissible_commands: offer the ``admissible_commands`` tool.
        max_turns: default ``max(20, 8 * quest_length + 4 * world_size)``.
        **kwargs: passed to :class:`~agentrl.envs.base.ToolEnv`.
    """

    description = "TextWorld quests generated offline and cached; native score reward; horizon quest_length to ~8x"

    def __init__(
        self,
        *,
        world_size: int = 5,
        nb_objects: int = 10,
        quest_length: int = 5,
        train_games: int = 10_000,
        test_games: int = 1_000,
        cache_dir: str | os.PathLike[str] | None = None,
        admissible_commands: bool = True,
        max_turns: int | None = None,
        **kwargs: Any,
    ) -> None:
        for name, value, low in (("world_size", world_size, 1), ("nb_objects", nb_objects, 0), ("quest_length", quest_length, 1),
                                 ("train_games", train_games, 1), ("test_games", test_games, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"TextWorld: {name} must be an int >= {low}, got {value!r}.")
        if train_games > TEST_SEED_OFFSET:
            raise ValueError(f"TextWorld: train_games must be at most {TEST_SEED_OFFSET} (test seeds start there), got {train_games}.")
        if max_turns is None:
            max_turns = max(20, 8 * quest_length + 4 * world_size)
        super().__init__(max_turns=max_turns, **kwargs)
        self.world_size, self.nb_objects, self.quest_length = world_size, nb_objects, quest_length
        self._counts = {"train": train_games, "test": test_games}
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.admissible = bool(admissible_commands)
        if not self.admissible:
            self.tools.pop("admissible_commands", None)
        self._game: Any = None  # textworld env of the current episode
        self._state: Any = None  # its last GameState
        self._score = 0
        self._over = False

    # ----------------------------------------------------------------- tasks
    def num_tasks(self, split: str) -> int:
        return self._counts[split]

    def seed_of(self, split: str, index: int) -> int:
        """The generator seed of task ``index`` of ``split`` (train and test seeds are disjoint)."""
        return index + (TEST_SEED_OFFSET if split == "test" else 0)

    def game(self, split: str, index: int) -> dict[str, Any]:
        """Metadata of a task's game (generated, verified and cached on first use; see
        :func:`generate_game`)."""
        n = self.num_tasks(split)
        if not 0 <= index < n:
            raise IndexError(f"TextWorld: task index {index} is out of range; split {split!r} has {n} games (0..{n - 1}).")
        return generate_game(self.seed_of(split, index), world_size=self.world_size, nb_objects=self.nb_objects,
                             quest_length=self.quest_length, cache_dir=self.cache_dir)

    def get_task(self, split: str, index: int) -> Task:
        meta = self.game(split, index)
        data = {key: meta[key] for key in ("path", "generator_seed", "walkthrough", "max_score")}
        params = f"r{self.world_size}-o{self.nb_objects}-q{self.quest_length}"
        return Task(f"textworld/{params}/{split}/{index}", split, index, meta["intro"], data=data)

    def _start(self, path: Path, admissible: bool) -> Any:
        import textworld

        infos = textworld.EnvInfos(score=True, max_score=True, won=True, lost=True, admissible_commands=admissible)
        return _start_game(path, infos)

    # ----------------------------------------------------------------- episode
    async def setup(self, task: Task) -> None:
        def start() -> None:
            self._game = self._start(Path(task.data["path"]), self.admissible)
            self._state = self._game.reset()

        self._score, self._over = 0, False
        await asyncio.to_thread(start)

    async def teardown(self) -> None:
        game, self._game, self._state = self._game, None, None
        if game is not None:
            game.close()

    def system_prompt(self, task: Task) -> str:
        cmds = "\n".join(f"  {c}: {h}" for c, h in COMMANDS)
        helper = " The admissible_commands tool lists the commands the game accepts right now." if self.admissible else ""
        return (
            "You are playing a text adventure. Read the goal in the first message, explore the rooms and complete "
            f"the quest. Use the act tool to send one command per call; you have at most {self.max_turns} turns.{helper} "
            f"Commands (X and Y are things named in the game's text):\n{cmds}\n\n" + super().system_prompt(task)
        )

    @tool
    def act(self, command: str) -> ToolOutput:
        """Send one command to the game and return its reply.

        Args:
            command: one command, e.g. "go north", "take key from box", "unlock door with key"
        """
        if self._game is None:
            return ToolOutput("Error: no game running; call reset() first.", status="tool_error")
        if self._over:
            return ToolOutput("The game is over; no more commands are accepted.")
        if "\n" in command.strip():
            return ToolOutput("Error: one command per call; this one has several lines. Send them one at a time.")
        text = _clean_command(command)
        if not text:
            return ToolOutput('Error: empty command. Send one command such as "look" or "go north".')
        if len(text) > MAX_COMMAND_CHARS:
            return ToolOutput(f"Error: the command is {len(text)} characters long; commands are short, such as \"open box\" (at most {MAX_COMMAND_CHARS}).")
        state, _, done = self._game.step(text)
        self._state = state
        max_score = max(int(state["max_score"] or 1), 1)
        score = int(state["score"] or 0)
        reward, self._score = (score - self._score) / max_score, score
        won, lost = bool(state["won"]), bool(state["lost"])
        terminated = bool(done or won or lost)
        feedback = clean_feedback(state.feedback)
        if terminated:
            self._over = True
            feedback += "\n\n" + ("You won the game." if won else "You lost the game.")
        info = {"score": score, "max_score": max_score, "won": won, "lost": lost}
        return ToolOutput(feedback, reward=reward, terminated=terminated, info=info)

    @tool
    def admissible_commands(self) -> str:
        """List the commands the game accepts in the current state."""
        if self._state is None:
            return "Error: no game running; call reset() first."
        return "\n".join(self._state["admissible_commands"] or [])

    # ----------------------------------------------------------------- expert
    def expert(self) -> Policy:
        if self.task is None:
            raise RuntimeError("TextWorld: expert() needs an episode; call reset() first.")
        commands = iter(self.task.data["walkthrough"])

        def policy(obs: Any) -> str:
            return self.call("act", command=next(commands, "look"))

        return policy

    def pregenerate(self, split: str, indices: range | list[int]) -> list[dict[str, Any]]:
        """Generate (or find cached) the games of ``indices`` of ``split`` ahead of training."""
        return [self.game(split, i) for i in indices]
