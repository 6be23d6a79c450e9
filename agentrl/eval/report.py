"""The report of a compare study, computed from the run folders alone (metrics.jsonl,
summary.json, compare_run.json), so it can be rebuilt at any time (``agentrl compare
--report-only``).

Files written into ``<out>/report/``:

- ``metrics_long.csv``: every numeric metric of every metrics.jsonl row of every run, long
  format (run, env, variant, method, seed, axis levels, train_step, metric, value);
- ``runs.csv``: one row per run with the per-run quantities below;
- ``groups.csv``: per (env variant, method variant): mean and 95% t-interval across seeds;
- ``fits.csv``: the entropy-performance fits;
- ``report.md`` and ``report.html``: the tables and the plots of :mod:`.report_plots`.

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

import csv
import html
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.metrics import read_metrics

from .stats import (
    EntropyLawFit,
    MeanCI,
    curve_auc,
    fit_entropy_law,
    mean_ci,
    steps_to_target,
)
from .study import RunSpec, Study

log = logging.getLogger(__name__)

TRAIN_KEY = "rollout/success"
ENTROPY_KEY = "policy/entropy"
#: (column, header, decimals) of the group table, in order.
GROUP_COLUMNS = (
    ("before_success", "held-out success before RL", 3),
    ("final_success", "held-out success after RL", 3),
    ("auc_success", "training success AUC", 3),
    ("initial_entropy", "entropy at step 1 (nats)", 3),
    ("final_entropy", "final entropy (nats)", 3),
    ("final_clipfrac", "final clip fraction", 3),
)
RUN_FIELDS = ("key", "env", "variant", "method", "seed", "train_steps", "before_success", "final_success", "final_return", "auc_success",
              "initial_entropy", "final_entropy", "steps_to_target", "final_clipfrac", "step_time_s", "wall_time_s")


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


# ----------------------------------------------------------------------------- formatting
def fmt(x: float, decimals: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{decimals}f}"


def fmt_ci(ci: MeanCI, decimals: int = 3) -> str:
    """``mean [low, high]`` (95% t-interval across seeds), or ``mean`` for one seed."""
    if ci.n == 0:
        return "n/a"
    if ci.n == 1:
        return fmt(ci.mean, decimals)
    return f"{fmt(ci.mean, decimals)} [{fmt(ci.low, decimals)}, {fmt(ci.high, decimals)}]"


def group_table(results: list[RunResult]) -> list[dict[str, Any]]:
    """Rows of the main table: per (env, variant) the mean and 95% interval of each column,
    and train_steps to target over the seeds that reached it."""
    rows = []
    for (env, variant), rs in group_results(results).items():
        row: dict[str, Any] = {"env": env, "variant": variant, "seeds": len(rs)}
        for col, _, _ in GROUP_COLUMNS:
            row[col] = mean_ci([r.values[col] for r in rs])
        reached = [r.values["steps_to_target"] for r in rs if not math.isnan(r.values["steps_to_target"])]
        row["steps_to_target"] = mean_ci(reached)
        row["reached"] = f"{len(reached)}/{len(rs)}"
        rows.append(row)
    return rows


def _table_cells(row: dict[str, Any]) -> list[str]:
    cells = [row["variant"], str(row["seeds"])] + [fmt_ci(row[c], d) for c, _, d in GROUP_COLUMNS]
    steps = row["steps_to_target"]
    cells.append(f"{fmt_ci(steps, 1)} ({row['reached']})" if steps.n else f"never ({row['reached']})")
    return cells


def _headers(study: Study) -> list[str]:
    return ["method", "seeds"] + [h for _, h, _ in GROUP_COLUMNS] + [f"train_steps to success >= {study.target_success:g}"]


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fit_rows(fits: list[dict[str, Any]], env: str) -> list[list[str]]:
    return [[f["variant"], fmt(f["a"], 4), fmt(f["b"], 4), fmt(f["r2"], 3), str(f["n"])] for f in fits if f["env"] == env]


def _run_rows(results: list[RunResult]) -> list[list[str]]:
    return [[r.spec.key, fmt(r.values["final_success"]), fmt(r.values["auc_success"]), fmt(r.values["final_entropy"]),
             fmt(r.values["steps_to_target"], 0), fmt(r.values["step_time_s"], 1), fmt(r.values["wall_time_s"], 0)] for r in results]


RUN_HEADERS = ["run", "held-out success after RL", "training success AUC", "final entropy (nats)", "train_steps to target", "mean step time (s)", "wall time (s)"]
FIT_HEADERS = ["method", "a", "b", "R^2", "points"]


# ----------------------------------------------------------------------------- files
def _write_csvs(report: Path, results: list[RunResult], groups: list[dict[str, Any]], fits: list[dict[str, Any]], axes: list[str]) -> None:
    with (report / "metrics_long.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "env", "variant", "method", "seed", *axes, "train_step", "metric", "value"])
        for r in results:
            levels = dict(r.spec.levels)
            head = [r.spec.key, r.spec.env, r.spec.variant, r.spec.method, r.spec.seed, *(levels.get(a, "") for a in axes)]
            for row in r.all_rows:
                for k, v in row.items():
                    if k != "train_step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        w.writerow([*head, row["train_step"], k, repr(float(v))])
    with (report / "runs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*RUN_FIELDS[:5], *axes, *RUN_FIELDS[5:]])
        for r in results:
            levels = dict(r.spec.levels)
            w.writerow([r.spec.key, r.spec.env, r.spec.variant, r.spec.method, r.spec.seed, *(levels.get(a, "") for a in axes),
                        *(repr(r.values[k]) for k in RUN_FIELDS[5:])])
    with (report / "groups.csv").open("w", newline="") as f:
        w = csv.writer(f)
        cols = [c for c, _, _ in GROUP_COLUMNS] + ["steps_to_target"]
        w.writerow(["env", "variant", "seeds", *(f"{c}_{s}" for c in cols for s in ("mean", "low", "high", "n"))])
        for g in groups:
            w.writerow([g["env"], g["variant"], g["seeds"], *(repr(x) for c in cols for x in (g[c].mean, g[c].low, g[c].high, g[c].n))])
    with (report / "fits.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["env", "variant", "a", "b", "r2", "n"])
        w.writeheader()
        w.writerows(fits)


def _definitions(study: Study) -> list[str]:
    return [
        "Each cell is the mean across seeds with its 95% t-interval in brackets (one seed: the value alone).",
        "held-out success before/after RL: success rate on the fixed held-out tasks (eval/before_rl, eval/after_rl).",
        "training success AUC: the training success curve (rollout/success) integrated over train_steps by the trapezoid rule and divided by the step span (its time-average, in [0, 1]).",
        f"entropy at step 1 / final entropy: policy/entropy, the mean per-token entropy (nats) of the sampled batch, at train_step 1 / averaged over the last {study.final_window} train_step(s).",
        f"final clip fraction: policy/clipfrac_low + policy/clipfrac_high averaged over the last {study.final_window} train_step(s).",
        f"train_steps to success >= {study.target_success:g}: the first train_step whose training success reaches the target, averaged over the seeds that reached it (count in parentheses).",
        "Entropy-performance fit: R = -a exp(H) + b by least squares (linear in a, b with x = exp(H)) on (policy/entropy, rollout/success) at every train_step; R^2 on the same points.",
    ]


def write_report(study: Study, runs: list[RunSpec], out: Path) -> Path:
    """Write the report folder from the finished runs; returns the path of report.md."""
    from . import report_plots

    report = Path(out) / "report"
    (report / "plots").mkdir(parents=True, exist_ok=True)
    results, missing = load_results(study, runs)
    axes = list(study.axes)
    groups = group_table(results)
    fits = fits_for(results)
    _write_csvs(report, results, groups, fits, axes)
    plots = report_plots.write_plots(results, fits, report / "plots", smooth=study.smooth) if results else {}
    envs = list(dict.fromkeys(r.spec.env for r in results))
    title = f"agentrl compare: {study.identity}"
    intro = [
        f"Study file `{study.source}`, base config `{study.base}`; written {time.strftime('%Y-%m-%d %H:%M')}.",
        f"{len(results)} finished method runs ({len({r.spec.variant for r in results})} method variants x {len(envs)} env variants x seeds {study.seeds})"
        + (f"; {len(missing)} not finished: {', '.join(missing)}" if missing else "") + ".",
    ]
    md = [f"# {title}", "", *intro, "", "## Definitions", "", *(f"- {d}" for d in _definitions(study)), ""]
    body_html = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{html.escape(p)}</p>" for p in intro), "<h2>Definitions</h2><ul>",
                 *(f"<li>{html.escape(d)}</li>" for d in _definitions(study)), "</ul>"]
    for env in envs:
        rows = [_table_cells(g) for g in groups if g["env"] == env]
        fit_rows = _fit_rows(fits, env)
        md += [f"## {env}", "", "### Results across seeds", "", _md_table(_headers(study), rows), "",
               "### Entropy-performance fit R = -a exp(H) + b", "", _md_table(FIT_HEADERS, fit_rows), ""]
        body_html += [f"<h2>{html.escape(env)}</h2>", "<h3>Results across seeds</h3>", _html_table(_headers(study), rows),
                      "<h3>Entropy-performance fit R = -a exp(H) + b</h3>", _html_table(FIT_HEADERS, fit_rows)]
        for caption, path in plots.get(env, []):
            rel = path.relative_to(report).as_posix()
            md += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
            body_html.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    for caption, path in plots.get("", []):
        rel = path.relative_to(report).as_posix()
        md += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
        body_html.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    md += ["## Every run", "", _md_table(RUN_HEADERS, _run_rows(results)), ""]
    body_html += ["<h2>Every run</h2>", _html_table(RUN_HEADERS, _run_rows(results))]
    (report / "report.md").write_text("\n".join(md))
    style = ("body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;margin:1em 0;font-size:14px}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "th{background:#eee}img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#444;font-style:italic}")
    page = f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>\n" + "\n".join(body_html) + "\n</body></html>\n"
    (report / "report.html").write_text(page)
    log.info("report: %s (and report.html, CSVs, %d plots)", report / "report.md", sum(len(v) for v in plots.values()))
    return report / "report.md"
