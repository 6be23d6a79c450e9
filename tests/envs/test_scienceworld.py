"""ScienceWorld adapter, run for real: the bundled jar on the machine's Java, no network.

The module shares one env (one JVM) for the adapter tests; ``run_checks`` makes its own envs
(one JVM each, ~1-3 s to start). Tasks are restricted to short task types so the gold paths
are quick (find-animal 8-16 turns, find-non-living-thing 3-9, lifespan-longest-lived 3-7).
"""

from __future__ import annotations

import json

import pytest

import agentrl.envs as envs
from agentrl.envs.checks import run_checks
from agentrl.envs.scienceworld import KNOWN_GOLD_FAILURES, ScienceWorldEnv, gold_cache_file

ID = "agentrl/ScienceWorld-v0"
SHORT = ["find-animal", "find-non-living-thing", "lifespan-longest-lived"]


def make(**kwargs) -> ScienceWorldEnv:
    return envs.make(ID, **{"task_names": SHORT, **kwargs}).unwrapped  # type: ignore[return-value]


@pytest.fixture(scope="module")
def env():
    e = make()
    yield e
    e.close()


def act(action: str) -> str:
    return f'<tool_call>{{"name": "act", "arguments": {{"action": "{action}"}}}}</tool_call>'


def test_every_check_passes():
    results = run_checks(ID, n_tasks=2, task_names=SHORT)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


def test_score_deltas_are_rewards_and_completion_terminates(env):
    obs, info = env.reset(seed=0, options={"task_index": 1, "split": "train"})  # find-non-living-thing
    assert info["task_id"] == "scienceworld/find-non-living-thing/0/easy"
    assert "Your task is to find a(n) non-living thing" in obs[1]["content"]
    assert "This room is called" in obs[1]["content"]  # the opening "look around"
    policy = env.expert()
    rewards, scores, terminated = [], [0], False
    while not terminated:
        _, reward, terminated, truncated, info = env.step(policy(obs))
        assert not truncated
        rewards.append(reward)
        scores.append(info["score"])
    # every reward is the change of the native score / 100 (the start credit paid on call 1)
    assert rewards == pytest.approx([(b - a) / 100 for a, b in zip(scores, scores[1:])])
    assert scores[-1] == 100 and info["won"] and not info["failed"]
    assert info["episode_return"] == pytest.approx(1.0) and info["success"]
    assert "Task completed" in env.transcript[-1]["content"]


def test_failure_terminates_with_zero_return(env):
    env.reset(seed=0, options={"task_index": 0})  # find-animal: the orange in the inventory is no animal
    _, r1, terminated, _, info = env.step(act("look around"))
    assert not terminated and r1 == pytest.approx(info["score"] / 100) and info["score"] > 0
    obs, r2, terminated, truncated, info = env.step(act("focus on orange"))
    assert terminated and not truncated
    assert info["failed"] and not info["won"] and info["score"] == -100
    assert r2 == pytest.approx(-r1) and info["episode_return"] == pytest.approx(0.0) and not info["success"]
    assert "Task failed" in obs[0]["content"]


def test_reset_task_is_disabled_and_junk_is_harmless(env):
    env.reset(seed=0, options={"task_index": 0})
    obs, *_ = env.step(act("reset task"))
    assert "disabled" in obs[0]["content"]
    obs, _, terminated, *_ = env.step(act("fly to the moon"))
    assert "No known action" in obs[0]["content"] and not terminated
    obs, *_ = env.step('<tool_call>{"name": "act", "arguments": {"action": "\\u0000\\ud800 "}}</tool_call>')
    assert "empty action" in obs[0]["content"]


def test_valid_actions_lists_and_filters(env):
    env.reset(seed=0, options={"task_index": 0})
    obs, *_ = env.step('<tool_call>{"name": "valid_actions", "arguments": {"contains": "door to kitchen"}}</tool_call>')
    lines = obs[0]["content"].splitlines()
    assert "open door to kitchen" in lines or "close door to kitchen" in lines
    assert all("door to kitchen" in line for line in lines)


