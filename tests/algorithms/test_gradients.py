"""Which tokens receive gradient, per loss, against each paper's rule (random data, no ties)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.algorithms import MicroBatch, build_algorithm
from agentrl.algorithms.losses import archer_loss, cispo_loss, clip_cov_loss, kl_cov_loss, ppo_loss
from agentrl.algorithms.ops import masked_quantile

from .helpers import close

SETTINGS = settings(max_examples=15, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def _data(seed: int, b: int = 4, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g) * 3
    log_r = torch.randn(b, t, generator=g) * 0.8  # ratios spread over both clip sides
    old = logp - log_r
    adv = torch.randn(b, t, generator=g)
    m = torch.rand(b, t, generator=g) < 0.8
    return logp, old, adv, m, torch.exp(log_r)


def _grad(fn, logp):
    lp = logp.clone().requires_grad_(True)
    loss = fn(lp)
    loss = loss[0] if isinstance(loss, tuple) else loss
    loss.backward()
    return lp.grad


def _ppo_dead(r, adv, lo, hi, c):
    dead = ((adv > 0) & (r > 1 + hi)) | ((adv < 0) & (r < 1 - lo))
    if c is not None:
        dead |= (adv < 0) & (r > c)
    return dead | (adv == 0)


@SETTINGS
@given(seeds, st.sampled_from([None, 1.5, 3.0]))
def test_ppo_gradient_rule(seed, c):
    # zero gradient exactly on: A>0 & r>1+eps_high, A<0 & r<1-eps_low, A<0 & r>c (dual clip), masked
    logp, old, adv, m, r = _data(seed)
    g = _grad(lambda lp: ppo_loss(logprobs=lp, proximal_logprobs=old, advantages=adv, loss_mask=m,
                                  eps_low=0.2, eps_high=0.28, clip_ratio_c=c), logp)
    dead = _ppo_dead(r, adv, 0.2, 0.28, c) | ~m
    assert torch.equal(g == 0, dead)
    # live tokens: d(-A r)/dlogp / N = -A r / N
    close(g[~dead], (-adv * r / m.sum())[~dead], atol=1e-6, rtol=1e-5)


@SETTINGS
@given(seeds)
def test_cispo_every_valid_token_keeps_gradient(seed):
    # CISPO: clipped weights still pass gradient through logprobs: grad = -clip(r, -9, 1.2) * A / N
    logp, old, adv, m, r = _data(seed)
    g = _grad(lambda lp: cispo_loss(logprobs=lp, proximal_logprobs=old, advantages=adv, loss_mask=m), logp)
    assert torch.equal(g != 0, m & (adv != 0))
    close(g[m], (-r.clamp(-9.0, 1.2) * adv / m.sum())[m], atol=1e-6, rtol=1e-5)


@SETTINGS
@given(seeds)
def test_clip_cov_selected_tokens_get_no_gradient(seed):
    # selected (zeroed) tokens: exactly max(1, floor(ratio*N)) candidates, or all if fewer; the rest
    # follow PPO with eps 1 (lower bound 0, upper 2), no dual clip
    logp, old, adv, m, r = _data(seed)
    gen = torch.Generator().manual_seed(seed)
    g = _grad(lambda lp: clip_cov_loss(logprobs=lp, proximal_logprobs=old, advantages=adv, loss_mask=m,
                                       generator=gen, clip_cov_ratio=0.2, clip_cov_lb=-1.0, clip_cov_ub=1.0), logp)
    ppo_dead = _ppo_dead(r, adv, 1.0, 1.0, None) | ~m
    a = adv[m].mean()
    lpm = logp[m].mean()
    cov = (adv - a) * (logp - lpm)
    cand = m & ~(((adv > 0) & (r > 2)) | ((adv < 0) & (r < 0))) & (cov > -1) & (cov < 1)
    selected = (g == 0) & ~ppo_dead
    assert not (selected & ~cand).any()
    n_clip = max(1, int(0.2 * int(m.sum())))
    assert int(selected.sum()) == min(n_clip, int(cand.sum()))


@SETTINGS
@given(seeds)
def test_kl_cov_no_clipping_and_penalty_on_top_covariance(seed):
    logp, old, adv, m, r = _data(seed)
    g = _grad(lambda lp: kl_cov_loss(logprobs=lp, proximal_logprobs=old, advantages=adv, loss_mask=m,
                                     kl_cov_ratio=0.2), logp)
    n = m.sum()
    cov = torch.where(m, (adv - adv[m].mean()) * (logp - logp[m].mean()), torch.tensor(-float("inf")))
    k = max(1, int(0.2 * int(n)))
    top = torch.zeros_like(m).reshape(-1)
    top[cov.reshape(-1).topk(k).indices] = True
    top = top.reshape(m.shape)
    want = (-adv * r + torch.where(top, torch.sign(logp - old), torch.zeros(()))) / n
    close(g, torch.where(m, want, torch.zeros(())), atol=1e-6, rtol=1e-5)


@SETTINGS
@given(seeds)
def test_archer_clip_ranges_follow_entropy_groups(seed):
    logp, old, adv, m, r = _data(seed)
    ent = torch.rand(logp.shape, generator=torch.Generator().manual_seed(seed + 1)) * 3
    g = _grad(lambda lp: archer_loss(logprobs=lp, proximal_logprobs=old, advantages=adv, loss_mask=m, entropy=ent,
                                     kl_coef_low=0.0), logp)
    q = masked_quantile(ent, m, 0.8, dim=-1).unsqueeze(-1)
    high = m & (ent > q)
    dead_low = _ppo_dead(r, adv, 0.2, 0.2, 10.0)
    dead_high = _ppo_dead(r, adv, 0.5, 0.5, 10.0)
    dead = torch.where(high, dead_high, dead_low) | ~m
    assert torch.equal(g == 0, dead)


@SETTINGS
@given(seeds)
def test_forking_mask_removes_gradient_of_low_entropy_tokens(seed):
    logp, old, adv, m, r = _data(seed)
    ent = torch.rand(logp.shape, generator=torch.Generator().manual_seed(seed + 2)) * 3
    algo = build_algorithm({"loss": {"name": "ppo", "eps_high": 0.28, "clip_ratio_c": 10.0},
                            "token_mask": {"name": "forking_tokens", "top_quantile": 0.2}})
    g = _grad(lambda lp: algo.loss(MicroBatch(logprobs=lp, proximal_logprobs=old, advantages=adv, loss_mask=m,
                                              entropy=ent)), logp)
    tau = torch.quantile(ent[m], 0.8)
    selected = m & (ent >= tau)
    dead = _ppo_dead(r, adv, 0.2, 0.28, 10.0) | ~selected
    assert torch.equal(g == 0, dead)
    # denominator stays all valid tokens
    close(g[~dead], (-adv * r / m.sum())[~dead], atol=1e-6, rtol=1e-5)


def test_entropy_bonus_gradient_goes_to_entropy():
    # entropy_coef 0.01, token-mean over 3 valid tokens: d loss / d H = -0.01/3 on valid tokens
    ent = torch.tensor([[0.5, 1.0, 2.0, 7.0]], requires_grad=True)
    m = torch.tensor([[True, True, True, False]])
    lp = torch.zeros(1, 4)
    algo = build_algorithm({"entropy_coef": 0.01})
    loss, _ = algo.loss(MicroBatch(logprobs=lp, proximal_logprobs=lp, advantages=torch.zeros(1, 4), loss_mask=m,
                                   entropy=ent))
    loss.backward()
    close(ent.grad, [[-0.01 / 3] * 3 + [0.0]])
