"""The --smoke variant of configs/studies/long_horizon_entropy.yaml, run for real: ShellQuest
(small vocabulary, horizon 10) in bwrap sandboxes, shared SFT, two methods, the report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from .helpers import check_images, check_runs_csv, expected_values, md_tables

STUDY = Path(__file__).resolve().parents[2] / "configs" / "studies" / "long_horizon_entropy.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_long_horizon_smoke_study_runs_and_reports_its_runs(tmp_path):
    from agentrl.eval.compare import compare

    result = compare(STUDY, smoke=True, out=tmp_path / "smoke")
    assert result["failed"] == {}
    out = tmp_path / "smoke"
    keys = ["h10/grpo/seed0", "h10/empg/seed0"]
    assert result["runs"] == ["sft/h10/seed0", *keys]
    expected = {k: expected_values(out / "runs" / k, target=0.7, window=1) for k in keys}
    assert all(e["initial_entropy"] > 0 and not math.isnan(e["final_success"]) for e in expected.values())
    report = out / "report"
    check_runs_csv(report / "runs.csv", expected)
    every = md_tables((report / "report.md").read_text())[-1]
    for row in every[1:]:
        exp = expected[row[0]]
        assert row[1:4] == [f"{exp['final_success']:.3f}", f"{exp['auc_success']:.3f}", f"{exp['final_entropy']:.3f}"]
    check_images(report, ["h10"])
