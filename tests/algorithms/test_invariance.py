"""Micro-batch invariance: gradient accumulation over micro-batches (with the mini-batch's global
denominators) equals the whole-batch gradient wherever a method's definition allows it; the
batch-dependent methods say so in their docstrings and are shown to depend on the split."""

from __future__ import annotations

import pytest
import torch

from agentrl.algorithms import (CONTROLLERS, LOSSES, SHAPING, TOKEN_MASKS, ESTIMATORS, MicroBatch, build_algorithm)

from .helpers import close
from .synthetic import micro_batch, multi_turn_batch, rollout_batch

SPLITS = [[8], [4, 4], [3, 5], [1] * 8]

INVARIANT = {
    "ppo_token_mean": {"loss": {"name": "ppo", "eps_high": 0.28}},
    "ppo_seq_mean_token_mean": {"aggregation": "seq-mean-token-mean"},
    "ppo_seq_mean_token_sum": {"aggregation": "seq-mean-token-sum"},
    "ppo_token_sum_norm": {"aggregation": {"name": "seq-mean-token-sum-norm", "norm_length": 64}},
    "cispo": {"loss": "cispo"},
    "archer_pg": {"loss": {"name": "archer", "kl_coef_low": 0.0}},
    "kl_and_entropy_bonus": {"kl": {"coef": 0.05}, "entropy_coef": 0.01},
    "forking_batch_scope": {"token_mask": {"name": "forking_tokens", "entropy_source": "proximal"}},
    "entropy_advantage": {"shaping": ["entropy_advantage"]},
    "off_policy_is": {"off_policy": {"behavior_is_cap": 2.0}},
    "skywork": {"controllers": [{"name": "skywork", "coef_init": 0.004}]},
    "gigpo": {"estimator": "gigpo", "credit": {"gamma": 0.9}},
    "w_reinforce": {"estimator": "w_reinforce"},
}


def _accumulated_grad(config, d, split, seed_state=None):
    algo = build_algorithm(config)
    if seed_state is not None:
        algo.load_state_dict(seed_state)
    adv = algo.compute_advantages(rollout_batch(d))
    logp = d["logprobs"].clone().requires_grad_(True)
    ent = d["entropy"].clone().requires_grad_(True)
    n_tok, n_seq = adv.loss_mask.sum(), adv.loss_mask.any(1).sum()
    start, total = 0, 0.0
    for size in split:
        rows = slice(start, start + size)
        mb = micro_batch(d, adv.advantages, adv.loss_mask, rows=rows, token_mask=adv.token_mask,
                         logprobs=logp[rows], entropy=ent[rows])
        loss, _ = algo.loss(mb, num_tokens=n_tok, num_seqs=n_seq, micro_batch_fraction=size / len(logp))
        loss.backward()
        total = total + loss.detach()
        start += size
    return total, logp.grad, ent.grad


@pytest.mark.parametrize("name", sorted(INVARIANT))
def test_gradient_accumulation_equals_whole_batch(name):
    d = multi_turn_batch(seed=3)
    if name == "skywork":  # give the controller a gate of 1 so the term is active
        algo = build_algorithm(INVARIANT[name])
        algo.controllers[0].update(torch.tensor(0.0))
        state = algo.state_dict()
    else:
        state = None
    ref_loss, ref_g, ref_e = _accumulated_grad(INVARIANT[name], d, SPLITS[0], state)
    for split in SPLITS[1:]:
        loss, g, e = _accumulated_grad(INVARIANT[name], d, split, state)
        close(loss, ref_loss, atol=1e-6, rtol=1e-5)
        close(g, ref_g, atol=1e-7, rtol=1e-5)
        if ref_e is not None:
            close(e, ref_e, atol=1e-7, rtol=1e-5)


BATCH_DEPENDENT = {
    # name -> (registry entry, config)
    "clip_cov": (LOSSES.get("clip_cov"), {"loss": {"name": "clip_cov", "clip_cov_ratio": 1.0,
                                                   "clip_cov_lb": 0.0, "clip_cov_ub": 100.0}}),
    "kl_cov": (LOSSES.get("kl_cov"), {"loss": {"name": "kl_cov", "kl_cov_ratio": 0.2}}),
    "archer_kl": (LOSSES.get("archer"), {"loss": {"name": "archer", "kl_coef_low": 0.5}, "kl": {"coef": 0.0}}),
    "entropic": (CONTROLLERS.get("entropic"), {"controllers": [{"name": "entropic", "target_entropy": 0.5}]}),
    "forking_current": (TOKEN_MASKS.get("forking_tokens"), {"token_mask": "forking_tokens"}),
}


