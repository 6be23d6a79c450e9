"""The ToolEnv base class, exercised through the complete example env of docs/add_env.md."""

from __future__ import annotations

import json
import re

import gymnasium as gym
import pytest

import agentrl.envs as envs
from agentrl.envs.checks import run_checks
from tests.conftest import DOC


def test_doc_example_is_under_60_lines():
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    assert 20 < len(code.splitlines()) < 60


def test_doc_env_passes_every_check(guess_env_id):
    results = run_checks(guess_env_id, n_tasks=5)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed
    assert [r.name for r in results] == ["gymnasium", "determinism", "truncation", "close_twice", "random_actions", "expert", "split_overlap"]


def test_expert_binary_search_turn_count(guess_env_id):
    env = envs.make(guess_env_id, high=1000)
    result = envs.run_episode(env, env.unwrapped.expert, options={"task_index": 7})
    assert result["success"] and result["return"] == 1.0
    assert 1 <= result["turns"] <= 10  # ceil(log2(1000)) = 10


def test_reset_gives_system_user_and_tool_schemas(guess_env_id):
    env = envs.make(guess_env_id)
    obs, info = env.reset(seed=3)
    assert [m["role"] for m in obs] == ["system", "user"]
    assert info["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "guess",
                "description": "Guess the secret number.",
                "parameters": {
                    "type": "object",
                    "properties": {"number": {"type": "integer", "description": "your guess, an integer"}},
                    "required": ["number"],
                },
            },
        }
    ]
    assert info["task_id"].startswith("guess/train/")


@pytest.mark.parametrize(
    "action, kind, fragment",
    [
        ("<tool_call>{oops</tool_call>", "parse", "invalid JSON"),
        ('<tool_call>{"name": "gues", "arguments": {"number": 3}}</tool_call>', "unknown_tool", "Did you mean 'guess'"),
        ('<tool_call>{"name": "guess", "arguments": {"number": "3"}}</tool_call>', "bad_arguments", "must be of type integer"),
        ('<tool_call>{"name": "guess", "arguments": {}}</tool_call>', "bad_arguments", "missing required argument 'number'"),
        ('<tool_call>{"name": "guess", "arguments": {"number": 3, "x": 1}}</tool_call>', "bad_arguments", "unknown argument 'x'"),
        ("just text", "no_tool_call", "no tool call found"),
        ("<tool_call>{\"name\": \"guess\"", "parse", "without a closing"),
    ],
)
def test_bad_calls_become_observations(guess_env_id, action, kind, fragment):
    env = envs.make(guess_env_id)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert reward == 0.0 and not terminated and not truncated
    assert info["errors"][kind] == 1
    assert sum(info["errors"].values()) == 1
    assert fragment in obs[-1]["content"]


def test_the_no_tool_call_hint_is_a_call_that_names_the_required_arguments(guess_env_id):
    env = envs.make(guess_env_id)
    env.reset(seed=0)
    obs, *_ = env.step("just text")
    assert obs[-1]["content"].endswith('<tool_call>\n{"name": "guess", "arguments": {"number": "<number>"}}\n</tool_call>')


def test_step_without_a_task_is_a_caller_error(guess_env_id):
    env = envs.make(guess_env_id)
    env.reset(seed=0)
    env.unwrapped.task = None  # a bug in the env's state: the tool will raise TypeError
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(env.unwrapped.call("guess", number=1))


def test_crashing_tool_is_reported_not_raised(guess_env_id):
    env = envs.make(guess_env_id)
    env.reset(seed=0)
    env.unwrapped.task = envs.Task("t", "train", 0, "p", data=None)  # None < int -> TypeError inside the tool
    obs, reward, terminated, truncated, info = env.step(env.unwrapped.call("guess", number=1))
    assert info["errors"]["tool_error"] == 1
    assert "tool guess failed: TypeError" in obs[0]["content"]
    assert info["tool_calls"][0]["status"] == "tool_error"


def test_tool_output_is_cut_to_cap():
    env = envs.ToolEnv.__new__(envs.ToolEnv)
    env.max_tool_output_chars = 100
    out = env._truncate("a" * 50 + "b" * 1000)
    assert len(out) < 160 and out.startswith("a" * 50) and out.endswith("b" * 50) and "950 characters cut" in out


def test_bad_input_errors(guess_env_id):
    with pytest.raises(gym.error.NameNotFound, match="Did you mean 'agentrl/GuessNumber-v0'"):
        envs.make("agentrl/GuesNumber-v0")
    env = envs.make(guess_env_id, num_tasks=5)
    with pytest.raises(IndexError, match=r"task_index 5 is out of range; split 'train' has 5 tasks \(valid indices 0..4\)"):
        env.reset(options={"task_index": 5})
    with pytest.raises(ValueError, match="unknown option 'task_idx'.*Did you mean 'task_index'"):
        env.reset(options={"task_idx": 1})
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        envs.make(guess_env_id, split="dev")
    with pytest.raises(TypeError, match="unknown option .hgh. for agentrl/GuessNumber-v0. Did you mean .high."):
        envs.make(guess_env_id, hgh=3)
    with pytest.raises(ValueError, match="max_turns must be a positive int"):
        envs.make(guess_env_id, max_turns=0)


