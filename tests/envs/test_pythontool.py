"""PythonTool: tasks, splits and options (pure), then real episodes through the bwrap sandbox."""

from __future__ import annotations

import agentrl.envs as envs
import pytest
from agentrl.envs.checks import run_checks
from agentrl.envs.pythontool import (
    DEFAULT_TASKS,
    TEST_SEED_OFFSET,
    PythonToolEnv,
    build_dataset,
)

ID = "agentrl/PythonTool-v0"


def make(**kwargs) -> PythonToolEnv:
    return envs.make(ID, **kwargs).unwrapped  # type: ignore[return-value]


@pytest.fixture(scope="module")
def env():
    e = make(timeout_s=2.0)
    yield e
    e.close()


# ----------------------------------------------------------------- pure: tasks and options
def test_tasks_interleave_and_are_deterministic(env):
    assert len(DEFAULT_TASKS) == 8
    assert [env.get_task("train", i).task_id for i in range(9)] == [f"{n}/train/0" for n in DEFAULT_TASKS] + [f"{DEFAULT_TASKS[0]}/train/1"]
    other = make()
    for i in (0, 5, 17, 999):
        a, b = env.get_task("train", i), other.get_task("train", i)
        assert a.task_id == b.task_id and a.prompt == b.prompt and a.data["entry"]["answer"] == b.data["entry"]["answer"]
    assert (env.num_tasks("train"), env.num_tasks("test")) == (1000, 200)


def test_splits_use_disjoint_item_seeds(env):
    for name in DEFAULT_TASKS:
        train, test = env._datasets[("train", name)], env._datasets[("test", name)]
        assert test.seed - train.seed == TEST_SEED_OFFSET and len(train) < TEST_SEED_OFFSET
    train_q = {env.get_task("train", i).prompt for i in range(0, 400, 8)}  # basic_arithmetic
    test_q = {env.get_task("test", i).prompt for i in range(0, 200, 8)}
    assert len(train_q) == 50 and not train_q & test_q


def test_no_test_question_is_a_train_question():
    """Distinct item seeds are not enough: prime_factorization draws one number in [2, 1000], and
    6 of its 25 default test items asked a train question before the test split skipped them."""
    e = make()
    train = {e.get_task("train", i).prompt for i in range(e.num_tasks("train"))}
    test = [e.get_task("test", i) for i in range(e.num_tasks("test"))]
    assert not train & {t.prompt for t in test}
    factor = [t for t in test if t.data["name"] == "prime_factorization"]
    assert len(factor) == 25 and [t.task_id for t in factor[:2]] == ["prime_factorization/test/0", "prime_factorization/test/1"]
    assert len({t.prompt for t in factor}) >= 24  # survivors, not one item repeated
    assert make().get_task("test", 4).prompt == test[4].prompt  # still a pure function of the options
    (check,) = run_checks(ID, only=["split_overlap"])  # the check every env passes: no id shared, no prompt noted
    assert check.passed and "Note" not in check.detail, check.detail


def test_a_generator_too_small_for_disjoint_splits_is_refused():
    e = make(tasks=["prime_factorization"], task_config={"prime_factorization": {"min_value": 2, "max_value": 20}}, train_size=60, test_size=5)
    with pytest.raises(ValueError, match=r"task 'prime_factorization' has too few questions for disjoint splits: only 0 of .* needs 5"):
        e.get_task("test", 0)


def test_level_and_task_config_change_the_generator():
    easy = build_dataset("basic_arithmetic", seed=0, size=4, level=0).config
    hard = build_dataset("basic_arithmetic", seed=0, size=4, level=3).config
    assert (easy.max_terms, easy.max_digits) == (2, 1) and (hard.max_terms, hard.max_digits) == (5, 4)
    e = make(tasks=["count_primes"], task_config={"count_primes": {"max_n": 50}}, train_size=20, test_size=5)
    assert all(int(e.get_task("train", i).data["entry"]["answer"]) <= 15 for i in range(20))
    assert make(tasks=["count_primes"], level=2, train_size=4, test_size=4).get_task("test", 0).task_id == "count_primes@L2/test/0"


