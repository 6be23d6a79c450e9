"""The report of a compare study, computed from the run folders alone (metrics.jsonl,
summary.json, compare_run.json), so it can be rebuilt at any time (``agentrl compare
--report-only``).

Files written into ``<out>/report/``:

- ``metrics_long.csv``: every numeric metric of every metrics.jsonl row of every run, long
  format (run, env, variant, method, seed, axis levels, train_step, metric, value);
- ``runs.csv``: one row per run with the per-run quantities of :mod:`.results`;
- ``groups.csv``: per (env variant, method variant): mean and 95% t-interval across seeds;
- ``fits.csv``: the entropy-performance fits, pooled over seeds and per seed, with the reason of each refused fit;
- ``report.md`` and ``report.html``: the tables and the plots of :mod:`.report_plots`.

The per-run quantities are computed, and defined, in :mod:`.results` (the definitions are
repeated in the report). Dependencies run one way: this module uses :mod:`.results` and
:mod:`.report_plots`; the plots use only :mod:`.results`.
"""

from __future__ import annotations

import csv
import html
import logging
import math
import time
from pathlib import Path
from typing import Any

from . import report_plots
from .results import MIN_FIT_POINTS, RunResult, fits_for, group_results, load_results, warm_start_mismatches
from .stats import MeanCI, mean_ci
from .study import RunSpec, Study

log = logging.getLogger(__name__)

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
              "initial_entropy", "final_entropy", "steps_to_target", "final_clipfrac", "step_time_s", "wall_time_s",
              "entropy_target", "target_mad", "target_mad_entropy")


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
    """Per method variant (and "all"): the fit pooled over seeds, then the mean [95% interval]
    of the per-seed fits' a, b and R^2 over the seeds whose fit was made, and the refusals."""
    rows = []
    for pooled in (f for f in fits if f["env"] == env and f["seed"] == "all"):
        per_seed = [f for f in fits if f["env"] == env and f["variant"] == pooled["variant"] and f["seed"] != "all"]
        made = [f for f in per_seed if not f["refused"]]
        refused = ([f"pooled: {pooled['refused']}"] if pooled["refused"] else []) + [f"seed {f['seed']}: {f['refused']}" for f in per_seed if f["refused"]]
        rows.append([pooled["variant"], fmt(pooled["a"], 4), fmt(pooled["b"], 4), fmt(pooled["r2"], 3), str(pooled["n"]),
                     *(fmt_ci(mean_ci([f[k] for f in made]), d) for k, d in (("a", 4), ("b", 4), ("r2", 3))),
                     f"{len(made)}/{len(per_seed)}", "; ".join(refused) or "none"])
    return rows


def _controller_rows(results: list[RunResult], env: str) -> list[list[str]]:
    """Per method variant with an entropy controller: its target and the mean [95% interval]
    over seeds of the mean absolute deviations from it over the last window."""
    rows = []
    for (e, variant), rs in group_results(results).items():
        held = [r for r in rs if not math.isnan(r.values["entropy_target"])]
        if e != env or not held:
            continue
        targets = sorted({r.values["entropy_target"] for r in held})
        rows.append([variant, str(len(held)), ", ".join(f"{t:g}" for t in targets),
                     fmt_ci(mean_ci([r.values["target_mad"] for r in held])), fmt_ci(mean_ci([r.values["target_mad_entropy"] for r in held])),
                     fmt_ci(mean_ci([r.values["final_entropy"] for r in held]))])
    return rows


def _run_rows(results: list[RunResult]) -> list[list[str]]:
    return [[r.spec.key, fmt(r.values["final_success"]), fmt(r.values["auc_success"]), fmt(r.values["final_entropy"]),
             fmt(r.values["steps_to_target"], 0), fmt(r.values["step_time_s"], 1), fmt(r.values["wall_time_s"], 0)] for r in results]


RUN_HEADERS = ["run", "held-out success after RL", "training success AUC", "final entropy (nats)", "train_steps to target", "mean step time (s)", "wall time (s)"]
FIT_HEADERS = ["method", "a", "b", "R^2", "points", "a per seed", "b per seed", "R^2 per seed", "seeds fitted", "refused"]
CONTROLLER_HEADERS = ["method", "seeds", "target entropy", "controller's measurement: mean abs. deviation", "policy/entropy: mean abs. deviation",
                      "final entropy (nats)"]


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
        w = csv.DictWriter(f, fieldnames=["env", "variant", "seed", "a", "b", "r2", "n", "refused"])
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
        "Entropy-performance fit: R = -a exp(H) + b by least squares (linear in a, b with x = exp(H)) on (policy/entropy, rollout/success) at every train_step; R^2 on the same points. "
        "a, b, R^2 and points: one fit on the points of all seeds; per seed: the mean [95% t-interval] of the fits made on each seed alone. "
        f"A fit on fewer than {MIN_FIT_POINTS} points, or on entropies without spread, is refused, with the reason.",
        f"Entropy controllers (EntroPIC, Skywork): the mean absolute deviation from the controller's target entropy over the last {study.final_window} train_step(s), "
        "of the quantity the controller measures and holds (EntroPIC: the mini-batch token entropy; Skywork: its measure, by default the NLL of the sampled tokens) and of policy/entropy.",
    ]


def write_report(study: Study, runs: list[RunSpec], out: Path) -> Path:
    """Write the report folder from the finished runs; returns the path of report.md."""
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
    source = (f"Study file `{study.source}`, base config `{study.base}`" if study.source is not None  # else: agentrl compare RUN_A RUN_B
              else "Run folders " + ", ".join(f"`{r.config['run']['output_dir']}` ({r.key})" for r in runs))
    intro = [
        f"{source}; written {time.strftime('%Y-%m-%d %H:%M')}.",
        f"{len(results)} finished method runs ({len({r.spec.variant for r in results})} method variants x {len(envs)} env variants x seeds {study.seeds})"
        + (f"; {len(missing)} not finished: {', '.join(missing)}" if missing else "") + ".",
    ]
    mismatched = warm_start_mismatches(results)
    if mismatched:  # a warm start trained again and not bitwise the same (another machine's float kernels)
        intro += ["WARNING: " + line for line in mismatched]
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
        controller_rows = _controller_rows(results, env)
        if controller_rows:
            md += ["### Entropy controllers: deviation from their targets", "", _md_table(CONTROLLER_HEADERS, controller_rows), ""]
            body_html += ["<h3>Entropy controllers: deviation from their targets</h3>", _html_table(CONTROLLER_HEADERS, controller_rows)]
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
