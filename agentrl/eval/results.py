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
  run's wall time as measured by compare;
- ``entropy_target``: the ``target_entropy`` of the run's entropy controller (EntroPIC,
  Skywork: a controller with a ``target_metric``), NaN without one; ``target_mad``: the mean
  absolute deviation of the controller's own measurement (its ``target_metric``) from that
  target over the last ``final_window`` train_steps; ``target_mad_entropy``: the same for
  ``policy/entropy``.

Entropy-performance fits (:func:`fits_for`) are made pooled over the seeds and per seed; a
fit on fewer than :data:`MIN_FIT_POINTS` points is refused, with the reason.
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
MIN_FIT_POINTS = 10
"""The fewest (entropy, success) points an entropy-performance fit is made on: two free
parameters on fewer points say little, so below it the fit is refused and the report says why."""


@dataclass
class RunResult:
    """A finished method run: its spec, its train_step rows and its summary quantities."""

    spec: RunSpec
    rows: list[dict[str, Any]]
    """metrics.jsonl rows of train_steps (those with rollout/success), by train_step."""
    all_rows: list[dict[str, Any]] = field(default_factory=list)
    """Every metrics.jsonl row, evaluation rows included."""
    values: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    """Its compare_run.json (wall time; ``warm_start_sha256``: the model it started from)."""

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(r["train_step"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [float(p[1]) for p in pts]


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def controller_target(config: dict[str, Any]) -> tuple[float, str] | None:
    """``(target_entropy, target_metric)`` of the first controller of a resolved run config
    (``to_dict`` form) that holds an entropy at a target, or None (no such controller, or its
    control disabled by a negative target)."""
    from agentrl.algorithms.controllers import CONTROLLERS

    for c in (config.get("algorithm") or {}).get("controllers") or []:
        entry = CONTROLLERS.get(c["name"])
        metric = getattr(entry.obj, "target_metric", None)
        target = c.get("target_entropy", entry.options().get("target_entropy"))
        if metric and target is not None and float(target) >= 0:
            return float(target), metric
    return None


def run_values(rows: list[dict[str, Any]], summary: dict[str, Any], record: dict[str, Any], *, target: float, final_window: int,
               config: dict[str, Any] | None = None) -> dict[str, float]:
    """The per-run quantities (module docstring) from a run's train_step rows (those with
    ``rollout/success``), its summary.json, compare_run.json and resolved config (for the
    entropy controller's target; None: no target)."""
    steps = [r["train_step"] for r in rows]
    success = [r.get(TRAIN_KEY, math.nan) for r in rows]
    entropy = [r.get(ENTROPY_KEY) for r in rows]
    entropy = [math.nan if e is None else float(e) for e in entropy]
    clip = [float(r.get("policy/clipfrac_low") or 0.0) + float(r.get("policy/clipfrac_high") or 0.0) for r in rows]
    tail = slice(-final_window, None)

    def ev(label: str, key: str) -> float:
        v = (summary.get(label) or {}).get(f"eval/{label}/{key}")
        return math.nan if v is None else float(v)

    held = controller_target(config or {})
    entropy_target, target_mad, target_mad_entropy = math.nan, math.nan, math.nan
    if held is not None:
        entropy_target, metric = held
        measured = [float(r[metric]) for r in rows[tail] if isinstance(r.get(metric), (int, float))]
        target_mad = _mean([abs(m - entropy_target) for m in measured])
        target_mad_entropy = _mean([abs(e - entropy_target) for e in entropy[tail]])

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
        "entropy_target": entropy_target,
        "target_mad": target_mad,
        "target_mad_entropy": target_mad_entropy,
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
        values = run_values(rows, summary, record, target=study.target_success, final_window=study.final_window, config=spec.config)
        results.append(RunResult(spec, rows, all_rows, values, record))
    return results, missing


def warm_start_mismatches(results: list[RunResult]) -> list[str]:
    """One line per (env variant, seed) whose method runs started from more than one
    warm-start model (distinct ``warm_start_sha256`` in their compare_run.json; runs trained
    before the fingerprint was recorded are left out), naming the runs of each model."""
    by: dict[tuple[str, int], dict[str, list[str]]] = {}
    for r in results:
        fp = r.record.get("warm_start_sha256")
        if fp:
            by.setdefault((r.spec.env, r.spec.seed), {}).setdefault(str(fp), []).append(r.spec.variant)
    return [f"{env} seed {seed}: the method runs started from {len(fps)} different warm-start models ("
            + "; ".join(f"{fp}: {', '.join(v)}" for fp, v in fps.items()) + "); their differences include the warm start's"
            for (env, seed), fps in by.items() if len(fps) > 1]


def group_results(results: list[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    """(env variant, method variant) -> its runs (one per seed), in study order."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.spec.env, r.spec.variant), []).append(r)
    return groups


def _fit_points(runs: list[RunResult]) -> tuple[list[float], list[float]]:
    h, p = [], []
    for r in runs:
        for row in r.rows:
            if isinstance(row.get(ENTROPY_KEY), (int, float)) and isinstance(row.get(TRAIN_KEY), (int, float)):
                h.append(float(row[ENTROPY_KEY]))
                p.append(float(row[TRAIN_KEY]))
    return h, p


def fit_or_refuse(entropy: list[float], performance: list[float]) -> tuple[EntropyLawFit, str]:
    """The fit of ``R = -a exp(H) + b`` and ``""``, or a NaN fit and the reason it was refused
    (fewer than :data:`MIN_FIT_POINTS` finite points; entropy without spread)."""
    n = sum(1 for h, r in zip(entropy, performance) if math.isfinite(h) and math.isfinite(r))
    if n < MIN_FIT_POINTS:
        return EntropyLawFit(math.nan, math.nan, math.nan, n), f"{n} points, fewer than the minimum of {MIN_FIT_POINTS}"
    try:
        return fit_entropy_law(entropy, performance), ""
    except ValueError as e:
        return EntropyLawFit(math.nan, math.nan, math.nan, n), str(e)


def fits_for(results: list[RunResult]) -> list[dict[str, Any]]:
    """Entropy-performance fits ``R = -a exp(H) + b`` on (policy/entropy, rollout/success)
    points of every train_step: per env variant over all its runs ("all") and per method
    variant, each pooled over the seeds (``seed`` "all") and for each seed alone. Rows with
    ``env``, ``variant``, ``seed``, ``a``, ``b``, ``r2``, ``n`` and ``refused`` (the reason, or
    ``""``; a refused fit has NaN ``a``, ``b``, ``r2``)."""
    out = []
    envs = list(dict.fromkeys(r.spec.env for r in results))
    for env in envs:
        subsets = [("all", [r for r in results if r.spec.env == env])]
        subsets += [(v, rs) for (e, v), rs in group_results(results).items() if e == env]
        for variant, rs in subsets:
            seeds = list(dict.fromkeys(r.spec.seed for r in rs))
            for seed, runs in [("all", rs), *((s, [r for r in rs if r.spec.seed == s]) for s in seeds)]:
                fit, refused = fit_or_refuse(*_fit_points(runs))
                out.append({"env": env, "variant": variant, "seed": seed, "a": fit.a, "b": fit.b, "r2": fit.r2, "n": fit.n, "refused": refused})
    return out
