"""Long ScienceWorld episodes under a turn-level context policy (docs/long_horizons.md).

Two parts, on ScienceWorld task types whose gold paths run past 100 turns (``"easy"``
simplification, ScienceWorld's train variations):

1. **The expert through the window.** Each task's gold path is played twice: once as one
   growing sequence (``full``: the whole history's tokens are counted, with no cap, to show
   what a 2k-token context would have to hold) and once under ``window`` (last ``--window``
   turns) with a per-turn cap of ``--cap`` tokens, tokenized exactly as RL and SFT tokenize
   it. The window must not make the task impossible: the expert's return (native score / 100)
   must be the same in both.
2. **The tiny model through the window.** An untrained tiny model (``agentrl model init``,
   tokenizer trained on ScienceWorld expert transcripts) plays ``--model-episodes`` episodes
   with ``max_turns`` ``--model-turns`` under the same window and cap, through ``agentrl eval``;
   it is not expected to succeed, only to run every turn within the cap.

Run (about 10-20 minutes on 2 cores, most of it the JVM starts and the model's decoding)::

    python benchmarks/long_episodes.py            # writes benchmarks/results/long_episodes.json

Prints a table per part. Tokens are the tiny tokenizer's (1024 BPE entries trained on the
env's own transcripts); a real model's tokenizer splits English into fewer tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "agentrl/ScienceWorld-v0"
LONG_TASKS = ("mendelian-genetics-known-plant", "inclined-plane-friction-unnamed-surfaces", "boil")


def _expert_part(chat: Any, *, tasks: tuple[str, ...], per_task: int, window: int, cap: int) -> list[dict[str, Any]]:
    from agentrl.rollout.context import make_context_policy
    from agentrl.rollout.expert import play_experts

    env_kwargs = {"task_names": list(tasks), "variations_per_task": per_task, "max_turns": 400}
    n = len(tasks) * per_task
    kw = dict(episodes=n, env_kwargs=env_kwargs, split="train", seed=0, concurrency=1)
    t0 = time.perf_counter()
    full = play_experts(ENV_ID, chat, **kw, max_total_tokens=10**9)
    windowed = play_experts(ENV_ID, chat, **kw, context=make_context_policy("window", window=window), max_total_tokens=cap)
    print(f"expert episodes played in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if full.failures or windowed.failures:
        raise RuntimeError(f"expert episodes failed: full {full.failures}, window {windowed.failures}")
    rows = []
    for f, w in zip(full.trajectories, windowed.trajectories):
        assert f.task_id == w.task_id, (f.task_id, w.task_id)
        prompts = []  # per turn sample: its prompt tokens (the leading tokens without loss)
        start = 0
        for length in w.segments:
            mask = w.loss_mask[start : start + length]
            prompts.append(mask.index(True) if True in mask else length)
            start += length
        rows.append({
            "task_id": f.task_id, "turns": f.num_turns, "turns_window": w.num_turns,
            "return_full": round(f.reward, 4), "return_window": round(w.reward, 4),
            "success_full": f.success, "success_window": w.success, "truncated_window": w.truncated,
            "full_history_tokens": len(f.input_ids), "window_samples": len(w.segments),
            "window_sample_tokens_max": max(w.segments), "window_prompt_tokens_mean": round(statistics.fmean(prompts), 1),
            "window_prompt_tokens_max": max(prompts),
        })
    return rows


def _model_part(model_dir: Path, *, tasks: tuple[str, ...], episodes: int, turns: int, window: int, cap: int,
                max_new_tokens: int, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "agentrl.cli", "eval", "--policy", str(model_dir), "--env", ENV_ID,
           "--env-option", f"task_names={','.join(tasks)}", "--env-option", f"max_turns={turns}",
           "--context", "window", "--context-window", str(window), "--max-total-tokens", str(cap),
           "--max-new-tokens", str(max_new_tokens), "--episodes", str(episodes), "--samples", "1",
           "--num-envs", str(episodes), "--split", "train", "--json", str(out), "--save-episodes", str(episodes),
           "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    result = json.loads(out.read_text())
    episodes_file = out.with_name(out.stem + "_episodes") / "samples.jsonl"
    per_episode = [json.loads(line) for line in episodes_file.read_text().splitlines() if line.strip()]
    return {"eval": result, "wall_s": round(wall, 1), "episodes": [
        {"task_id": e["task_id"], "turns": sum(m["role"] == "assistant" for m in e["messages"]), "reward": e["reward"],
         "success": e["success"]} for e in per_episode]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "long_episodes.json"))
    ap.add_argument("--tasks", default=",".join(LONG_TASKS), help="ScienceWorld task types (comma-separated)")
    ap.add_argument("--per-task", type=int, default=2, help="train variations per task type for the expert part")
    ap.add_argument("--window", type=int, default=4, help="turns each prompt shows")
    ap.add_argument("--cap", type=int, default=2048, help="tokens per turn sample (prompt + generated)")
    ap.add_argument("--model-episodes", type=int, default=2)
    ap.add_argument("--model-turns", type=int, default=120)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--model-dir", default=None, help="tiny model folder (default: made here with agentrl model init)")
    args = ap.parse_args(argv)
    tasks = tuple(t for t in args.tasks.split(",") if t)

    from agentrl.learner.policy import load_tokenizer
    from agentrl.models.chat import ChatFormat

    work = Path(tempfile.mkdtemp(prefix="long_episodes_"))
    model_dir = Path(args.model_dir) if args.model_dir else work / "tiny"
    if not args.model_dir:
        subprocess.run([sys.executable, "-m", "agentrl.cli", "model", "init", "--out", str(model_dir), "--env", ENV_ID,
                        "--env-kwargs", json.dumps({"task_names": list(tasks), "variations_per_task": 2}),
                        "--episodes", "12", "--initializer-range", "0.1"], check=True, cwd=ROOT)
    chat = ChatFormat(load_tokenizer(str(model_dir)))
    expert = _expert_part(chat, tasks=tasks, per_task=args.per_task, window=args.window, cap=args.cap)
    model = _model_part(model_dir, tasks=tasks, episodes=args.model_episodes, turns=args.model_turns, window=args.window,
                        cap=args.cap, max_new_tokens=args.max_new_tokens, out=work / "eval.json")
    load = os.getloadavg()
    report = {"settings": {"env": ENV_ID, "tasks": list(tasks), "window": args.window, "cap": args.cap,
                           "model_turns": args.model_turns, "max_new_tokens": args.max_new_tokens,
                           "load_average": [round(x, 2) for x in load], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
              "expert": expert, "model": model}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))

    print(f"\nexpert, window {args.window}, cap {args.cap} tokens per turn sample:")
    print(f"{'task':58s} {'turns':>5s} {'return full':>11s} {'return window':>13s} {'full history tok':>16s} {'max sample tok':>14s}")
    for r in expert:
        print(f"{r['task_id']:58s} {r['turns']:5d} {r['return_full']:11.2f} {r['return_window']:13.2f} "
              f"{r['full_history_tokens']:16d} {r['window_sample_tokens_max']:14d}")
    ev = model["eval"]
    print(f"\ntiny model, window {args.window}, cap {args.cap}, max_turns {args.model_turns} ({model['wall_s']} s):")
    for e in model["episodes"]:
        print(f"  {e['task_id']}: {e['turns']} turns, return {e['reward']:.2f}, success {e['success']}")
    m = ev["envs"][ENV_ID]
    print(f"  turns per episode {m['turns_mean']:.0f} (max {m['turns_max']:.0f}); turn samples {m['samples']:.0f}; prompt tokens "
          f"per turn mean {m['context_tokens_mean']:.0f}, max {m['context_tokens_max']:.0f}; turns dropped to fit the cap "
          f"{m['context_dropped_turns']:.0f}; whole episode {m['total_tokens_mean']:.0f} tokens")
    print(f"\nwrote {args.out} (load average {load[0]:.1f})")


if __name__ == "__main__":
    main()
