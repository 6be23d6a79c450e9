"""SQL env: generation and result matching (pure), then episodes and attacks in the sandbox."""

from __future__ import annotations

import time

import pytest

import agentrl.envs as envs
from agentrl.envs.checks import run_checks
from agentrl.envs.sql import SQLEnv
from agentrl.envs.sql_gen import TEMPLATES, normalize_rows, results_match

ID = "agentrl/SQL-v0"


def make(**kwargs) -> SQLEnv:
    return envs.make(ID, **kwargs).unwrapped  # type: ignore[return-value]


# ----------------------------------------------------------------- pure
def test_generation_is_deterministic_and_covers_every_template():
    a, b = make(), make()
    seen = set()
    for i in range(150):
        ta = a.get_task("train", i)
        if i % 10 == 0:
            tb = b.get_task("train", i)
            assert ta.data["db"] == tb.data["db"] and ta.prompt == tb.prompt
        q = ta.data["question"]
        seen.add(q.template)
        assert ta.data["gold"], q  # never an empty gold answer
    assert seen == {name for tier in TEMPLATES.values() for name in tier}


def test_splits_use_different_databases():
    env = make()
    train = {env.get_task("train", i).data["db"] for i in range(30)}
    assert not train & {env.get_task("test", i).data["db"] for i in range(30)}


@pytest.mark.parametrize("tier", [1, 2, 3, 4])
def test_difficulty_selects_the_tier(tier):
    env = make(difficulty=tier)
    assert {env.get_task("train", i).data["question"].tier for i in range(10)} == {tier}


def test_result_matching_rules():
    gold = normalize_rows([("Oslo", 3), ("Lima", 2.0)])
    assert results_match(normalize_rows([["Lima", 2], ["Oslo", 3.0]]), gold, ordered=False)
    assert not results_match(normalize_rows([["Lima", 2], ["Oslo", 3.0]]), gold, ordered=True)
    assert results_match(normalize_rows([["Oslo", 3], ["Lima", 2]]), gold, ordered=True)
    assert results_match(normalize_rows([[12.3456]]), normalize_rows([(12.35,)]), ordered=False)  # 2 decimals
    assert not results_match(normalize_rows([["oslo", 3], ["Lima", 2]]), gold, ordered=False)  # text is exact
    assert not results_match(normalize_rows([[3, "Oslo"], [2, "Lima"]]), gold, ordered=False)  # column order
    assert not results_match(normalize_rows([["Oslo", 3], ["Lima", 2], ["Lima", 2]]), gold, ordered=False)  # multiset
    assert not results_match(normalize_rows([["Oslo"], ["Lima"]]), gold, ordered=False)
    assert results_match(normalize_rows([[None]]), normalize_rows([(None,)]), ordered=False)


def test_bad_options_have_clear_errors():
    with pytest.raises(ValueError, match="domain must be one of .*Did you mean 'school'"):
        make(domain="scool")
    with pytest.raises(ValueError, match="difficulty must be 1, 2, 3, 4 or None"):
        make(difficulty=7)
    with pytest.raises(ValueError, match="query_timeout_s"):
        make(query_timeout_s=-1)
    with pytest.raises(TypeError, match="unknown option .dificulty. for agentrl/SQL-v0. Did you mean .difficulty."):
        envs.make(ID, dificulty=2)


# ----------------------------------------------------------------- sandbox episodes
def test_every_check_passes():
    results = run_checks(ID, n_tasks=3)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_expert_solves_every_tier(difficulty):
    env = envs.make(ID, difficulty=difficulty)
    try:
        for i in range(4):
            r = envs.run_episode(env, env.unwrapped.expert, options={"task_index": 31 * i, "split": ("train", "test")[i % 2]})
            assert r["success"] and r["turns"] == 3 and sum(r["errors"].values()) == 0, (r, env.unwrapped.transcript[-3:])
    finally:
        env.close()


@pytest.fixture(scope="module")
def sql_env():
    env = make(query_timeout_s=1.0, max_turns=1000)
    env.reset(options={"task_index": 0})
    yield env
    env.close()


def _run(env: SQLEnv, query: str, tool: str = "sql") -> tuple[str, float]:
    t0 = time.perf_counter()
    obs, *_ = env.step(env.call(tool, query=query))
    return obs[0]["content"], time.perf_counter() - t0


