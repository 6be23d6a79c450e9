"""``agentrl eval``: a policy on held-out tasks with pass@k, via the training code's engine
and agent loop; a run folder supplies its own settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrl.eval.evaluate import EvalSettings, evaluate_policy, resolve_policy
from agentrl.eval.stats import pass_at_k


@pytest.fixture(scope="module")
def sft_model(compared) -> Path:
    return compared["out"] / "sft" / "high4" / "seed0" / "checkpoints" / "step_000000" / "model"


def test_eval_metrics_and_pass_at_k_from_the_episodes(sft_model, guess_study, monkeypatch):
    import agentrl.eval.evaluate as ev

    seen = {}
    real = ev.env_metrics

    def keep(trajs, **kw):
        seen["trajs"] = trajs
        return real(trajs, **kw)

    monkeypatch.setattr(ev, "env_metrics", keep)
    settings = EvalSettings(policy=str(sft_model), envs=["agentrl/GuessNumber-v0"], episodes=4, ks=[1, 2, 3], samples=3, env_options={"high": 4, "max_turns": 4},
                            max_new_tokens=24, max_total_tokens=1024, tools_in_prompt=False, num_envs=4, imports=[str(guess_study.parent / "guess_env.py")])
    result = evaluate_policy(settings)
    m = result["envs"]["agentrl/GuessNumber-v0"]
    trajs = seen["trajs"]
    assert len(trajs) == 12 and m["tasks"] == 4 and m["samples_per_task"] == 3 and m["episodes"] == 12
    # three samples per task, same task (env seed) and distinct sample indices
    for i in range(0, 12, 3):
        group = trajs[i: i + 3]
        assert len({t.task_id for t in group}) == 1 and [t.sample_index for t in group] == [0, 1, 2]
    successes = [sum(t.success for t in trajs[i: i + 3]) for i in range(0, 12, 3)]
    for k in (1, 2, 3):
        assert m[f"pass@{k}"] == pytest.approx(sum(pass_at_k(3, c, k) for c in successes) / 4)
    assert m["pass@1"] == pytest.approx(m["success"])  # no failed episodes: pass@1 is the success rate
    assert m["pass@1"] <= m["pass@2"] <= m["pass@3"]
    assert m["success"] > 0  # the warm-started tiny model solves some of these
    assert m["turns_mean"] == pytest.approx(sum(t.num_turns for t in trajs) / 12)
    assert m["generated_tokens_mean"] == pytest.approx(sum(t.num_generated_tokens for t in trajs) / 12)
    statuses = {}
    for t in trajs:
        for k, v in t.metrics.items():
            if k.startswith("tool_status/"):
                statuses[k.split("/", 1)[1]] = statuses.get(k.split("/", 1)[1], 0) + v
    assert m["tool_errors_by_status"] == {k: v / 12 for k, v in sorted(statuses.items())}
    assert json.loads(json.dumps(result))["settings"]["ks"] == [1, 2, 3]


def test_eval_cli_on_a_run_folder_uses_the_runs_settings(compared, tmp_path, capsys):
    from agentrl.cli import main

    run = compared["out"] / "runs" / "high4" / "grpo" / "seed0"
    model, cfg = resolve_policy(str(run))
    assert model.endswith("checkpoints/step_000003/model") and cfg["env"]["id"] == "agentrl/GuessNumber-v0"
    assert resolve_policy(model)[1] == cfg  # a checkpoint's model folder finds its run too
    out = tmp_path / "eval.json"
    assert main(["eval", "--policy", str(run), "--episodes", "3", "--k", "1", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "agentrl eval" in printed and "pass@2" in printed and "GuessNumber-v0" in printed
    result = json.loads(out.read_text())
    m = result["envs"]["agentrl/GuessNumber-v0"]
    assert m["episodes"] == 6 and result["settings"]["env_options"] == {"high": 4, "max_turns": 4}
    assert result["settings"]["tools_in_prompt"] is False and result["settings"]["max_new_tokens"] == 24


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "agentrl/GuessNumbr-v0"], "unknown environment 'agentrl/GuessNumbr-v0'"),
        (["--k", "4", "--samples", "2"], "raise --samples to at least 4"),
        (["--engine", "openai"], "needs --base-url"),
    ],
)
def test_eval_bad_input(compared, capsys, args, message):
    from agentrl.cli import main

    run = compared["out"] / "runs" / "high4" / "grpo" / "seed0"
    assert main(["eval", "--policy", str(run), *args]) == 2
    assert message in capsys.readouterr().err


def test_eval_missing_local_policy_fails_fast(tmp_path, monkeypatch, capsys):
    """A missing path that looks local is not looked up on the Hugging Face Hub (which retried
    the network for 30 s), and without --env a missing policy says so rather than 'no env'."""
    import time

    from agentrl.cli import main
    from agentrl.config import looks_like_local_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    local = ["runs/doesnotexist", "./m", "/abs/m", "~/m", "models/qwen", "a/checkpoints/step_000003/model"]
    assert all(looks_like_local_path(p) for p in local)
    assert not any(looks_like_local_path(p) for p in ["Qwen/Qwen2.5-0.5B", "gpt2"])
    t0 = time.perf_counter()
    for policy in local:
        assert main(["eval", "--policy", policy, "--env", "agentrl/ShellQuest-v0"]) == 2
        assert f"error: policy path {policy!r} does not exist" in capsys.readouterr().err
    assert main(["eval", "--policy", "Qwen/NotAModel"]) == 2  # no --env: the path, not "no env to evaluate on"
    err = capsys.readouterr().err
    assert "policy path 'Qwen/NotAModel' does not exist" in err and "--env ID" in err
    assert time.perf_counter() - t0 < 5


def test_concurrency_defaults_to_the_runs_env_num_envs():
    from agentrl.eval.evaluate import fill_defaults

    run_cfg = {"env": {"id": "agentrl/GuessNumber-v0", "num_envs": 32}, "rollout": {}}
    assert fill_defaults(EvalSettings(policy="runs/x"), run_cfg).num_envs == 32
    assert fill_defaults(EvalSettings(policy="runs/x", num_envs=3), run_cfg).num_envs == 3  # --num-envs wins
    assert fill_defaults(EvalSettings(policy="m", envs=["agentrl/GuessNumber-v0"]), None).num_envs == 16


def test_eval_refuses_a_per_turn_cap_too_small_for_the_task(sft_model, guess_study):
    """Under a turn-level context policy --max-total-tokens caps one turn sample; a cap that
    cannot hold the task and one turn is an error naming the token counts, not a report of
    0-turn episodes (a newcomer trial got success 0.000 over empty episodes)."""
    from agentrl.config import ConfigError

    settings = EvalSettings(policy=str(sft_model), envs=["agentrl/GuessNumber-v0"], episodes=2, samples=1, env_options={"high": 4, "max_turns": 4},
                            max_new_tokens=24, max_total_tokens=40, tools_in_prompt=False, num_envs=2,
                            imports=[str(guess_study.parent / "guess_env.py")], context={"policy": "window", "window": 2})
    with pytest.raises(ConfigError, match=r"the first prompt .* is \d+ tokens, so with one turn of rollout.max_new_tokens=24 it needs \d+ tokens, "
                                          r"more than rollout.max_total_tokens=40"):
        evaluate_policy(settings)