def test_episode_state_survives_other_uses_of_the_jvm(env):
    # get_task and the gold path reload the simulator; the episode replays its actions
    env.reset(seed=0, options={"task_index": 0})
    env.step(act("teleport to kitchen"))
    env.get_task("test", 2)
    env.gold_actions(env.get_task("dev", 1))
    obs, *_ = env.step(act("look around"))
    assert obs[0]["content"].startswith("This room is called the kitchen")


def test_splits_are_scienceworlds_variation_splits(env):
    train, dev, test = (set(env._variations("find-animal", s)) for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (150, 75, 75)
    assert not train & dev and not train & test and not dev & test
    assert train | dev | test == set(range(300))
    assert env.task_for("find-animal", 230) == ("test", env._tasks("test").index(("find-animal", 230)))


def test_task_order_is_round_robin_and_variations_can_be_capped():
    e = make(variations_per_task=2)
    try:
        assert e.num_tasks("train") == 6
        names = [e._tasks("train")[i][0] for i in range(6)]
        assert names == SHORT + SHORT
        assert [e._tasks("test")[i][1] for i in range(3)] == [225, 225, 93]  # each type's first test variation
    finally:
        e.close()


def test_task_names_accept_ids_and_paper_names_and_simplification_is_a_knob():
    e = ScienceWorldEnv(task_names="4-1,Matter Changes of State (Boiling)", simplification="")
    assert e.task_names == ("find-living-thing", "boil")
    assert e.simplification == ""
    assert ScienceWorldEnv(task_names=["boil"], simplification="openDoors,teleportAction").simplification == "openDoors,teleportAction"
    e.close()


def test_simplification_changes_the_world(env):
    hard = make(simplification="")
    try:
        _, info = hard.reset(seed=0, options={"task_index": 0})
        assert info["task_id"].endswith("/none")
        assert "(that is closed)" in hard.task.prompt
        assert "(that is open)" in env.get_task("train", 0).prompt
        assert "teleport OBJ" not in hard.system_prompt(hard.task)
    finally:
        hard.close()


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"task_names": ["boill"]}, ValueError, "Did you mean 'boil'"),
        ({"task_names": ["find-animals"]}, ValueError, "unknown task name 'find-animals'"),
        ({"task_names": []}, ValueError, "non-empty list"),
        ({"simplification": "eazy"}, ValueError, "Did you mean 'easy'"),
        ({"task_names": ["power-component"], "simplification": "noElectricalAction"}, ValueError, "electrical"),
        ({"variations_per_task": 0}, ValueError, "positive int"),
        ({"split": "validation"}, ValueError, "splits ['train', 'dev', 'test']"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        ScienceWorldEnv(**{"task_names": SHORT, **kwargs})


def test_out_of_range_indices_are_clear_errors(env):
    n = env.num_tasks("dev")
    with pytest.raises(IndexError, match=f"split 'dev' has {n} tasks"):
        env.reset(options={"task_index": n, "split": "dev"})
    with pytest.raises(IndexError, match=r"task 'find-animal' has variations 0\.\.299"):
        env.task_for("find-animal", 300)
    with pytest.raises(ValueError, match="not in this env's task_names"):
        env.task_for("boil", 0)


def test_close_kills_the_jvm_and_reset_starts_a_new_one():
    e = make()
    e.reset(seed=0, options={"task_index": 2})
    proc = e._sw._gateway.java_process
    assert proc.poll() is None
    e.close()
    assert proc.poll() is not None  # the java process is gone
    e.close()
    e.reset(seed=0, options={"task_index": 2})  # lazily starts a fresh JVM
    assert e._sw._gateway.java_process.poll() is None
    e.close()


def test_episodes_do_not_depend_on_earlier_ones():
    """ScienceWorld lists objects (and moves animals) in an order that depends on everything the
    JVM did before; in deterministic mode (the default) each episode starts in a fresh JVM."""
    names = ["identify-life-stages-2", "find-non-living-thing"]
    a, b = ScienceWorldEnv(task_names=names), ScienceWorldEnv(task_names=names)
    try:
        envs.run_episode(a, a.expert, options={"task_index": 1})  # a different history first
        for e in (a, b):
            result = envs.run_episode(e, e.expert, options={"task_index": 0})
            assert result["success"], (result, e.transcript[-2:])
        first = next((i for i, (x, y) in enumerate(zip(a.transcript, b.transcript)) if x != y), None)
        assert first is None and len(a.transcript) == len(b.transcript), (first, a.transcript[first or 0], b.transcript[first or 0])
    finally:
        a.close()
        b.close()


def test_gold_paths_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))
    monkeypatch.setattr(ScienceWorldEnv, "_GOLD", {})  # forget this process's gold paths
    e = make()
    try:
        task = e.get_task("train", 2)
        gold = e.gold_actions(task)
        assert gold_cache_file().is_relative_to(tmp_path)
        assert json.loads(gold_cache_file().read_text()) == {"lifespan-longest-lived/0/easy": list(gold)}
        ScienceWorldEnv._GOLD.clear()
        e._stop_jvm()
        assert e.gold_actions(task) == gold and e._sw is None  # read back without starting a JVM
    finally:
        e.close()


