"""The pilot's decisions for the long-horizon study, computed from its committed results
(``configs/studies/long_horizon_pilot.yaml``; the rules are pre-registered in the header of
``configs/studies/long_horizon_entropy.yaml``)::

    python -m agentrl.eval.pilot results/studies/long_horizon_pilot

prints the decisions and writes them to ``<folder>/pilot_decision.json``:

- **horizon**: the held-out success after SFT (``eval/before_rl/success`` of the 0-step and
  the first evaluation of the GRPO runs) per horizon; the long horizon kept is the longest
  whose success is in ``[low, high]`` (default [0.15, 0.8]), None if none is.
- **total_steps**: per curve (``rollout/success`` and ``policy/entropy``, mean over the seeds
  at the train_steps every seed has, trailing moving average of ``window`` steps),
  :func:`agentrl.eval.stats.settled_step` with ``tol``; total_steps is the largest of
  ``floor`` and the two settled steps, rounded up to a multiple of 10.
- **cost**: wall time per run (``compare_run.json``) and mean ``time/step_s`` per train_step,
  for the study's budget.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from agentrl.config import ConfigError
from agentrl.metrics import read_metrics

from .stats import mean_ci, moving_average, settled_step

SUCCESS_KEY, ENTROPY_KEY, STEP_KEY = "rollout/success", "policy/entropy", "train_step"


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it ({type(e).__name__}: {e}); is the pilot's run finished?") from None


def _horizon(env: str) -> int:
    digits = "".join(c for c in env if c.isdigit())
    if not digits:
        raise ConfigError(f"env variant {env!r}: the pilot names env variants h<horizon> (h10, h30, h50)")
    return int(digits)


def _runs(folder: Path) -> list[Path]:
    return sorted(p.parent for p in (folder / "runs").glob("**/summary.json"))


def mean_curve(runs: list[Path], key: str) -> tuple[list[float], list[float]]:
    """Mean over the runs of ``key`` per train_step, at the train_steps every run logged."""
    per_run = []
    for run in runs:
        rows = read_metrics(run / "metrics.jsonl")
        per_run.append({int(r[STEP_KEY]): float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and r.get(STEP_KEY, 0) >= 1})
    common = sorted(set.intersection(*(set(c) for c in per_run))) if per_run else []
    return [float(s) for s in common], [sum(c[s] for c in per_run) / len(per_run) for s in common]


def decide(folder: str | Path, *, low: float = 0.15, high: float = 0.8, window: int = 10, tol: float = 0.1, floor: int = 50) -> dict[str, Any]:
    """The pilot's decisions (see the module docstring). Raises ConfigError when the folder
    has no finished runs."""
    folder = Path(folder)
    runs = _runs(folder)
    if not runs:
        raise ConfigError(f"{folder}: no finished runs (runs/**/summary.json); run the pilot first: agentrl compare configs/studies/long_horizon_pilot.yaml --out {folder}")
    after_sft: dict[int, list[float]] = {}
    cost: dict[str, Any] = {}
    trained: dict[int, list[Path]] = {}
    for run in runs:
        rel = run.relative_to(folder / "runs").parts  # env / level / method / seed
        h = _horizon(rel[0])
        summary = _json(run / "summary.json")
        after_sft.setdefault(h, []).append(float(summary["before_rl"]["eval/before_rl/success"]))
        rows = read_metrics(run / "metrics.jsonl")
        steps = [r["time/step_s"] for r in rows if isinstance(r.get("time/step_s"), (int, float))]
        record = run / "compare_run.json"
        cost["/".join(rel)] = {
            "wall_time_s": _json(record)["wall_time_s"] if record.exists() else math.nan,
            "train_steps": len(steps),
            "step_s_mean": sum(steps) / len(steps) if steps else math.nan,
            "eval_before_s": float(summary["before_rl"].get("eval/before_rl/time_s", math.nan)),
        }
        if any(isinstance(r.get(SUCCESS_KEY), (int, float)) and r.get(STEP_KEY, 0) >= 1 for r in rows):
            trained.setdefault(h, []).append(run)
    for sft in sorted((folder / "sft").glob("*/seed*/summary.json")):
        s = _json(sft).get("sft") or {}
        cost["sft/" + "/".join(sft.parent.relative_to(folder / "sft").parts)] = {"sft_time_s": float(s.get("time_s", math.nan))}
    success = {h: mean_ci(v) for h, v in sorted(after_sft.items())}
    kept = [h for h, ci in success.items() if low <= ci.mean <= high]
    long_h = max((h for h in kept if h != min(success)), default=None)
    out: dict[str, Any] = {
        "after_sft_success": {h: {"mean": ci.mean, "low": ci.low, "high": ci.high, "n_runs": len(after_sft[h])} for h, ci in success.items()},
        "rule_horizon": f"longest horizon with after-SFT held-out success in [{low}, {high}]",
        "long_horizon": long_h,
        "cost": cost,
    }
    if trained:
        h = min(trained)
        settled = {}
        for key in (SUCCESS_KEY, ENTROPY_KEY):
            steps, values = mean_curve(trained[h], key)
            settled[key] = settled_step(steps, moving_average(values, window), tol) if steps else math.nan
        total = max(floor, *(int(math.ceil(s)) for s in settled.values() if not math.isnan(s)))
        out.update({
            "steps_horizon": h, "steps_seeds": len(trained[h]), "settled_step": settled,
            "rule_steps": f"max({floor}, settled steps of the {window}-step moving averages at tol {tol}), rounded up to 10",
            "total_steps": int(math.ceil(total / 10) * 10),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agentrl.eval.pilot", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="the pilot's results folder (agentrl compare --out)")
    args = p.parse_args(argv)
    try:
        result = decide(args.folder)
    except ConfigError as e:
        print(f"Error: {e}")
        return 2
    (Path(args.folder) / "pilot_decision.json").write_text(json.dumps(result, indent=2, default=str))
    print("held-out success after SFT (128 episodes per run):")
    for h, s in result["after_sft_success"].items():
        print(f"  h{h}: {s['mean']:.3f}  ({s['n_runs']} run(s))")
    print(f"long horizon kept: {result['long_horizon']}  ({result['rule_horizon']})")
    if "total_steps" in result:
        print(f"settled steps at h{result['steps_horizon']} ({result['steps_seeds']} seeds): " + ", ".join(f"{k} {v:g}" for k, v in result["settled_step"].items()))
        print(f"trainer.total_steps: {result['total_steps']}  ({result['rule_steps']})")
    print("cost per run:")
    for k, c in result["cost"].items():
        print("  " + k + ": " + ", ".join(f"{n} {v:.1f}" if isinstance(v, float) else f"{n} {v}" for n, v in c.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
