"""pass@k, t-intervals, the entropy-performance fit, AUC and first crossing, against values
worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agentrl.eval.stats import (
    curve_auc,
    fit_entropy_law,
    mean_ci,
    pass_at_k,
    steps_to_target,
    t_quantile_975,
)


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 0.4),  # k = 1: c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5) = 1 - 21/252 = 0.916667
        (4, 0, 2, 0.0),  # no success: 0
        (4, 3, 2, 1.0),  # n - c = 1 < k: every k-subset holds a success
        (4, 4, 4, 1.0),
        (20, 1, 10, 0.5),  # 1 - C(19,10)/C(20,10) = 1 - 10/20
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_combinatorial_definition():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(3, 1, 4), (3, 4, 1), (3, 1, 0)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_mean_ci_hand_values():
    # [1, 2, 3]: mean 2, sample sd 1, t_{0.975,2} = 4.303 -> half width 4.303 / sqrt(3) = 2.484338
    ci = mean_ci([1.0, 2.0, 3.0])
    assert (ci.mean, ci.n) == (2.0, 3)
    assert ci.half_width == pytest.approx(4.303 / math.sqrt(3), abs=1e-12)
    # [0.5, 0.7]: mean 0.6, sd 0.141421, t_{0.975,1} = 12.706 -> half 12.706 * 0.1 = 1.2706
    ci = mean_ci([0.5, 0.7])
    assert ci.low == pytest.approx(0.6 - 1.2706) and ci.high == pytest.approx(0.6 + 1.2706)
    one = mean_ci([0.3, float("nan")])  # NaN dropped; one value has no interval
    assert one.mean == 0.3 and one.n == 1 and math.isnan(one.low)
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)


@pytest.mark.parametrize("df, table", [(1, 12.706), (2, 4.303), (10, 2.228), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)])
def test_t_quantiles(df, table):
    assert t_quantile_975(df) == pytest.approx(table, abs=1.5e-3)


def test_entropy_law_fit_recovers_known_coefficients():
    h = np.linspace(0.05, 1.5, 30)
    a, b = 0.35, 1.1
    fit = fit_entropy_law(h, -a * np.exp(h) + b)
    assert fit.a == pytest.approx(a, abs=1e-10) and fit.b == pytest.approx(b, abs=1e-10)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12) and fit.n == 30
    rng = np.random.default_rng(0)
    noisy = -a * np.exp(h) + b + rng.normal(0, 0.02, size=h.shape)
    fit = fit_entropy_law(np.concatenate([h, [np.nan]]), np.concatenate([noisy, [0.5]]))  # the NaN pair is dropped
    assert fit.n == 30 and abs(fit.a - a) < 0.03 and abs(fit.b - b) < 0.05 and 0.9 < fit.r2 < 1.0
    assert float(fit.predict(0.0)) == pytest.approx(fit.b - fit.a)


def test_entropy_law_fit_needs_varying_entropy():
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_entropy_law([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_entropy_law([0.5], [0.1])
    assert math.isnan(fit_entropy_law([0.1, 0.5], [0.3, 0.3]).r2)  # performance constant: R^2 undefined


def test_auc_and_steps_to_target():
    # trapezoid over steps 1..3 of [0, 1, 1] = 0.5 + 1.0 = 1.5, span 2 -> 0.75
    assert curve_auc([1, 2, 3], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert curve_auc([3, 1, 2], [1.0, 0.0, 1.0]) == pytest.approx(0.75)  # order does not matter
    assert curve_auc([1, 2, 4], [0.0, 0.5, 0.5]) == pytest.approx((0.25 + 1.0) / 3)  # uneven steps
    assert curve_auc([5], [0.4]) == 0.4 and math.isnan(curve_auc([], []))
    assert steps_to_target([1, 2, 3], [0.1, 0.6, 0.4], 0.5) == 2.0
    assert math.isnan(steps_to_target([1, 2], [0.1, 0.2], 0.5))
