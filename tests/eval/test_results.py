"""Per-run and per-group quantities of agentrl.eval.results on hand-made runs whose values are
worked out by hand: entropy-performance fits pooled and per seed (and refused below the
minimum), and an entropy controller's deviation from its target."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agentrl.eval.report import _controller_rows, _fit_rows
from agentrl.eval.results import MIN_FIT_POINTS, RunResult, controller_target, fits_for, run_values
from agentrl.eval.study import RunSpec

GRPO = {"algorithm": {"controllers": []}}
ENTROPIC = {"algorithm": {"controllers": [{"name": "entropic", "target_entropy": 0.1, "kp": 1.0, "ki": 0.01, "high_prob_threshold": 0.95}]}}


def _result(method: str, seed: int, rows: list[dict], config: dict = GRPO) -> RunResult:
    spec = RunSpec(f"h10/{method}/seed{seed}", "rl", "h10", seed, method, (), config)
    values = run_values(rows, {}, {}, target=0.7, final_window=2, config=config)
    return RunResult(spec, rows, rows, values)


def _law_rows(a: float, b: float, n: int) -> list[dict]:
    """n train_steps on the exact law R = -a exp(H) + b, entropies 0.1 .. 1.0."""
    h = np.linspace(0.1, 1.0, n)
    return [{"train_step": i + 1, "policy/entropy": float(e), "rollout/success": float(-a * math.exp(e) + b)} for i, e in enumerate(h)]


def test_fits_pooled_and_per_seed_with_intervals_and_refusals():
    # seed 0 lies on a = 0.1, b = 0.9; seed 1 on a = 0.3, b = 1.1 (exact, 12 points each);
    # seed 2 has 4 points: below the minimum of 10, so its fit is refused
    runs = [_result("grpo", 0, _law_rows(0.1, 0.9, 12)), _result("grpo", 1, _law_rows(0.3, 1.1, 12)), _result("grpo", 2, _law_rows(0.2, 1.0, 4))]
    assert MIN_FIT_POINTS == 10
    fits = {(f["variant"], f["seed"]): f for f in fits_for(runs)}
    assert set(fits) == {("all", "all"), ("all", 0), ("all", 1), ("all", 2), ("grpo", "all"), ("grpo", 0), ("grpo", 1), ("grpo", 2)}
    for seed, (a, b) in ((0, (0.1, 0.9)), (1, (0.3, 1.1))):
        f = fits[("grpo", seed)]
        assert (f["a"], f["b"], f["r2"], f["n"], f["refused"]) == (pytest.approx(a, abs=1e-9), pytest.approx(b, abs=1e-9), pytest.approx(1.0), 12, "")
    refused = fits[("grpo", 2)]
    assert refused["refused"] == "4 points, fewer than the minimum of 10" and math.isnan(refused["a"]) and refused["n"] == 4
    assert fits[("grpo", "all")]["n"] == 28 and fits[("grpo", "all")]["refused"] == ""
    # the report row: pooled fit, then mean [95% t-interval] over the 2 seeds fitted:
    # a: mean 0.2, sd 0.1414, half-width 12.706 * 0.1414 / sqrt(2) = 1.2706 -> [-1.0706, 1.4706]
    row = next(r for r in _fit_rows(fits_for(runs), "h10") if r[0] == "grpo")
    assert row[4] == "28" and row[5] == "0.2000 [-1.0706, 1.4706]" and row[6] == "1.0000 [-0.2706, 2.2706]"
    assert row[7] == "1.000 [1.000, 1.000]" and row[8] == "2/3" and row[9] == "seed 2: 4 points, fewer than the minimum of 10"


def test_a_fit_without_entropy_spread_is_refused_with_its_reason():
    flat = [{"train_step": s, "policy/entropy": 0.5, "rollout/success": 0.1 * (s % 3)} for s in range(1, 13)]
    (pooled, seed0) = [f for f in fits_for([_result("grpo", 0, flat)]) if f["variant"] == "grpo"]
    assert "different entropies" in pooled["refused"] and "different entropies" in seed0["refused"] and math.isnan(pooled["r2"])


def test_entropy_controller_deviation_from_its_target():
    assert controller_target(GRPO) is None
    assert controller_target(ENTROPIC) == (0.1, "entropic/entropy")
    assert controller_target({"algorithm": {"controllers": [{"name": "skywork"}]}}) == (0.2, "skywork/measured")  # the default target
    assert controller_target({"algorithm": {"controllers": [{"name": "entropic", "target_entropy": -1.0}]}}) is None  # control off
    # last 2 steps: entropic/entropy 0.14 and 0.07 -> |0.04|, |-0.03| -> 0.035; policy/entropy 0.2, 0.1 -> 0.1, 0.0 -> 0.05
    rows = [{"train_step": 1, "policy/entropy": 0.5, "entropic/entropy": 0.5, "rollout/success": 0.5},
            {"train_step": 2, "policy/entropy": 0.2, "entropic/entropy": 0.14, "rollout/success": 0.5},
            {"train_step": 3, "policy/entropy": 0.1, "entropic/entropy": 0.07, "rollout/success": 0.5}]
    r0 = _result("entropic", 0, rows, ENTROPIC)
    assert r0.values["entropy_target"] == 0.1
    assert r0.values["target_mad"] == pytest.approx(0.035) and r0.values["target_mad_entropy"] == pytest.approx(0.05)
    plain = _result("grpo", 0, rows)
    assert all(math.isnan(plain.values[k]) for k in ("entropy_target", "target_mad", "target_mad_entropy"))
    # the report's table: only the controlled method, one seed (the value alone)
    assert _controller_rows([r0, plain], "h10") == [["entropic", "1", "0.1", "0.035", "0.050", "0.150"]]
