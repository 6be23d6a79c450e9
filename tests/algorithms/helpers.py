"""Small builders shared by the algorithms tests."""

from __future__ import annotations

import math

import torch

t = torch.tensor


def row(*values: float, requires_grad: bool = False) -> torch.Tensor:
    """A [1, T] float32 tensor."""
    return torch.tensor([list(values)], dtype=torch.float32, requires_grad=requires_grad)


def mask(*flags: int) -> torch.Tensor:
    return torch.tensor([list(flags)], dtype=torch.bool)


def ones_mask(n: int, b: int = 1) -> torch.Tensor:
    return torch.ones(b, n, dtype=torch.bool)


def ratio_to_old(logp: torch.Tensor, ratios: list[float]) -> torch.Tensor:
    """proximal logprobs such that exp(logp - proximal) == ratios."""
    return logp.detach() - torch.tensor([[math.log(r) for r in ratios]])


def close(actual, expected, atol: float = 1e-6, rtol: float = 1e-6) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=rtol)
