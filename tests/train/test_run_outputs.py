"""What a finished run reports about its folder: the end-of-run line, the TensorBoard
warning, and the training plot. Fast: no training, hand-written run folders."""

from __future__ import annotations

import json
import logging
import sys


def test_end_of_run_line_lists_only_what_the_run_folder_holds(tmp_path, capsys, monkeypatch):
    from agentrl.train_cli import _print_summary

    monkeypatch.setenv("COLUMNS", "1000")  # rich: no wrapping of the long line

    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    _print_summary({"run": "r", "train_steps": 1, "output_dir": str(tmp_path)})
    assert f"run folder: {tmp_path}  (metrics.jsonl, summary.json, checkpoints/)\n" in capsys.readouterr().out
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "samples.jsonl").write_text("")
    _print_summary({"run": "r", "train_steps": 1, "output_dir": str(tmp_path)})
    assert "(metrics.jsonl, summary.json, checkpoints/, samples.jsonl, tensorboard/)\n" in capsys.readouterr().out


def test_missing_tensorboard_is_one_warning_with_the_install_command(tmp_path, monkeypatch, caplog):
    from agentrl.metrics import MetricsLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with caplog.at_level(logging.WARNING, logger="agentrl.metrics"):
        logger = MetricsLogger(tmp_path, tensorboard=True)
        logger.log(1, {"x": 1.0})
        logger.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pip install tensorboard" in warnings[0] and "logging.tensorboard=false" in warnings[0]
    assert not (tmp_path / "tensorboard").exists()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["x"] == 1.0


def test_missing_tensorboard_by_default_is_an_info_line_not_a_warning(tmp_path, monkeypatch, caplog):
    """The default (logging.tensorboard unset) writes events only when TensorBoard is installed;
    a fresh install without it (the main command) gets no warning."""
    from agentrl.config import LoggingConfig
    from agentrl.metrics import MetricsLogger

    assert LoggingConfig().tensorboard is None
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr("agentrl.metrics._said_no_tensorboard", False)  # said once per process: as in a fresh one
    with caplog.at_level(logging.INFO, logger="agentrl.metrics"):
        MetricsLogger(tmp_path).close()
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [lv for lv, _ in levels] == [logging.INFO] and "metrics.jsonl only" in levels[0][1]
    assert not (tmp_path / "tensorboard").exists()


def test_training_plot_has_integer_steps_and_the_run_name(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import yaml

    from agentrl import plots

    run = tmp_path / "run-folder"
    run.mkdir()
    rows = [{"train_step": s, "rollout/reward_mean": 0.1 * s, "rollout/success": 0.5, "policy/entropy": 1.0, "rollout/turns_mean": 3} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect it
    assert plots.plot_training(run) == [run / "training.png"]
    fig = figures[0]
    assert fig.get_suptitle() == "run-folder"  # no config.yaml: the folder's name
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    (run / "config.yaml").write_text(yaml.safe_dump({"run": {"name": "grpo-shellquest-h10"}}))
    plots.plot_training(run)
    assert figures[-1].get_suptitle() == "grpo-shellquest-h10"