def test_sql_tool_shows_a_bounded_table(sql_env):
    people = sql_env.task.data["domain"]
    table = {"shop": "customers", "school": "students", "library": "members"}[people]
    out, _ = _run(sql_env, f"SELECT name, city FROM {table}")
    lines = out.splitlines()
    assert lines[0] == "name | city" and lines[-1].endswith("first 20 shown)") and len(lines) == 22
    out, _ = _run(sql_env, "SELECT 1 AS one")
    assert out == "one\n1\n(1 row)"
    out, _ = _run(sql_env, "SELECT FROM WHERE")
    assert out.startswith("Error:") and "syntax error" in out
    out, _ = _run(sql_env, f"PRAGMA table_info({table})")
    assert "| name |" in out and not out.startswith("Error")


ATTACKS = {
    "attach a host file": ("ATTACH DATABASE '/etc/passwd' AS pw", "only read-only queries"),
    "attach via select": ("SELECT * FROM pragma_database_list", "not authorized"),
    "load an extension": ("SELECT load_extension('/lib/x86_64-linux-gnu/libc.so.6')", "not authorized"),
    "write": ("INSERT INTO sqlite_master VALUES (1, 2, 3, 4, 5)", "only read-only queries"),
    "write in a CTE": ("WITH x AS (SELECT 1) DELETE FROM sqlite_master", ""),
    "drop": ("DROP TABLE IF EXISTS t", "only read-only queries"),
    "writable pragma": ("PRAGMA journal_mode = WAL", "not authorized"),
    "vacuum into": ("VACUUM INTO '/work/copy.db'", "only read-only queries"),
    "two statements": ("SELECT 1; SELECT 2", "one statement"),
    "comment-hidden write": ("/* x */ -- y\n DELETE FROM t", "only read-only queries"),
    "recursive CTE bomb": ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", "longer than 1 s"),
    "cartesian product": ("SELECT count(*) FROM sqlite_master a, (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 100000) SELECT x FROM c) b, (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 100000) SELECT x FROM c) d", "longer than 1 s"),
    "string bomb": ("SELECT length(randomblob(2000000000))", "too big"),
    "zeroblob bomb": ("SELECT zeroblob(100000000)", "too big"),
    "huge sort": ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c ORDER BY -x LIMIT 1", "longer than 1 s"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_are_contained(sql_env, name):
    query, fragment = ATTACKS[name]
    out, wall = _run(sql_env, query)
    assert out.startswith("Error:") and fragment in out, out
    assert wall < 6.0, (name, wall)
    out, _ = _run(sql_env, "SELECT 41 + 1 AS x")  # the session still works
    assert out == "x\n42\n(1 row)"


def test_infinite_rows_are_cut(sql_env):
    out, wall = _run(sql_env, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x, printf('%.500c', 'a') FROM c")
    assert "more than 20 rows" in out and len(out) < 4000 and wall < 3


def test_answers_are_scored_by_result():
    env = make(difficulty=3)
    try:
        for i in range(20):  # find an order-insensitive and an ordered question
            env.reset(options={"task_index": i})
            q = env.task.data["question"]
            if not q.ordered and q.template == "count_per_city":
                break
        gold = q.sql
        # the same rows in another order, from a different query, are right
        _, reward, term, _, _ = env.step(env.call("answer", query=gold + " ORDER BY 1 DESC"))
        assert term and reward == 1.0
        env.reset(options={"task_index": i})
        _, reward, term, _, _ = env.step(env.call("answer", query=gold.replace("COUNT(*)", "COUNT(*) + 1")))
        assert term and reward == 0.0
        env.reset(options={"task_index": i})
        obs, reward, term, _, info = env.step(env.call("answer", query="SELECT nope FROM nowhere"))
        assert not term and reward == 0.0 and "not taken as the answer" in obs[0]["content"]
        for i in range(40):
            env.reset(options={"task_index": i})
            if env.task.data["question"].ordered:
                break
        desc = env.task.data["question"].sql.replace(" DESC", " ASC")
        _, reward, term, _, _ = env.step(env.call("answer", query=desc))
        assert term and reward == 0.0
    finally:
        env.close()
