"""Resuming a run folder with a changed config (issue 14, item 3): a difference that would mix
two settings in one run stops before any work with ``key: old -> new``; a larger
``trainer.total_steps`` goes on; ``--force-resume`` records the change and keeps the evaluations
apart (``eval/<label>/train_step``, ``eval/<label>/config_version``)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from agentrl.config import ConfigError, load_config
from agentrl.metrics import read_metrics

from .test_train_smoke import CONFIG


@pytest.fixture(scope="module")
def finished(tmp_path_factory, guess_env_id):
    """A finished 2-step run (tiny model, short SFT); each test works on a copy of its folder."""
    from agentrl.train import train

    root = tmp_path_factory.mktemp("resume_config")
    cfg = root / "c.yaml"
    cfg.write_text(CONFIG.replace("OUT", str(root / "run")).replace("MODEL", str(root / "model")))
    train(load_config(cfg))
    return root


def _copy(finished, tmp_path):
    """The finished run at ``tmp_path/run`` and a config file pointing there."""
    shutil.copytree(finished / "run", tmp_path / "run")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.replace("OUT", str(tmp_path / "run")).replace("MODEL", str(finished / "model")))
    return tmp_path / "run", cfg


def _after_rl_rows(run):
    return [(r["train_step"], r["eval/after_rl/train_step"], r["eval/after_rl/config_version"]) for r in read_metrics(run / "metrics.jsonl") if "eval/after_rl/success" in r]


def test_a_changed_config_is_refused_with_the_differences_before_any_work(finished, tmp_path, capsys):
    from agentrl.cli import main
    from agentrl.train import train

    run, cfg = _copy(finished, tmp_path)
    saved, metrics = (run / "config.yaml").read_text(), (run / "metrics.jsonl").read_text()
    rc = main(["train", str(cfg), "trainer.total_steps=4", "env.kwargs.high=6", "algorithm.loss.eps_high=0.28", "logging.progress=true"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"run folder {str(run)!r} holds a run at train_step 2 with other settings: env.kwargs.high: 8 -> 6; algorithm.loss.eps_high: (not set) -> 0.28." in err
    assert "trainer.total_steps" not in err and "logging.progress" not in err  # allowed: a longer run, a progress bar
    assert f"run.output_dir={run}-2" in err and "--force-resume" in err
    # the Python API refuses the same way; nothing was written
    with pytest.raises(ConfigError, match="env.kwargs.high: 8 -> 6"):
        train(load_config(cfg, overrides=["env.kwargs.high=6"]))
    with pytest.raises(ConfigError, match=r"trainer.total_steps: 2 -> 1\b"):  # shrinking is a change too
        train(load_config(cfg, overrides=["trainer.total_steps=1"]))
    with pytest.raises(ConfigError, match="trainer.total_steps: 2 -> 4; trainer.lr_schedule: constant -> cosine"):  # cosine: total_steps sets the lr
        train(load_config(cfg, overrides=["trainer.total_steps=4", "trainer.lr_schedule=cosine"]))
    assert (run / "config.yaml").read_text() == saved and (run / "metrics.jsonl").read_text() == metrics
    assert not (run / "config_changes.jsonl").exists()


def test_a_larger_total_steps_continues_and_the_latest_after_rl_is_the_summary(finished, tmp_path):
    from agentrl.train import train

    old_run, _ = _copy(finished, tmp_path / "old")
    run = tmp_path / "moved"
    shutil.move(old_run, run)  # the folder moved since it ran: the summary names where it is now
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.replace("OUT", str(run)).replace("MODEL", str(finished / "model")))
    summary = train(load_config(cfg, overrides=["trainer.total_steps=3", "logging.log_trajectories=1"]))
    assert summary["train_steps"] == 3 and summary["after_rl_step"] == 3
    assert summary["output_dir"] == str(run)
    assert json.loads((run / "summary.json").read_text())["output_dir"] == str(run)
    # two after_rl rows, each saying which weights it measured; the summary is the latest
    assert _after_rl_rows(run) == [(2, 2.0, 0.0), (3, 3.0, 0.0)]
    assert summary["after_rl"]["eval/after_rl/train_step"] == 3.0
    assert summary["before_rl_comparable"] is True
    changes = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert [(c["train_step"], c["changes"], c["forced"]) for c in changes] == [(2, [{"key": "trainer.total_steps", "old": 2, "new": 3}], False)]
    assert yaml.safe_load((run / "config.until_step_000002.yaml").read_text())["trainer"]["total_steps"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["total_steps"] == 3


def test_force_resume_records_the_change_and_keeps_the_evaluations_apart(finished, tmp_path, capsys):
    from agentrl.cli import main

    run, cfg = _copy(finished, tmp_path)
    rc = main(["train", str(cfg), "--force-resume", "env.kwargs.high=6", "algorithm.loss.eps_high=0.28"])
    out = capsys.readouterr().out
    assert rc == 0
    changes = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert [(c["train_step"], c["forced"]) for c in changes] == [(2, True)]
    assert changes[0]["changes"] == [{"key": "env.kwargs.high", "old": 8, "new": 6}, {"key": "algorithm.loss.eps_high", "old": None, "new": 0.28}]
    assert yaml.safe_load((run / "config.until_step_000002.yaml").read_text())["env"]["kwargs"]["high"] == 8
    assert yaml.safe_load((run / "config.yaml").read_text())["env"]["kwargs"]["high"] == 6
    # no new step (total_steps 2), but after_rl is measured again under the new settings: the
    # two rows at train_step 2 differ in config_version, and the summary holds the new one
    assert _after_rl_rows(run) == [(2, 2.0, 0.0), (2, 2.0, 1.0)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["after_rl"]["eval/after_rl/config_version"] == 1.0
    assert summary["before_rl"]["eval/before_rl/config_version"] == 0.0
    assert summary["before_rl_comparable"] is False and summary["config_changes"] == changes
    assert "before rl (earlier settings)" in out
    assert "forced config change(s) at train_step 2 (env.kwargs.high, algorithm.loss.eps_high): it is not comparable with after rl" in " ".join(out.split())
    # resumed again with the same (new) settings: nothing to record, nothing evaluated again
    assert main(["train", str(cfg), "env.kwargs.high=6", "algorithm.loss.eps_high=0.28"]) == 0
    assert len((run / "config_changes.jsonl").read_text().splitlines()) == 1
    assert _after_rl_rows(run) == [(2, 2.0, 0.0), (2, 2.0, 1.0)]


def test_forced_at_train_step_0_measures_before_rl_again(finished, tmp_path):
    """A run stopped at train_step 0 (an SFT-only warm start) still holds the weights from
    before RL: a forced change measures them again, so before and after stay comparable."""
    from agentrl.train import train

    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.replace("OUT", str(tmp_path / "run")).replace("MODEL", str(finished / "model")))
    train(load_config(cfg, overrides=["trainer.total_steps=0"]))
    summary = train(load_config(cfg, overrides=["trainer.total_steps=0", "env.kwargs.high=6"]), force_resume=True)
    rows = [(r["train_step"], r["eval/before_rl/config_version"]) for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/before_rl/success" in r]
    assert rows == [(0, 0.0), (0, 1.0)]
    assert summary["before_rl"]["eval/before_rl/config_version"] == summary["after_rl"]["eval/after_rl/config_version"] == 1.0
    assert summary["before_rl_comparable"] is True
