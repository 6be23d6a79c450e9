"""TextWorld adapter, run for real: games generated offline with TextWorld's own generator and
its bundled Inform 7 compiler, played through Jericho.

Games are cached in the default cache dir (``$AGENTRL_CACHE/textworld`` or
``~/.cache/agentrl/textworld``), so only the first run generates them (a few seconds each).
"""

from __future__ import annotations

import json

import pytest

import agentrl.envs as envs
from agentrl.envs.checks import run_checks
from agentrl.envs.textworld_env import TEST_SEED_OFFSET, TextWorldEnv, _verify, clean_feedback, generate_game

ID = "agentrl/TextWorld-v0"
SMALL = {"world_size": 3, "nb_objects": 5, "quest_length": 3, "train_games": 3, "test_games": 2}


def make(**kwargs) -> TextWorldEnv:
    return envs.make(ID, **{**SMALL, **kwargs}).unwrapped  # type: ignore[return-value]


@pytest.fixture(scope="module")
def env():
    e = make()
    yield e
    e.close()


def act(command: str) -> str:
    return f'<tool_call>{{"name": "act", "arguments": {{"command": "{command}"}}}}</tool_call>'


def test_every_check_passes():
    results = run_checks(ID, n_tasks=2, **SMALL)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


def test_expert_walkthrough_wins_with_native_score_as_reward(env):
    obs, info = env.reset(seed=0, options={"task_index": 1})
    assert info["task_id"] == "textworld/r3-o5-q3/train/1"
    intro = obs[1]["content"]
    assert "-= " in intro and "$$" not in intro and not intro.rstrip().endswith(">")  # banner and prompt cut
    policy, rewards, terminated = env.expert(), [], False
    while not terminated:
        _, reward, terminated, truncated, info = env.step(policy(obs))
        assert not truncated
        rewards.append(reward)
    assert len(rewards) == len(env.task.data["walkthrough"]) <= SMALL["quest_length"]
    assert rewards[:-1] == [0.0] * (len(rewards) - 1) and rewards[-1] == pytest.approx(info["score"] / info["max_score"])
    assert info["won"] and not info["lost"] and info["success"] and info["episode_return"] == pytest.approx(1.0)
    last = env.transcript[-1]["content"]
    assert "You won the game." in last and "RESTART" not in last


def test_splits_use_disjoint_seeds_and_differ(env):
    train = [env.get_task("train", i) for i in range(3)]
    test = [env.get_task("test", i) for i in range(2)]
    assert env.seed_of("train", 2) == 2 and env.seed_of("test", 0) == TEST_SEED_OFFSET
    seeds = [t.data["generator_seed"] for t in train + test]
    assert len(set(seeds)) == 5 and all(s % (2 * TEST_SEED_OFFSET) < TEST_SEED_OFFSET for s in seeds[:3])
    assert len({t.prompt for t in train + test}) == 5


def test_admissible_commands_tool_and_option(env):
    env.reset(seed=0, options={"task_index": 0})
    obs, *_ = env.step('<tool_call>{"name": "admissible_commands", "arguments": {}}</tool_call>')
    commands = obs[0]["content"].splitlines()
    assert "look" in commands and "inventory" in commands
    plain = make(admissible_commands=False)
    try:
        _, info = plain.reset(seed=0, options={"task_index": 0})
        assert [t["function"]["name"] for t in info["tools"]] == ["act"]
        assert "admissible_commands" not in plain.system_prompt(plain.task)
    finally:
        plain.close()


def test_junk_commands_are_game_feedback(env):
    env.reset(seed=0, options={"task_index": 0})
    obs, reward, terminated, *_ = env.step(act("xyzzy"))
    assert "not a verb I recognise" in obs[0]["content"] and reward == 0 and not terminated
    obs, *_ = env.step(act("look\\ninventory"))
    assert "one command per call" in obs[0]["content"]
    obs, *_ = env.step(act("look\\u0000\\t"))  # control characters dropped
    assert "-= " in obs[0]["content"]
    obs, *_ = env.step(act(" "))
    assert "empty command" in obs[0]["content"]


