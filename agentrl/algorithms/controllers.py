"""Stateful controllers: adjust the loss from measured statistics, survive checkpoints.

A controller is an object with a small, explicit interface (all methods optional to override):

* ``micro_batch(view: LossView) -> ControllerOutput`` -- called once per micro-batch, in
  training order, *before* the policy loss: may return ``loss_kwargs`` (options overriding the
  policy loss's, e.g. BAPO's clip bounds), an ``extra_loss`` scalar added to the loss, and
  metrics. May update state with tensor ops (no host sync).
* ``end_train_step(stats: StepStats) -> ControllerOutput`` -- called once after the optimizer
  step with the step's measurements; updates state and may request a reference reset.
* ``state_dict()`` / ``load_state_dict(state)`` -- tensors and plain numbers only.
* ``mini_batch_stats(view) -> dict[str, Tensor]`` and ``begin_mini_batch(stats)`` -- for a
  controller that normalises or measures over the whole mini-batch: per-call sums (0-dim
  tensors, keys prefixed with the controller's name), which the composition layer adds up over
  the mini-batch's micro-batches and the data-parallel ranks and hands to ``begin_mini_batch``
  once, before the mini-batch's first ``micro_batch`` call. Called without that (one
  ``Algorithm.loss`` call on its own), each call is its own mini-batch.
* ``check_config(config)`` (classmethod) -- cross-field checks against the whole
  ``AlgorithmConfig`` at load time; raise ValueError with the fix.

A controller describes itself, so the learner never needs its name: ``requires`` names the
optional tensors it needs (``"entropy"`` current-policy entropy in the micro-batch,
``"ref_logprobs"``, ``"rollout_logprobs"`` the proximal logprobs of the whole rollout batch);
``needs_entropy_grad`` asks for that entropy with gradient; ``split_invariant`` says its effect
depends only on per-token values and mini-batch-wide sums (so rows may be regrouped between
micro-batches); ``compatible_losses`` limits the losses it works with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .ops import clamped_log_ratio, first_true_index, masked_mean, masked_sum, reduce_sums
from .registry import CONTROLLERS

__all__ = ["BAPO_MAX_GRID", "LossView", "StepStats", "ControllerOutput", "Controller", "BAPOController", "EntroPICController",
           "SkyworkEntropyController", "ProRLController"]

AllReduce = Callable[[Tensor], Tensor]


@dataclass
class LossView:
    """What a controller sees of one micro-batch. Tensors ``[B, T]``; ``entropy`` is the current
    policy's (with gradient) or None; ``aggregate(per_token, loss_mask)`` is the loss's
    aggregation; ``micro_batch_fraction`` = sequences in this micro-batch / sequences in the
    mini-batch; ``all_reduce`` sums a tensor across data-parallel ranks (identity when single)."""

    logprobs: Tensor
    proximal_logprobs: Tensor
    advantages: Tensor
    loss_mask: Tensor
    aggregate: Callable[[Tensor, Tensor], Tensor]
    entropy: Tensor | None = None
    micro_batch_fraction: float | Tensor = 1.0
    all_reduce: AllReduce | None = None

    def reduce(self, t: Tensor) -> Tensor:
        return t if self.all_reduce is None else self.all_reduce(t)


@dataclass
class StepStats:
    """Measurements of one train_step (0-dim tensors or None), built by the Algorithm.

    ``rollout_nll``: ``-mean(proximal_logprobs)`` over the rollout batch's policy tokens (the
    pre-update NLL of the sampled tokens, Skywork-OR1's measure); ``rollout_entropy``: mean
    proximal-policy entropy of the rollout batch; ``entropy``: mean current-policy entropy over
    the step's micro-batches; ``kl_ref``: mean per-token KL to the reference over the step.
    """

    step: int = 0
    rollout_nll: Tensor | None = None
    rollout_entropy: Tensor | None = None
    entropy: Tensor | None = None
    kl_ref: Tensor | None = None


@dataclass
class ControllerOutput:
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    extra_loss: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)
    reset_reference: bool | Tensor = False


class Controller:
    """Base class: no-op hooks, empty state."""

    name = ""
    requires: frozenset[str] = frozenset()
    compatible_losses: tuple[str, ...] | None = None  # None: any loss
    needs_entropy_grad = False
    split_invariant = False  # unknown (plugin) controllers count as batch-dependent
    target_metric: str | None = None
    """For a controller that holds a measured entropy at its ``target_entropy`` option: the
    metric key of that measurement (the compare report's target deviation reads it)."""

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Cross-field checks against the whole ``AlgorithmConfig``; ValueError with the fix."""

    def mini_batch_stats(self, view: LossView) -> dict[str, Tensor]:
        return {}

    def begin_mini_batch(self, stats: dict[str, Tensor]) -> None:
        """Start a mini-batch with the sums of :meth:`mini_batch_stats` over all of it."""

    def micro_batch(self, view: LossView) -> ControllerOutput:
        return ControllerOutput()

    def end_train_step(self, stats: StepStats) -> ControllerOutput:
        return ControllerOutput()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - set(self.state_dict())
        if unknown:
            raise KeyError(f"{type(self).__name__}: unknown state keys {sorted(unknown)}")
        for key, value in state.items():
            setattr(self, "_" + key, torch.as_tensor(value, dtype=torch.float32).clone())


def _scalar(value: float) -> Tensor:
    """A 0-dim float32 CPU tensor; controllers move their state to the data's device on first use."""
    return torch.tensor(float(value), dtype=torch.float32)


BAPO_MAX_GRID = 10_000
"""Most candidate bounds BAPO's search may hold per side (it is built as a list)."""


def _grid(start: float, maximum: float, step: float) -> list[float]:
    """Values the reference loop visits: start, then min(c + step, max) until max (Python floats,
    summed in the same order as the loop, so float rounding matches)."""
    out, c = [float(start)], float(start)
    while c < maximum and step > 0:
        c = min(c + step, maximum)
        out.append(c)
    return out


@CONTROLLERS.register(
    "bapo",
    summary="BAPO: per micro-batch, widen clip bounds until positive/negative contribution hits target",
    paper="arXiv 2510.18927 (BAPO)",
    source="WooooDyy/BAPO recipe/bapo/policy_loss.py compute_policy_loss_bapo",
)
class BAPOController(Controller):
    """BAPO adaptive clipping with *absolute* ratio bounds ``c_low < 1 < c_high``.

    Per micro-batch, from the start bounds: ``eff = min(r, c_high)`` if ``A >= 0`` else
    ``max(r, c_low)``; ``pos = sum mask*max(eff*A, 0)``, ``neg = sum mask*max(-eff*A, 0)``
    (summed across ranks), ``ratio = pos / (neg + eps)`` (inf if ``neg == 0``). Step ``c_low`` up
    until ``ratio >= target_ratio`` or its max, then ``c_high`` likewise; feed the bounds to the
    ``ppo`` loss (as ``eps_low = 1 - c_low``, ``eps_high = c_high - 1``). No state carries over
    between calls (reference code), so ``state_dict`` is empty. Batch-dependent by design: the
    bounds are searched per micro-batch (globally across ranks with an all-reduce).

    Options (``recipe/bapo/config/bapo_trainer.yaml``): ``target_ratio`` 1.0 in code units
    pos/neg (the paper's positive fraction rho_0 is ``target/(1+target)``; rho_0 = 0.5 <-> 1.0);
    lower 0.6 -> 0.8 step 0.05; upper 1.2 -> 2.0 step 0.05 (the BAPO release README's "paper" maxima are
    0.9 / 3.0, steps not given). ``metric``: ``"code"`` (default: clipped tokens count with their
    clipped ratio, so raising c_low can only increase neg) or ``"paper"`` (only tokens inside the
    clip range, i.e. with gradient, count: the BAPO release README's "filtering" reading, [unverified]).

    The loops are evaluated for all grid values at once and the first success picked: no host
    sync, same result. The decision statistic is float64, so an exact tie reads as
    ``x / (x + 1e-8) < 1`` as in the release code (float32 sums could round the 1e-8 away).

    Paper: arXiv 2510.18927, its adaptive clipping procedure (the algorithm box; algorithm and
    equation numbers unverified); checked against the authors' release (WooooDyy/BAPO).
    docs/methods.md §8.
    """

    name = "bapo"
    compatible_losses = ("ppo",)

    def __init__(self, *, target_ratio: float = 1.0, ratio_lower_start: float = 0.6, ratio_lower_max: float = 0.8,
                 ratio_lower_step: float = 0.05, ratio_upper_start: float = 1.2, ratio_upper_max: float = 2.0,
                 ratio_upper_step: float = 0.05, metric: str = "code", eps: float = 1e-8) -> None:
        if metric not in ("code", "paper"):
            raise ValueError(f"bapo metric must be 'code' or 'paper', got {metric!r}")
        if not 0 < ratio_lower_start < 1 < ratio_upper_start:
            raise ValueError("bapo bounds are absolute ratios: need 0 < ratio_lower_start < 1 < ratio_upper_start, "
                             f"got {ratio_lower_start}, {ratio_upper_start} (epsilons like 0.2 are not bounds)")
        if ratio_lower_max >= 1:
            raise ValueError(f"bapo ratio_lower_max must stay below 1, got {ratio_lower_max}")
        for side, (start, top, step) in (("lower", (ratio_lower_start, ratio_lower_max, ratio_lower_step)),
                                         ("upper", (ratio_upper_start, ratio_upper_max, ratio_upper_step))):
            n = (top - start) / step if step > 0 else 0.0
            if not n <= BAPO_MAX_GRID:  # the grid is a Python list: keep it small
                raise ValueError(f"ratio_{side}_max {top} - ratio_{side}_start {start} in steps of ratio_{side}_step {step} "
                                 f"is a search grid of {n:.3g} bounds; at most {BAPO_MAX_GRID} (the defaults give 4 and 16)")
        self.target = max(float(target_ratio), 0.0)
        self.low_grid = _grid(ratio_lower_start, max(ratio_lower_max, ratio_lower_start), max(ratio_lower_step, 0.0))
        self.high_grid = _grid(ratio_upper_start, max(ratio_upper_max, ratio_upper_start), max(ratio_upper_step, 0.0))
        self.metric = metric
        self.eps = float(eps)
        self._grids: dict[str, tuple[Tensor, Tensor]] = {}

    def _grid_tensors(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The candidate bounds as float64 tensors on ``device``, built once per device (no
        host-to-device copy per micro-batch)."""
        key = str(device)
        if key not in self._grids:
            self._grids[key] = (torch.as_tensor(self.low_grid, dtype=torch.float64).to(device),
                                torch.as_tensor(self.high_grid, dtype=torch.float64).to(device))
        return self._grids[key]

    def _contributions(self, r: Tensor, a: Tensor, mask: Tensor, lows: Tensor, highs: Tensor) -> tuple[Tensor, Tensor]:
        """``pos`` at every upper candidate ``[K_high]`` and ``neg`` at every lower one ``[K_low]``.

        ``pos`` depends only on c_high and ``neg`` only on c_low, so both curves come from one
        bucketing of the tokens by candidate: O(N log K), not O(N K). Ties ``r == c`` give the same
        value on either side of ``min``/``max``, so the bucket edge convention does not matter
        for the code metric; the paper metric uses ``r <= c_high`` and ``r >= c_low``.
        """
        zero = torch.zeros((), dtype=r.dtype, device=r.device)
        # values at masked positions never matter (NaN/inf padding included): select them away
        # before any product or bucketing (0 * nan is nan); unmasked results are unchanged
        r = torch.where(mask, r, torch.ones((), dtype=r.dtype, device=r.device))
        a = torch.where(mask, a, zero)
        pos_w = torch.where(mask & (a >= 0), a, zero)
        neg_w = torch.where(mask & (a < 0), -a, zero)
        # upper: b = #candidates < r, so r <= highs[j] <=> b <= j
        def buckets(b: Tensor, k: int, x: Tensor) -> Tensor:
            return torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, b, x)

        def prefix(x: Tensor) -> Tensor:  # sum over buckets <= j, for j < K
            return x.cumsum(0)[:-1]

        def suffix(x: Tensor) -> Tensor:  # sum over buckets > j, for j < K: summed, never total - prefix
            return x.flip(0).cumsum(0).flip(0)[1:]  # (a subtraction cancels a tiny term to 0, and 0 reads as "no negatives")

        b = torch.bucketize(r, highs)
        kh = highs.numel() + 1
        rw = prefix(buckets(b, kh, r * pos_w))
        pos = rw if self.metric == "paper" else rw + highs * suffix(buckets(b, kh, pos_w))
        # lower: b = #candidates <= r, so r >= lows[j] <=> b > j
        b = torch.bucketize(r, lows, right=True)
        kl = lows.numel() + 1
        above = suffix(buckets(b, kl, r * neg_w))
        neg = above if self.metric == "paper" else above + lows * prefix(buckets(b, kl, neg_w))
        return pos, neg

    def _ratio(self, pos: Tensor, neg: Tensor) -> Tensor:
        return torch.where(neg <= 0, torch.full_like(pos, math.inf), pos / (neg + self.eps))

    def search(self, *, ratio: Tensor, advantages: Tensor, loss_mask: Tensor,
               all_reduce: AllReduce | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(c_low, c_high, pos_neg_ratio)`` as 0-dim float64 tensors for one micro-batch."""
        r = ratio.detach().reshape(-1).to(torch.float64)
        a = advantages.detach().reshape(-1).to(torch.float64)
        lows, highs = self._grid_tensors(r.device)
        pos, neg = self._contributions(r, a, loss_mask.reshape(-1), lows, highs)
        if all_reduce is not None:
            both = all_reduce(torch.cat([pos, neg]))
            pos, neg = both[: highs.numel()], both[highs.numel():]
        k = first_true_index(self._ratio(pos[:1].expand_as(neg), neg) >= self.target)
        ratios = self._ratio(pos, neg[k].expand_as(pos))
        j = first_true_index(ratios >= self.target)
        return lows[k], highs[j], ratios[j]

    def micro_batch(self, view: LossView) -> ControllerOutput:
        zero = torch.zeros((), dtype=view.logprobs.dtype, device=view.logprobs.device)
        ratio = torch.exp(clamped_log_ratio(torch.where(view.loss_mask, view.logprobs.detach(), zero),
                                            torch.where(view.loss_mask, view.proximal_logprobs, zero)))
        c_low, c_high, pn = self.search(ratio=ratio, advantages=view.advantages, loss_mask=view.loss_mask,
                                        all_reduce=view.all_reduce)
        dtype = view.logprobs.dtype
        metrics = {
            "bapo/c_low": c_low.float(),
            "bapo/c_high": c_high.float(),
            "bapo/pos_neg_ratio": pn.float(),
            "bapo/pos_frac": torch.where(torch.isinf(pn), torch.ones_like(pn), pn / (1 + pn)).float(),
        }
        return ControllerOutput(loss_kwargs={"eps_low": (1.0 - c_low).to(dtype), "eps_high": (c_high - 1.0).to(dtype)},
                                metrics=metrics)


@CONTROLLERS.register(
    "entropic",
    summary="EntroPIC: PI control of entropy by reweighting high-probability positive/negative tokens",
    paper="arXiv 2511.15248 (EntroPIC: entropy stabilization with proportional-integral control), the PI controller "
          "of its method section (equation number unverified)",
    source="yk7333/EntroPIC dp_actor.update_policy, core_algos.compute_policy_loss_entropic",
)
class EntroPICController(Controller):
    """EntroPIC, per mini-batch (the unit of one optimizer step):

    ``H`` = token-mean current-policy entropy over the whole mini-batch (detached; all its
    micro-batches and data-parallel ranks, from :meth:`mini_batch_stats`); ``e = H -
    target_entropy`` (positive = too high); ``alpha = clip(kp * e + ki * I, -alpha_limit,
    alpha_limit)`` (``alpha_limit`` 1, as the reference code's clip to [-1, 1]); then
    ``I += e`` (never reset, no anti-windup; checkpointed). Extra loss
    ``alpha * sum_{hp}(-r * |A|) / N_hp`` over the high-probability tokens ``hp = loss_mask &
    (logprobs > log(high_prob_threshold))`` (current policy), ``N_hp`` their count over the whole
    mini-batch, 0 if none: each micro-batch adds its share, so the micro-batch size and the
    number of ranks do not change the update. The reference code does the same per micro-batch
    (``I += e * micro_bsz / mini_bsz`` and its loss scaled by that share); the two agree when a
    mini-batch is one micro-batch, the reference code's setting (run_entropic.sh: batch 512 =
    mini-batch 512). ``target_entropy < 0`` disables control (alpha 0, I frozen), as the
    reference config's -1. Defaults: run_entropic.sh (target 0.1, kp 1, ki 0.01, threshold
    0.95). Direction: entropy above target -> alpha > 0 -> confident positives pushed up harder,
    confident negatives less -> entropy falls.

    Paper: arXiv 2511.15248, its PI control of entropy (method section; equation number
    unverified); checked against the authors' code (yk7333/EntroPIC). docs/methods.md §9.
    """

    name = "entropic"
    target_metric = "entropic/entropy"  # the mini-batch's mean token entropy, held at target_entropy
    requires = frozenset({"entropy"})
    split_invariant = True

    def __init__(self, *, target_entropy: float = 0.1, kp: float = 1.0, ki: float = 0.01,
                 high_prob_threshold: float = 0.95, alpha_limit: float = 1.0) -> None:
        if not 0 < high_prob_threshold < 1:
            raise ValueError(f"high_prob_threshold must be in (0, 1), got {high_prob_threshold}")
        self.target = float(target_entropy)
        self.kp, self.ki = float(kp), float(ki)
        self.log_threshold = math.log(high_prob_threshold)
        self.alpha_limit = float(alpha_limit)
        self._integral = _scalar(0.0)
        self._mini: tuple[Tensor, Tensor, Tensor] | None = None  # (alpha, H, N_hp) of the open mini-batch

    def control(self, entropy_mean: Tensor, micro_batch_fraction: float | Tensor = 1.0) -> Tensor:
        """One PI step from a measured mean entropy (0-dim tensor): returns alpha, updates I."""
        if self.target < 0:
            return torch.zeros((), dtype=torch.float32, device=entropy_mean.device)
        self._integral = self._integral.to(entropy_mean.device)
        err = entropy_mean.detach().float() - self.target
        alpha = torch.clamp(self.kp * err + self.ki * self._integral, -self.alpha_limit, self.alpha_limit)
        self._integral = self._integral + err * micro_batch_fraction
        return alpha

    def _high_prob(self, view: LossView) -> Tensor:
        return view.loss_mask & (view.logprobs.detach() > self.log_threshold)

    def mini_batch_stats(self, view: LossView) -> dict[str, Tensor]:
        if view.entropy is None:
            raise ValueError("entropic controller needs the current policy's entropy in the micro-batch")
        return {"entropic/entropy_sum": masked_sum(view.entropy.detach(), view.loss_mask).float(),
                "entropic/tokens": view.loss_mask.sum().float(),
                "entropic/high_prob_tokens": self._high_prob(view).sum().float()}

    def begin_mini_batch(self, stats: dict[str, Tensor]) -> None:
        h = stats["entropic/entropy_sum"] / stats["entropic/tokens"].clamp(min=1)
        self._mini = (self.control(h), h, stats["entropic/high_prob_tokens"])

    def micro_batch(self, view: LossView) -> ControllerOutput:
        own = self._mini is None
        if own:  # called on its own: this micro-batch is the whole mini-batch
            self.begin_mini_batch(reduce_sums(self.mini_batch_stats(view), view.all_reduce))
        alpha, h, n_hp = self._mini  # type: ignore[misc]
        if own:
            self._mini = None
        hp = self._high_prob(view)
        zero = torch.zeros((), dtype=view.logprobs.dtype, device=view.logprobs.device)
        # masked positions selected away before any product (a NaN there would reach the gradient)
        ratio = torch.exp(clamped_log_ratio(torch.where(hp, view.logprobs, zero), torch.where(hp, view.proximal_logprobs, zero)))
        adv = torch.where(hp, view.advantages, zero).abs()
        adjust = alpha.to(ratio.dtype) * masked_sum(-ratio * adv, hp) / n_hp.to(ratio.dtype).clamp(min=1)
        metrics = {
            "entropic/alpha": alpha.detach(),
            "entropic/integral": self._integral.detach().clone(),
            "entropic/entropy": h.detach(),
            "entropic/high_prob_frac": masked_mean(hp.float(), view.loss_mask).detach(),
        }
        return ControllerOutput(extra_loss=adjust, metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"integral": self._integral.detach().clone()}


@CONTROLLERS.register(
    "skywork",
    summary="Skywork-OR1 adaptive entropy coefficient: raise the entropy bonus while entropy is below target",
    paper="arXiv 2505.22312 (Skywork-OR1, MAGIC)",
    source="SkyworkAI/Skywork-OR1 core_algos.EntController, ray_trainer.fit; TRL use_adaptive_entropy",
)
class SkyworkEntropyController(Controller):
    """Skywork-OR1 adaptive entropy control.

    Loss term per micro-batch: ``- coef * gate * aggregate(H)`` (H = current-policy entropy,
    with gradient). After each train_step with measurement ``e``: ``coef += delta`` if
    ``e < target`` else ``coef -= delta``, clipped to ``[coef_min, coef_max]``; ``gate = e < target``
    (``strict=False`` uses ``<=``, TRL). The coefficient used at step k comes from step k-1
    (one-step lag); before the first measurement the gate is 0.

    ``measure``: ``"nll"`` (default, Skywork code: ``-mean(proximal logprobs)`` of the sampled
    tokens over the whole rollout batch, pre-update) or ``"entropy"`` (TRL: full-vocabulary
    entropy of the current policy over the step's tokens). Defaults from the Skywork scripts:
    target 0.2, delta 1e-4, coef 0 -> [0, 5e-3] (TRL: delta 0.005, max 1.0; the paper's delta is
    unverified). Hand-derived: e = [0.35, 0.25, 0.18, 0.15, 0.19, 0.22] -> realised coefficients
    [0, 0, 1e-4, 2e-4, 3e-4, 0].

    Paper: arXiv 2505.22312, its adaptive entropy control section (equation number unverified);
    checked against the Skywork-OR1 code and TRL. docs/methods.md §10.
    """

    name = "skywork"
    target_metric = "skywork/measured"  # the step's measured entropy (or NLL), held at target_entropy
    requires = frozenset({"entropy"})
    needs_entropy_grad = True  # its loss term is an entropy bonus
    split_invariant = True  # the coefficient changes only at end_train_step

    def __init__(self, *, target_entropy: float = 0.2, delta: float = 1e-4, coef_init: float = 0.0,
                 coef_min: float = 0.0, coef_max: float = 5e-3, measure: str = "nll", strict: bool = True) -> None:
        if measure not in ("nll", "entropy"):
            raise ValueError(f"skywork measure must be 'nll' or 'entropy', got {measure!r}")
        if not coef_min <= coef_init <= coef_max:
            raise ValueError(f"need coef_min <= coef_init <= coef_max, got {coef_min}, {coef_init}, {coef_max}")
        self.target, self.delta = float(target_entropy), float(delta)
        self.coef_min, self.coef_max = float(coef_min), float(coef_max)
        self.measure, self.strict = measure, bool(strict)
        if measure == "nll":
            self.requires = frozenset({"entropy", "rollout_logprobs"})
        self._coef = _scalar(coef_init)
        self._gate = _scalar(0.0)

    @property
    def effective_coef(self) -> Tensor:
        return self._coef * self._gate

    def micro_batch(self, view: LossView) -> ControllerOutput:
        if view.entropy is None:
            raise ValueError("skywork controller needs the current policy's entropy in the micro-batch")
        self._coef, self._gate = self._coef.to(view.entropy.device), self._gate.to(view.entropy.device)
        coef = self.effective_coef
        bonus = view.aggregate(view.entropy, view.loss_mask)
        metrics = {"skywork/coef": self._coef.detach().clone(), "skywork/gate": self._gate.detach().clone(),
                   "skywork/effective_coef": coef.detach()}
        return ControllerOutput(extra_loss=-coef.to(bonus.dtype) * bonus, metrics=metrics)

    def update(self, measured: Tensor) -> None:
        """Apply one measurement (0-dim tensor); tensor ops only."""
        e = torch.as_tensor(measured).detach().float()
        coef, gate = self._coef.to(e.device), self._gate.to(e.device)
        below = e < self.target if self.strict else e <= self.target
        coef = torch.clamp(coef + torch.where(below, self.delta, -self.delta), self.coef_min, self.coef_max)
        self._coef, self._gate = coef, below.float()

    def end_train_step(self, stats: StepStats) -> ControllerOutput:
        measured = stats.rollout_nll if self.measure == "nll" else stats.entropy
        if measured is None:
            raise ValueError(f"skywork measure={self.measure!r} needs "
                             f"{'proximal_logprobs in the rollout batch' if self.measure == 'nll' else 'entropy in the micro-batches'}")
        self.update(measured)
        return ControllerOutput(metrics={"skywork/measured": torch.as_tensor(measured).detach().float(),
                                         "skywork/coef": self._coef.clone(), "skywork/gate": self._gate.clone()})

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self._coef.detach().clone(), "gate": self._gate.detach().clone()}


@CONTROLLERS.register(
    "prorl",
    summary="ProRL: KL penalty to a reference that is periodically hard-reset to the current policy",
    paper="arXiv 2505.24864 (ProRL)",
    source="no reference code; abstract and reviews",
)
class ProRLController(Controller):
    """ProRL reference resets. The KL penalty itself is the algorithm's ``kl``
    section (k3, ``coef`` = beta); this controller decides *when* the learner must reset: copy
    the current policy into the reference model **and** re-initialise the optimizer state.

    The paper resets "at chosen points" (validation stalls or the KL term dominates), not on a
    schedule; agentrl offers two automatic triggers (both agentrl's own choices, off by
    default): every ``reset_interval_steps`` train_steps since the last reset, and/or when the
    step's mean KL to the reference exceeds ``reset_kl_threshold`` (at least
    ``min_steps_between_resets`` after the last reset). ``end_train_step`` returns
    ``reset_reference`` (a bool tensor; the learner reads it once per step). State (checkpointed):
    step, last reset step, number of resets.

    Paper: arXiv 2505.24864, its section on KL regularisation and reference-policy reset (equation
    number unverified). No official code was available to check against. docs/methods.md §11.
    """

    name = "prorl"
    requires = frozenset({"ref_logprobs"})
    split_invariant = True  # state changes only at end_train_step

    @classmethod
    def check_config(cls, config: Any) -> None:
        if config.kl.coef <= 0:
            raise ValueError("controller 'prorl' resets the KL reference: set algorithm.kl.coef > 0 (beta)")

    def __init__(self, *, reset_interval_steps: int = 0, reset_kl_threshold: float | None = None,
                 min_steps_between_resets: int = 1) -> None:
        if reset_interval_steps < 0 or min_steps_between_resets < 1:
            raise ValueError("need reset_interval_steps >= 0 and min_steps_between_resets >= 1")
        self.interval = int(reset_interval_steps)
        self.threshold = None if reset_kl_threshold is None else float(reset_kl_threshold)
        self.min_gap = int(min_steps_between_resets)
        self._step = _scalar(0.0)
        self._last_reset = _scalar(0.0)
        self._resets = _scalar(0.0)

    def end_train_step(self, stats: StepStats) -> ControllerOutput:
        kl = None
        if self.threshold is not None:
            if stats.kl_ref is None:
                raise ValueError("prorl reset_kl_threshold needs the KL to the reference (ref_logprobs in micro-batches)")
            kl = torch.as_tensor(stats.kl_ref).detach().float()
            self._step, self._last_reset, self._resets = (t.to(kl.device) for t in (self._step, self._last_reset, self._resets))
        step = self._step + 1
        since = step - self._last_reset
        reset = torch.zeros((), dtype=torch.bool, device=step.device)
        if self.interval > 0:
            reset = reset | (since >= self.interval)
        if kl is not None:
            reset = reset | ((kl > self.threshold) & (since >= self.min_gap))
        self._step = step
        self._last_reset = torch.where(reset, step, self._last_reset)
        self._resets = self._resets + reset.float()
        return ControllerOutput(reset_reference=reset,
                                metrics={"prorl/resets": self._resets.clone(), "prorl/steps_since_reset": step - self._last_reset})

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step.clone(), "last_reset": self._last_reset.clone(), "resets": self._resets.clone()}
