"""Token selection usable with any loss: which policy tokens receive gradient.

A token mask returns ``(mask [B, T] bool, metrics)``; the composition layer multiplies it into
the per-token policy loss as ``token_weights`` while the aggregation denominator keeps
``loss_mask`` (dropped tokens still count, docs/methods.md §3d).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ops import masked_quantile
from .registry import TOKEN_MASKS

__all__ = ["forking_tokens_mask"]

ENTROPY_SOURCES = ("current", "proximal")
NORMALIZE = ("all", "kept")


@TOKEN_MASKS.register(
    "forking_tokens",
    summary="80/20 rule: only the top-rho high-entropy (forking) tokens get policy gradient",
    paper="arXiv 2506.01939 (Beyond the 80/20 Rule)",
    source="TRL grpo_trainer.get_high_entropy_mask (top_entropy_quantile)",
    inputs=("entropy", "loss_mask"),
)
def forking_tokens_mask(*, entropy: Tensor, loss_mask: Tensor, top_quantile: float = 0.2,
                        entropy_source: str = "current", normalize: str = "all") -> tuple[Tensor, dict[str, Tensor]]:
    """``mask = loss_mask & (H >= tau)`` with ``tau = quantile({H_t : loss_mask}, 1 - top_quantile)``
    (linear interpolation, as ``torch.quantile``; ties at tau are kept, ``>=``).

    entropy ``[B, T]`` float (used detached), loss_mask ``[B, T]`` bool. ``top_quantile`` is rho
    (0.2 recommended; 1.0 keeps all, 0.0 only the maximum). ``entropy_source`` tells the
    composition layer which entropy to pass: ``"current"`` (default, TRL and the paper review:
    the training forward pass, threshold over the tokens of each micro-batch) or ``"proximal"``
    (entropy recomputed before the update, threshold over the whole rollout batch, closer to the
    paper's "training batch", whose exact rule is unverified). With ``"current"`` the threshold
    is batch-dependent by design.

    ``normalize`` sets the policy loss's denominator. ``"all"`` (default): every policy token
    of the mini-batch, dropped ones included, as in TRL. ``"kept"``: only the kept tokens, as
    Eq. 6 of the paper does (Sec. 5.1, revision of 13 Nov 2025: its normaliser is the count of
    selected tokens; docs/methods.md §3d) and the authors' released training code (its loss mask
    is the response mask times the entropy mask), a step 1/rho times larger (5x at rho 0.2).
    With ``"kept"`` the composition layer passes ``loss_mask & mask`` to the policy loss and
    counts the kept tokens over the whole mini-batch (:meth:`Algorithm.mini_batch_stats`); the KL
    and entropy terms keep every policy token. docs/methods.md §3e: H = [0.01 ... 2.5] gives tau
    1.08, keeps 2 of 10.
    Paper: arXiv 2506.01939 Sec. 5.1, Eq. 6 (token entropy Eq. 1, Sec. 2.1); checked against TRL's
    re-implementation.
    """
    if not 0.0 <= top_quantile <= 1.0:
        raise ValueError(f"top_quantile must be in [0, 1], got {top_quantile}")
    if entropy_source not in ENTROPY_SOURCES:
        raise ValueError(f"entropy_source must be one of {ENTROPY_SOURCES}, got {entropy_source!r}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE} (every policy token, as TRL; or the kept ones, as the paper's Eq. 6 and its code), "
                         f"got {normalize!r}")
    ent = entropy.detach()
    tau = masked_quantile(ent, loss_mask, 1.0 - top_quantile)
    mask = loss_mask & (ent >= tau)
    kept = mask.sum().float() / loss_mask.sum().clamp(min=1).float()
    return mask, {"forking/threshold": tau.float().detach(), "forking/selected_frac": kept.detach()}
