"""ShellQuest: generation (pure), then real episodes through the bwrap sandbox."""

from __future__ import annotations

import re
from collections import Counter

import pytest

import agentrl.envs as envs
from agentrl.envs.checks import run_checks
from agentrl.envs.shellquest import ShellQuestEnv, full, small
from agentrl.envs.shellquest.quest import CwdCheck, FileCheck, normalize_lines, split_of

ID = "agentrl/ShellQuest-v0"


def make(**kwargs) -> ShellQuestEnv:
    return envs.make(ID, **kwargs).unwrapped  # type: ignore[return-value]


def tokens(text: str) -> list[str]:
    """Words, numbers and single punctuation marks: what a tiny word-level tokenizer sees."""
    return re.findall(r"[A-Za-z_]+|\d+|[^\sA-Za-z_\d]", text)


# ----------------------------------------------------------------- pure: generation
@pytest.mark.parametrize("vocab, difficulty", [("small", 1), ("small", 2), ("small", 3), ("full", 1), ("full", 2), ("full", 3)])
def test_generation_is_deterministic_and_varied(vocab, difficulty):
    a, b = make(vocab=vocab, difficulty=difficulty), make(vocab=vocab, difficulty=difficulty)
    for i in range(5):
        assert a.get_task("train", i).data == b._generate("train", i).data
    prompts_and_plans = {a.get_task("train", i).data.commands for i in range(20)}
    assert len(prompts_and_plans) == 20


@pytest.mark.parametrize(
    "vocab, difficulty, horizons",
    [("small", 1, (4, 6, 10, 50)), ("small", 2, (4, 10, 50)), ("small", 3, (5, 10, 50)), ("full", 1, (5, 11, 21)), ("full", 3, (5, 101))],
)
def test_horizon_sets_expert_turns(vocab, difficulty, horizons):
    for h in horizons:
        quest = make(vocab=vocab, difficulty=difficulty, horizon=h).get_task("train", 3).data
        turns = len(quest.commands) + 1  # + submit
        if vocab == "small":
            assert turns == h
            assert len(quest.subgoals) == len(quest.meta["chain"]) == small.chain_length(difficulty, h)
        else:
            assert turns == 2 * full.n_stages(h) + 1 and h - 1 <= turns <= h
            assert len(quest.checks) == full.n_stages(h)


def test_small_mode_splits_are_disjoint_by_content():
    env = make(vocab="small", difficulty=1, horizon=4)  # the smallest quest space: 16 x 16 x 16
    train = {env.get_task("train", i).data.signature for i in range(300)}
    test = {env.get_task("test", i).data.signature for i in range(100)}
    assert not train & test
    assert all(split_of(s) == "test" for s in test) and all(split_of(s) == "train" for s in train)


def test_small_mode_files_use_the_small_vocabulary():
    words = set(small.WORDS) | {"note", "go", "key", "count"}
    for d in (1, 2, 3):
        quest = make(vocab="small", difficulty=d, horizon=12).get_task("test", 1).data
        for path, text in quest.files.items():
            assert set(path.split("/")) <= words, path
            assert set(text.split()) <= words | {str(i) for i in range(10)}, text


def test_full_mode_answers_are_consistent_with_the_tree():
    """Expected answers are computed from the finished tree (later stages add files)."""
    env = make(vocab="full", difficulty=2, horizon=41)
    quest = env.get_task("train", 0).data
    for cmd, check in zip(quest.commands[1::2], quest.checks):
        assert cmd.endswith(f"> {check.path}")
        assert check.expected and all(line == line.strip() for line in check.expected)
        if check.paths:
            assert all(p in quest.files for p in check.expected)
    clues = [p for p, text in quest.files.items() if text.startswith("Stage ")]
    assert len(clues) == len(quest.checks) and not any(p.startswith("logs/") for p in clues)


def test_checks_normalize_paths_and_whitespace():
    check = FileCheck("answers/1.txt", ("logs/a.log",), paths=True)
    assert check.passes(b"./logs/a.log\n") and check.passes(b"/work/logs/a.log") and check.passes(b"  logs/a.log  \n\n")
    assert not check.passes(b"logs/b.log") and not check.passes(None) and not check.passes(b"logs/a.log\nlogs/a.log")
    assert normalize_lines("a\n\n b \n") == ("a", "b")
    assert CwdCheck("fox").passes("/work/fox/owl") and CwdCheck("fox").passes("/work/fox")
    assert not CwdCheck("fox").passes("/work/foxy") and not CwdCheck("fox").passes("/tmp/fox") and not CwdCheck("fox").passes(None)


