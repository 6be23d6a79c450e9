"""Small statistics for evaluation reports: pass@k, t-intervals across seeds, the
entropy-performance fit, area under a curve, first crossing of a target. numpy only.

Every function documents its formula; tests check them against values worked out by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["EntropyLawFit", "MeanCI", "curve_auc", "fit_entropy_law", "mean_ci", "pass_at_k", "steps_to_target", "t_quantile_975"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021 ("Evaluating Large Language Models Trained on
    Code", eq. 1): ``1 - C(n - c, k) / C(n, k)`` for one task with ``n`` samples of which
    ``c`` succeeded. Computed as the numerically stable product
    ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)`` from the paper's reference code.
    Raises ValueError unless ``0 <= c <= n`` and ``1 <= k <= n``."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}; sample at least k episodes per task (--samples)")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (standard tables).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """``t_{0.975, df}``: from the table for df <= 30, beyond it the Cornish-Fisher expansion
    ``z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2)`` (error < 1e-3 for df > 30)."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 2 values (df >= 1), got df={df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values and its 95% t-interval ``[low, high]`` (NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_ci(values: Sequence[float]) -> MeanCI:
    """``mean +- t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (ddof 1). NaN values are dropped first; no values gives all-NaN with n = 0."""
    xs = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(xs)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(xs.mean())
    if n < 2:
        return MeanCI(mean, math.nan, math.nan, 1)
    half = t_quantile_975(n - 1) * float(xs.std(ddof=1)) / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class EntropyLawFit:
    """``R = -a * exp(H) + b`` fitted by least squares; ``r2`` is the coefficient of
    determination ``1 - SS_res / SS_tot`` of the fit on its own points (NaN when the
    performances do not vary); ``n`` points."""

    a: float
    b: float
    r2: float
    n: int

    def predict(self, entropy: np.ndarray | float) -> np.ndarray | float:
        return -self.a * np.exp(entropy) + self.b


def fit_entropy_law(entropy: Sequence[float], performance: Sequence[float]) -> EntropyLawFit:
    """Fit the entropy-performance law of Cui et al. 2025 (arXiv 2505.22617),
    ``R = -a * exp(H) + b``. With ``x = exp(H)`` the model is linear in (a, b), so ordinary
    least squares solves it exactly: ``[-x, 1] @ [a, b] = R`` (no iterative fitting).
    Pairs with a NaN are dropped. Raises ValueError with fewer than 2 points or when every
    entropy is the same (the slope is then undetermined)."""
    h = np.asarray(entropy, dtype=float)
    r = np.asarray(performance, dtype=float)
    keep = np.isfinite(h) & np.isfinite(r)
    h, r = h[keep], r[keep]
    if len(h) < 2 or np.ptp(h) == 0:
        raise ValueError(f"the entropy-performance fit needs at least 2 points with different entropies, got {len(h)} point(s)")
    x = np.exp(h)
    design = np.stack([-x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    residual = r - (-a * x + b)
    ss_tot = float(((r - r.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return EntropyLawFit(float(a), float(b), r2, len(h))


def curve_auc(steps: Sequence[float], values: Sequence[float]) -> float:
    """Normalised area under a curve over train_steps: the trapezoid integral divided by
    the step span, ``trapz(values, steps) / (steps[-1] - steps[0])``, i.e. the time-average
    of the curve, on the curve's own scale (a success curve gives a number in [0, 1]).
    One point gives its value; none gives NaN. Points with a NaN value are dropped."""
    pts = sorted((float(s), float(v)) for s, v in zip(steps, values) if v is not None and not math.isnan(v))
    if not pts:
        return math.nan
    if len(pts) == 1 or pts[-1][0] == pts[0][0]:
        return float(np.mean([v for _, v in pts]))
    s = np.array([p[0] for p in pts])
    v = np.array([p[1] for p in pts])
    area = float(((v[1:] + v[:-1]) / 2 * np.diff(s)).sum())
    return area / float(s[-1] - s[0])


def steps_to_target(steps: Sequence[float], values: Sequence[float], target: float) -> float:
    """The first train_step whose value is >= ``target`` (NaN when never reached)."""
    for s, v in sorted(zip(steps, values)):
        if v is not None and not math.isnan(v) and v >= target:
            return float(s)
    return math.nan


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average: entry t is the mean of the non-NaN values among
    ``values[max(0, t - window + 1) : t + 1]`` (the first ``window - 1`` entries average what
    there is; NaN where all are NaN). ``window >= 1``, else ValueError. The report's curves and
    the pilot's settled-step rule both use it."""
    if window < 1:
        raise ValueError(f"moving_average: window counts entries and must be >= 1, got {window}")
    v = [float(x) for x in values]
    out = []
    for t in range(len(v)):
        part = [y for y in v[max(0, t - window + 1): t + 1] if not math.isnan(y)]
        out.append(sum(part) / len(part) if part else math.nan)
    return out


def settled_step(steps: Sequence[float], values: Sequence[float], tol: float = 0.1) -> float:
    """The first train_step from which a curve stays near where it ends: the smallest
    ``steps[i]`` with ``|values[t] - values[-1]| <= tol * (max(values) - min(values))`` for every
    ``t >= i`` (the pilot rule of configs/studies/long_horizon_entropy.yaml, applied to a
    smoothed curve). A flat curve settles at its first step. Raises ValueError for an empty
    curve, NaN values or steps and values of different lengths."""
    if len(steps) != len(values) or not len(steps):
        raise ValueError(f"settled_step needs equally long, non-empty steps and values, got {len(steps)} and {len(values)}")
    pts = sorted((float(s), float(v)) for s, v in zip(steps, values))
    if any(math.isnan(v) for _, v in pts):
        raise ValueError("settled_step: the curve has NaN values; drop or fill them first")
    v = np.array([p[1] for p in pts])
    band = tol * float(v.max() - v.min())
    inside = np.abs(v - v[-1]) <= band
    first = len(v) - 1
    while first > 0 and inside[first - 1]:
        first -= 1
    return pts[first][0]
