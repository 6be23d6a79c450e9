"""Advantage shaping: functions that rewrite advantages using entropy.

* ``entropy_advantage`` works per token on ``[B, T]`` advantages.
* ``empg`` works per turn (step) on ``[B, S]`` advantages with step entropies; the composition
  layer broadcasts the result to tokens through turn ids.

Both return ``(advantages, metrics)``; both use entropy detached.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .ops import masked_mean, zero_masked
from .registry import SHAPING

__all__ = ["entropy_advantage", "empg"]


@SHAPING.register(
    "entropy_advantage",
    summary="A' = A + min(alpha*sg(H), |A|/kappa): entropy bonus that never flips A's sign",
    paper="arXiv 2506.14758 (Reasoning with Exploration: An Entropy Perspective)",
    source="no reference code; formula as quoted from the paper (docs/methods.md §5a)",
    inputs=("advantages", "entropy", "loss_mask"),
    level="token",
    split_invariant=True,
)
def entropy_advantage(*, advantages: Tensor, entropy: Tensor, loss_mask: Tensor, alpha: float = 0.4,
                      kappa: float = 2.0, entropy_source: str = "proximal") -> tuple[Tensor, dict[str, Tensor]]:
    """``psi = min(alpha * sg(H), |A| / kappa)``, ``A' = A + psi`` on policy tokens.

    advantages / entropy ``[B, T]`` float, loss_mask ``[B, T]`` bool (A' = A = 0 elsewhere).
    ``psi >= 0`` and ``psi <= |A|/kappa < |A|``, so the sign never flips and A = 0 stays 0.
    Apply after group normalisation. alpha 0.4 / kappa 2 are the paper's GRPO values (Sec. 4: kappa 2
    throughout, alpha 0.4 with GRPO, 0.1 with PPO);
    ``entropy_source``: ``"proximal"`` (default; the rollout/proximal policy's entropy, computed
    before the update) or ``"current"`` (training forward pass: the paper's Eq. 4
    writes the current policy and places the change in verl's actor update; docs/methods.md §5d).
    Raises ValueError unless alpha > 0 and kappa > 1.
    docs/methods.md §5e: (A, H) = (1, 0.5) -> 1.2; (1, 3) -> 1.5; (-1, 3) -> -0.5; (-0.2, 0.1) -> -0.16.
    Paper: arXiv 2506.14758 Sec. 3.2, Eqs. 5-6 (entropy Eq. 4). No official code was available to
    check against.
    """
    if not alpha > 0 or not kappa > 1:
        raise ValueError(f"entropy_advantage needs alpha > 0 and kappa > 1, got alpha={alpha}, kappa={kappa}")
    if entropy_source not in ("proximal", "current"):
        raise ValueError(f"entropy_source must be 'proximal' or 'current', got {entropy_source!r}")
    adv = zero_masked(advantages, loss_mask)
    psi = torch.minimum(alpha * zero_masked(entropy.detach(), loss_mask), adv.abs() / kappa)
    out = adv + psi
    return out, {"entropy_adv/psi_mean": masked_mean(psi, loss_mask).float().detach()}


@SHAPING.register(
    "empg",
    summary="EMPG: scale step advantages by g(step entropy) (batch mean 1) + future-clarity bonus",
    paper="arXiv 2509.09265 (EMPG) Eqs. 7, 8, 10-12 (project-page pseudocode)",
    source="project page empgseed-seed.github.io pseudocode (no official repository read)",
    inputs=("turn_advantages", "step_entropy", "turn_mask"),
    level="turn",
)
def empg(*, turn_advantages: Tensor, step_entropy: Tensor, turn_mask: Tensor, k: float = 1.0, k_f: float = 1.0,
         zeta: float = 0.1, eps: float = 1e-8) -> tuple[Tensor, dict[str, Tensor]]:
    """EMPG on per-step advantages (docs/methods.md §7a):

    1. ``Hn = (H - min H) / (max H - min H + eps)`` over *all steps of the batch*;
    2. ``g = exp(-k Hn) / mean_steps(exp(-k Hn))`` (batch mean of g is 1);
    3. ``f = exp(-k_f Hn)``;
    4. ``A_mod[i, s] = g[i, s] * A[i, s] + zeta * f[i, s+1]``, the bonus only when turn s+1 of the
       same trajectory exists (the last step gets none);
    5. zero-mean over steps: ``A_final = A_mod - mean_steps(A_mod)`` (no std division).

    turn_advantages / step_entropy ``[B, S]`` float (step entropy = mean token entropy of the
    step under the rollout/proximal policy), turn_mask ``[B, S]`` bool. Missing steps give 0.
    Batch-dependent by design: min/max, mean g and the final mean are over the steps given.
    Defaults k = k_f = 1, zeta = 0.1 are the pseudocode's [paper-secondary].
    docs/methods.md §7e: final [1.403917, 0.603360, -1.253662, -0.753614].
    Paper: arXiv 2509.09265, steps 1-5 are its Eqs. 12, 10, 11, 8 and 7, numbered as the project
    page's pseudocode labels them (the paper body was not read). No official code was available to
    check against: the reference is that pseudocode.
    """
    m = turn_mask
    h = step_entropy.detach().to(torch.float64)
    inf = torch.full((), math.inf, dtype=h.dtype, device=h.device)
    h_min = torch.where(m, h, inf).amin()
    h_max = torch.where(m, h, -inf).amax()
    hn = zero_masked((h - h_min) / (h_max - h_min + eps), m)
    e = torch.exp(-k * hn)
    g = e / masked_mean(e, m).clamp(min=1e-30)
    f = torch.exp(-k_f * hn)
    f_next = torch.zeros_like(f)
    if f.shape[1] > 1:
        f_next[:, :-1] = zero_masked(f[:, 1:], m[:, 1:])
    a = turn_advantages.to(torch.float64)
    a_mod = zero_masked(g * a + zeta * f_next, m)
    a_final = zero_masked(a_mod - masked_mean(a_mod, m), m)
    bonus = zero_masked(zeta * f_next, m)
    metrics = {
        "empg/g_mean": masked_mean(g, m).float().detach(),
        "empg/g_min": torch.where(m, g, inf).amin().float().detach(),
        "empg/g_max": torch.where(m, g, -inf).amax().float().detach(),
        "empg/bonus_mean": masked_mean(bonus, m).float().detach(),
        "empg/step_entropy_mean": masked_mean(h, m).float().detach(),
    }
    return a_final.to(turn_advantages.dtype), metrics
