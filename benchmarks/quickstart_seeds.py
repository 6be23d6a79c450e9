"""The quickstart over several seeds: does RL beat SFT by more than the seed-to-seed spread?

    python benchmarks/quickstart_seeds.py                       # seeds 0 1 2, two at a time
    python benchmarks/quickstart_seeds.py --seeds 0 1 2 --jobs 1 --config configs/quickstart.yaml \\
        trainer.total_steps=10                                  # extra args: config overrides

Each seed runs ``agentrl train CONFIG run.seed=S`` in its own folder (its own tiny model,
tokenizer, SFT warm start and RL; ``run.num_threads`` stays 1, so ``--jobs 2`` uses the two
cores of the reference machine). Reported per seed: held-out success before RL (after SFT) and
after RL, their difference, and the wall time of the whole run; across seeds: the mean
improvement next to the spread (max - min and sample std) of the after-RL success and of the
improvement. The claim "RL helps" holds when the mean improvement exceeds the spread of the
after-RL success over seeds (issue 5, acceptance 2).

Writes JSON to ``--out`` (default benchmarks/results/quickstart_seeds.json), prints a table,
and plots the per-seed rollout success over train_steps with the before/after evaluations
(``quickstart_seeds.png`` next to the JSON). Wall times depend on the machine's load, which is
recorded (``os.getloadavg``) but not controlled.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "quickstart_seeds.json"


def run_seed(config: str, seed: int, folder: Path, overrides: list[str]) -> dict[str, Any]:
    """One full quickstart run (model init, SFT, RL, evaluations) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "agentrl.cli", "train", config, f"run.seed={seed}", f"run.output_dir={folder}",
           f"model.path={folder / 'model'}", "logging.progress=false", *overrides]
    t0 = time.perf_counter()
    with open(folder / "train.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"seed {seed}: agentrl train exited {rc}; see {folder / 'train.log'}")
    summary = json.loads((folder / "summary.json").read_text())
    before = summary["before_rl"]["eval/before_rl/success"]
    after = summary["after_rl"]["eval/after_rl/success"]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["train_step"], r["rollout/success"]) for r in rows if "rollout/success" in r]
    return {"seed": seed, "before_rl": before, "after_rl": after, "improvement": after - before,
            "episodes": summary["after_rl"]["eval/after_rl/episodes"], "train_steps": summary["train_steps"],
            "sft_time_s": summary.get("sft", {}).get("time_s"), "wall_s": wall, "rollout_success": curve,
            "output_dir": str(folder)}


def spread(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "range": max(xs) - min(xs)}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        steps, ys = zip(*r["rollout_success"]) if r["rollout_success"] else ((), ())
        line = ax.plot(steps, ys, marker=".", alpha=0.8, label=f"seed {r['seed']} (rollouts)")[0]
        n = r["train_steps"]
        ax.scatter([0, n], [r["before_rl"], r["after_rl"]], color=line.get_color(), marker="D", s=40, zorder=3)
    ax.set_xlabel("train_step")
    ax.set_ylabel("success rate (fraction of episodes)")
    ax.set_title("rollout success; diamonds: held-out eval before/after RL")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    xs = range(len(results))
    bx.bar([x - 0.2 for x in xs], [r["before_rl"] for r in results], width=0.4, label="after SFT (before RL)")
    bx.bar([x + 0.2 for x in xs], [r["after_rl"] for r in results], width=0.4, label="after RL")
    bx.set_xticks(list(xs), [f"seed {r['seed']}" for r in results])
    bx.set_ylabel("held-out success rate (fraction of episodes)")
    bx.set_ylim(0, 1.02)
    bx.set_title("held-out success per seed")
    bx.grid(alpha=0.3, axis="y")
    bx.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="seeds run at once (each single-threaded)")
    ap.add_argument("--runs", default="runs/quickstart_seeds", help="folder for the runs")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("overrides", nargs="*", help="config overrides for every seed, e.g. trainer.total_steps=10")
    args = ap.parse_args(argv)
    if len(args.seeds) < 2:
        ap.error(f"need at least 2 seeds to measure a spread, got {args.seeds}")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_seed, args.config, s, ROOT / args.runs / f"seed{s}", args.overrides) for s in args.seeds]
        results = [f.result() for f in futures]
    after = spread([r["after_rl"] for r in results])
    before = spread([r["before_rl"] for r in results])
    gain = spread([r["improvement"] for r in results])
    report = {
        "benchmark": "quickstart_seeds", "config": args.config, "overrides": args.overrides, "jobs": args.jobs,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "total_wall_s": time.perf_counter() - t0, "seeds": results,
        "before_rl": before, "after_rl": after, "improvement": gain,
        "improvement_exceeds_after_rl_range": gain["mean"] > after["range"],
        "improvement_exceeds_after_rl_std": gain["mean"] > after["std"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    plot(results, args.out.with_suffix(".png"))

    print(f"{'seed':>5} {'before RL':>10} {'after RL':>9} {'gain':>7} {'episodes':>9} {'wall min':>9}")
    for r in results:
        print(f"{r['seed']:>5} {r['before_rl']:>10.3f} {r['after_rl']:>9.3f} {r['improvement']:>+7.3f} {r['episodes']:>9.0f} {r['wall_s'] / 60:>9.1f}")
    print(f"{'mean':>5} {before['mean']:>10.3f} {after['mean']:>9.3f} {gain['mean']:>+7.3f}")
    print(f"after-RL spread over seeds: range {after['range']:.3f}, std {after['std']:.3f}; "
          f"mean gain {gain['mean']:+.3f} {'>' if report['improvement_exceeds_after_rl_range'] else '<='} range")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