def test_bad_options_have_clear_errors():
    with pytest.raises(ValueError, match="vocab must be one of .*Did you mean 'small'"):
        make(vocab="smal")
    with pytest.raises(ValueError, match=r"difficulty must be one of \[1, 2, 3\], got 5"):
        make(difficulty=5)
    with pytest.raises(ValueError, match="reward must be one of .*Did you mean 'partial'"):
        make(reward="partal")
    with pytest.raises(ValueError, match=r"horizon must be an int in \[5, 1000\].*difficulty=3"):
        make(vocab="small", difficulty=3, horizon=4)
    with pytest.raises(ValueError, match="command_timeout_s"):
        make(command_timeout_s=0)
    with pytest.raises(TypeError, match="unknown option .horizn. for agentrl/ShellQuest-v0. Did you mean .horizon."):
        envs.make(ID, horizn=5)
    env = envs.make(ID, num_test_tasks=7)
    with pytest.raises(IndexError, match=r"split 'test' has 7 tasks"):
        env.reset(options={"split": "test", "task_index": 7})


def test_mixed_horizons_draw_each_tasks_horizon_and_keep_its_quest():
    """horizon=[5, 50]: each task's horizon is a seeded draw from 5..50, and the task is the
    fixed-horizon env's task of that horizon and index (same quest, same id)."""
    env = make(vocab="small", difficulty=1, horizon=[5, 50])
    assert env.horizon is None and env.horizon_range == (5, 50) and env.max_turns == 75  # the longest task's default
    hs = [env.task_horizon("train", i) for i in range(60)]
    assert all(5 <= h <= 50 for h in hs) and min(hs) <= 10 and max(hs) >= 45 and len(set(hs)) > 20
    assert hs == [make(vocab="small", difficulty=1, horizon=[5, 50]).task_horizon("train", i) for i in range(60)]
    for i in (0, 1, 7):
        fixed = make(vocab="small", difficulty=1, horizon=hs[i]).get_task("train", i)
        task = env.get_task("train", i)
        assert task.task_id == fixed.task_id == f"shellquest-small-d1-h{hs[i]}/train/{i}" and task.data == fixed.data
        assert len(task.data.commands) + 1 == hs[i]  # the expert's turns
    assert make(vocab="small", horizon=[7, 7]).get_task("test", 3) == make(vocab="small", horizon=7).get_task("test", 3)
    for bad in ([50, 5], [3, 10], [5], [5, 2000], [5.0, 9], "5-50"):
        with pytest.raises(ValueError, match=r"horizon"):
            make(vocab="small", difficulty=1, horizon=bad)


def test_mixed_horizon_episode_sets_max_turns_per_task():
    env = envs.make(ID, vocab="small", difficulty=1, horizon=[5, 50])
    core: ShellQuestEnv = env.unwrapped  # type: ignore[assignment]
    try:
        index = next(i for i in range(100) if core.task_horizon("train", i) <= 8)  # a short one: fast
        h = core.task_horizon("train", index)
        _, info = env.reset(options={"task_index": index})
        assert info["max_turns"] == h + 4
        r = envs.run_episode(env, core.expert, options={"task_index": index})
        assert r["success"] and r["turns"] == h
        assert make(vocab="small", horizon=[5, 50], max_turns=9).max_turns == 9  # an explicit max_turns is kept
    finally:
        env.close()


def test_max_turns_and_output_cap_follow_the_mode():
    assert make(vocab="small", horizon=6).max_turns == 10 and make(vocab="small").max_tool_output_chars == 300
    assert make(horizon=101).max_turns == 151 and make().max_tool_output_chars == 4000
    assert make(max_turns=3).max_turns == 3


# ----------------------------------------------------------------- real sandbox episodes
def test_every_check_passes_small():
    results = run_checks(ID, n_tasks=2, vocab="small", difficulty=2, horizon=6)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