def test_hermes_parser_roundtrip_and_content():
    p = envs.get_parser("hermes")
    text = "think first\n" + p.format("shell", {"command": "ls -la"}) + "\nthen\n" + p.format("submit", {})
    parsed = p.parse(text)
    assert [c.to_dict() for c in parsed.calls] == [
        {"name": "shell", "arguments": {"command": "ls -la"}},
        {"name": "submit", "arguments": {}},
    ]
    assert parsed.content == "think first\n\nthen"
    assert json.loads(p.parse('<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>').calls[0].raw[11:-12])["name"] == "a"
    with pytest.raises(ValueError, match="known parsers: hermes, json"):
        envs.get_parser("hermse")


def test_cli_check_and_play(guess_env_id, capsys, monkeypatch):
    from agentrl.envs import cli

    import argparse

    assert cli.cmd_check(argparse.Namespace(env_id=guess_env_id, only=["truncation", "expert"], tasks=2, option=["high=50"])) == 0
    out = capsys.readouterr().out
    assert "truncation" in out and "expert" in out and "pass" in out
    inputs = iter([":expert", 'guess {"number": 0}', ":quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(inputs))
    assert cli.cmd_play(argparse.Namespace(env_id=guess_env_id, seed=0, task=3, option=[])) == 0
    out = capsys.readouterr().out
    assert "== guess/train/3" in out and "[tool/guess] higher" in out


def test_doc_check_command_imports_the_saved_file(tmp_path, monkeypatch, capsys):
    """docs/add_env.md as a new user follows it: save the block as the file it names, run its
    `agentrl envs check ... --import FILE` line; nothing else registers GuessNumber."""
    import shlex
    import sys

    from agentrl.cli import main

    text = DOC.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    filename = re.search(r"Save it as `([\w.]+\.py)`", text).group(1)
    (tmp_path / filename).write_text(code)
    line = next(ln for ln in text.splitlines() if ln.startswith("agentrl envs check"))
    argv = shlex.split(line.split("#", 1)[0])[1:]
    assert "--import" in argv
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(gym.registry, "agentrl/GuessNumber-v0", raising=False)
    monkeypatch.delitem(sys.modules, f"agentrl_user.{filename[:-3]}", raising=False)
    assert main([*argv, "--only", "truncation", "--tasks", "1"]) == 0
    assert "pass" in capsys.readouterr().out
    # list and play take it too; a missing file is one error line, exit 2
    assert main(["envs", "list", "--import", filename]) == 0
    assert main(["envs", "play", "agentrl/GuessNumber-v0", "--import", "missing.py"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --import: could not import 'missing.py'") and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["check", "agentrl/ShelQuest-v0"], "error: Unknown environment id 'agentrl/ShelQuest-v0'. Did you mean 'agentrl/ShellQuest-v0'"),
        (["play", "agentrl/ShelQuest-v0"], "error: Unknown environment id 'agentrl/ShelQuest-v0'. Did you mean 'agentrl/ShellQuest-v0'"),
        (["check", "agentrl/ShellQuest-v0", "-o", "horizn=5"], "error: unknown option 'horizn' for agentrl/ShellQuest-v0. Did you mean 'horizon'?"),
        (["play", "agentrl/GuessNumber-v0", "-o", "hgh=5"], "error: unknown option 'hgh' for agentrl/GuessNumber-v0. Did you mean 'high'?"),
        (["check", "agentrl/GuessNumber-v0", "-o", "high=1"], "error: cannot make agentrl/GuessNumber-v0 with options {'high': 1}: high must be >= 2"),
        # a task index out of range (was a 39-line traceback from reset), a bad count or check name
        (["play", "agentrl/ShellQuest-v0", "--task", "999999"],
         "error: --task 999999 is out of range: agentrl/ShellQuest-v0 has 100000 tasks in split 'train' (valid: 0..99999)"),
        (["play", "agentrl/GuessNumber-v0", "--task", "-1"], "error: --task -1 is out of range: agentrl/GuessNumber-v0 has "),
        (["check", "agentrl/GuessNumber-v0", "--tasks", "0"], "error: --tasks must be >= 1 (expert tasks per split), got 0"),
        (["check", "agentrl/GuessNumber-v0", "--only", "determinsm"], "error: --only: unknown check 'determinsm'. Did you mean 'determinism'?"),
    ],
)
def test_cli_wrong_id_or_option_is_one_error_line(guess_env_id, capsys, argv, message):
    from agentrl.cli import main

    assert main(["envs", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1, captured.err
    assert captured.out == ""


def test_env_options_follow_kwargs_into_tool_env(guess_env_id):
    assert {"high", "num_tasks", "max_turns", "parser"} <= set(envs.env_options(guess_env_id))

    class Anything(gym.Env):
        def __init__(self, **kwargs):
            pass

    envs.register_env("AnythingGoes", Anything)
    try:
        assert envs.env_options("agentrl/AnythingGoes-v0") is None
        envs.check_options("agentrl/AnythingGoes-v0", {"whatever": 1})  # **kwargs to the end: not checked
    finally:
        del gym.registry["agentrl/AnythingGoes-v0"]
