"""Training plots (PNG): reward, success and entropy per train_step, and entropy by turn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from agentrl.metrics import read_metrics


def run_name(run_dir: str | Path) -> str:
    """The run's name: ``run.name`` of its resolved config.yaml (or a ``name``/``run`` in
    run_info.json), else the folder's name."""
    run_dir = Path(run_dir)
    try:
        name = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("run", {}).get("name")
        if isinstance(name, str) and name:
            return name
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    try:
        info = json.loads((run_dir / "run_info.json").read_text())
        name = info.get("name") or info.get("run")
        if isinstance(name, str) and name:
            return name
    except (OSError, ValueError, AttributeError):
        pass
    return run_dir.resolve().name


EXPERT_SUCCESS_KEY = "sft/expert_success"
"""metrics.jsonl key (train_step 0) a run with SFT writes: the fraction of its expert
demonstrations (train split, env.kwargs) that succeeded, the success SFT imitates."""


def expert_success(rows: list[dict[str, Any]]) -> float | None:
    """The expert's success recorded in metrics rows (the last one), None when not recorded
    (SFT disabled, or a run from before it was recorded)."""
    vals = [float(r[EXPERT_SUCCESS_KEY]) for r in rows if isinstance(r.get(EXPERT_SUCCESS_KEY), (int, float))]
    return vals[-1] if vals else None


def plot_training(run_dir: str | Path) -> list[Path]:
    """Write ``training.png`` (reward, success, entropy, clip fraction over train_steps) and
    ``entropy_by_turn.png`` into the run folder; returns the paths written. The success panel
    shows the expert's success on the SFT demonstrations as a dotted line when recorded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    all_rows = read_metrics(run_dir / "metrics.jsonl")
    rows = [r for r in all_rows if "rollout/reward_mean" in r]
    expert = expert_success(all_rows)
    if not rows:
        return []
    steps = [r["train_step"] for r in rows]
    panels = [
        ("rollout/reward_mean", "mean episode return"),
        ("rollout/success", "success rate (fraction of episodes)"),
        ("policy/entropy", "token entropy (nats)"),
        ("rollout/turns_mean", "turns per episode"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, label) in zip(axes.flat, panels):
        ys = [r.get(key) for r in rows]
        ax.plot(steps, [y if y is not None else float("nan") for y in ys], marker=".")
        ax.set_xlabel("train_step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no train_step 1.5
        ax.set_ylabel(label)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if key == "rollout/success" and expert is not None:  # same split and env options as rollout/success
            ax.axhline(expert, color="black", ls=":", lw=1.2, label=f"expert on the SFT demonstrations ({expert:.2f})")
            ax.legend(fontsize=8)
    fig.suptitle(run_name(run_dir))
    fig.tight_layout()
    out = [run_dir / "training.png"]
    fig.savefig(out[0], dpi=110)
    plt.close(fig)
    turn_keys = sorted({k for r in rows for k in r if k.startswith("entropy/step/")}, key=lambda k: int(k.rsplit("/", 1)[1]))
    if turn_keys:
        fig, ax = plt.subplots(figsize=(7, 4))
        thirds = [rows[: max(len(rows) // 3, 1)], rows[-max(len(rows) // 3, 1) :]]
        for label, part in zip(("first third of training", "last third of training"), thirds):
            xs, ys = [], []
            for k in turn_keys:
                vals = [r[k] for r in part if r.get(k) is not None]
                if vals:
                    xs.append(int(k.rsplit("/", 1)[1]))
                    ys.append(sum(vals) / len(vals))
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xlabel("assistant turn index")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mean token entropy (nats)")
        ax.set_title("entropy by turn")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out.append(run_dir / "entropy_by_turn.png")
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    return out
