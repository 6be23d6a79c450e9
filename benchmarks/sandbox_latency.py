"""Sandbox latency: cold stateless runs, warm session execs and 16 concurrent runs per backend,
next to the floor measured in the same run (bare ``python3 -I -S -c pass``, no isolation); and
the neighbour slowdown: how much a CPU hog in one sandbox slows its neighbours.

    python benchmarks/sandbox_latency.py                       # every backend that works here
    python benchmarks/sandbox_latency.py --backend bwrap --n 200 --out /tmp/lat.json
    python benchmarks/sandbox_latency.py --backend bwrap --measure neighbour --repeats 9

Floor and cold samples are interleaved (one floor, one cold run, ...) so both see the same
machine load. Writes JSON (``--out``, default ``benchmarks/results/sandbox_latency.json``) and
prints a table with p50/p99 in milliseconds and the issue's targets, hit or miss:
bwrap cold p50 within 15 ms of the floor, session exec p50 under 2 ms, docker warm exec p50
under 60 ms.

Neighbour slowdown (``--measure neighbour``): a spinner (``while True: pass``, 2 s timeout, the
default 1-core quota) runs in one sandbox; meanwhile three neighbours are timed, each against
the same measure taken just before the spinner started (same repeat, same machine load):

- ``sandboxed``: a benign stateless run in another sandbox (the adversarial suite's
  ``print(sum(range(200000)))``, median of 5 runs);
- ``trainer``: the trainer process itself: one busy process per CPU on the host (a fixed
  pure-Python loop each, as a trainer's threads would be), time until all finish;
- ``sandboxed_busy_trainer``: the benign run again while the trainer is busy on every CPU,
  the case where sandboxes compete with each other for the share the trainer leaves them.

Each repeat gives one ratio per neighbour (beside the hog / alone); the JSON keeps every repeat
and the printed table shows the ratio p50 and max with the load average when they were taken
(the goal: under 1.5x). On a machine shared with other jobs, run it when ``uptime`` is low.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agentrl.sandboxes import (
    BackendUnavailableError,
    Limits,
    available_backends,
    get_sandbox,
    run_sync,
)
from agentrl.sandboxes.metrics import percentile

FLOOR_CMD = ["/usr/bin/python3", "-I", "-S", "-c", "pass"]
CONCURRENCY = 16
NEIGHBOUR_BENIGN = "print(sum(range(200000)))"  # the adversarial suite's benign neighbour
SPINNER = "while True:\n    pass\n"
SPIN_S = 2.0
# One trainer thread's share of work (a pure-Python loop, ~0.2 s on an idle 2-vCPU machine):
# prints how long the loop took, without the interpreter's start-up.
TRAINER_LOOP = (
    "import time\nt = time.perf_counter()\nn = 0\nfor i in range(@N@):\n    n += i\n"
    "print(time.perf_counter() - t)\n"
)
TRAINER_ITERS = 2_000_000
NEIGHBOUR_GOAL = 1.5


def stats(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else 0.0,
        "min_ms": round(min(ms), 3) if ms else 0.0,
    }


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def floor_once() -> float:
    t0 = time.perf_counter()
    subprocess.run(FLOOR_CMD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


async def open_backend(name: str) -> Any:
    """A started sandbox of backend ``name``, or ``{"available": False, "reason": ...}``."""
    try:
        sandbox = get_sandbox(name, limits=Limits(timeout_s=30))
    except BackendUnavailableError as e:
        return {"available": False, "reason": str(e)}
    start = getattr(sandbox, "start", None)
    if callable(start):
        await start()
    return sandbox


async def bench_backend(name: str, n: int, rounds: int) -> dict:
    sandbox = await open_backend(name)
    if isinstance(sandbox, dict):
        return sandbox
    out: dict = {"available": True}
    try:
        health = await sandbox.health()
        out["mode"] = health.get("mode")
        for _ in range(5):  # warm-up: page cache, first cgroup, pool
            await sandbox.run("pass")
            floor_once()
        floor, cold = [], []
        floor_cpu = run_cpu = sandbox_cpu = 0.0
        for _ in range(n):
            c0 = _cpu(resource.RUSAGE_CHILDREN)
            floor.append(await asyncio.get_running_loop().run_in_executor(None, floor_once))
            floor_cpu += _cpu(resource.RUSAGE_CHILDREN) - c0
            s0 = _cpu(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            r = await sandbox.run("pass")
            cold.append(time.perf_counter() - t0)
            run_cpu += _cpu(resource.RUSAGE_SELF) - s0
            sandbox_cpu += r.cpu_time_s
            if not r.ok:
                raise RuntimeError(f"{name}: 'pass' did not run: {r.status} {r.detail} {r.stderr[-300:]}")
        out["floor"] = stats(floor)
        out["cold_run"] = stats(cold)
        # CPU cost per call, less sensitive to machine load than wall time: the floor's process
        # vs the supervisor's own CPU plus the sandbox's (cgroup cpuacct where the backend
        # has it; a container engine's work is not visible here).
        out["cpu_ms_per_call"] = {
            "floor_process": round(floor_cpu / n * 1000, 3),
            "supervisor": round(run_cpu / n * 1000, 3),
            "sandbox_reported": round(sandbox_cpu / n * 1000, 3),
        }

        session = await sandbox.session("python")
        try:
            for _ in range(10):
                await session.exec("x = 1")
            warm = []
            for i in range(n * 4):
                t0 = time.perf_counter()
                r = await session.exec("x += 1")
                warm.append(time.perf_counter() - t0)
                if not r.ok:
                    raise RuntimeError(f"{name}: session exec failed: {r.status} {r.detail}")
            out["session_exec"] = stats(warm)
        finally:
            await session.close()

        per_call, batch = [], []
        for _ in range(rounds):
            async def one() -> float:
                t0 = time.perf_counter()
                r = await sandbox.run("pass")
                if not r.ok:
                    raise RuntimeError(f"{name}: concurrent run failed: {r.status} {r.detail}")
                return time.perf_counter() - t0

            t0 = time.perf_counter()
            per_call += await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
            batch.append(time.perf_counter() - t0)
        out[f"concurrent_{CONCURRENCY}"] = {
            **stats(per_call),
            "batch_p50_ms": round(percentile([b * 1000 for b in batch], 50), 3),
            "runs_per_s": round(CONCURRENCY * len(batch) / sum(batch), 1),
        }
        out["metrics"] = sandbox.metrics()
    finally:
        await sandbox.close()
    out["targets"] = targets(name, out)
    return out


async def _trainer_once(iters: int = TRAINER_ITERS) -> float:
    """Seconds until one busy host process per CPU has run its share of the loop (the max)."""
    code = TRAINER_LOOP.replace("@N@", str(iters))
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-I", "-S", "-c", code,
                                                  stdout=subprocess.PIPE) for _ in range(os.cpu_count() or 1)]
    outs = [await p.communicate() for p in procs]
    return max(float(out) for out, _ in outs)


async def _benign(sandbox, k: int = 5) -> float:
    """Median wall time (caller's view) of ``k`` benign stateless runs, one after another."""
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        r = await sandbox.run(NEIGHBOUR_BENIGN)
        times.append(time.perf_counter() - t0)
        if not (r.ok and r.stdout.strip() == str(sum(range(200000)))):
            raise RuntimeError(f"benign neighbour failed: {r.status} {r.detail} {r.stderr[-300:]}")
    return sorted(times)[len(times) // 2]


async def _beside_spinner(sandbox, measure, settle_s: float = 0.5) -> tuple[float, dict]:
    """``measure()`` while a spinner runs in another sandbox; (its value, {whether the spinner
    was still running when the measure ended, whether the backend demoted it, its CPU s})."""
    spin = asyncio.ensure_future(sandbox.run(SPINNER, limits=sandbox.limits.replace(timeout_s=SPIN_S)))
    await asyncio.sleep(settle_s)
    value = await measure()
    alive = not spin.done()
    r = await spin
    if r.status.value != "timeout":
        raise RuntimeError(f"the spinner ended {r.status} ({r.detail}), not at its timeout")
    return value, {"spinner_alive": alive, "spinner_demoted": r.extra.get("cpu_demoted"),
                   "spinner_cpu_s": round(r.cpu_time_s, 3)}


def _ratios(rows: list[dict], key: str) -> dict:
    ratios = sorted(row[key]["ratio"] for row in rows)
    return {
        "ratio_p50": round(percentile(ratios, 50), 3),
        "ratio_max": round(ratios[-1], 3),
        "alone_p50_ms": round(percentile([row[key]["alone_ms"] for row in rows], 50), 2),
        "beside_p50_ms": round(percentile([row[key]["beside_ms"] for row in rows], 50), 2),
        "hit": ratios[-1] < NEIGHBOUR_GOAL,
    }


async def bench_neighbour(name: str, repeats: int) -> dict:
    """How much a CPU spinner in one sandbox slows a sandboxed neighbour and the trainer (the
    module docstring); ``repeats`` rounds, each with its own alone/beside pair."""
    sandbox = await open_backend(name)
    if isinstance(sandbox, dict):
        return sandbox
    out: dict = {"available": True, "spin_s": SPIN_S, "cpus_quota": sandbox.limits.cpus,
                 "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    rows = []
    try:
        health = await sandbox.health()
        out["mode"], out["cpu_shares"] = health.get("mode"), health.get("cpu_shares")
        for _ in range(3):
            await sandbox.run("pass")
        for _ in range(repeats):
            row: dict = {"loadavg_1m": round(os.getloadavg()[0], 2)}
            alone = await _benign(sandbox)
            beside, spin = await _beside_spinner(sandbox, lambda: _benign(sandbox))
            row["sandboxed"] = {"alone_ms": alone * 1000, "beside_ms": beside * 1000, "ratio": beside / alone, **spin}
            alone = await _trainer_once()
            beside, spin = await _beside_spinner(sandbox, _trainer_once)
            row["trainer"] = {"alone_ms": alone * 1000, "beside_ms": beside * 1000, "ratio": beside / alone, **spin}
            busy = [subprocess.Popen([sys.executable, "-I", "-S", "-c", SPINNER]) for _ in range(os.cpu_count() or 1)]
            try:
                await asyncio.sleep(0.3)
                alone = await _benign(sandbox)
                beside, spin = await _beside_spinner(sandbox, lambda: _benign(sandbox))
            finally:
                for p in busy:
                    p.kill()
                    p.wait()
            row["sandboxed_busy_trainer"] = {"alone_ms": alone * 1000, "beside_ms": beside * 1000,
                                             "ratio": beside / alone, **spin}
            rows.append(row)
        out["metrics"] = sandbox.metrics()
    finally:
        await sandbox.close()
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["repeats"] = rows
    out["summary"] = {key: _ratios(rows, key) for key in ("sandboxed", "trainer", "sandboxed_busy_trainer")}
    out["spinner_alive_throughout"] = all(row[k]["spinner_alive"] for row in rows for k in out["summary"])
    return out


def targets(name: str, r: dict) -> dict:
    t = {}
    if name == "bwrap":
        gap = r["cold_run"]["p50_ms"] - r["floor"]["p50_ms"]
        t["cold_p50_within_15ms_of_floor"] = {"value_ms": round(gap, 3), "hit": gap <= 15.0}
    if name == "docker":
        t["warm_exec_p50_under_60ms"] = {"value_ms": r["cold_run"]["p50_ms"], "hit": r["cold_run"]["p50_ms"] < 60.0}
    t["session_exec_p50_under_2ms"] = {"value_ms": r["session_exec"]["p50_ms"], "hit": r["session_exec"]["p50_ms"] < 2.0}
    return t


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    if report.get("backends"):
        print_latency(console, report)
    if report.get("neighbour"):
        print_neighbour(console, report)


_NEIGHBOURS = {
    "sandboxed": "benign run in another sandbox",
    "trainer": "trainer: 1 busy process per CPU",
    "sandboxed_busy_trainer": "benign sandbox run, trainer busy",
}


def print_neighbour(console, report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"neighbour slowdown beside a {SPIN_S:g} s CPU spinner in another sandbox "
                        f"(goal: under {NEIGHBOUR_GOAL}x)")
    for col in ("backend", "neighbour", "alone p50 ms", "beside p50 ms", "ratio p50", "ratio max", "repeats",
                "load avg (start, end)", "goal"):
        table.add_column(col)
    for name, r in report["neighbour"].items():
        if not r.get("available"):
            table.add_row(name, "unavailable", "", "", "", "", "", "", r.get("reason", "")[:60])
            continue
        for key, label in _NEIGHBOURS.items():
            sm = r["summary"][key]
            table.add_row(name, label, f"{sm['alone_p50_ms']:.1f}", f"{sm['beside_p50_ms']:.1f}",
                          f"{sm['ratio_p50']:.2f}x", f"{sm['ratio_max']:.2f}x", str(len(r["repeats"])),
                          f"{r['loadavg_start'][0]}, {r['loadavg_end'][0]}",
                          "[green]hit[/]" if sm["hit"] else "[red]miss[/]")
    console.print(table)


def print_latency(console, report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"sandbox latency (ms) on {report['machine']['cpus']} CPUs, load {report['machine']['loadavg_start']}")
    for col in ("backend", "measure", "p50", "p99", "mean", "n", "note"):
        table.add_column(col)
    for name, r in report["backends"].items():
        if not r.get("available"):
            table.add_row(name, "unavailable", "", "", "", "", r.get("reason", "")[:80])
            continue
        conc = f"concurrent_{CONCURRENCY}"
        for key, label in (("floor", "floor: bare python3 -I -S"), ("cold_run", "cold stateless run"),
                           ("session_exec", "warm session exec"), (conc, f"{CONCURRENCY} concurrent runs (per call)")):
            s = r[key]
            note = f"{r[conc]['runs_per_s']} runs/s" if key == conc else ""
            table.add_row(name, label, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['mean_ms']:.2f}", str(s["n"]), note)
        cpu = r["cpu_ms_per_call"]
        table.add_row(name, "CPU ms per call: floor / supervisor + sandbox", f"{cpu['floor_process']:.2f}",
                      "", f"{cpu['supervisor'] + cpu['sandbox_reported']:.2f}", "",
                      f"supervisor {cpu['supervisor']:.2f} + sandbox {cpu['sandbox_reported']:.2f}")
        for tname, tv in r["targets"].items():
            table.add_row(name, f"target {tname}", f"{tv['value_ms']:.2f}", "", "", "",
                          "[green]hit[/]" if tv["hit"] else "[red]miss[/]")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default=None, help=f"comma-separated, from {available_backends()} (default: all that work here)")
    p.add_argument("--measure", default="latency,neighbour",
                   help="comma-separated: latency, neighbour (default both); a section not measured "
                        "is kept from the existing --out file")
    p.add_argument("--n", type=int, default=100, help="samples for cold runs and the floor (session: 4x)")
    p.add_argument("--rounds", type=int, default=8, help=f"rounds of {CONCURRENCY} concurrent runs")
    p.add_argument("--repeats", type=int, default=7, help="neighbour-slowdown repeats")
    p.add_argument("--out", default="benchmarks/results/sandbox_latency.json")
    args = p.parse_args(argv)
    names = args.backend.split(",") if args.backend else available_backends()
    unknown = sorted(set(names) - set(available_backends()))
    if unknown:
        p.error(f"unknown backend(s) {unknown}; known: {available_backends()}")
    measures = [m.strip() for m in args.measure.split(",") if m.strip()]
    if not measures or set(measures) - {"latency", "neighbour"}:
        p.error(f"--measure takes latency and/or neighbour, got {args.measure!r}")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    machine = {
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python_floor": " ".join(FLOOR_CMD),
    }
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    report = {k: v for k, v in previous.items() if k in ("machine", "started", "backends", "neighbour")}
    if "latency" in measures:
        report.update(machine=machine, started=started, backends={})
        for name in names:
            report["backends"][name] = run_sync(bench_backend(name, args.n, args.rounds))
        report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if "neighbour" in measures:
        report["neighbour"] = {}
        for name in names:
            report["neighbour"][name] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "kernel": platform.release(),
                                         "cpus": os.cpu_count(), **run_sync(bench_neighbour(name, args.repeats))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
