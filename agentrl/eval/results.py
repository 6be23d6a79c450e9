"""The results of a compare study's finished method runs, read from their run folders
(metrics.jsonl, summary.json, compare_run.json): :class:`RunResult` with its per-run
quantities, grouped by (env variant, method variant), and the entropy-performance fits. The
report (:mod:`.report`) and its plots (:mod:`.report_plots`) both build on these.

Per-run quantities (definitions repeated in the report):

- ``before_success``: held-out success of the starting (SFT) policy (``eval/before_rl``);
- ``final_success``: held-out success after RL (``eval/after_rl``); ``final_return`` the same
  for the mean return;
- ``auc_success``: normalised area under the training success curve (``rollout/success``
  over train_steps, trapezoid rule divided by the step span: the curve's time-average);
- ``initial_entropy`` / ``final_entropy``: ``policy/entropy`` (mean token entropy of the
  batch, nats) at the first train_step / averaged over the last ``final_window`` train_steps;
- ``steps_to_target``: first train_step whose ``rollout/success`` >= ``target_success``;
- ``final_clipfrac``: ``policy/clipfrac_low + policy/clipfrac_high`` averaged over the last
  ``final_window`` train_steps; ``step_time_s``: mean ``time/step_s``; ``wall_time_s``: the
  run's wall time as measured by compare.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.metrics import read_metrics

from .stats import EntropyLawFit, curve_auc, fit_entropy_law, steps_to_target
from .study import RunSpec, Study

TRAIN_KEY = "rollout/success"
ENTROPY_KEY = "policy/entropy"


@dataclass
class RunResult:
    """A finished method run: its spec, its train_step rows and its summary quantities."""

    spec: RunSpec
    rows: list[dict[str, Any]]
    """metrics.jsonl rows of train_steps (those with rollout/success), by train_step."""
    all_rows: list[dict[str, Any]] = field(default_factory=list)
    """Every metrics.jsonl row, evaluation rows included."""
    values: dict[str, float] = field(default_factory=dict)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(r["train_step"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [float(p[1]) for p in pts]


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def run_values(rows: list[dict[str, Any]], summary: dict[str, Any], record: dict[str, Any], *, target: float, final_window: int) -> dict[str, float]:
    """The per-run quantities (module docstring) from a run's train_step rows (those with
    ``rollout/success``), its summary.json and compare_run.json."""
    steps = [r["train_step"] for r in rows]
    success = [r.get(TRAIN_KEY, math.nan) for r in rows]
    entropy = [r.get(ENTROPY_KEY) for r in rows]
    entropy = [math.nan if e is None else float(e) for e in entropy]
    clip = [float(r.get("policy/clipfrac_low") or 0.0) + float(r.get("policy/clipfrac_high") or 0.0) for r in rows]
    tail = slice(-final_window, None)

    def ev(label: str, key: str) -> float:
        v = (summary.get(label) or {}).get(f"eval/{label}/{key}")
        return math.nan if v is None else float(v)

    return {
        "train_steps": float(summary.get("train_steps", len(rows))),
        "before_success": ev("before_rl", "success"),
        "final_success": ev("after_rl", "success"),
        "final_return": ev("after_rl", "reward_mean"),
        "auc_success": curve_auc(steps, success),
        "initial_entropy": entropy[0] if entropy else math.nan,
        "final_entropy": _mean(entropy[tail]),
        "steps_to_target": steps_to_target(steps, success, target),
        "final_clipfrac": _mean(clip[tail]),
        "step_time_s": _mean([float(r["time/step_s"]) for r in rows if isinstance(r.get("time/step_s"), (int, float))]),
        "wall_time_s": float(record.get("wall_time_s", math.nan)),
    }


def load_results(study: Study, runs: list[RunSpec]) -> tuple[list[RunResult], list[str]]:
    """Finished method runs (summary.json present) and the keys of the missing ones."""
    results, missing = [], []
    for spec in runs:
        if spec.kind != "rl":
            continue
        folder = Path(spec.config["run"]["output_dir"])
        if not (folder / "summary.json").exists():
            missing.append(spec.key)
            continue
        all_rows = read_metrics(folder / "metrics.jsonl")
        rows = sorted((r for r in all_rows if TRAIN_KEY in r and r.get("train_step", 0) >= 1), key=lambda r: r["train_step"])
        summary = json.loads((folder / "summary.json").read_text())
        record = json.loads((folder / "compare_run.json").read_text()) if (folder / "compare_run.json").exists() else {}
        values = run_values(rows, summary, record, target=study.target_success, final_window=study.final_window)
        results.append(RunResult(spec, rows, all_rows, values))
    return results, missing


def group_results(results: list[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    """(env variant, method variant) -> its runs (one per seed), in study order."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.spec.env, r.spec.variant), []).append(r)
    return groups


def fits_for(results: list[RunResult]) -> list[dict[str, Any]]:
    """Entropy-performance fits ``R = -a exp(H) + b`` on (policy/entropy, rollout/success)
    points of every train_step: per env variant over all its runs ("all"), and per method
    variant. Rows with ``a``, ``b``, ``r2``, ``n`` (NaN where a fit is impossible)."""
    out = []
    envs = list(dict.fromkeys(r.spec.env for r in results))
    for env in envs:
        subsets = [("all", [r for r in results if r.spec.env == env])]
        subsets += [(v, rs) for (e, v), rs in group_results(results).items() if e == env]
        for variant, rs in subsets:
            h, p = [], []
            for r in rs:
                for row in r.rows:
                    if isinstance(row.get(ENTROPY_KEY), (int, float)) and isinstance(row.get(TRAIN_KEY), (int, float)):
                        h.append(float(row[ENTROPY_KEY]))
                        p.append(float(row[TRAIN_KEY]))
            try:
                fit = fit_entropy_law(h, p)
            except ValueError:
                fit = EntropyLawFit(math.nan, math.nan, math.nan, len(h))
            out.append({"env": env, "variant": variant, "a": fit.a, "b": fit.b, "r2": fit.r2, "n": fit.n})
    return out
