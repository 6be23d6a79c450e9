"""Per-token KL estimators between the current policy and the reference policy.

All take ``logprobs [B, T]`` (current policy, carries gradient) and ``ref_logprobs [B, T]``
(frozen reference, detached) and return a per-token estimate ``[B, T]`` of
``KL(pi_theta || pi_ref)`` for the sampled token; aggregate it with the policy loss's
aggregation. Source: J. Schulman, "Approximating KL Divergence" (2020 note, k1/k2/k3);
verl ``core_algos.kl_penalty`` (``kl``, ``mse``, ``low_var_kl``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import KL_ESTIMATORS

__all__ = ["kl_k1", "kl_k2", "kl_k3", "kl_estimate"]

_INPUTS = ("logprobs", "ref_logprobs")


@KL_ESTIMATORS.register("k1", summary="logprobs - ref_logprobs (unbiased, high variance, can be negative)",
                        paper="Schulman 2020 'Approximating KL Divergence' k1", source="verl kl_penalty 'kl'",
                        inputs=_INPUTS)
def kl_k1(*, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``k1 = logprobs - ref_logprobs`` per token ``[B, T]``: unbiased for KL(pi || ref) under
    samples from pi, but high variance and negative on some tokens. Paper: Schulman 2020,
    "Approximating KL Divergence", section k1 (the note has no numbered equations; docs/methods.md §15)."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2", summary="0.5*(logprobs - ref_logprobs)^2 (biased, low variance, >= 0)",
                        paper="Schulman 2020 'Approximating KL Divergence' k2", source="verl kl_penalty 'mse'",
                        inputs=_INPUTS)
def kl_k2(*, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``k2 = 0.5 * (logprobs - ref_logprobs)^2`` per token ``[B, T]``: always >= 0, low variance,
    biased (exact to second order when the policies are close). Paper: Schulman 2020, section k2
    (no numbered equations; docs/methods.md §15)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3", summary="exp(ref-logp) - (ref-logp) - 1, clamped (unbiased, >= 0; verl low_var_kl)",
                        paper="Schulman 2020 'Approximating KL Divergence' k3",
                        source="verl kl_penalty 'low_var_kl'", inputs=_INPUTS)
def kl_k3(*, logprobs: Tensor, ref_logprobs: Tensor, clamp: float = 10.0) -> Tensor:
    """``k3 = exp(d) - d - 1`` with ``d = clamp(ref_logprobs - logprobs, -20, 20)``, result clamped
    to ``[-clamp, clamp]`` (verl ``low_var_kl``). Hand-derived: logprobs -1.0, ref -1.2 give
    ``e^-0.2 + 0.2 - 1 = 0.018731``. Paper: Schulman 2020, section k3 (no numbered equations); the
    same estimator is the KL term of the GRPO objective, arXiv 2402.03300 Eq. 4 (docs/methods.md §15)."""
    d = torch.clamp(ref_logprobs - logprobs, -20.0, 20.0)
    return torch.clamp(torch.exp(d) - d - 1.0, -clamp, clamp)


def kl_estimate(name: str, *, logprobs: Tensor, ref_logprobs: Tensor, **options: float) -> Tensor:
    """Per-token KL by registered estimator ``name`` (``k1``, ``k2``, ``k3``)."""
    entry = KL_ESTIMATORS.get(name)
    entry.check_options(options)
    return entry.obj(logprobs=logprobs, ref_logprobs=ref_logprobs, **options)