@pytest.mark.parametrize("name, variation", sorted(KNOWN_GOLD_FAILURES))
def test_known_gold_failures_are_real(name, variation):
    """The documented gold-path failures still fail (so the list stays honest)."""
    e = ScienceWorldEnv(task_names=[name])
    try:
        split, index = e.task_for(name, variation)
        e.max_turns = len(e.gold_actions(e.get_task(split, index)))  # the whole gold path, nothing more
        result = envs.run_episode(e, e.expert, options={"task_index": index, "split": split})
        assert result["truncated"] and 0 < result["return"] < 1
    finally:
        e.close()


@pytest.mark.parametrize("index", range(len(SHORT)))
def test_state_summary_tracks_location_and_inventory_and_leaves_the_expert_its_score(env, index):
    """The summary policy's memory: read after every turn of the expert's gold path (as the
    policy does), it names the room the agent is in and what it carries, and the free calls it
    makes do not change the episode: the expert still reaches score 100. A replay after other
    uses of the JVM repeats them and ends in the same room."""
    obs, info = env.reset(seed=0, options={"task_index": index, "split": "train"})
    first = env.state_summary()
    assert first.startswith("location: ") and "; inventory: " in first
    assert env.state_summary() == first  # no action in between: the same string, no JVM call
    policy, summaries, terminated = env.expert(), [first], False
    while not terminated:
        obs, _, terminated, truncated, info = env.step(policy(obs))
        assert not truncated
        summaries.append(env.state_summary())
    assert info["score"] == 100 and info["won"]
    rooms = {s.split(";")[0] for s in summaries}
    for s in summaries:
        assert len(s) <= 300
    looks = [a for a in env._history if isinstance(a, str) and a.startswith(("go to", "teleport to"))]
    if looks:  # the expert moved: the summary followed it
        assert len(rooms) > 1
        target = looks[-1].split(" to ", 1)[1]
        assert summaries[-1].startswith(f"location: {target}")
    env.get_task("dev", 1)  # reload the simulator: the next call replays the history
    env._summary = None
    assert env.state_summary().split(";")[0] == summaries[-1].split(";")[0]


def test_state_summary_names_picked_up_objects(env):
    env.reset(seed=0, options={"task_index": 0})  # find-animal: the agent starts with an orange
    assert env.state_summary().endswith("inventory: an orange")
    env.step(act("teleport to kitchen"))
    assert env.state_summary().startswith("location: kitchen;")