def test_every_check_passes_full():
    results = run_checks(ID, n_tasks=2, difficulty=2, horizon=7)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


@pytest.mark.parametrize(
    "vocab, difficulty, horizon, n",
    [
        ("small", 1, 4, 3), ("small", 2, 10, 3), ("small", 3, 50, 2),
        ("full", 1, 5, 3), ("full", 2, 11, 3), ("full", 3, 21, 3), ("full", 2, 101, 1),
    ],
)
def test_expert_solves_tasks(vocab, difficulty, horizon, n):
    env = envs.make(ID, vocab=vocab, difficulty=difficulty, horizon=horizon)
    core: ShellQuestEnv = env.unwrapped  # type: ignore[assignment]
    try:
        for i in range(n):
            split = ("train", "test")[i % 2]
            r = envs.run_episode(env, core.expert, options={"split": split, "task_index": 17 * i})
            assert r["success"] and r["return"] == 1.0, (r, core.transcript[-4:])
            assert r["turns"] == len(core.quest.commands) + 1
            assert sum(r["errors"].values()) == 0
    finally:
        env.close()


def test_printing_the_answer_is_not_writing_it():
    env = make(vocab="small", difficulty=1, horizon=5)
    try:
        env.reset(options={"task_index": 2})
        quest = env.quest
        for cmd in quest.commands[:-1]:
            env.step(env.call("shell", command=cmd))
        answer = quest.meta["answer"]
        obs, *_ = env.step(env.call("shell", command=f"echo {answer}"))
        assert obs[0]["content"] == answer
        _, reward, terminated, _, info = env.step(env.call("submit"))
        assert terminated and reward == 0.0 and not info["success"]
        # the same episode, with the answer written to the file, succeeds
        env.reset(options={"task_index": 2})
        for cmd in quest.commands:
            env.step(env.call("shell", command=cmd))
        assert env.step(env.call("submit"))[1] == 1.0
    finally:
        env.close()


def test_shell_state_persists_and_restart_restores_the_tree():
    env = make(vocab="small", difficulty=1, horizon=5, command_timeout_s=1)
    try:
        env.reset(options={"task_index": 0})
        first = env.quest.meta["chain"][0]
        env.step(env.call("shell", command=f"cd {first}; X=42"))
        obs, *_ = env.step(env.call("shell", command="pwd; echo $X"))
        assert obs[0]["content"] == f"/work/{first}\n42"
        obs, _, _, _, info = env.step(env.call("shell", command="exit 3"))
        assert "restarted" in obs[0]["content"]
        obs, *_ = env.step(env.call("shell", command="cat note"))
        assert obs[0]["content"] == f"go {first}"
        obs, *_ = env.step(env.call("shell", command="cd nowhere"))  # bash's own words, no temp paths
        assert obs[0]["content"] == "bash: line 1: cd: nowhere: No such file or directory\n[exit code 1]"
        obs, _, _, _, info = env.step(env.call("shell", command="sleep 30"))
        assert obs[0]["content"].startswith("[timed out after 1 s]\n[the shell was restarted") and info["errors"]["sandbox"] == 1
        obs, _, _, _, info = env.step(env.call("shell", command="yes"))  # output flood: capped, shell restarted
        assert len(obs[0]["content"]) < 400 and info["tool_calls"][0]["status"] == "output_limit"
        env.step(env.call("shell", command="ln -s /etc/passwd answer"))  # a link out is never followed
        assert env.step(env.call("submit"))[1] == 0.0
    finally:
        env.close()


def _small_expert_transcripts(difficulty: int, n: int, horizon: int = 8) -> list[list[dict]]:
    env = envs.make(ID, vocab="small", difficulty=difficulty, horizon=horizon)
    out = []
    try:
        for i in range(n):
            r = envs.run_episode(env, env.unwrapped.expert, options={"task_index": i})
            assert r["success"]
            out.append(list(env.unwrapped.transcript))
    finally:
        env.close()
    return out


def test_small_vocabulary_is_small():
    vocab: Counter[str] = Counter()
    for d in (1, 2, 3):
        for transcript in _small_expert_transcripts(d, 6):
            for m in transcript:
                vocab.update(tokens(m["content"]))
                assert len(m["content"]) <= 160, m  # every message is short
    assert len(vocab) <= 80, sorted(vocab)  # measured: 58 at difficulty 1, 72 over all three


