"""The pilot's decision rules (agentrl/eval/pilot.py) on a hand-made results folder whose
answers are worked out by hand, plus the settled-step and moving-average helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrl.config import ConfigError
from agentrl.eval.pilot import decide, main
from agentrl.eval.stats import moving_average, settled_step


def test_settled_step_by_hand():
    # range 10, band 1, last value 5: steps 5, 4 and 3 (|4 - 5| = 1) are inside, step 2 (10) is not
    assert settled_step([1, 2, 3, 4, 5], [0, 10, 4, 5, 5]) == 3
    assert settled_step([1, 2, 3], [2, 2, 2]) == 1  # flat: settled from the start
    assert settled_step([3, 1, 2], [5, 0, 10]) == 3  # sorted by step first: [0, 10, 5] -> only the last
    assert moving_average([1, 2, 3, 4], 2) == [1.0, 1.5, 2.5, 3.5]
    with pytest.raises(ValueError, match="NaN"):
        settled_step([1, 2], [1.0, float("nan")])
    with pytest.raises(ValueError, match="window"):
        moving_average([1.0], 0)


def _run(folder: Path, key: str, before: float, rows: list[dict] | None = None, wall: float = 100.0) -> None:
    run = folder / "runs" / key
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"before_rl": {"eval/before_rl/success": before, "eval/before_rl/time_s": 7.0}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"train_step": 0, "eval/before_rl/success": before}, *(rows or [])]))
    (run / "compare_run.json").write_text(json.dumps({"wall_time_s": wall}))


def test_pilot_decisions_from_a_results_folder(tmp_path, capsys):
    folder = tmp_path / "pilot"
    # success rises 0 -> 0.6 by step 60 then stays: per seed 0.01 * min(step, 60) (+/- 0.05 between seeds)
    # entropy falls from 2.0 by 0.01 per step until step 40, then stays at 1.6
    def rows(shift):
        return [{"train_step": s, "rollout/success": 0.01 * min(s, 60) + shift, "policy/entropy": 2.0 - 0.01 * min(s, 40), "time/step_s": 20.0 + shift}
                for s in range(1, 101)]

    _run(folder, "h10/rl100/grpo/seed0", 0.55, rows(0.05), wall=2100.0)
    _run(folder, "h10/rl100/grpo/seed1", 0.45, rows(-0.05), wall=2000.0)
    _run(folder, "h30/sft_eval/grpo/seed0", 0.40)
    _run(folder, "h50/sft_eval/grpo/seed0", 0.05)  # below 0.15: not kept
    out = decide(folder)
    assert out["after_sft_success"][10]["mean"] == pytest.approx(0.5) and out["after_sft_success"][10]["n_runs"] == 2
    assert out["long_horizon"] == 30
    # mean curves: success 0.01 * min(s, 60); with the 10-step trailing mean it is flat from step
    # 69 (the window 60..69 is all 0.6); band 0.1 x 0.6 = 0.06 around 0.6: the smoothed value is
    # >= 0.54 from the step whose window mean is 0.54, i.e. mean of (s-9..s) * 0.01 = 0.54 -> s = 58.5,
    # so step 59. Entropy: flat 1.6 from step 49 of the smoothed curve, band 0.1 x 0.4 = 0.04 -> 1.64
    # at window mean (s - 4.5) * 0.01 = 0.36 -> s = 40.5, so step 41.
    assert out["settled_step"] == {"rollout/success": 59.0, "policy/entropy": 41.0}
    assert out["total_steps"] == 60 and out["steps_horizon"] == 10 and out["steps_seeds"] == 2
    assert out["cost"]["h10/rl100/grpo/seed0"]["step_s_mean"] == pytest.approx(20.05)
    assert out["cost"]["h10/rl100/grpo/seed1"]["wall_time_s"] == 2000.0
    assert main([str(folder)]) == 0
    assert "long horizon kept: 30" in capsys.readouterr().out
    assert json.loads((folder / "pilot_decision.json").read_text())["total_steps"] == 60


def test_pilot_below_the_floor_and_no_long_horizon(tmp_path):
    folder = tmp_path / "pilot"
    flat = [{"train_step": s, "rollout/success": 0.3, "policy/entropy": 1.0} for s in range(1, 21)]
    _run(folder, "h10/rl100/grpo/seed0", 0.3, flat)
    _run(folder, "h50/sft_eval/grpo/seed0", 0.9)  # above 0.8: not kept
    out = decide(folder)
    assert out["long_horizon"] is None and out["total_steps"] == 50  # flat curves settle at step 1: the floor


def test_pilot_without_runs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no finished runs"):
        decide(tmp_path)
    assert main([str(tmp_path)]) == 2 and "run the pilot first" in capsys.readouterr().out
