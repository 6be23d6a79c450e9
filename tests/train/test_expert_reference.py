"""The expert's success as a reference line: a run with SFT records the fraction of its expert
demonstrations that succeeded (sft/expert_success), training.png and the study report's
success plots draw it as a horizontal line at that value, and draw none when it is absent."""

from __future__ import annotations

import json

import pytest

from agentrl.metrics import read_metrics


def _flat_lines(ax, style):
    """y of the horizontal lines of ``ax`` drawn in linestyle ``style`` (axhline: two equal y)."""
    out = []
    for line in ax.get_lines():
        ys = list(line.get_ydata())
        if line.get_linestyle() == style and len(ys) == 2 and ys[0] == ys[1]:
            out.append(float(ys[0]))
    return out


def _write_run(folder, expert=None):
    folder.mkdir(parents=True)
    rows = [{"train_step": 0, "sft/expert_episodes": 8.0, **({"sft/expert_success": expert} if expert is not None else {})}]
    rows += [{"train_step": s, "rollout/reward_mean": 0.2 * s, "rollout/success": 0.2 * s, "policy/entropy": 1.0, "rollout/turns_mean": 3,
              "policy/clipfrac_low": 0.0, "policy/clipfrac_high": 0.01} for s in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _capture(monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to inspect them
    return figures


def test_training_plot_draws_the_recorded_expert_success_on_the_success_panel_only(tmp_path, monkeypatch):
    from agentrl import plots

    figures = _capture(monkeypatch)
    _write_run(tmp_path / "with", expert=0.625)
    plots.plot_training(tmp_path / "with")
    axes = {ax.get_title(): ax for ax in figures[0].axes}
    assert _flat_lines(axes["rollout/success"], ":") == [0.625]
    assert axes["rollout/success"].get_legend().get_texts()[0].get_text() == "expert on the SFT demonstrations (0.62)"
    for title in ("rollout/reward_mean", "policy/entropy", "rollout/turns_mean"):
        assert _flat_lines(axes[title], ":") == [], title
    # the success curve itself is still there, under the line
    assert [list(line.get_ydata()) for line in axes["rollout/success"].get_lines()][0] == pytest.approx([0.2, 0.4, 0.6])

    _write_run(tmp_path / "without")
    plots.plot_training(tmp_path / "without")
    ax = next(a for a in figures[-1].axes if a.get_title() == "rollout/success")
    assert len(ax.get_lines()) == 1 and ax.get_legend() is None


def test_report_success_panels_draw_the_warm_starts_expert_success(tmp_path, monkeypatch):
    """Per method panel: the mean over seeds of the expert success, from the run's own metrics or
    from the shared warm start its model comes from; the entropy plot draws no such line."""
    from agentrl.eval.report_plots import write_plots
    from agentrl.eval.results import TRAIN_KEY, RunResult
    from agentrl.eval.study import SFT_CHECKPOINT, RunSpec

    def result(method, seed, expert=None, warm=None):
        folder = tmp_path / "runs" / f"{method}-{seed}"
        _write_run(folder, expert)
        config = {"model": {"path": str(tmp_path / warm / SFT_CHECKPOINT) if warm else "some/model"}}
        spec = RunSpec(f"e/{method}/seed{seed}", "rl", "e", seed, method, (), config, warm)
        rows = read_metrics(folder / "metrics.jsonl")
        return RunResult(spec, [r for r in rows if TRAIN_KEY in r], rows)

    for seed, value in ((0, 0.5), (1, 0.75)):  # shared warm starts: their own metrics.jsonl holds the value
        _write_run(tmp_path / f"sft/e/seed{seed}", value)
    results = [result("grpo", 0, expert=0.6), result("grpo", 1, expert=0.8),  # own SFT: mean 0.7
               result("bapo", 0, warm="sft/e/seed0"), result("bapo", 1, warm="sft/e/seed1"),  # mean 0.625
               result("cispo", 0), result("cispo", 1, warm="sft/e/missing")]  # nothing recorded: no line
    figures = _capture(monkeypatch)
    write_plots(results, [], tmp_path)
    by_title = {f.get_suptitle(): f for f in figures}
    success = by_title["e: training success rate per train_step"]
    lines = {ax.get_title(): _flat_lines(ax, "-.") for ax in success.axes if ax.get_visible()}
    assert lines == {"grpo (n=2)": [pytest.approx(0.7)], "bapo (n=2)": [pytest.approx(0.625)], "cispo (n=2)": []}
    assert "expert on the SFT demonstrations" in [t.get_text() for t in success.legends[0].get_texts()]
    entropy = by_title["e: mean token entropy of the batch per train_step"]
    assert all(_flat_lines(ax, "-.") == [] for ax in entropy.axes)


def test_a_run_with_sft_records_the_experts_success_and_plots_it(tmp_path, guess_env_id, monkeypatch):
    """End to end: the fraction of successful demonstrations (6 of 8 here: two are marked failed)
    is logged at train_step 0 and in summary.json, and training.png draws it."""
    import agentrl.rollout.expert as expert_mod
    from agentrl.train import train

    from .test_train_smoke import make_cfg

    real = expert_mod.play_experts

    def two_fail(*args, **kwargs):
        data = real(*args, **kwargs)
        for t in data.trajectories[:2]:
            t.success = False
        return data

    monkeypatch.setattr(expert_mod, "play_experts", two_fail)
    figures = _capture(monkeypatch)
    summary = train(make_cfg(tmp_path, ["trainer.total_steps=1", "trainer.checkpoint_every=1"]))
    assert summary["sft"]["episodes"] == 8 and summary["sft"]["expert_success"] == 0.75
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "sft/expert_success" in r]
    assert [(r["train_step"], r["sft/expert_success"]) for r in rows] == [(0, 0.75)]
    training = next(f for f in figures if any(ax.get_title() == "rollout/success" for ax in f.axes))
    ax = next(a for a in training.axes if a.get_title() == "rollout/success")
    assert _flat_lines(ax, ":") == [0.75]
