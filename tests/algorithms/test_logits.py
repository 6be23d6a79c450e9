"""Chunked logprobs/entropy: equal to the naive full-logits computation, gradients included,
entropy in [0, log V], and no full [N, V] buffer in forward or backward."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.algorithms.logits import (auto_chunk_size, logprobs_and_entropy_from_hidden,
                                       logprobs_and_entropy_from_logits)

from .helpers import close


def naive(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    z = logits.float() / temperature
    logp_all = torch.log_softmax(z, dim=-1)
    lp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return lp, ent


@pytest.mark.parametrize("temperature,chunk", [(1.0, 5), (0.7, 3), (1.3, None), (1.0, 1000)])
def test_from_logits_matches_naive_values_and_gradients(temperature, chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=g) * 3
    tgt = torch.randint(0, 11, (2, 7), generator=g)
    w_lp, w_h = torch.randn(2, 7, generator=g), torch.randn(2, 7, generator=g)
    x1 = logits.clone().requires_grad_(True)
    lp, ent = logprobs_and_entropy_from_logits(x1, tgt, temperature=temperature, chunk_size=chunk)
    ((lp * w_lp).sum() + (ent * w_h).sum()).backward()
    x2 = logits.clone().requires_grad_(True)
    nlp, nent = naive(x2, tgt, temperature)
    ((nlp * w_lp).sum() + (nent * w_h).sum()).backward()
    close(lp, nlp, atol=1e-5, rtol=1e-5)
    close(ent, nent, atol=1e-5, rtol=1e-5)
    close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_bias,temperature,chunk", [(False, 1.0, 4), (True, 0.6, 3), (False, 1.5, 64)])
def test_from_hidden_matches_naive_values_and_gradients(with_bias, temperature, chunk):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 5, 8, generator=g)
    w = torch.randn(13, 8, generator=g) * 0.5
    b = torch.randn(13, generator=g) if with_bias else None
    tgt = torch.randint(0, 13, (3, 5), generator=g)
    w_lp, w_h = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    leaves1 = [x.clone().requires_grad_(True) for x in (h, w) + ((b,) if with_bias else ())]
    lp, ent = logprobs_and_entropy_from_hidden(leaves1[0], leaves1[1], tgt, bias=leaves1[2] if with_bias else None,
                                               temperature=temperature, chunk_size=chunk)
    ((lp * w_lp).sum() + (ent * w_h).sum()).backward()
    leaves2 = [x.clone().requires_grad_(True) for x in (h, w) + ((b,) if with_bias else ())]
    logits = leaves2[0] @ leaves2[1].t() + (leaves2[2] if with_bias else 0)
    nlp, nent = naive(logits, tgt, temperature)
    ((nlp * w_lp).sum() + (nent * w_h).sum()).backward()
    close(lp, nlp, atol=1e-5, rtol=1e-5)
    close(ent, nent, atol=1e-5, rtol=1e-5)
    for a, b2 in zip(leaves1, leaves2):
        close(a.grad, b2.grad, atol=1e-5, rtol=1e-4)


def test_from_hidden_logprob_only_gradient_and_no_entropy():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(6, 4, generator=g, requires_grad=True)
    w = torch.randn(9, 4, generator=g, requires_grad=True)
    tgt = torch.randint(0, 9, (6,), generator=g)
    lp, ent = logprobs_and_entropy_from_hidden(h, w, tgt, compute_entropy=False, chunk_size=4)
    assert ent is None
    lp.sum().backward()
    h2, w2 = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    naive(h2 @ w2.t(), tgt)[0].sum().backward()
    close(h.grad, h2.grad, atol=1e-5, rtol=1e-5)
    close(w.grad, w2.grad, atol=1e-5, rtol=1e-5)


def test_bf16_hidden_path_runs_and_is_close():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(5, 16, generator=g).bfloat16().requires_grad_(True)
    w = (torch.randn(20, 16, generator=g) * 0.3).bfloat16().requires_grad_(True)
    tgt = torch.randint(0, 20, (5,), generator=g)
    lp, ent = logprobs_and_entropy_from_hidden(h, w, tgt, chunk_size=2)
    assert lp.dtype == torch.float32
    nlp, nent = naive(h.float() @ w.float().t(), tgt)
    close(lp, nlp, atol=5e-2, rtol=5e-2)
    (lp.sum() + ent.sum()).backward()
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 40), st.floats(0.2, 3.0), st.floats(0.1, 30.0), st.integers(0, 2**31 - 1))
def test_entropy_within_zero_and_log_vocab(vocab, temperature, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, vocab, generator=g) * scale
    tgt = torch.randint(0, vocab, (4,), generator=g)
    lp, ent = logprobs_and_entropy_from_logits(logits, tgt, temperature=temperature, chunk_size=3)
    assert torch.all(ent >= -1e-5) and torch.all(ent <= math.log(vocab) + 1e-5)
    assert torch.all(lp <= 1e-6)
    uniform = logprobs_and_entropy_from_logits(torch.zeros(1, vocab), torch.zeros(1, dtype=torch.long))[1]
    close(uniform, [math.log(vocab)], atol=1e-5, rtol=1e-6)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="temperature"):
        logprobs_and_entropy_from_logits(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="targets"):
        logprobs_and_entropy_from_logits(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        logprobs_and_entropy_from_hidden(torch.zeros(2, 4), torch.zeros(5, 3), torch.zeros(2, dtype=torch.long))
    assert auto_chunk_size(32768) == 256


def _largest_allocation(fn) -> int:
    """Largest single CPU allocation (bytes) recorded by the profiler while fn runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)


def test_hidden_path_never_allocates_full_logits():
    # N = 512 tokens, V = 4096: one [N, V] float32 tensor is 8 MiB. With 32-token chunks the
    # largest buffer in forward+backward must be far below it (chunk = 0.5 MiB; weight grad 0.25 MiB).
    g = torch.Generator().manual_seed(4)
    n, v, d = 512, 4096, 16
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = torch.randn(v, d, generator=g, requires_grad=True)
    tgt = torch.randint(0, v, (n,), generator=g)

    def run():
        lp, ent = logprobs_and_entropy_from_hidden(h, w, tgt, chunk_size=32)
        (lp.sum() + ent.sum()).backward()

    full = n * v * 4
    assert _largest_allocation(run) < full / 8
    # the naive computation does allocate at least one full [N, V] buffer (sanity check of the probe)
    assert _largest_allocation(lambda: naive(h @ w.t(), tgt)[1].sum().backward()) >= full
