"""Controllers: docs/methods.md worked examples, documented directions, state round trips."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.algorithms.aggregation import make_aggregate
from agentrl.algorithms.controllers import (BAPOController, EntroPICController, LossView, ProRLController,
                                            SkyworkEntropyController, StepStats)
from agentrl.algorithms.losses import ppo_loss

from .helpers import close, ones_mask, row


# ---------------------------------------------------------------- BAPO (docs/methods.md §8e)
def test_bapo_worked_example():
    # target 1, start (0.6, 1.2), max (0.8, 2.0), steps 0.05; r = [2, .5, 1, 1.2], A = [+1, +1, -1, -1]
    # pos = min(2, c_high) + 0.5; neg = max(1, c_low) + max(1.2, c_low) = 2.2 for c_low <= 1
    # lower loop: ratio 1.7/2.2 unchanged -> c_low runs to 0.8
    # upper loop: c_high 1.70 -> 2.2/(2.2+1e-8) < 1; 1.75 -> 2.25/2.2 = 1.0227 -> stop
    c = BAPOController()
    c_low, c_high, ratio = c.search(ratio=row(2.0, 0.5, 1.0, 1.2), advantages=row(1, 1, -1, -1), loss_mask=ones_mask(4))
    close(c_low, 0.8)
    close(c_high, 1.75)
    close(ratio, 2.25 / (2.2 + 1e-8))
    # final loss with clip(r, 0.8, 1.75) and dual clip 3: [-1.75, -0.5, 1.0, 1.2] -> mean -0.0125
    logp = row(0.0, 0.0, 0.0, 0.0, requires_grad=True)
    old = logp.detach() - row(2.0, 0.5, 1.0, 1.2).log()
    view = LossView(logprobs=logp, proximal_logprobs=old, advantages=row(1, 1, -1, -1), loss_mask=ones_mask(4),
                    aggregate=make_aggregate("token-mean"))
    out = c.micro_batch(view)
    loss, _ = ppo_loss(logprobs=logp, proximal_logprobs=old, advantages=row(1, 1, -1, -1), loss_mask=ones_mask(4),
                       clip_ratio_c=3.0, **out.loss_kwargs)
    close(loss, -0.0125)
    close(out.metrics["bapo/c_high"], 1.75)
    assert c.state_dict() == {}


def test_bapo_target_met_at_start_keeps_start_bounds_and_no_negatives_is_inf():
    # pos 1.2 (r=2 capped) vs neg 0.5: ratio 2.4 >= 1 -> bounds stay (0.6, 1.2)
    c = BAPOController()
    lo, hi, _ = c.search(ratio=row(2.0, 0.5), advantages=row(1, -1), loss_mask=ones_mask(2))
    close(lo, 0.6)
    close(hi, 1.2)
    lo, hi, ratio = c.search(ratio=row(2.0, 0.5), advantages=row(1, 1), loss_mask=ones_mask(2))
    assert math.isinf(float(ratio)) and float(hi) == pytest.approx(1.2)


def test_bapo_paper_metric_lower_loop_can_succeed():
    # paper metric: only tokens inside the clip range count. pos token r = 0.5, A = +1 (inside
    # c_high): pos 0.5. neg token r = 0.72, A = -1: counted while r >= c_low:
    # c_low 0.6, 0.65, 0.7 -> neg 0.72, ratio 0.694 < 1; c_low 0.75 -> filtered, neg 0 -> inf -> stop.
    # c_high stays at its start 1.2.
    c = BAPOController(metric="paper")
    lo, hi, _ = c.search(ratio=row(0.5, 0.72), advantages=row(1, -1), loss_mask=ones_mask(2))
    close(lo, 0.75)
    close(hi, 1.2)
    # code metric on the same data: raising c_low only raises neg -> runs to 0.8, then c_high cannot
    # help (pos token r=0.5 below every c_high) -> 2.0
    lo, hi, _ = BAPOController().search(ratio=row(0.5, 0.72), advantages=row(1, -1), loss_mask=ones_mask(2))
    close(lo, 0.8)
    close(hi, 2.0)


def test_bapo_rejects_epsilon_style_bounds():
    with pytest.raises(ValueError, match="absolute"):
        BAPOController(ratio_lower_start=0.2, ratio_upper_start=0.28)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0.2, 3.0), st.sampled_from([-1.0, -0.5, 0.5, 1.0])), min_size=1, max_size=12))
def test_bapo_bounds_only_widen_and_stop_at_first_success(pairs):
    # Direction: bounds never move inward; c_high moves only when the target was unmet after the
    # lower loop; with the code metric, pos/neg at the chosen bounds >= target unless at the maxima.
    r = torch.tensor([[p[0] for p in pairs]])
    a = torch.tensor([[p[1] for p in pairs]])
    c = BAPOController()
    lo, hi, ratio = c.search(ratio=r, advantages=a, loss_mask=torch.ones_like(r, dtype=torch.bool))
    assert 0.6 - 1e-9 <= float(lo) <= 0.8 + 1e-9 and 1.2 - 1e-9 <= float(hi) <= 2.0 + 1e-9
    if float(ratio) < 1.0:
        assert float(lo) == pytest.approx(0.8) and float(hi) == pytest.approx(2.0)
    if float(hi) > 1.2 + 1e-9:
        assert float(lo) == pytest.approx(0.8)


# ---------------------------------------------------------------- EntroPIC (docs/methods.md §9e)
def test_entropic_worked_example():
    # target .1, Kp 1, Ki .01: H .3 -> e .2 -> alpha .2, I .2; H .05 -> e -.05 -> alpha -.05 + .002 = -.048, I .15
    c = EntroPICController()
    close(c.control(torch.tensor(0.3)), 0.2)
    close(c.state_dict()["integral"], 0.2)
    close(c.control(torch.tensor(0.05)), -0.048)
    close(c.state_dict()["integral"], 0.15)


def test_entropic_adjustment_reweights_high_probability_tokens():
    # alpha .2 (fresh controller, micro-batch entropy .3); logp [-.01, -.03, -.5, -2], A [+1,-1,+1,-1], r=1
    # hp: logp > ln .95 = -0.051293 -> t1, t2; adjust = .2 * mean(-1, -1) = -0.2
    # d/dlogp: base -A r/4 = [-.25, .25, -.25, .25]; adjust .2 * (-r|A|)/2 -> -0.1 on t1, t2
    # -> t1 -0.35 (x1.4), t2 0.15 (x0.6)
    c = EntroPICController()
    logp = row(-0.01, -0.03, -0.5, -2.0, requires_grad=True)
    adv = row(1, -1, 1, -1)
    ent = torch.full((1, 4), 0.3)
    view = LossView(logprobs=logp, proximal_logprobs=logp.detach(), advantages=adv, loss_mask=ones_mask(4),
                    aggregate=make_aggregate("token-mean"), entropy=ent)
    out = c.micro_batch(view)
    close(out.extra_loss, -0.2)
    close(out.metrics["entropic/alpha"], 0.2)
    base, _ = ppo_loss(logprobs=logp, proximal_logprobs=logp.detach(), advantages=adv, loss_mask=ones_mask(4))
    (base + out.extra_loss).backward()
    close(logp.grad, [[-0.35, 0.15, -0.25, 0.25]])


def test_entropic_disabled_with_negative_target_and_fraction_weighting():
    c = EntroPICController(target_entropy=-1.0)
    close(c.control(torch.tensor(5.0)), 0.0)
    close(c.state_dict()["integral"], 0.0)
    c2 = EntroPICController()
    c2.control(torch.tensor(0.3), micro_batch_fraction=0.25)  # I += 0.2 * 0.25
    close(c2.state_dict()["integral"], 0.05)


@settings(max_examples=20, deadline=None)
@given(st.floats(0.0, 3.0), st.floats(0.0, 3.0))
def test_entropic_direction(h, target):
    # From zero integral: alpha has the sign of H - target (above target -> alpha > 0 -> lower entropy)
    c = EntroPICController(target_entropy=target)
    alpha = float(c.control(torch.tensor(h)))
    if h > target + 1e-6:
        assert alpha > 0
    elif h < target - 1e-6:
        assert alpha < 0
    assert alpha == pytest.approx(max(-1.0, min(1.0, h - target)), abs=1e-6)  # kp 1, I 0: clip(e, -1, 1)


# ---------------------------------------------------------------- Skywork (docs/methods.md §10e)
def test_skywork_worked_example_table():
    # delta 1e-4, target .2, c0 0; e = [.35, .25, .18, .15, .19, .22]
    # coef after: [0, 0, 1e-4, 2e-4, 3e-4, 2e-4]; gate [0, 0, 1, 1, 1, 0]; realised [0,0,1e-4,2e-4,3e-4,0]
    c = SkyworkEntropyController()
    coefs, realised = [], []
    for e in [0.35, 0.25, 0.18, 0.15, 0.19, 0.22]:
        c.end_train_step(StepStats(rollout_nll=torch.tensor(e)))
        coefs.append(float(c.state_dict()["coef"]))
        realised.append(float(c.effective_coef))
    close(coefs, [0, 0, 1e-4, 2e-4, 3e-4, 2e-4], atol=1e-9, rtol=0)
    close(realised, [0, 0, 1e-4, 2e-4, 3e-4, 0], atol=1e-9, rtol=0)


def test_skywork_loss_term_and_strictness():
    # gate on, coef 2e-4: extra = -2e-4 * token-mean(H) = -2e-4 * 1.5; grad on H = -2e-4/2 each
    c = SkyworkEntropyController(coef_init=2e-4)
    c.update(torch.tensor(0.1))  # below target -> coef 3e-4, gate 1
    ent = row(1.0, 2.0, requires_grad=True)
    view = LossView(logprobs=row(-1.0, -1.0), proximal_logprobs=row(-1.0, -1.0), advantages=row(0, 0),
                    loss_mask=ones_mask(2), aggregate=make_aggregate("token-mean"), entropy=ent)
    out = c.micro_batch(view)
    close(out.extra_loss, -3e-4 * 1.5)
    out.extra_loss.backward()
    close(ent.grad, [[-1.5e-4, -1.5e-4]])
    # strict '<' (Skywork) vs '<=' (TRL) at exactly the target
    s, n = SkyworkEntropyController(), SkyworkEntropyController(strict=False)
    s.update(torch.tensor(0.2))
    n.update(torch.tensor(0.2))
    assert float(s.effective_coef) == 0.0 and float(n.effective_coef) == pytest.approx(1e-4)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8), st.floats(0.05, 0.5))
def test_skywork_direction(measurements, target):
    # coefficient rises when entropy is below target and falls (to >= min) when above, within bounds
    c = SkyworkEntropyController(target_entropy=target, delta=1e-3, coef_max=5e-3)
    for e in measurements:
        before = float(c.state_dict()["coef"])
        c.update(torch.tensor(e))
        after = float(c.state_dict()["coef"])
        if e < target - 1e-6:
            assert after >= before - 1e-9 and float(c.state_dict()["gate"]) == 1.0
        elif e > target + 1e-6:
            assert after <= before + 1e-9 and float(c.state_dict()["gate"]) == 0.0
        assert 0.0 <= after <= 5e-3 + 1e-9


# ---------------------------------------------------------------- ProRL
def test_prorl_interval_and_kl_threshold_resets():
    c = ProRLController(reset_interval_steps=3)
    resets = [bool(c.end_train_step(StepStats()).reset_reference) for _ in range(7)]
    assert resets == [False, False, True, False, False, True, False]
    assert float(c.state_dict()["resets"]) == 2
    k = ProRLController(reset_kl_threshold=0.05, min_steps_between_resets=2)
    kls = [0.01, 0.06, 0.07, 0.09, 0.01]
    # step1 .01 no; step2 .06 > .05 and 2 steps since 0 -> reset; step3 .07 but only 1 since -> no;
    # step4 .09, 2 since -> reset; step5 no
    out = [bool(k.end_train_step(StepStats(kl_ref=torch.tensor(x))).reset_reference) for x in kls]
    assert out == [False, True, False, True, False]
    with pytest.raises(ValueError, match="KL"):
        ProRLController(reset_kl_threshold=0.1).end_train_step(StepStats())


def test_controller_state_round_trip():
    a = EntroPICController()
    a.control(torch.tensor(0.4))
    b = EntroPICController()
    b.load_state_dict(a.state_dict())
    close(b.state_dict()["integral"], a.state_dict()["integral"])
    s = SkyworkEntropyController()
    s.update(torch.tensor(0.0))
    s2 = SkyworkEntropyController()
    s2.load_state_dict({k: float(v) for k, v in s.state_dict().items()})
    close(s2.effective_coef, s.effective_coef)
    p = ProRLController(reset_interval_steps=2)
    p.end_train_step(StepStats())
    p2 = ProRLController(reset_interval_steps=2)
    p2.load_state_dict(p.state_dict())
    assert bool(p2.end_train_step(StepStats()).reset_reference)
    with pytest.raises(KeyError):
        p2.load_state_dict({"bogus": 1.0})
    assert {k: float(v) for k, v in p2.state_dict().items()} == {"step": 2.0, "last_reset": 2.0, "resets": 1.0}  # the refused load changed nothing


def _reference_bapo(r, a, metric, target=1.0, low=(0.6, 0.8, 0.05), high=(1.2, 2.0, 0.05), eps=1e-8):
    """Direct port of the reference while-loops (recipe/bapo/policy_loss.py), float64, Python."""
    def ratio(cl, ch):
        pos = neg = 0.0
        for ri, ai in zip(r, a):
            if metric == "code":
                eff = min(ri, ch) if ai >= 0 else max(ri, cl)
                pos += max(eff * ai, 0.0)
                neg += max(-eff * ai, 0.0)
            else:
                if ai >= 0 and ri <= ch:
                    pos += ri * ai
                if ai < 0 and ri >= cl:
                    neg += -ri * ai
        return math.inf if neg <= 0 else pos / (neg + eps)

    cl, ch = low[0], high[0]
    cur = ratio(cl, ch)
    while cur < target and cl < low[1]:
        cl = min(cl + low[2], low[1])
        cur = ratio(cl, ch)
        if cur >= target:
            break
    while cur < target and ch < high[1]:
        ch = min(ch + high[2], high[1])
        cur = ratio(cl, ch)
        if cur >= target:
            break
    return cl, ch


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0.05, 4.0), st.floats(-2.0, 2.0)), min_size=1, max_size=16),
       st.sampled_from(["code", "paper"]), st.floats(0.3, 2.0))
def test_bapo_vectorised_search_matches_reference_loops(pairs, metric, target):
    r = [p[0] for p in pairs]
    a = [p[1] for p in pairs]
    want = _reference_bapo(r, a, metric, target)
    got = BAPOController(metric=metric, target_ratio=target).search(
        ratio=torch.tensor([r], dtype=torch.float64), advantages=torch.tensor([a], dtype=torch.float64),
        loss_mask=torch.ones(1, len(r), dtype=torch.bool))
    assert float(got[0]) == pytest.approx(want[0], abs=1e-12) and float(got[1]) == pytest.approx(want[1], abs=1e-12)