def _replay_success(difficulty: int, horizon: int, n: int) -> float:
    """A policy that ignores observations: it replays the expert actions of another task."""
    env = envs.make(ID, vocab="small", difficulty=difficulty, horizon=horizon)
    core: ShellQuestEnv = env.unwrapped  # type: ignore[assignment]
    wins = 0
    try:
        for i in range(n):
            other = core.get_task("train", i + 1000).data.commands
            actions = [core.call("shell", command=c) for c in other] + [core.call("submit")]
            r = envs.run_episode(env, policy=lambda obs, it=iter(actions): next(it, actions[-1]), options={"task_index": i})
            wins += r["success"]
    finally:
        env.close()
    return wins / n


def test_observation_ignoring_policy_fails():
    assert _replay_success(1, 5, 25) <= 0.2
    assert _replay_success(3, 6, 20) <= 0.3


def test_partial_reward_credits_each_subgoal_and_sums_to_one():
    for vocab, horizon in (("small", 6), ("full", 7)):
        env = envs.make(ID, vocab=vocab, difficulty=1, horizon=horizon, reward="partial")
        core: ShellQuestEnv = env.unwrapped  # type: ignore[assignment]
        try:
            env.reset(options={"task_index": 4})
            policy = core.expert()
            rewards, done = [], False
            while not done:
                _, reward, term, trunc, info = env.step(policy(None))
                rewards.append(reward)
                done = term or trunc
            n = len(core.quest.subgoals)
            assert info["success"] and sum(rewards) == pytest.approx(1.0)
            assert sum(r > 0 for r in rewards[:-1]) == n, rewards  # one step per sub-goal
            assert all(r == pytest.approx(1 / (n + 1)) for r in rewards[:-1] if r > 0)
            # stopping halfway: partial return, no success
            env.reset(options={"task_index": 4})
            policy = core.expert()
            for _ in range(len(core.quest.commands) // 2 + 1):
                env.step(policy(None))
            _, reward, term, _, info = env.step(core.call("submit"))
            assert term and not info["success"] and 0 < info["episode_return"] < 1
        finally:
            env.close()


@pytest.mark.parametrize("vocab", ["small", "full"])
def test_expert_noise_gives_seeded_flawed_demonstrations(vocab):
    """expert_noise=p: about p of the expert's episodes are flawed (wrong final answer), chosen by
    the reset seed, so SFT data can be imperfect the way real demonstrations are."""
    env = envs.make("agentrl/ShellQuest-v0", vocab=vocab, horizon=4 if vocab == "small" else 5, expert_noise=0.5)
    core = env.unwrapped
    try:
        results = [envs.run_episode(env, core.expert, seed=s, options={"task_index": s}) for s in range(12)]
        again = [envs.run_episode(env, core.expert, seed=s, options={"task_index": s}) for s in range(4)]
    finally:
        env.close()
    failed = sum(not r["success"] for r in results)
    assert 2 <= failed <= 10  # binomial(12, 0.5): outside this range has probability < 0.04
    assert [r["success"] for r in again] == [r["success"] for r in results[:4]]  # same seed, same flaw
    with pytest.raises(ValueError, match="expert_noise must be a probability"):
        envs.make("agentrl/ShellQuest-v0", expert_noise=1.5)


def test_state_summary_keeps_the_clues_read():
    """The memory of the summary context policy: what the successful commands printed. Replaying
    the expert's plan but its last command (which writes the answer), the summary holds the key
    the last note gave, so a prompt showing only recent turns can still finish the quest."""
    env = make(vocab="small", difficulty=1, horizon=10)
    try:
        env.reset(options={"task_index": 4})
        assert env.state_summary() == "found so far: nothing"
        quest = env.quest
        for cmd in quest.commands[:-1]:
            env.step(env.call("shell", command=cmd))
        summary = env.state_summary()
        assert summary.startswith("found so far: ") and quest.meta["answer"] in summary, (summary, quest.commands)
        env.step(env.call("shell", command="ls /nonexistent"))  # a failing command adds nothing
        assert env.state_summary() == summary
        env.reset(options={"task_index": 5})
        assert env.state_summary() == "found so far: nothing"  # per episode
    finally:
        env.close()
