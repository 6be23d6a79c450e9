"""benchmarks/async_speedup.py runs end to end at tiny size (a warm start, then sync and async
training from it) and writes its JSON. No speed is asserted: speed is what the benchmark
reports; this checks that it runs (warm start, then sync and async training from it on the
env with simulated tool latency) and that its accounting adds up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_async_speedup_quick(tmp_path):
    out, work = tmp_path / "result.json", tmp_path / "work"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "async_speedup.py"), "--quick", "--modes", "sync", "async1", "--latencies", "0.05", "--work-dir", str(work), "--out", str(out)],
        capture_output=True, text=True, timeout=380, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "async k=1" in run.stdout and "steps/min" in run.stdout
    res = json.loads(out.read_text())
    sync, asyn = res["results"]
    assert (sync["mode"], asyn["mode"]) == ("sync", "async1") and sync["speedup_train_steps"] == 1.0
    assert sync["tool_latency_s"] == asyn["tool_latency_s"] == 0.05  # the env with simulated tool latency
    for r in (sync, asyn):
        rows = [x for x in read_metrics(work / "latency0.05" / r["mode"] / "metrics.jsonl") if "loss/total" in x]
        assert r["train_steps"] == len(rows) == 3
        assert r["env_steps"] == round(sum(x["rollout/turns_mean"] * x["rollout/episodes"] for x in rows))
        assert r["rl_wall_s"] == pytest.approx(sum(x["time/step_s"] for x in rows), abs=0.01)
        # rl_wall_s is rounded to 0.01 s and the rate to 0.001 from the unrounded wall time, so the
        # rate lies between the rates at the two ends of rl_wall_s's rounding interval (a short run's
        # 0.005 s is more than 1e-3 of it: a fixed relative tolerance failed on 3.59 s)
        lo, hi = 3 / (r["rl_wall_s"] + 0.005) * 60, 3 / (r["rl_wall_s"] - 0.005) * 60
        assert lo - 0.0005 <= r["train_steps_per_min"] <= hi + 0.0005, (r["train_steps_per_min"], lo, hi)
        # before RL, every run reports the warm start's own evaluation of the same model
        before = [x for x in read_metrics(work / "latency0.05" / r["mode"] / "metrics.jsonl") if x["train_step"] == 0][0]
        assert before["eval/before_rl/success"] == res["warm_start"]["success_eval_before"]
    assert asyn["max_staleness"] == 1 and asyn["staleness_max"] <= 1 and "length_bias_turns_ratio_mean" in asyn
    assert 5 <= res["settings"]["horizon"][0] <= res["settings"]["horizon"][1]