@pytest.mark.parametrize("name", sorted(BATCH_DEPENDENT))
def test_batch_dependent_methods_say_so_and_depend_on_the_split(name):
    entry, config = BATCH_DEPENDENT[name]
    assert "atch-dependent" in (entry.obj.__doc__ or ""), f"{entry.name} docstring must say it is batch-dependent"
    d = multi_turn_batch(seed=3)
    _, whole, _ = _accumulated_grad(config, d, [8])
    _, split, _ = _accumulated_grad(config, d, [1] * 8)
    assert not torch.allclose(whole, split, atol=1e-6), f"{name}: expected the split to change the gradient"


def test_bapo_bounds_depend_on_the_micro_batch():
    # row 0: two A=+1 tokens with r = 1.45; row 1: three A=-1 tokens with r = 1 (inside any bounds).
    # Whole batch: pos = 2*min(1.45, c_high) <= 2.9 < neg = 3 at every c_high -> c_high runs to 2.0,
    # r = 1.45 is inside -> row 0 gets gradient -A r / N = -1.45/5.
    # Row 0 alone: neg = 0 -> ratio inf -> start bounds (0.6, 1.2) -> r = 1.45 clipped -> no gradient.
    assert "atch-dependent" in (CONTROLLERS.get("bapo").obj.__doc__ or "")
    lp = torch.zeros(2, 3)
    old = torch.tensor([[-torch.log(torch.tensor(1.45)).item()] * 2 + [0.0], [0.0, 0.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, -1.0]])
    m = torch.tensor([[True, True, False], [True, True, True]])

    def grads(rows_list):
        algo = build_algorithm({"controllers": ["bapo"]})
        x = lp.clone().requires_grad_(True)
        for rows in rows_list:
            loss, _ = algo.loss(MicroBatch(logprobs=x[rows], proximal_logprobs=old[rows], advantages=adv[rows],
                                           loss_mask=m[rows]), num_tokens=m.sum())
            loss.backward()
        return x.grad

    close(grads([slice(0, 2)])[0, :2], [-1.45 / 5, -1.45 / 5])
    close(grads([slice(0, 1), slice(1, 2)])[0, :2], [0.0, 0.0])


@pytest.mark.parametrize("entry,config", [(SHAPING.get("empg"), {"shaping": ["empg"]}),
                                          (ESTIMATORS.get("reinforce_pp"), {"estimator": "reinforce_pp"})],
                         ids=["empg", "reinforce_pp"])
def test_batch_level_normalisation_depends_on_batch_composition(entry, config):
    # EMPG min-max/mean-g/zero-mean and REINFORCE++ whitening use the whole rollout batch given:
    # the advantages of rows 0-3 change when rows 4-7 are left out.
    assert "atch-dependent" in (entry.obj.__doc__ or "")
    d = multi_turn_batch(seed=3)
    algo = build_algorithm(config)
    full = algo.compute_advantages(rollout_batch(d)).advantages[:4]
    half = {k: v[:4] for k, v in d.items()}
    part = algo.compute_advantages(rollout_batch(half)).advantages
    assert not torch.allclose(full, part, atol=1e-6)


def test_local_denominators_depend_on_split_without_global_counts():
    # Without num_tokens the token-mean of each micro-batch uses its own count: summing the
    # micro-batch losses differs from the whole-batch loss when token counts differ.
    d = multi_turn_batch(seed=3)
    algo = build_algorithm({})
    adv = algo.compute_advantages(rollout_batch(d))
    whole, _ = algo.loss(micro_batch(d, adv.advantages, adv.loss_mask))
    parts = sum(algo.loss(micro_batch(d, adv.advantages, adv.loss_mask, rows=slice(i, i + 4)))[0] * 0.5 for i in (0, 4))
    assert abs(float(whole) - float(parts)) > 1e-6
    assert MicroBatch is not None


def _ref(config):
    return build_algorithm(config).requirements()["ref_logprobs"]


@pytest.mark.parametrize("name", sorted(INVARIANT))
def test_the_learner_groups_micro_batches_by_length_for_split_invariant_methods(name):
    # trainer.group_by_length reorders rows between micro-batches: allowed exactly where the
    # gradient does not depend on the split (shown above for these methods)
    from agentrl.learner.learner import grouping_blocker

    assert grouping_blocker(build_algorithm(INVARIANT[name]), ref_logprobs=_ref(INVARIANT[name])) is None


@pytest.mark.parametrize("name", sorted([*BATCH_DEPENDENT, "bapo"]))
def test_the_learner_keeps_the_split_for_batch_dependent_methods(name):
    from agentrl.learner.learner import grouping_blocker

    config = {"controllers": ["bapo"]} if name == "bapo" else BATCH_DEPENDENT[name][1]
    assert grouping_blocker(build_algorithm(config), ref_logprobs=_ref(config)) is not None
