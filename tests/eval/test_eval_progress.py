"""Progress of held-out evaluations (``agentrl eval`` and the evaluations inside ``agentrl
train``) and ``agentrl eval --save-episodes`` (training's samples.jsonl format)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agentrl.eval.evaluate import EpisodeProgress
from agentrl.types import Trajectory


def _traj(i: int, success: bool, failed: bool = False) -> Trajectory:
    t = Trajectory(task_id=f"t{i}", turn_rewards=[1.0 if success else 0.0], success=success)
    if failed:
        t.mark_failed("env_step", "boom")
    return t


def test_episode_progress_shows_done_total_and_successes(capsys):
    bar = EpisodeProgress(4, "eval demo")
    for t in (_traj(0, True), _traj(1, False), _traj(2, False, failed=True)):
        bar(t)
    bar.close()
    err = capsys.readouterr().err
    assert "eval demo" in err and "3/4" in err and "success 1/3 (1 failed)" in err
    assert (bar.done, bar.successes, bar.failed) == (3, 1, 1)


def test_episode_progress_disabled_draws_nothing(capsys):
    bar = EpisodeProgress(2, "eval quiet", enabled=False)
    bar(_traj(0, True))
    bar.close()
    assert capsys.readouterr().err == "" and bar.done == 1 and bar.successes == 1


class _FakeRollout:
    """Plays nothing: every held-out spec finishes at once, alternately solved."""

    def num_tasks(self, split: str) -> int:
        return 50

    def evaluate(self, specs, on_done=None):
        trajs = [_traj(i, i % 2 == 0) for i in range(len(specs))]
        for t in trajs:
            if on_done is not None:
                on_done(t)
        return trajs


@pytest.mark.parametrize("progress", [True, False])
def test_train_held_out_evaluation_shows_progress_only_with_logging_progress(progress, capsys):
    from agentrl.config import TrainConfig
    from agentrl.train import evaluate

    cfg = TrainConfig()
    cfg.trainer.eval_episodes, cfg.logging.progress = 6, progress
    out = evaluate(_FakeRollout(), cfg, "before_rl")
    assert out["eval/before_rl/success"] == pytest.approx(0.5) and out["eval/before_rl/episodes"] == 6
    err = capsys.readouterr().err
    if progress:
        assert "eval before_rl" in err and "6/6" in err and "success 3/6" in err
    else:
        assert "eval before_rl" not in err and "6/6" not in err


@pytest.fixture(scope="module")
def run_folder(compared) -> Path:
    return compared["out"] / "runs" / "high4" / "grpo" / "seed0"


def test_eval_cli_progress_and_saved_episodes_in_samples_jsonl_format(run_folder, tmp_path, capsys, monkeypatch):
    import agentrl.eval.evaluate as ev
    from agentrl.cli import main

    seen = {}
    real = ev.env_metrics

    def keep(trajs, **kw):
        seen["trajs"] = list(trajs)
        return real(trajs, **kw)

    monkeypatch.setattr(ev, "env_metrics", keep)
    out = tmp_path / "eval.json"
    stale = tmp_path / "eval_episodes" / "samples.jsonl"
    stale.parent.mkdir()
    stale.write_text('{"old": 1}\n')  # an earlier evaluation's file is replaced, not appended to
    assert main(["eval", "--policy", str(run_folder), "--episodes", "3", "--samples", "2", "--json", str(out), "--save-episodes", "4"]) == 0
    captured = capsys.readouterr()
    result = json.loads(out.read_text())
    m = result["envs"]["agentrl/GuessNumber-v0"]
    trajs = seen["trajs"]
    assert len(trajs) == 6 and m["episodes"] == 6
    # the bar: episodes done / total and the successes counted so far
    solved = sum(t.success and not t.failed for t in trajs)
    assert "eval agentrl/GuessNumber-v0" in captured.err and "6/6" in captured.err
    assert re.search(rf"success {solved}/6\b", captured.err), captured.err[-500:]
    # saved episodes: the first 4, the keys of the run's own samples.jsonl rows, the checkpoint's step
    assert result["episodes_file"] == str(stale) and str(stale) in captured.out
    rows = [json.loads(line) for line in stale.read_text().splitlines()]
    train_rows = [json.loads(line) for line in (run_folder / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and train_rows
    assert all(set(r) == set(train_rows[0]) for r in rows)
    for row, t in zip(rows, trajs[:4]):
        assert row["train_step"] == 3  # checkpoints/step_000003
        assert (row["task_id"], row["reward"], row["success"]) == (t.task_id, t.reward, t.success)
        assert row["messages"] == t.messages and row["messages"][-1]["role"] in ("tool", "user") and any(x["role"] == "assistant" for x in row["messages"])


def test_save_episodes_needs_a_json_path(run_folder, capsys):
    from agentrl.cli import main

    assert main(["eval", "--policy", str(run_folder), "--episodes", "1", "--save-episodes", "2"]) == 2
    err = capsys.readouterr().err
    assert "--save-episodes 2" in err and "got --json None" in err and "pass --json PATH" in err