def test_generation_is_cached_and_deterministic(tmp_path):
    params = {"world_size": 2, "nb_objects": 3, "quest_length": 2}
    a = generate_game(5, cache_dir=tmp_path / "a", **params)
    b = generate_game(5, cache_dir=tmp_path / "b", **params)
    assert {k: a[k] for k in ("generator_seed", "intro", "walkthrough")} == {k: b[k] for k in ("generator_seed", "intro", "walkthrough")}
    with open(a["path"], "rb") as fa, open(b["path"], "rb") as fb:
        assert fa.read() == fb.read()  # same seed, same game file
    mtime = (tmp_path / "a").stat().st_mtime_ns
    again = generate_game(5, cache_dir=tmp_path / "a", **params)  # from the cache: nothing rewritten
    assert again == a and (tmp_path / "a").stat().st_mtime_ns == mtime


@pytest.mark.filterwarnings("ignore:.*is not fully supported")  # GameMaker plays its draft through Jericho
def test_lost_game_terminates(tmp_path):
    """A hand-made game (TextWorld's GameMaker) with a fail event: eating the apple loses."""
    from textworld import GameMaker
    from textworld.generator.game import Quest

    maker = GameMaker()
    kitchen = maker.new_room("kitchen")
    maker.set_player(kitchen)
    apple, table, counter = maker.new(type="f", name="apple"), maker.new(type="s", name="table"), maker.new(type="s", name="counter")
    kitchen.add(table, counter)
    table.add(apple)
    lose = maker.new_event_using_commands(["take apple from table", "eat apple"])
    win = maker.new_event_using_commands(["take apple from table", "put apple on counter"])
    maker.quests = [Quest(win_events=[win], fail_events=[lose])]
    # put it in the cache where task train/0 of these parameters lives (the layout of generate_game)
    e = TextWorldEnv(world_size=1, nb_objects=3, quest_length=2, train_games=1, test_games=1, cache_dir=tmp_path)
    import textworld

    folder = tmp_path / f"tw{textworld.__version__}" / "rooms1-objects3-quest2"
    path = maker.compile(str(folder / "game0.z8"))
    meta = _verify(path)
    (folder / "seed0.meta.json").write_text(json.dumps({"file": "game0.z8", "generator_seed": 0, "intro": meta["intro"],
                                                       "walkthrough": meta["walkthrough"], "max_score": meta["max_score"], "rejected": []}))
    try:
        e.reset(seed=0, options={"task_index": 0})
        e.step(act("take apple from table"))
        obs, reward, terminated, truncated, info = e.step(act("eat apple"))
        assert terminated and not truncated and info["lost"] and not info["won"]
        assert reward == 0 and not info["success"] and "You lost the game." in obs[0]["content"]
        assert envs.run_episode(e, e.expert, options={"task_index": 0})["success"]
    finally:
        e.close()


def test_clean_feedback():
    raw = (
        "\n\n   ________  __\n  |        \\|  \\\n   \\$$$$$$$$| $$\n\nWelcome! Find the key.\n\n"
        "-= Attic =-\nYou are in an attic.\n\n\n\n>              -= Attic =-0/1"
    )
    assert clean_feedback(raw) == "Welcome! Find the key.\n\n-= Attic =-\nYou are in an attic."
    assert clean_feedback("\nYou can't go that way.\n\n\n>    ") == "You can't go that way."


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"quest_length": 0}, "quest_length must be an int >= 1"),
        ({"world_size": "5"}, "world_size must be an int >= 1"),
        ({"train_games": 2_000_000}, "train_games must be at most 1000000"),
        ({"split": "dev"}, "splits ['train', 'test']"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        TextWorldEnv(**{**SMALL, **kwargs})


def test_out_of_range_index_is_a_clear_error(env):
    with pytest.raises(IndexError, match=r"split 'test' has 2 tasks \(valid indices 0..1\)"):
        env.reset(options={"task_index": 2, "split": "test"})
    with pytest.raises(IndexError, match="split 'train' has 3 games"):
        env.game("train", 3)
