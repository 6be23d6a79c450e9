"""Checks shared by the report tests: per-run quantities recomputed from a run folder, the
markdown tables of report.md, the CSV and the plots."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from agentrl.metrics import read_metrics


def expected_values(run_dir: Path, target: float, window: int) -> dict:
    """The per-run quantities recomputed here, independently of agentrl.eval, from the run's
    metrics.jsonl and summary.json."""
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "rollout/success" in r]
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = np.array([r["train_step"] for r in rows], dtype=float)
    success = np.array([r["rollout/success"] for r in rows])
    entropy = np.array([r["policy/entropy"] for r in rows])
    reached = [s for s, v in zip(steps, success) if v >= target]
    return {
        "before_success": summary["before_rl"]["eval/before_rl/success"],
        "final_success": summary["after_rl"]["eval/after_rl/success"],
        "auc_success": float(np.trapezoid(success, steps) / (steps[-1] - steps[0])),
        "initial_entropy": float(entropy[0]),
        "final_entropy": float(entropy[-window:].mean()),
        "steps_to_target": reached[0] if reached else math.nan,
        "final_clipfrac": float(np.mean([r["policy/clipfrac_low"] + r["policy/clipfrac_high"] for r in rows[-window:]])),
    }


def md_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of ``text`` as rows of cells (header first, separator dropped)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append([r for r in current if not set("".join(r)) <= set("-")])
            current = []
    return tables


def check_runs_csv(path: Path, expected: dict[str, dict]) -> None:
    """runs.csv holds exactly these runs with these values (full precision)."""
    with path.open() as f:
        rows = {r["key"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(expected)
    for key, exp in expected.items():
        for col, value in exp.items():
            got = float(rows[key][col])
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-9), (key, col)
        assert float(rows[key]["wall_time_s"]) > 0 and float(rows[key]["step_time_s"]) > 0


def check_images(report: Path, envs: list[str]) -> None:
    """The HTML page and report.md link every plot relatively, and each is a real PNG."""
    names = {f"{kind}_{env}.png" for env in envs for kind in ("success", "entropy", "clipfrac", "turn_entropy")} | {"entropy_vs_success.png"}
    page = (report / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {Path(i).name for i in images} == names
    for image in images:
        data = (report / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, image
    assert set(re.findall(r"\]\((plots/[^)]+)\)", (report / "report.md").read_text())) == set(images)
