"""PNG plots of a compare report (matplotlib, Agg backend).

Per env variant, small multiples with one panel per method variant (21 curves on one axis
cannot be read): training success, token entropy and clip fractions over train_steps (mean
over seeds, band = min..max over seeds, the reference method in grey in every panel), and
token entropy by assistant turn index (first vs last third of training). Across env
variants: the entropy-performance scatter with the fitted ``R = -a exp(H) + b``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .stats import moving_average
from .results import ENTROPY_KEY, TRAIN_KEY, RunResult, group_results
from .study import SFT_CHECKPOINT

STEP_LABEL = "train_step (optimizer steps)"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list[Any]:
    """``n`` distinguishable colours: tab10, then the dark shades of tab20b/tab20c, then Dark2."""
    plt = _plt()
    base = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("tab20b").colors)[0::4] + list(plt.get_cmap("tab20c").colors)[0::4] + list(plt.get_cmap("Dark2").colors)
    return [base[i % len(base)] for i in range(n)]


def seed_band(runs: list[RunResult], value: Callable[[dict[str, Any]], float | None], smooth: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over seeds of ``value(row)`` per train_step, each seed's curve
    smoothed by a trailing moving average of ``smooth`` train_steps first."""
    per_step: dict[int, list[float]] = {}
    for r in runs:
        pts = [(row["train_step"], value(row)) for row in r.rows]
        pts = [(s, float(v)) for s, v in pts if v is not None]
        ys = moving_average([v for _, v in pts], smooth)
        for (s, _), y in zip(pts, ys):
            per_step.setdefault(s, []).append(y)
    steps = np.array(sorted(per_step))
    vals = [np.array(per_step[s]) for s in steps]
    return steps, np.array([v.mean() for v in vals]), np.array([v.min() for v in vals]), np.array([v.max() for v in vals])


def _reference(groups: dict[str, list[RunResult]]) -> str:
    return "grpo" if "grpo" in groups else next(iter(groups))