def test_bad_options_are_clear():
    with pytest.raises(ValueError, match=r"unknown reasoning-gym task 'count_prime'\. Did you mean 'count_primes'"):
        make(tasks=["basic_arithmetic", "count_prime"])
    with pytest.raises(ValueError, match=r"task_config\['count_primes'\]: unknown field 'max_m'.*Did you mean 'max_n'"):
        make(task_config={"count_primes": {"max_m": 3}})
    with pytest.raises(ValueError, match="seed and size are set by the env"):
        make(task_config={"count_primes": {"seed": 3}})
    with pytest.raises(ValueError, match="task_config names 'gcd', which is not in tasks"):
        make(task_config={"gcd": {}})
    with pytest.raises(ValueError, match="task 'acre' has none"):
        make(tasks=["acre"], level=1)
    with pytest.raises(ValueError, match="invalid reasoning-gym config for task 'count_primes'"):
        make(task_config={"count_primes": {"min_n": 10, "max_n": 1}})
    with pytest.raises(ValueError, match="level must be None or an int >= 0, got -1"):
        make(level=-1)
    with pytest.raises(ValueError, match="tasks must be a non-empty list"):
        make(tasks="count_primes")
    with pytest.raises(ValueError, match=r"test_size must be an int in \[1, 10000000\)"):
        make(test_size=0)
    e = make(train_size=10, test_size=5)
    with pytest.raises(IndexError, match=r"task_index 5 is out of range; split 'test' has 5 tasks \(valid indices 0..4\)"):
        e.reset(options={"task_index": 5, "split": "test"})


# ----------------------------------------------------------------- sandbox: episodes
def test_every_check_passes():
    results = run_checks(ID, n_tasks=3)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


@pytest.mark.parametrize("split", ["train", "test"])
def test_expert_solves_every_generator(env, split):
    for i in range(len(DEFAULT_TASKS)):
        result = envs.run_episode(env, env.expert, options={"task_index": 8 + i, "split": split})
        assert result["success"] and result["return"] == 1.0 and result["turns"] == 3, result
    level = make(level=2, train_size=8, test_size=8)
    for i in range(len(DEFAULT_TASKS)):
        result = envs.run_episode(level, level.expert, options={"task_index": i, "split": split})
        assert result["success"], result
    level.close()


def test_session_state_persists_and_crashes_restart(env):
    env.reset(seed=0, options={"task_index": 1})

    def run(code: str) -> tuple[str, str]:
        obs, reward, terminated, _, info = env.step(env.call("python", code=code))
        assert reward == 0.0 and not terminated
        return obs[0]["content"], info["tool_calls"][0]["status"]

    assert run("import math\nx = 41\nwith open('notes.txt', 'w') as f: f.write('kept')") == ("(no output)", "ok")
    assert run("x += 1\nprint(x, math.isqrt(x), open('notes.txt').read())") == ("42 6 kept", "ok")
    out, status = run("raise ValueError('boom')")
    assert status == "runtime_error" and "ValueError: boom" in out
    assert run("print(x)") == ("42", "ok")  # an exception is not a crash
    out, status = run("import os\nos._exit(3)")
    assert status == "runtime_error" and "session was restarted" in out
    out, status = run("print(x)")
    assert status == "runtime_error" and "NameError" in out
    run("y = 1")
    out, status = run("while True: pass")  # timeout_s=2 in the fixture
    assert status == "timeout" and "timed out" in out and "session was restarted" in out
    assert "NameError" in run("print(y)")[0]
    assert run("print('alive')") == ("alive", "ok")


def test_reward_is_the_reasoning_gym_score(env):
    def submit(index: int, answer: str) -> tuple[float, dict]:
        env.reset(seed=0, options={"task_index": index})
        _, reward, terminated, _, info = env.step(env.call("answer", answer=answer))
        assert terminated and info["episode_return"] == reward
        return reward, info

    task = env.get_task("train", 4)  # prime_factorization
    entry, dataset = task.data["entry"], task.data["dataset"]
    factors = entry["answer"].split(" × ")
    reordered = " × ".join(reversed(factors))
    assert submit(4, entry["answer"])[0] == 1.0
    assert submit(4, reordered)[0] == dataset.score_answer(reordered, entry) == 1.0  # the scorer, not string equality
    reward, info = submit(4, "2 x 3")  # this scorer raises on it: a wrong answer, not a crash
    assert reward == 0.0 and "scorer_error" in info
    gold0 = env.get_task("train", 0).data["entry"]["answer"]  # basic_arithmetic
    assert submit(0, gold0)[0] == 1.0
    assert submit(0, "not a number")[0] == 0.0
    reward, info = submit(0, " " + gold0)  # reasoning-gym's partial credit passes through
    assert 0.0 < reward < 1.0 and info["score"] == reward
