"""Asynchronous vs synchronous training on episodes of mixed lengths (issue 7, acceptance 4).

One tiny model (created like the quickstart's: a byte-level BPE trained on expert transcripts,
saved in HF format) is warm-started once by SFT on ShellQuest expert episodes, then trained
from that same checkpoint by ``agentrl/train.py`` in each mode, one after the other, for the
same number of train_steps, with the same config, seed and task order:

- ``sync``: ``run.mode: sync`` (the rollout of a train_step waits for its slowest episode);
- ``async k=1``, ``async k=4``: ``run.mode: async``, ``rollout.max_staleness`` 1 and 4, batches
  in finishing order with the groups due by their staleness deadline forced
  (``rollout.async_order: completion``, the default);
- ``async k=4 fifo``: the same with ``async_order: fifo`` (groups in start order: no length
  bias in the batches, the learner waits for the oldest group).

Two scenarios, each running every mode:

- ``tool latency 0``: ShellQuest as it is. On a CPU machine generation, env steps and the
  learner all share the same cores (compute-bound): nothing idles while a batch's slowest
  episode finishes, so overlapping rollout and learning has no spare capacity to use.
- ``tool latency L`` (``--latencies``, default 0.5 s): every env step also waits L seconds
  (``asyncio.sleep`` before ShellQuest's own step, an env registered by this script as
  ``agentrl/ShellQuestLatency-v0``), the way tools that run tests, compile or call services
  take wall time without using the policy's compute. This is the regime of the issue: in sync
  mode the engine idles while the last episodes of a batch wait on their tools.

Env: ShellQuest, small vocabulary, ``horizon: [5, 50]``: each task's expert takes a seeded
number of turns from 5 to 50, so episodes in one batch differ in length tenfold (a failing
policy runs until ``max_turns = h + max(4, h // 2)`` or the episode's token budget,
``--max-total-tokens`` 2048, which a 50-turn expert episode fits). ``reward: partial`` (credit
per sub-goal reached, 1.0 only when solved): the return measures progress even where a tiny
model rarely solves a long quest. Every mode gets the same ``env.num_envs`` (default 8, two
batches): a synchronous train_step can keep only one batch (4 episodes) busy, an asynchronous
one keeps every instance busy with the next batches' episodes.

The default sizes are small (2 x 2 episodes per train_step, 4 train_steps per mode) because
every turn re-reads the whole context: at 2000 tokens a batched forward of the tiny model takes
seconds on a loaded 2-core machine, and a 50-turn episode takes minutes.

Measured per mode, from the run's metrics.jsonl (RL loop wall time = the sum of
``time/step_s``: rollout wait, learner, weight sync and logging; the evaluations and
checkpoints are outside it):

- ``train_steps_per_min``; ``env_steps_per_s``: env steps of the trained episodes / RL wall
  time. Async episodes still in flight after the last train_step are discarded: in a run of a
  few train_steps that is a large share of the work (up to ``num_envs`` partial episodes), which
  a long run would train. So the same rates are also given at steady state
  (``*_steady``: train_steps 2..N, without the first batch, which every mode waits for from an
  empty pipeline);
- success and return: held-out ``eval/after_rl/success`` and ``reward_mean`` (the same fixed
  episodes for every mode; before RL once, for the warm start, its numbers shared with every
  run since they evaluate the same model on the same seeded episodes) and the training
  batches' success over the last half;
- staleness of the trained tokens (mean, max), partial rollouts, forced groups, learner wait;
- the length-bias report: per train_step, mean tokens and turns of the trained batch / those of
  all episodes finished so far (``async/length_bias/*``; 1 = no bias; sync is unbiased by
  construction), and the mean turns of all trained episodes against sync's.

Ratios are mode / sync of the same scenario (> 1: faster). The machine's load average is
stored per run: on a shared machine the runs, one after the other, do not see the same load.

    python benchmarks/async_speedup.py            # default sizes: see the JSON's wall_s (2 busy cores)
    python benchmarks/async_speedup.py --quick    # tiny sizes, a smoke run
    python benchmarks/async_speedup.py --steps 12 --modes sync async4 --model runs/quickstart/model

Writes JSON to --out (default benchmarks/results/async_speedup.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "async_speedup.json"

#: name -> (run.mode, rollout.max_staleness, rollout.async_order)
MODES: dict[str, tuple[str, int, str]] = {
    "sync": ("sync", 0, "completion"),
    "async1": ("async", 1, "completion"),
    "async4": ("async", 4, "completion"),
    "async4fifo": ("async", 4, "fifo"),
}
LABELS = {"sync": "sync", "async1": "async k=1", "async4": "async k=4", "async4fifo": "async k=4 fifo"}


LATENCY_ENV = "agentrl/ShellQuestLatency-v0"


def register_latency_env() -> None:
    """``agentrl/ShellQuestLatency-v0``: ShellQuest whose every step first waits
    ``tool_latency_s`` seconds (simulated tool wall time; same tasks, rewards and expert)."""
    import asyncio

    from agentrl.envs import register_env
    from agentrl.envs.shellquest import ShellQuestEnv

    class ShellQuestLatencyEnv(ShellQuestEnv):
        def __init__(self, *, tool_latency_s: float = 0.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.tool_latency_s = float(tool_latency_s)

        async def _astep(self, action: str) -> Any:
            await asyncio.sleep(self.tool_latency_s)
            return await super()._astep(action)

    register_env("ShellQuestLatency", ShellQuestLatencyEnv, description="ShellQuest with a fixed wait per step (benchmarks/async_speedup.py)")


def env_overrides(args: argparse.Namespace, latency_s: float) -> list[str]:
    """env.id and env.kwargs of a scenario (ShellQuest itself at latency 0)."""
    lo, hi = args.horizon
    kwargs = f"vocab: small, difficulty: 1, horizon: [{lo}, {hi}], expert_noise: 0.3, reward: partial"
    if latency_s > 0:
        return [f"env.id={LATENCY_ENV}", f"env.kwargs={{{kwargs}, tool_latency_s: {latency_s}}}"]
    return ["env.id=agentrl/ShellQuest-v0", f"env.kwargs={{{kwargs}}}"]


def base_overrides(args: argparse.Namespace, latency_s: float = 0.0) -> list[str]:
    """The settings every run shares (on top of configs/quickstart.yaml)."""
    return [
        *env_overrides(args, latency_s),
        "env.eval_kwargs=null",
        f"env.num_envs={args.num_envs}",
        f"rollout.group_size={args.group_size}", f"rollout.tasks_per_step={args.tasks_per_step}",
        f"rollout.max_total_tokens={args.max_total_tokens}",
        f"trainer.eval_episodes={args.eval_episodes}", f"trainer.micro_batch_size={args.micro_batch}",
        f"trainer.lr={args.lr}", "trainer.warmup_steps=0",
        # the decoupled objective's truncated IS weight (used in async mode only)
        f"algorithm.off_policy.behavior_is_cap={args.behavior_is_cap}",
        "logging.progress=false", "logging.tensorboard=false", "logging.log_trajectories=0",
        f"run.num_threads={args.threads}",
    ]


class SharedBeforeRL:
    """Every run starts from the same model and evaluates it on the same held-out episodes
    (fixed tasks and sampling seeds) before RL: the numbers are the same, so the first
    evaluation (the warm start's) is kept and handed to the later runs instead of repeating it
    (``agentrl.train.evaluate`` wrapped while this is active; other labels run as usual)."""

    def __init__(self) -> None:
        self.result: dict[str, float] | None = None

    def __enter__(self) -> SharedBeforeRL:
        import agentrl.train as train_mod

        self._real = real = train_mod.evaluate

        def evaluate(rollout: Any, cfg: Any, label: str) -> dict[str, float]:
            if label != "before_rl":
                return real(rollout, cfg, label)
            if self.result is None:
                self.result = real(rollout, cfg, label)
            return dict(self.result)

        train_mod.evaluate = evaluate
        return self

    def __exit__(self, *exc: Any) -> None:
        import agentrl.train as train_mod

        train_mod.evaluate = self._real


def warm_start(args: argparse.Namespace, work: Path) -> tuple[str, dict[str, Any]]:
    """Create the tiny model and SFT it (``agentrl/train.py`` with 0 train_steps); returns the
    SFT model's folder and the before-RL evaluation ({} with ``--model``: the first mode's run
    evaluates it)."""
    from agentrl.config import load_config
    from agentrl.train import train

    if args.model:
        return args.model, {}
    out = work / "warm"
    model_dir = out / "checkpoints" / "step_000000" / "model"
    if (out / "summary.json").exists() and model_dir.exists():  # a --work-dir reused
        return str(model_dir), json.loads((out / "summary.json").read_text()).get("before_rl", {})
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", overrides=[
        *base_overrides(args), f"run.output_dir={out}", f"model.path={work / 'model'}",
        f"model.init.hidden_size={args.hidden_size}", f"model.init.num_layers={args.num_layers}",
        f"model.init.num_heads={args.num_heads}", f"model.init.num_kv_heads={args.num_kv_heads}",
        f"model.init.vocab_size={args.vocab_size}", f"model.init.corpus_episodes={args.corpus_episodes}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "sft.enabled=true", f"sft.episodes={args.sft_episodes}", f"sft.steps={args.sft_steps}",
        f"sft.warmup_steps={min(50, args.sft_steps // 10)}", f"sft.batch_size={args.sft_batch}", f"sft.max_tokens={args.max_total_tokens}",
        "trainer.total_steps=0",
    ])
    summary = train(cfg)
    return str(model_dir), summary.get("before_rl", {})


def run_mode(name: str, latency_s: float, args: argparse.Namespace, work: Path, model: str) -> dict[str, Any]:
    """Train ``args.steps`` train_steps in mode ``name`` from ``model`` with ``latency_s`` per
    env step; returns its figures."""
    from agentrl.config import load_config
    from agentrl.metrics import read_metrics
    from agentrl.train import train

    mode, k, order = MODES[name]
    out = work / f"latency{latency_s:g}" / name
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", overrides=[
        *base_overrides(args, latency_s), f"run.output_dir={out}", f"run.name={name}", f"model.path={model}", "model.init=null",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "sft.enabled=false", f"trainer.total_steps={args.steps}", f"trainer.checkpoint_every={args.steps}",
        f"run.mode={mode}", f"rollout.max_staleness={k}", f"rollout.async_order={order}",
    ])
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    summary = train(cfg)
    total_s = time.perf_counter() - t0
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss/total" in r]
    rl_s = sum(r["time/step_s"] for r in rows)
    episodes = sum(r["rollout/episodes"] for r in rows)

    def steps_of(rs: list[dict[str, Any]]) -> float:
        return sum(r["rollout/turns_mean"] * r["rollout/episodes"] * (1 - r["rollout/failed_frac"]) for r in rs)

    env_steps = steps_of(rows)
    steady = rows[1:] or rows
    steady_s = sum(r["time/step_s"] for r in steady)
    half = rows[len(rows) // 2:]

    def mean(key: str, rs: list[dict[str, Any]] = rows) -> float | None:
        xs = [r[key] for r in rs if r.get(key) is not None]
        return round(statistics.fmean(xs), 4) if xs else None

    res: dict[str, Any] = {
        "tool_latency_s": latency_s, "mode": name, "run_mode": mode, "max_staleness": k, "async_order": order if mode == "async" else None,
        "train_steps": len(rows), "rl_wall_s": round(rl_s, 2), "total_wall_s": round(total_s, 2),
        "train_steps_per_min": round(len(rows) / rl_s * 60, 3),
        "env_steps": round(env_steps), "env_steps_per_s": round(env_steps / rl_s, 3),
        "episodes_per_s": round(episodes / rl_s, 4),
        "train_steps_per_min_steady": round(len(steady) / steady_s * 60, 3), "env_steps_per_s_steady": round(steps_of(steady) / steady_s, 3),
        "step_s_mean": mean("time/step_s"), "learner_s_mean": mean("time/learner_s"), "rollout_wait_s_mean": mean("time/rollout_s"),
        "success_eval_after": summary["after_rl"].get("eval/after_rl/success"),
        "return_eval_after": summary["after_rl"].get("eval/after_rl/reward_mean"),
        "success_train_last_half": mean("rollout/success", half),
        "reward_train_last_half": mean("rollout/reward_mean", half),
        "turns_trained_mean": round(env_steps / max(episodes, 1), 3),
        "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2),
    }
    if mode == "async":
        res.update({
            "staleness_mean": mean("async/staleness_mean"),
            "staleness_max": max(r["async/staleness_max"] for r in rows),
            "partial_frac_mean": mean("async/partial_frac"),
            "forced_groups_mean": mean("async/forced_groups"),
            "learner_wait_s_mean": mean("async/learner_wait_s"),
            "length_bias_tokens_ratio_mean": mean("async/length_bias/tokens_ratio"),
            "length_bias_turns_ratio_mean": mean("async/length_bias/turns_ratio"),
            "length_bias_turns_ratio_by_step": [round(r["async/length_bias/turns_ratio"], 3) for r in rows if r.get("async/length_bias/turns_ratio") is not None],
            "behavior_mismatch_mean": mean("policy/behavior_mismatch"),
        })
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="modes to run, in order (default: all)")
    p.add_argument("--latencies", nargs="+", type=float, default=None, help="seconds every env step waits, one scenario each (default 0 0.5; --quick: 0 0.05)")
    p.add_argument("--steps", type=int, default=6, help="train_steps per mode (default 6)")
    p.add_argument("--horizon", type=int, nargs=2, default=[5, 50], metavar=("LO", "HI"), help="ShellQuest horizons, per task (default 5 50)")
    p.add_argument("--group-size", type=int, default=2)
    p.add_argument("--tasks-per-step", type=int, default=2)
    p.add_argument("--num-envs", type=int, default=8, help="env instances, the same in every mode (default 8: two batches)")
    p.add_argument("--max-total-tokens", type=int, default=2048, help="episode token budget (an expert 50-turn episode: ~1980)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--behavior-is-cap", type=float, default=5.0, help="algorithm.off_policy.behavior_is_cap (async only)")
    p.add_argument("--eval-episodes", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="run.num_threads")
    p.add_argument("--model", default=None, help="an SFT'd HF model folder for this env (default: create and SFT one)")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--corpus-episodes", type=int, default=40, help="expert episodes the tokenizer is trained on")
    p.add_argument("--sft-episodes", type=int, default=60)
    p.add_argument("--sft-steps", type=int, default=100)
    p.add_argument("--sft-batch", type=int, default=4)
    p.add_argument("--work-dir", default=None, help="where the model and runs go (default: a temp dir); reusing one reuses its warm start")
    p.add_argument("--quick", action="store_true", help="tiny sizes: horizons 5-12, 3 steps, 2x2 episodes, SFT 20 steps")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.horizon, args.group_size, args.tasks_per_step, args.num_envs = 3, [5, 12], 2, 2, 4
        args.max_total_tokens, args.eval_episodes, args.micro_batch, args.max_new_tokens = 1024, 2, 4, 24
        args.hidden_size, args.num_layers, args.num_heads, args.num_kv_heads, args.vocab_size = 32, 1, 2, 1, 320
        args.corpus_episodes, args.sft_episodes, args.sft_steps, args.sft_batch = 10, 10, 20, 4
    if args.latencies is None:
        args.latencies = [0.0, 0.05] if args.quick else [0.0, 0.5]
    if args.steps < 1 or args.horizon[0] > args.horizon[1] or (args.group_size * args.tasks_per_step) % args.micro_batch:
        p.error("need --steps >= 1, LO <= HI, and --micro-batch dividing group-size x tasks-per-step")
    if any(x < 0 for x in args.latencies):
        p.error("--latencies must be >= 0 seconds")
    register_latency_env()

    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="agentrl-async-")
        work = Path(tmp.name)
    t_start = time.perf_counter()
    load_start = list(os.getloadavg())
    w0 = time.perf_counter()
    results = []
    with SharedBeforeRL() as shared:
        model, before = warm_start(args, work)
        warm_s = time.perf_counter() - w0
        print(f"warm start: {model} ({warm_s:.0f} s), held-out success before RL {before.get('eval/before_rl/success')}", flush=True)
        for latency_s in args.latencies:
            for name in args.modes:
                m0 = time.perf_counter()
                results.append(run_mode(name, latency_s, args, work, model))
                r = results[-1]
                print(f"  latency {latency_s:g} s  {LABELS[name]:<15} {time.perf_counter() - m0:6.0f} s  {r['train_steps_per_min']:.2f} train_steps/min  "
                      f"{r['env_steps_per_s']:.1f} env steps/s  (load avg {os.getloadavg()[0]:.1f})", flush=True)
    before = before or shared.result or {}
    for latency_s in args.latencies:
        scenario = [r for r in results if r["tool_latency_s"] == latency_s]
        sync = next((r for r in scenario if r["mode"] == "sync"), None)
        for r in scenario if sync is not None else []:
            r["speedup_train_steps"] = round(r["train_steps_per_min"] / sync["train_steps_per_min"], 3)
            r["speedup_env_steps"] = round(r["env_steps_per_s"] / sync["env_steps_per_s"], 3)
            r["speedup_train_steps_steady"] = round(r["train_steps_per_min_steady"] / sync["train_steps_per_min_steady"], 3)
            r["speedup_env_steps_steady"] = round(r["env_steps_per_s_steady"] / sync["env_steps_per_s_steady"], 3)
            r["turns_trained_vs_sync"] = round(r["turns_trained_mean"] / sync["turns_trained_mean"], 3) if sync["turns_trained_mean"] else None
    import torch

    from agentrl.train import environment_info

    commit = environment_info(())["git_commit"]

    doc = {
        "benchmark": "async_speedup",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_avg_start": [round(x, 2) for x in load_start], "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
        "commit": commit,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work_dir")} | {"env": "agentrl/ShellQuest-v0 (vocab small, difficulty 1)"},
        "warm_start": {"model": model if args.model else "created (see settings)", "wall_s": round(warm_s, 1),
                       "success_eval_before": before.get("eval/before_rl/success"), "return_eval_before": before.get("eval/before_rl/reward_mean"),
                       "turns_eval_before": before.get("eval/before_rl/turns_mean")},
        "results": results,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"async vs sync: ShellQuest small (+ tool latency per step), horizons {args.horizon[0]}-{args.horizon[1]}, {args.steps} train_steps, "
                        f"{args.tasks_per_step}x{args.group_size} episodes/step, {args.num_envs} envs, {os.cpu_count()} CPUs")
    for col in ("latency", "mode", "steps/min", "x sync", "steady x sync", "env steps/s", "x sync", "steady x sync", "success eval", "return eval", "staleness mean/max",
                "turns ratio", "trained turns vs sync", "forced", "load"):
        table.add_column(col, no_wrap=True)

    def f(x: Any, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    for r in results:
        a = r["run_mode"] == "async"
        table.add_row(
            f"{r['tool_latency_s']:g} s", LABELS[r["mode"]], f(r["train_steps_per_min"]), f(r.get("speedup_train_steps")), f(r.get("speedup_train_steps_steady")),
            f(r["env_steps_per_s"], ".1f"), f(r.get("speedup_env_steps")), f(r.get("speedup_env_steps_steady")), f(r["success_eval_after"]), f(r["return_eval_after"]),
            f"{r['staleness_mean']:.2f}/{r['staleness_max']:.0f}" if a else "-", f(r.get("length_bias_turns_ratio_mean")),
            f(r.get("turns_trained_vs_sync")), f(r.get("forced_groups_mean")), f"{r['load_avg_before']:.0f}-{r['load_avg_after']:.0f}",
        )
    Console(width=220).print(table)
    print(f"held-out success before RL: {f(before.get('eval/before_rl/success'))}, return {f(before.get('eval/before_rl/reward_mean'))}; wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
