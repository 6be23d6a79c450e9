"""benchmarks/step_time.py runs end to end at tiny size (``--quick --no-base``: a tiny model's
SFT warm start, one warm-up and one measured train_step at horizon 4, the floors) and writes its
JSON. No timing is asserted: speed is what the benchmark reports, not what a test checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_step_time_quick(tmp_path):
    out = tmp_path / "step_time.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--quick", "--no-base", "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=280, check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "speedup_vs_base" in run.stdout and "rollout_over_floor" in run.stdout
    res = json.loads(out.read_text())
    h4 = res["h4"]
    for key in ("step_s", "rollout_s", "learner_s", "learner_floor_s", "rollout_floor_s", "learner_over_floor", "rollout_over_floor",
                "prefill_per_token", "prefill_per_token_analytic", "tokens_per_episode", "turns_per_episode", "episodes_per_step"):
        assert math.isfinite(h4[key]) and h4[key] > 0, (key, h4[key])
    assert math.isfinite(h4["other_s"])
    assert len(h4["per_step"]["step_s"]) == h4["steps"] == 1
    assert h4["step_s"] == pytest.approx(h4["rollout_s"] + h4["learner_s"] + h4["other_s"])
    assert "base" not in h4 and "speedup_vs_base" not in h4
    assert res["sides"]["new"]["imports"]["agentrl"].startswith(str(ROOT))
    assert res["environment"]["git_commit"] and len(res["environment"]["loadavg"]["h4"]["before"]) == 3
    assert h4["warm_start"]["model"] and h4["run"]["cmd"]
    # a rerun skips the measured setting (resumable)
    again = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--quick", "--no-base", "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert again.returncode == 0 and "skipped" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    assert json.loads(out.read_text())["h4"]["step_s"] == h4["step_s"]