def _panels(n: int) -> tuple[Any, np.ndarray]:
    plt = _plt()
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    # at least 7.5 in wide: the suptitle and the legend above the panels must fit with one panel
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.7 * ncols + 0.6, 7.5), 2.7 * nrows + 1.1), sharex=True, sharey=True, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _label_panels(axes: np.ndarray, n: int, xlabel: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ncols = axes.shape[1]
    for i, ax in enumerate(axes.flat[:n]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # train_steps and turn indices are whole numbers
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.tick_params(labelbottom=True, labelleft=True, labelsize=8)  # every panel readable on its own
        if i % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=9)
        if i >= n - ncols:
            ax.set_xlabel(xlabel, fontsize=9)


def controller_targets(runs: list[RunResult]) -> list[tuple[str, float, str]]:
    """(controller, target, what it measures) of every controller with a ``target_entropy``
    in the runs' algorithm section (EntroPIC: token entropy; Skywork: ``measure``, e.g. the
    sampled tokens' NLL, logged as rollout/nll)."""
    found = []
    for c in (runs[0].spec.config.get("algorithm", {}).get("controllers") or []) if runs else []:
        if isinstance(c, dict) and c.get("target_entropy") is not None:
            found.append((str(c.get("name")), float(c["target_entropy"]), str(c.get("measure", "entropy"))))
    return found


def run_expert_success(run: RunResult) -> float | None:
    """The expert's success on the SFT demonstrations of ``run``'s warm start
    (``sft/expert_success``): in the run's own metrics, or in those of the shared warm start
    its model comes from (``<warm start>/checkpoints/step_000000/model``); None when neither has it."""
    from agentrl.metrics import read_metrics
    from agentrl.plots import expert_success

    found = expert_success(run.all_rows)
    model = Path(str((run.spec.config.get("model") or {}).get("path", "")))
    if found is None and run.spec.needs and model.as_posix().endswith(SFT_CHECKPOINT):
        warm = model.parents[len(Path(SFT_CHECKPOINT).parts) - 1] / "metrics.jsonl"
        found = expert_success(read_metrics(warm)) if warm.is_file() else None
    return found


def _finish(fig: Any, handles: list[Any], title: str, path: Path) -> Path:
    """Suptitle and one legend for the whole figure above the panels; save and close."""
    plt = _plt()
    import textwrap

    height = fig.get_figheight()
    title = "\n".join(textwrap.wrap(title, width=int(fig.get_figwidth() * 11)))  # ~11 characters of 11-pt text per inch
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / height)
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 4), fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1 - 0.42 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.95 if handles else 0.5) / height))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curve_panels(groups: dict[str, list[RunResult]], series: list[tuple[str, Callable[[dict[str, Any]], float | None]]], *, title: str, ylabel: str,
                 path: Path, smooth: int = 1, ylim: tuple[float, float | None] | None = None, targets: bool = False,
                 expert: bool = False) -> Path:
    """One panel per method variant: each of ``series`` (label, row -> value) as mean over
    seeds with a min..max band; with one series, the reference method's mean dashed grey in
    every other panel; ``targets``: controllers' target entropies as dotted lines; ``expert``:
    the expert's success on the SFT demonstrations (mean over the seeds that recorded it) as
    a dash-dot line."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = list(groups)
    fig, axes = _panels(len(names))
    ref = _reference(groups)
    colors = _colors(len(names))
    series_colors = ["tab:blue", "tab:orange", "tab:green"]
    any_target = any_expert = False
    for i, (name, ax) in enumerate(zip(names, axes.flat)):
        if len(series) == 1 and name != ref:
            steps, mean, _, _ = seed_band(groups[ref], series[0][1], smooth)
            ax.plot(steps, mean, color="0.55", lw=1.2, ls="--")
        for j, (_, fn) in enumerate(series):
            steps, mean, lo, hi = seed_band(groups[name], fn, smooth)
            if not len(steps):
                continue
            color = colors[i] if len(series) == 1 else series_colors[j]
            ax.plot(steps, mean, color=color, lw=1.8)
            if len(groups[name]) > 1:
                ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
        for ctrl, value, measure in controller_targets(groups[name]) if targets else []:
            any_target = True
            ax.axhline(value, color="black", ls=":", lw=1.2)
            ax.annotate(f"{ctrl} target {value:g}" + ("" if measure == "entropy" else f" (on {measure})"), (0.02, value), xycoords=("axes fraction", "data"),
                        fontsize=7, va="bottom")
        found = [v for v in (run_expert_success(r) for r in groups[name]) if v is not None] if expert else []
        if found:
            any_expert = True
            ax.axhline(float(np.mean(found)), color="black", ls="-.", lw=1.2)
        ax.set_title(f"{name} (n={len(groups[name])})", fontsize=10)
        if ylim:
            ax.set_ylim(*ylim)
    _label_panels(axes, len(names), STEP_LABEL, ylabel)
    several = any(len(g) > 1 for g in groups.values())
    if len(series) == 1:
        handles = [Line2D([], [], color="black", lw=1.8, label="the panel's method: mean over seeds")]
        if len(names) > 1:
            handles.append(Line2D([], [], color="0.55", lw=1.2, ls="--", label=f"{ref}: mean over seeds (reference)"))
    else:
        handles = [Line2D([], [], color=series_colors[j], lw=1.8, label=f"{label}: mean over seeds") for j, (label, _) in enumerate(series)]
    if several:
        handles.append(Patch(color="0.5", alpha=0.3, label="band: min to max over seeds"))
    if any_target:
        handles.append(Line2D([], [], color="black", ls=":", lw=1.2, label="the controller's target"))
    if any_expert:
        handles.append(Line2D([], [], color="black", ls="-.", lw=1.2, label="expert on the SFT demonstrations"))
    return _finish(fig, handles, title + (f" ({smooth}-step moving average)" if smooth > 1 else ""), path)


def turn_entropy_panels(groups: dict[str, list[RunResult]], *, title: str, path: Path) -> Path | None:
    """Per method variant: mean token entropy (nats) by assistant turn index (entropy/step/<k>),
    averaged over the first and the last third of training and over seeds."""
    names = [n for n in groups if any(k.startswith("entropy/step/") for r in groups[n] for row in r.rows for k in row)]
    if not names:
        return None
    fig, axes = _panels(len(names))
    for name, ax in zip(names, axes.flat):
        for label, part, color in (("first third of training", 0, "tab:blue"), ("last third of training", 1, "tab:red")):
            by_turn: dict[int, list[float]] = {}
            for r in groups[name]:
                third = max(len(r.rows) // 3, 1)
                rows = r.rows[:third] if part == 0 else r.rows[-third:]
                for row in rows:
                    for k, v in row.items():
                        if k.startswith("entropy/step/") and isinstance(v, (int, float)):
                            by_turn.setdefault(int(k.rsplit("/", 1)[1]), []).append(float(v))
            turns = sorted(by_turn)
            ax.plot(turns, [np.mean(by_turn[t]) for t in turns], color=color, marker="o", ms=2.5, lw=1.4, label=label)
        ax.set_title(f"{name} (n={len(groups[name])})", fontsize=10)
    _label_panels(axes, len(names), "assistant turn index (0 = first turn)", "token entropy (nats)")
    return _finish(fig, list(axes.flat[0].get_legend_handles_labels()[0]), title, path)


def entropy_scatter(results: list[RunResult], fits: list[dict[str, Any]], path: Path) -> Path:
    """Per env variant: (policy/entropy, rollout/success) of every train_step of every run,
    coloured by method variant, with the pooled fit ``R = -a exp(H) + b`` and its R^2."""
    plt = _plt()
    envs = list(dict.fromkeys(r.spec.env for r in results))
    variants = list(dict.fromkeys(r.spec.variant for r in results))
    colors = dict(zip(variants, _colors(len(variants))))
    markers = "os^Dv<>pP*Xh"
    fig, axes = plt.subplots(1, len(envs), figsize=(6.5 * len(envs), 5.0), squeeze=False)
    for ax, env in zip(axes.flat, envs):
        xs_all = []
        for i, v in enumerate(variants):
            pts = [(row[ENTROPY_KEY], row[TRAIN_KEY]) for r in results if r.spec.env == env and r.spec.variant == v for row in r.rows
                   if isinstance(row.get(ENTROPY_KEY), (int, float)) and isinstance(row.get(TRAIN_KEY), (int, float))]
            if pts:
                x, y = zip(*pts)
                xs_all += x
                ax.scatter(x, y, s=12, alpha=0.6, color=colors[v], marker=markers[i % len(markers)], label=v, lw=0)
        fit = next((f for f in fits if f["env"] == env and f["variant"] == "all" and f.get("seed", "all") == "all"), None)
        if fit and xs_all and not math.isnan(fit["a"]):
            grid = np.linspace(min(xs_all), max(xs_all), 200)
            ax.plot(grid, -fit["a"] * np.exp(grid) + fit["b"], color="black", lw=2, label="fit R = -a exp(H) + b (all runs of the panel)")
            ax.text(0.98, 0.97, f"a = {fit['a']:.3f}, b = {fit['b']:.3f}\nR² = {fit['r2']:.2f} over {fit['n']} points", transform=ax.transAxes,
                    ha="right", va="top", fontsize=9, bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
        ax.set_xlabel("token entropy H (nats)")
        ax.set_ylabel("training success rate R (fraction of episodes)")
        ax.set_title(f"{env}: one point per train_step and run", fontsize=10)
        ax.set_ylim(-0.03, 1.03)
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    ncol = min(len(labels), 6)
    rows = math.ceil(len(labels) / ncol)
    fig.set_figheight(fig.get_figheight() + 0.3 * rows)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle("Entropy vs performance with the fitted law R = -a exp(H) + b", fontsize=11)
    fig.tight_layout(rect=(0, (0.3 * rows + 0.1) / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _clip(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda row: row.get(key)


def write_plots(results: list[RunResult], fits: list[dict[str, Any]], folder: Path, *, smooth: int = 1) -> dict[str, list[tuple[str, Path]]]:
    """Every plot of the report; returns env variant -> [(caption, path)] ("" for plots
    across env variants)."""
    out: dict[str, list[tuple[str, Path]]] = {}
    grouped = group_results(results)
    for env in dict.fromkeys(r.spec.env for r in results):
        groups = {v: rs for (e, v), rs in grouped.items() if e == env}
        plots = [
            (f"{env}: training success over train_steps", curve_panels(
                groups, [("success", _clip(TRAIN_KEY))], title=f"{env}: training success rate per train_step", ylabel="success rate (fraction)",
                path=folder / f"success_{env}.png", smooth=smooth, ylim=(-0.03, 1.03), expert=True)),
            (f"{env}: token entropy over train_steps", curve_panels(
                groups, [("entropy", _clip(ENTROPY_KEY))], title=f"{env}: mean token entropy of the batch per train_step", ylabel="token entropy (nats)",
                path=folder / f"entropy_{env}.png", smooth=smooth, targets=True)),
            (f"{env}: clip fractions over train_steps", curve_panels(
                groups, [("clipped below (ratio < 1 - eps_low)", _clip("policy/clipfrac_low")), ("clipped above (ratio > 1 + eps_high)", _clip("policy/clipfrac_high"))],
                title=f"{env}: fraction of generated tokens clipped per train_step", ylabel="fraction of tokens", path=folder / f"clipfrac_{env}.png", smooth=smooth, ylim=(0.0, None))),
        ]
        turn = turn_entropy_panels(groups, title=f"{env}: token entropy by assistant turn (mean over seeds)", path=folder / f"turn_entropy_{env}.png")
        if turn is not None:
            plots.append((f"{env}: token entropy by turn index, early vs late training", turn))
        out[env] = plots
    out[""] = [("Entropy vs training success with the fitted R = -a exp(H) + b", entropy_scatter(results, fits, folder / "entropy_vs_success.png"))]
    return out
