"""The study results committed under results/studies/ and their reports agree: every number
of each report's runs.csv is recomputed from the committed run files (metrics.jsonl,
summary.json, compare_run.json) by the code that wrote it, and the report lists exactly the
finished method runs of its study (issue 15, acceptance 4)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from agentrl.eval.results import fits_for, load_results
from agentrl.eval.study import expand_runs, load_study

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = sorted(p.parent for p in (ROOT / "results" / "studies").glob("*/study.json"))


def test_results_are_committed():
    assert FOLDERS, "results/studies/ holds no study folder (study.json); the study's finished runs are committed there"


def _same(a: str, b: float) -> bool:
    x = float(a)
    return (math.isnan(x) and math.isnan(b)) or x == pytest.approx(b, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_report_numbers_recompute_from_the_committed_runs(folder):
    held = json.loads((folder / "study.json").read_text())
    study = load_study(ROOT / held["source"], smoke=held["smoke"])
    assert study.identity == held["identity"]
    runs = expand_runs(study, folder)
    results, missing = load_results(study, runs)
    assert results, f"{folder}: no finished method run"
    with (folder / "report" / "runs.csv").open() as f:
        rows = {r["key"]: r for r in csv.DictReader(f)}
    assert set(rows) == {r.spec.key for r in results}, "the report lists other runs than the finished ones: regenerate it (agentrl compare ... --report-only)"
    for r in results:
        row = rows[r.spec.key]
        for k, v in r.values.items():
            assert _same(row[k], v), f"{r.spec.key}: {k} is {row[k]} in the report, {v!r} from the run files"
        assert (folder / "runs" / r.spec.key / "config.yaml").is_file()
    # fits.csv: every fit (pooled and per seed) and every refusal, recomputed
    with (folder / "report" / "fits.csv").open() as f:
        fits = {(r["env"], r["variant"], r["seed"]): r for r in csv.DictReader(f)}
    expected = fits_for(results)
    assert set(fits) == {(f["env"], f["variant"], str(f["seed"])) for f in expected}, "fits.csv holds other fits: regenerate the report"
    for f in expected:
        row = fits[(f["env"], f["variant"], str(f["seed"]))]
        assert row["refused"] == f["refused"] and int(row["n"]) == f["n"], (f, row)
        assert all(_same(row[k], f[k]) for k in ("a", "b", "r2")), (f, row)
    # the report's markdown names every finished run's group
    report = (folder / "report" / "report.md").read_text()
    assert all(r.spec.variant in report for r in results)
