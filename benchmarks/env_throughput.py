"""Env throughput with the expert policy: steps/s for 1 env and for N envs stepped concurrently.

    python benchmarks/env_throughput.py                       # every registered env
    python benchmarks/env_throughput.py --episodes 4 --concurrency 1 32 \\
        --envs agentrl/ShellQuest-v0 agentrl/ShellQuest-v0:vocab=small,horizon=10

For each env and each concurrency level C, C envs each play ``--episodes`` expert episodes
(C = 1: one after another); the C envs run together under one ``asyncio.gather`` over
``env.unwrapped.areset``/``astep``, which route through the async sandbox layer. Reported:

- ``steps_per_s``: all env steps / wall seconds (resets included in the wall time);
- ``sandbox_share``: sum over envs of ``info["sandbox_time_s"]`` (time inside sandbox tool
  calls) / (C x wall): the fraction of an env's life spent waiting on its sandbox;
- ``reset_share``: sum of ``reset`` times / (C x wall); ``reset_s_mean``: mean ``reset`` time
  (task generation + opening the episode's sandbox sessions, which ``sandbox_time_s`` omits);
- ``success_rate``: the expert's success (should be 1.0).

Writes JSON to ``--out`` (default benchmarks/results/env_throughput.json) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import agentrl.envs as envs
from agentrl.envs.cli import _parse_options

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "env_throughput.json"


async def _play(env: Any, episodes: int, offset: int) -> dict[str, float]:
    """``episodes`` expert episodes on one env; returns its totals."""
    core = env.unwrapped
    steps = successes = 0
    sandbox_s = reset_s = 0.0
    for k in range(episodes):
        t0 = time.perf_counter()
        obs, _ = await core.areset(seed=offset + k, options={"task_index": (offset + k) % core.num_tasks(core.split)})
        reset_s += time.perf_counter() - t0
        policy = core.expert()
        done, info = False, {}
        while not done:
            obs, _, terminated, truncated, info = await core.astep(policy(obs))
            steps += 1
            done = terminated or truncated
        successes += bool(info.get("success"))
        sandbox_s += float(info.get("sandbox_time_s", 0.0))
    return {"steps": steps, "successes": successes, "sandbox_s": sandbox_s, "reset_s": reset_s}


async def measure(env_id: str, concurrency: int, episodes: int, options: dict[str, Any]) -> dict[str, Any]:
    made = [envs.make(env_id, **options) for _ in range(concurrency)]
    try:
        await _play(made[0], 1, 10_000)  # warm-up: imports, sandbox start-up, caches
        t0 = time.perf_counter()
        parts = await asyncio.gather(*(_play(e, episodes, i * episodes) for i, e in enumerate(made)))
        wall = time.perf_counter() - t0
    finally:
        for e in made:
            e.close()
    steps = sum(p["steps"] for p in parts)
    n_episodes = concurrency * episodes
    return {
        "env": env_id,
        "options": options,
        "concurrency": concurrency,
        "episodes": n_episodes,
        "steps": steps,
        "wall_s": round(wall, 4),
        "steps_per_s": round(steps / wall, 2),
        "episodes_per_s": round(n_episodes / wall, 3),
        "sandbox_time_s": round(sum(p["sandbox_s"] for p in parts), 4),
        "sandbox_share": round(sum(p["sandbox_s"] for p in parts) / (concurrency * wall), 4),
        "reset_share": round(sum(p["reset_s"] for p in parts) / (concurrency * wall), 4),
        "reset_s_mean": round(sum(p["reset_s"] for p in parts) / n_episodes, 4),
        "success_rate": round(sum(p["successes"] for p in parts) / n_episodes, 4),
    }


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``ID`` or ``ID:key=value,key=value`` -> (id, options); values parsed as JSON if they can be."""
    env_id, _, opts = spec.partition(":")
    pairs = [kv for kv in opts.split(",") if kv]
    bad = [kv for kv in pairs if "=" not in kv]
    if bad:
        raise SystemExit(f"--envs {spec!r}: options must look like key=value, e.g. agentrl/ShellQuest-v0:vocab=small,horizon=10")
    return env_id, _parse_options(pairs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="*", metavar="ID[:key=value,...]", help="env ids with optional constructor options (default: every registered env)")
    p.add_argument("--episodes", type=int, default=3, help="expert episodes per env per concurrency level (default 3)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="numbers of envs stepped together (default 1 32)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT.relative_to(Path.cwd()) if DEFAULT_OUT.is_relative_to(Path.cwd()) else DEFAULT_OUT})")
    args = p.parse_args(argv)
    known = envs.list_envs()
    specs = [parse_spec(s) for s in args.envs] if args.envs else [(k, {}) for k in known]
    unknown = [i for i, _ in specs if i not in known]
    if unknown:
        raise SystemExit(f"unknown env ids {unknown}; registered: {', '.join(known)}")
    if args.episodes < 1 or any(c < 1 for c in args.concurrency):
        raise SystemExit("--episodes and --concurrency must be positive")

    from rich.console import Console
    from rich.table import Table

    results: list[dict[str, Any]] = []
    for env_id, options in specs:
        for c in args.concurrency:
            try:
                results.append(asyncio.run(measure(env_id, c, args.episodes, options)))
            except Exception as e:  # noqa: BLE001 - one broken env must not hide the others
                results.append({"env": env_id, "concurrency": c, "error": f"{type(e).__name__}: {e}"})
            print(json.dumps(results[-1]), file=sys.stderr)
    doc = {
        "benchmark": "env_throughput",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "policy": "expert",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")

    table = Table(title=f"env throughput (expert policy, {os.cpu_count()} CPUs)")
    for col in ("env", "options", "envs", "episodes", "steps/s", "episodes/s", "sandbox share", "reset share", "reset (s)", "success"):
        table.add_column(col, no_wrap=True)
    for r in results:
        if "error" in r:
            table.add_row(r["env"], "", str(r["concurrency"]), "", "[red]error", r["error"][:60], "", "", "", "")
            continue
        opts = ",".join(f"{k}={v}" for k, v in r["options"].items())
        table.add_row(r["env"], opts, str(r["concurrency"]), str(r["episodes"]), f"{r['steps_per_s']:.1f}", f"{r['episodes_per_s']:.2f}", f"{r['sandbox_share']:.0%}", f"{r['reset_share']:.0%}", f"{r['reset_s_mean']:.3f}", f"{r['success_rate']:.0%}")
    Console(width=160).print(table)
    print(f"wrote {args.out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
