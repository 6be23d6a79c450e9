"""Hypothesis property tests (small max_examples so the suite stays fast)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.algorithms import build_algorithm
from agentrl.algorithms.estimators import gigpo, grpo, rloo
from agentrl.algorithms.losses import archer_loss, cispo_loss, clip_cov_loss, kl_cov_loss, ppo_loss
from agentrl.algorithms.ops import compact_ids, masked_quantile
from agentrl.algorithms.shaping import empg, entropy_advantage

from .helpers import close

SETTINGS = settings(max_examples=20, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def _batch(seed: int, b: int = 3, t: int = 7, p_mask: float = 0.7):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g) * 3
    old = logp + 0.6 * torch.randn(b, t, generator=g)
    adv = torch.randn(b, t, generator=g)
    m = torch.rand(b, t, generator=g) < p_mask
    m[:, 0] = True
    ent = torch.rand(b, t, generator=g) * 2
    ref = logp + 0.3 * torch.randn(b, t, generator=g)
    return g, logp, old, adv, m, ent, ref


LOSSES = {
    "ppo": lambda **k: ppo_loss(**k, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0),
    "cispo": lambda **k: cispo_loss(**k),
    "clip_cov": lambda **k: clip_cov_loss(**k, generator=torch.Generator().manual_seed(5), clip_cov_ratio=0.3,
                                          clip_cov_lb=-10.0, clip_cov_ub=10.0),
    "kl_cov": lambda **k: kl_cov_loss(**k, kl_cov_ratio=0.3),
    "archer": lambda _ent, _ref, **k: archer_loss(**k, entropy=_ent, ref_logprobs=_ref),
}


def _call(name, logp, old, adv, m, ent, ref):
    kw = dict(logprobs=logp, proximal_logprobs=old, advantages=adv, loss_mask=m)
    if name == "archer":
        kw.update(_ent=ent, _ref=ref)
    return LOSSES[name](**kw)


# ---------------------------------------------------------------- group advantages sum to zero
@SETTINGS
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=12), st.integers(1, 4), seeds)
def test_group_advantages_sum_to_zero(rewards, n_groups, seed):
    g = torch.Generator().manual_seed(seed)
    r = torch.tensor(rewards)
    gid = torch.randint(0, n_groups, (len(rewards),), generator=g) * 7 + 3  # arbitrary id values
    for out in (grpo(rewards=r, group_ids=gid).advantages, grpo(rewards=r, group_ids=gid, normalize_std=False).advantages,
                rloo(rewards=r, group_ids=gid).advantages):
        for k in gid.unique():
            sel = gid == k
            if sel.sum() > 1:
                assert abs(float(out[sel].sum())) < 1e-4 * (1 + float(r.abs().max()))
    # all-equal rewards give zero advantages
    assert not grpo(rewards=torch.full((4,), 2.5), group_ids=torch.zeros(4, dtype=torch.long)).advantages.any()


@SETTINGS
@given(seeds)
def test_gigpo_step_advantages_sum_to_zero_per_step_group(seed):
    g = torch.Generator().manual_seed(seed)
    b, s = 6, 3
    tm = torch.rand(b, s, generator=g) < 0.8
    tm[:, 0] = True
    anchors = torch.randint(0, 2, (b, s), generator=g)
    gid = torch.randint(0, 2, (b,), generator=g)
    ret = torch.randn(b, s, generator=g)
    zero_r = torch.zeros(b)  # A_E = 0 so only the step part remains
    out = gigpo(rewards=zero_r, group_ids=gid, turn_returns=ret, turn_mask=tm, anchor_ids=anchors).advantages
    ids = compact_ids(gid.unsqueeze(1).expand(b, s).reshape(-1), anchors.reshape(-1))
    flat, valid = out.reshape(-1), tm.reshape(-1)
    for k in ids[valid].unique():
        sel = (ids == k) & valid
        assert abs(float(flat[sel].sum())) < 1e-5


# ---------------------------------------------------------------- masked positions are inert
@pytest.mark.parametrize("name", sorted(LOSSES))
@SETTINGS
@given(seed=seeds, junk=st.floats(-30, 30))
def test_masked_positions_change_neither_loss_nor_gradient(name, seed, junk):
    _, logp, old, adv, m, ent, ref = _batch(seed)
    out = []
    for variant in range(2):
        lp = logp.clone()
        o, a, e, r = old.clone(), adv.clone(), ent.clone(), ref.clone()
        if variant:
            for x in (lp, o, a, e, r):
                x[~m] = junk
        lp.requires_grad_(True)
        loss, _ = _call(name, lp, o, a, m, e, r)
        loss.backward()
        out.append((loss.detach(), lp.grad.clone()))
    close(out[0][0], out[1][0], atol=1e-6, rtol=1e-5)
    close(out[0][1], out[1][1], atol=1e-6, rtol=1e-5)
    assert not out[1][1][~m].any()


@pytest.mark.parametrize("config", [{}, {"loss": {"name": "clip_cov"}}, {"controllers": ["entropic"]},
                                    {"controllers": ["bapo"]}, {"token_mask": "forking_tokens"},
                                    {"kl": {"coef": 0.1}, "entropy_coef": 0.01}],
                         ids=["ppo", "clip_cov", "entropic", "bapo", "forking", "kl_entropy"])
@settings(max_examples=8, deadline=None)
@given(seed=seeds, junk=st.floats(-30, 30))
def test_composed_loss_masked_positions_inert(config, seed, junk):
    _, logp, old, adv, m, ent, ref = _batch(seed)
    from agentrl.algorithms import MicroBatch
    results = []
    for variant in range(2):
        algo = build_algorithm(config)
        xs = [x.clone() for x in (logp, old, adv, ent, ref)]
        if variant:
            for x in xs:
                x[~m] = junk
        lp, e = xs[0].requires_grad_(True), xs[3].requires_grad_(True)
        loss, metrics = algo.loss(MicroBatch(logprobs=lp, proximal_logprobs=xs[1], advantages=xs[2], loss_mask=m,
                                             entropy=e, ref_logprobs=xs[4]))
        loss.backward()
        e_grad = torch.zeros_like(e) if e.grad is None else e.grad.clone()
        results.append((loss.detach(), lp.grad.clone(), e_grad, metrics))
    close(results[0][0], results[1][0], atol=1e-6, rtol=1e-5)
    close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)
    close(results[0][2], results[1][2], atol=1e-6, rtol=1e-5)
    for k, v in results[0][3].items():
        close(v, results[1][3][k], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- at ratio 1 clipped == unclipped
@SETTINGS
@given(seeds, st.floats(0.01, 0.9), st.floats(0.01, 3.0), st.floats(1.01, 10.0))
def test_ratio_one_clipped_equals_unclipped(seed, eps_low, eps_high, c):
    _, logp, _, adv, m, ent, ref = _batch(seed)
    n = m.sum()

    def unclipped(lp):  # token-mean of -A * r with r = exp(lp - sg(lp)) == 1
        return (-(adv * torch.exp(lp - lp.detach()))[m]).sum() / n

    lp0 = logp.clone().requires_grad_(True)
    want = unclipped(lp0)
    want.backward()
    cases = {
        "ppo": lambda lp: ppo_loss(logprobs=lp, proximal_logprobs=lp.detach(), advantages=adv, loss_mask=m,
                                   eps_low=eps_low, eps_high=eps_high, clip_ratio_c=c)[0],
        "archer": lambda lp: archer_loss(logprobs=lp, proximal_logprobs=lp.detach(), advantages=adv, loss_mask=m,
                                         entropy=ent, kl_coef_low=0.0, low_entropy_eps_low=eps_low,
                                         high_entropy_eps_high=eps_high)[0],
        "clip_cov_no_candidates": lambda lp: clip_cov_loss(logprobs=lp, proximal_logprobs=lp.detach(), advantages=adv,
                                                           loss_mask=m, generator=torch.Generator(), eps_low=eps_low,
                                                           eps_high=eps_high, clip_cov_lb=5.0, clip_cov_ub=1.0)[0],
        "kl_cov": lambda lp: kl_cov_loss(logprobs=lp, proximal_logprobs=lp.detach(), advantages=adv, loss_mask=m,
                                         kl_cov_ratio=0.5)[0],
        "bapo": lambda lp: build_algorithm({"controllers": ["bapo"]}).loss(
            __import__("agentrl.algorithms", fromlist=["MicroBatch"]).MicroBatch(
                logprobs=lp, proximal_logprobs=lp.detach(), advantages=adv, loss_mask=m))[0],
    }
    for name, fn in cases.items():
        lp = logp.clone().requires_grad_(True)
        got = fn(lp)
        got.backward()
        close(got, want, atol=1e-6, rtol=1e-5)
        close(lp.grad, lp0.grad, atol=1e-6, rtol=1e-5)
    # CISPO at r = 1: weight 1, so its gradient is the unclipped policy gradient -A/N
    lp = logp.clone().requires_grad_(True)
    cispo_loss(logprobs=lp, proximal_logprobs=lp.detach(), advantages=adv, loss_mask=m)[0].backward()
    close(lp.grad, lp0.grad, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- shaping properties
@SETTINGS
@given(st.lists(st.tuples(st.floats(-5, 5).filter(lambda a: a == 0 or abs(a) > 1e-30), st.floats(0, 10)), min_size=1, max_size=20),
       st.floats(0.01, 2.0), st.floats(1.01, 10.0))
def test_entropy_advantage_never_flips_sign(pairs, alpha, kappa):
    # no advantages that are subnormal in float32: |A| = 1.4e-45 divided by kappa rounds back to
    # 1.4e-45, so A + psi underflows to 0 (found by hypothesis); float32 cannot keep psi < |A| there
    adv = torch.tensor([[p[0] for p in pairs]])
    ent = torch.tensor([[p[1] for p in pairs]])
    out, _ = entropy_advantage(advantages=adv, entropy=ent, loss_mask=torch.ones_like(adv, dtype=torch.bool),
                               alpha=alpha, kappa=kappa)
    assert torch.all(torch.sign(out) == torch.sign(adv))
    assert torch.all(out >= adv)  # psi >= 0
    assert torch.all((out - adv) <= adv.abs() / kappa + 1e-6)


@SETTINGS
@given(seeds, st.floats(0.1, 5.0), st.floats(0.0, 1.0))
def test_empg_scaling_has_batch_mean_one_and_final_mean_zero(seed, k, zeta):
    g = torch.Generator().manual_seed(seed)
    tm = torch.rand(4, 5, generator=g) < 0.7
    tm[0, 0] = True
    h = torch.rand(4, 5, generator=g) * 3
    a = torch.randn(4, 5, generator=g)
    out, m = empg(turn_advantages=a, step_entropy=h, turn_mask=tm, k=k, zeta=zeta)
    close(m["empg/g_mean"], 1.0, atol=1e-5, rtol=1e-5)
    assert abs(float(out[tm].mean())) < 1e-5
    assert not out[~tm].any()


@SETTINGS
@given(st.lists(st.floats(-100, 100), min_size=1, max_size=30), st.floats(0, 1), seeds)
def test_masked_quantile_matches_torch(values, q, seed):
    x = torch.tensor(values)
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(len(values), generator=g) < 0.7
    m[0] = True
    close(masked_quantile(x, m, q), torch.quantile(x[m], q), atol=1e-4, rtol=1e-5)
    xr = x.reshape(1, -1).expand(2, -1)
    mr = torch.stack([m, torch.ones_like(m)])
    got = masked_quantile(xr, mr, q, dim=-1)
    close(got, torch.stack([torch.quantile(x[m], q), torch.quantile(x, q)]), atol=1e-4, rtol=1e-5)
    assert math.isnan(float(masked_quantile(x, torch.zeros_like(m), q)))
