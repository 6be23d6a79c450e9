"""benchmarks/train_throughput.py runs end to end at tiny size (agentrl and TRL's GRPOTrainer on
the same model, prompts and batch) and writes its JSON with the same token accounting for both.
No timing is asserted: speed is what the benchmark reports, not what a test checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_train_throughput_quick(tmp_path):
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--quick", "--work-dir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=280, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "learner tokens/s" in run.stdout and "rollout tokens/s" in run.stdout
    res = json.loads(out.read_text())
    cfg = res["config"]
    prompt_tokens = sum(cfg["prompt_tokens"])
    assert len(cfg["prompt_tokens"]) == cfg["prompts"] == 2
    for name in ("agentrl", "trl"):
        s = res[name]
        assert s["timed_steps"] == cfg["steps"] * cfg["repeats"]
        # learner tokens = every prompt token G times + every sampled token, for both frameworks
        assert s["learner_tokens_per_step"] == prompt_tokens * cfg["group"] + s["rollout_tokens_per_step"]
        assert 0 < s["rollout_tokens_per_step"] <= cfg["batch"] * cfg["max_new_tokens"]
        assert s["padded_tokens_per_step"] >= s["learner_tokens_per_step"]
        for k in ("rollout_tokens_per_s_cpu", "learner_tokens_per_s_cpu", "learner_tokens_per_s_wall", "step_wall_s_mean"):
            assert math.isfinite(s[k]) and s[k] > 0, (name, k, s[k])
        steps = res["steps"][name]
        assert len(steps) == (cfg["warmup"] + cfg["steps"]) * cfg["repeats"]
    for k, v in res["ratios"].items():
        assert math.isfinite(v) and v > 0, (k, v)
    # the floor is measured on every step's trained batch, and the ratios are read against it
    assert all(r["learner_floor_cpu_s"] > 0 for r in res["steps"]["agentrl"])
    a, t, r = res["agentrl"], res["trl"], res["ratios"]
    assert r["agentrl_learner_over_floor_cpu"] == pytest.approx(a["learner_cpu_s_mean"] / a["learner_floor_cpu_mean_s"])
    assert r["max_learner_speedup_vs_trl_at_floor"] == pytest.approx(t["learner_cpu_s_mean"] / a["learner_floor_cpu_mean_s"])
    assert "learner floor" in run.stdout
    assert len(res["machine"]["loadavg_before"]) == 3 and res["versions"]["trl"]
