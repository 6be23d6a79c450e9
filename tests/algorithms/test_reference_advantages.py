"""Reference values for estimators, step-level credit, shaping, DAPO sampling, aggregation, KL."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.algorithms.aggregation import make_aggregate
from agentrl.algorithms.credit import (broadcast_turns, discounted_turn_returns, place_on_last_turn, turn_means,
                                       turn_token_counts)
from agentrl.algorithms.estimators import gigpo, grpo, nsr, psr, reinforce_pp_baseline, rloo, w_reinforce
from agentrl.algorithms.kl import kl_estimate
from agentrl.algorithms.sampling import dynamic_sampling_keep, overlong_penalty
from agentrl.algorithms.shaping import empg, entropy_advantage

from .helpers import close, t

B = torch.bool


# ---------------------------------------------------------------- GRPO / RLOO / REINFORCE++
def test_grpo_worked_example_and_dr_grpo():
    # [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3) = 0.57735 -> +/-0.5/0.57735 = +/-0.866025 (eps 1e-6)
    out = grpo(rewards=t([1.0, 0, 0, 1]), group_ids=t([7, 7, 7, 7]))
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    close(out.advantages, [a, -a, -a, a])
    assert out.level == "trajectory" and out.keep is None
    # Dr. GRPO: R - mean = +/-0.5
    close(grpo(rewards=t([1.0, 0, 0, 1]), group_ids=t([7, 7, 7, 7]), normalize_std=False).advantages,
          [0.5, -0.5, -0.5, 0.5])


def test_grpo_two_groups_singleton_and_all_equal():
    # group 3: [2, 2, 2] all equal -> 0; group 9: single member R = 4 -> mean 0, std 1 -> 4/(1+1e-6);
    # group 1: [0, 3] mean 1.5, std sqrt(4.5) = 2.12132 -> -/+ 0.707107
    out = grpo(rewards=t([2.0, 0.0, 2.0, 4.0, 3.0, 2.0]), group_ids=t([3, 1, 3, 9, 1, 3]))
    s = math.sqrt(4.5) + 1e-6
    close(out.advantages, [0.0, -1.5 / s, 0.0, 4 / (1 + 1e-6), 1.5 / s, 0.0])


def test_grpo_invalid_rows_left_out_of_statistics():
    # rows 0..2 of one group, row 2 failed (valid False): stats over [1, 0] -> mean .5, std .707107
    out = grpo(rewards=t([1.0, 0.0, 0.0]), group_ids=t([0, 0, 0]), valid=t([True, True, False]))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    close(out.advantages, [a, -a, 0.0])


def test_rloo_values():
    # [1, 0, 0, 1]: A_i = R_i - mean(others): 1 - 1/3 = 0.666667, 0 - 2/3 = -0.666667
    # singleton group R = 5 -> A = 5 (no baseline, verl)
    out = rloo(rewards=t([1.0, 0, 0, 1, 5]), group_ids=t([0, 0, 0, 0, 1]))
    close(out.advantages, [2 / 3, -2 / 3, -2 / 3, 2 / 3, 5.0])


def test_reinforce_pp_baseline_token_weighted_whitening():
    # Two groups: g0 rewards [1, 0] -> A0 = [0.5, -0.5]; g1 single row R=2 -> A0 = 2 (mean 0).
    # token counts [1, 3, 2]: tokens carry [0.5, -0.5, -0.5, -0.5, 2, 2]
    # mu = (0.5 - 1.5 + 4)/6 = 0.5; var (unbiased, 6 tokens) = (0 + 3*1 + 2*2.25)/5 = 1.5
    # A = (A0 - 0.5)/sqrt(1.5 + 1e-8) = [0, -0.816497, 1.224745]
    out = reinforce_pp_baseline(rewards=t([1.0, 0.0, 2.0]), group_ids=t([0, 0, 1]), token_counts=t([1, 3, 2]))
    s = math.sqrt(1.5 + 1e-8)
    close(out.advantages, [0.0, -1.0 / s, 1.5 / s])


# ---------------------------------------------------------------- PSR / NSR / W-REINFORCE (docs/methods.md §12e)
def test_psr_nsr_w_reinforce_worked_example():
    r = t([1.0, 0, 0, 1])
    p = psr(rewards=r)
    assert p.keep.tolist() == [True, False, False, True]
    close(p.advantages[p.keep.nonzero().squeeze(1)], [1.0, 1.0])
    n = nsr(rewards=r)
    assert n.keep.tolist() == [False, True, True, False]
    close(n.advantages[n.keep.nonzero().squeeze(1)], [-1.0, -1.0])
    w = w_reinforce(rewards=r)
    close(w.advantages, [0.1, -1.0, -1.0, 0.1])
    assert w.keep is None
    # paper scale +/-1 rewards give the same advantages (threshold 0.5)
    close(w_reinforce(rewards=t([1.0, -1, -1, 1])).advantages, [0.1, -1.0, -1.0, 0.1])
    # explicit correct flags win over rewards
    close(w_reinforce(rewards=t([0.0, 0.0]), correct=t([True, False]), positive_weight=0.5).advantages, [0.5, -1.0])


# ---------------------------------------------------------------- GiGPO (docs/methods.md §13e)
def test_gigpo_worked_example():
    # R = [1, 0, 1] -> A_E = R - 2/3 = [1/3, -2/3, 1/3] (one step each, so steps == trajectories)
    # all three at the same anchor: G = [0.9025, 0, 0.95], mean 0.6175 -> A_S = [0.285, -0.6175, 0.3325]
    ones = torch.ones(3, 1, dtype=B)
    out = gigpo(rewards=t([1.0, 0, 1]), group_ids=t([4, 4, 4]), turn_returns=t([[0.9025], [0.0], [0.95]]),
                turn_mask=ones, anchor_ids=t([[8], [8], [8]]))
    assert out.level == "turn"
    close(out.advantages, [[1 / 3 + 0.285], [-2 / 3 - 0.6175], [1 / 3 + 0.3325]])
    # step_weight 0 leaves the episode advantage alone
    out0 = gigpo(rewards=t([1.0, 0, 1]), group_ids=t([4, 4, 4]), turn_returns=t([[0.9025], [0.0], [0.95]]),
                 turn_mask=ones, anchor_ids=t([[8], [8], [8]]), step_weight=0.0)
    close(out0.advantages, [[1 / 3], [-2 / 3], [1 / 3]])


def test_gigpo_singletons_cross_steps_and_missing_turns():
    # Trajectory a: 2 turns, R=1, returns [0.95, 1]; b: 1 turn, R=0, return [0]; same group.
    # steps mode: rows counted per turn -> R rows [1, 1, 0], mean 2/3 -> A_E(a) = 1/3, A_E(b) = -2/3
    # trajectories mode: mean 0.5 -> +/-0.5
    # anchors: a0 and b0 share anchor 5 -> G [0.95, 0], mean 0.475 -> A_S = +/-0.475; a1 alone -> 0
    turn_mask = t([[True, True], [True, False]])
    args = dict(rewards=t([1.0, 0.0]), group_ids=t([0, 0]), turn_returns=t([[0.95, 1.0], [0.0, 0.0]]),
                turn_mask=turn_mask, anchor_ids=t([[5, 6], [5, -1]]))
    close(gigpo(**args).advantages, [[1 / 3 + 0.475, 1 / 3], [-2 / 3 - 0.475, 0.0]])
    close(gigpo(**args, episode_stats_over="trajectories").advantages, [[0.5 + 0.475, 0.5], [-0.5 - 0.475, 0.0]])
    # a trajectory alone in its group with one turn: A_E = R (mean 0, std 1), A_S = 0
    solo = gigpo(rewards=t([3.0]), group_ids=t([1]), turn_returns=t([[3.0]]), turn_mask=t([[True]]),
                 anchor_ids=t([[0]]), mode="mean_std_norm")
    close(solo.advantages, [[3.0 / (1 + 1e-6)]])


def test_gigpo_same_anchor_in_different_groups_not_merged():
    # anchors equal (7) but groups differ -> two singleton step groups -> A_S = 0 each;
    # each group single row -> A_E = R.
    out = gigpo(rewards=t([1.0, 0.0]), group_ids=t([0, 1]), turn_returns=t([[1.0], [0.0]]),
                turn_mask=torch.ones(2, 1, dtype=B), anchor_ids=t([[7], [7]]))
    close(out.advantages, [[1.0], [0.0]])


# ---------------------------------------------------------------- step-level credit
def test_turn_helpers():
    # tokens: prompt(-1) t0 t0 tool(-1) t1 pad ; row 2: t0 t0 t0 pad...
    turn_ids = t([[-1, 0, 0, -1, 1, -1], [0, 0, 0, -1, -1, -1]])
    lm = turn_ids >= 0
    close(turn_token_counts(turn_ids, lm, 3), [[2, 1, 0], [3, 0, 0]])
    ent = t([[9.0, 1.0, 3.0, 9.0, 5.0, 9.0], [1.0, 2.0, 3.0, 9.0, 9.0, 9.0]])
    means, counts = turn_means(ent, turn_ids, lm, 2)
    close(means, [[2.0, 5.0], [2.0, 0.0]])  # turn 0 of row 0: (1+3)/2
    close(broadcast_turns(t([[10.0, 20.0], [30.0, 40.0]]), turn_ids, lm),
          [[0, 10, 10, 0, 20, 0], [30, 30, 30, 0, 0, 0]])
    tm = t([[True, True, False], [True, False, False]])
    close(place_on_last_turn(t([1.0, 2.0]), tm), [[0, 1, 0], [2, 0, 0]])


def test_discounted_turn_returns():
    # r = [0, 0, 1], gamma 0.95: G = [0.9025, 0.95, 1]; second row r = [1, 2], G = [1 + 0.95*2, 2]
    tr = t([[0.0, 0.0, 1.0], [1.0, 2.0, 7.0]])
    tm = t([[True, True, True], [True, True, False]])
    close(discounted_turn_returns(tr, tm, 0.95), [[0.9025, 0.95, 1.0], [2.9, 2.0, 0.0]])
    close(discounted_turn_returns(tr, tm, 1.0), [[1.0, 1.0, 1.0], [3.0, 2.0, 0.0]])
    with pytest.raises(ValueError):
        discounted_turn_returns(tr, tm, 1.5)


# ---------------------------------------------------------------- shaping
def test_entropy_advantage_worked_example():
    # alpha .4, kappa 2: psi = min(.4 H, |A|/2)
    adv = t([[1.0, 1.0, -1.0, -0.2, 0.0, 5.0]])
    ent = t([[0.5, 3.0, 3.0, 0.1, 2.0, 1.0]])
    m = t([[True, True, True, True, True, False]])
    out, metrics = entropy_advantage(advantages=adv, entropy=ent, loss_mask=m)
    close(out, [[1.2, 1.5, -0.5, -0.16, 0.0, 0.0]])
    close(metrics["entropy_adv/psi_mean"], (0.2 + 0.5 + 0.5 + 0.04 + 0) / 5)
    with pytest.raises(ValueError):
        entropy_advantage(advantages=adv, entropy=ent, loss_mask=m, kappa=1.0)


def test_empg_worked_example():
    # docs/methods.md §7e: Hn = [0, .6667, .3333, 1]; g = [1.539748, 0.790533, 1.103278, 0.566442]
    # A_mod = [1.591090, 0.790533, -1.066490, -0.566442]; mean 0.187173 -> final below
    out, m = empg(turn_advantages=t([[1.0, 1.0], [-1.0, -1.0]]), step_entropy=t([[0.2, 1.0], [0.6, 1.4]]),
                  turn_mask=torch.ones(2, 2, dtype=B))
    close(out, [[1.403917, 0.603360], [-1.253662, -0.753614]], atol=2e-6, rtol=0)
    close(m["empg/g_mean"], 1.0)
    close(m["empg/g_max"], 1.539748, atol=2e-6, rtol=0)


def test_empg_single_step_and_missing_turns():
    # One step in the batch: max == min -> Hn = 0 -> g = 1, no next step -> A_mod = A, zero-mean -> 0.
    out, _ = empg(turn_advantages=t([[2.0, 0.0]]), step_entropy=t([[0.7, 0.0]]), turn_mask=t([[True, False]]))
    close(out, [[0.0, 0.0]])
    # Two trajectories, one step each, H [0, 1]: Hn [0, 1]; e = [1, e^-1], mean (1+e^-1)/2
    # g = [2/(1+e^-1), 2e^-1/(1+e^-1)]; no bonus (no next steps); A = [1, 1] -> A_mod = g; minus mean 1
    out2, _ = empg(turn_advantages=t([[1.0, 0.0], [1.0, 0.0]]), step_entropy=t([[0.0, 0.0], [1.0, 0.0]]),
                   turn_mask=t([[True, False], [True, False]]))
    d = 1 + math.exp(-1)
    close(out2, [[2 / d - 1, 0.0], [2 * math.exp(-1) / d - 1, 0.0]])


# ---------------------------------------------------------------- DAPO sampling
def test_overlong_penalty_worked_example():
    # L_max 20480, L_cache 4096 -> expected 16384; 18432 -> -(2048/4096) = -0.5; 20480 -> -1
    pen = overlong_penalty(response_lengths=t([16000, 16384, 18432, 20480]), max_response_tokens=20480,
                           buffer_tokens=4096)
    close(pen, [0.0, 0.0, -0.5, -1.0])
    close(overlong_penalty(response_lengths=t([18432]), max_response_tokens=20480, buffer_tokens=4096,
                           penalty_factor=0.5), [-0.25])


def test_dynamic_sampling_keep():
    # group 0 acc [1,1,1,1] dropped; group 1 [1,0,0,1] kept; group 2 single sample kept;
    # group 3 [0, 1(failed)] -> only one valid member -> kept as singleton, failed row dropped
    keep = dynamic_sampling_keep(metric=t([1.0, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1]),
                                 group_ids=t([0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 3]),
                                 valid=t([True] * 10 + [False]))
    assert keep.tolist() == [False] * 4 + [True] * 4 + [True, True, False]


# ---------------------------------------------------------------- aggregation and KL
def test_aggregations_worked_example():
    # a: [1, 1], b: [0, 0, 0, 0] (padded to 4): token-mean 2/6, seq-mean-token-mean (1 + 0)/2,
    # seq-mean-token-sum (2 + 0)/2 = 1, seq-mean-token-sum-norm 2/4 (T) or 2/8 (norm_length 8)
    per = t([[1.0, 1.0, 7.0, 7.0], [0.0, 0.0, 0.0, 0.0]])
    m = t([[True, True, False, False], [True, True, True, True]])
    close(make_aggregate("token-mean")(per, m), 2 / 6)
    close(make_aggregate("seq-mean-token-mean")(per, m), 0.5)
    close(make_aggregate("seq-mean-token-sum")(per, m), 1.0)
    close(make_aggregate("seq-mean-token-sum-norm")(per, m), 0.5)
    close(make_aggregate("seq-mean-token-sum-norm", norm_length=8)(per, m), 0.25)
    # global denominators: token-mean with num_tokens 12 -> 2/12
    close(make_aggregate("token-mean", num_tokens=torch.tensor(12))(per, m), 2 / 12)
    close(make_aggregate("seq-mean-token-mean", num_seqs=4)(per, m), 0.25)


def test_kl_estimators():
    # logp -1.0, ref -1.2: k1 = 0.2, k2 = 0.02, k3 = e^-0.2 + 0.2 - 1 = 0.018731; x1e-4 = 1.873e-6 (ProRL 11e)
    lp, ref = t([[-1.0]]), t([[-1.2]])
    close(kl_estimate("k1", logprobs=lp, ref_logprobs=ref), [[0.2]])
    close(kl_estimate("k2", logprobs=lp, ref_logprobs=ref), [[0.02]])
    k3 = kl_estimate("k3", logprobs=lp, ref_logprobs=ref)
    close(k3, [[math.exp(-0.2) + 0.2 - 1]])
    close(1e-4 * k3, [[1.873075e-6]], atol=1e-11, rtol=1e-5)
    # right after a reference reset ref == logp -> 0
    close(kl_estimate("k3", logprobs=lp, ref_logprobs=lp), [[0.0]])
    # k3 clamp at 10: ref - logp = 20 -> e^20 - 21 huge -> 10
    close(kl_estimate("k3", logprobs=t([[-30.0]]), ref_logprobs=t([[-10.0]])), [[10.0]])
