"""The learner's off-policy paths (issue 7): in async mode the recomputed proximal logprobs
measure the train/inference mismatch per turn against the sampler's behavior logprobs, and
``off_policy.proximal: behavior`` takes the ratio against the sampler instead. Behavior
logprobs are the model's own shifted by a known amount per turn, so every number is worked
out by hand: with d = proximal - behavior, mismatch = |d|, k3 KL = exp(d) - 1 - d, and the
first mini-batch's ratio against behavior = exp(d)."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.config import TrainConfig, from_dict

SHIFT = {0: 0.1, 1: -0.3}  # d per assistant turn


def shifted_batch(model, tok):
    from tests.distributed.test_fsdp import make_batch

    batch = make_batch(model, tok.pad_token_id, model.config.vocab_size, B=4)
    d = torch.zeros_like(batch.behavior_logprobs)
    for turn, shift in SHIFT.items():
        d = torch.where(batch.loss_mask & (batch.turn_ids == turn), torch.full_like(d, shift), d)
    batch.behavior_logprobs = batch.behavior_logprobs - d  # behavior = proximal - d
    return batch


def learner(model, path, off_policy, *, async_mode=True):
    from agentrl.algorithms import build_algorithm
    from agentrl.learner.learner import Learner

    cfg = from_dict(TrainConfig, {"model": {"path": path}, "trainer": {"micro_batch_size": 4, "lr": 0.0}})
    return Learner(model, build_algorithm({"estimator": "grpo", "off_policy": off_policy}), cfg.trainer, async_mode=async_mode)


@pytest.mark.parametrize("proximal", ["recompute", "behavior"])
def test_mismatch_per_turn_and_the_ratio_anchor(tiny_model_dir, proximal):
    from agentrl.learner.policy import load_model, load_tokenizer

    path = str(tiny_model_dir("chatml"))
    tok, model = load_tokenizer(path), load_model(path)
    batch = shifted_batch(model, tok)
    n = {t: int((batch.loss_mask & (batch.turn_ids == t)).sum()) for t in SHIFT}
    m = learner(model, path, {"proximal": proximal, "behavior_is_cap": 5.0}).update(batch)
    for turn, d in SHIFT.items():
        assert m[f"policy/behavior_mismatch/turn_{turn}"] == pytest.approx(abs(d), abs=1e-5)
        assert m[f"policy/behavior_kl/turn_{turn}"] == pytest.approx(math.exp(d) - 1 - d, abs=1e-5)
    assert m["policy/behavior_mismatch"] == pytest.approx(sum(abs(d) * n[t] for t, d in SHIFT.items()) / sum(n.values()), abs=1e-5)
    expected_ratio = sum(math.exp(d) * n[t] for t, d in SHIFT.items()) / sum(n.values())
    if proximal == "recompute":  # decoupled: ratio 1 on the first update, the gap in the IS weight
        assert m["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
        assert m["policy/behavior_is_mean"] == pytest.approx(expected_ratio, abs=1e-5)
    else:  # coupled: the ratio carries the whole gap; no IS weight
        assert m["policy/ratio_mean"] == pytest.approx(expected_ratio, abs=1e-5)
        assert "policy/behavior_is_mean" not in m


def test_sync_mode_single_update_reports_no_mismatch(tiny_model_dir):
    """One on-policy update in sync mode recomputes nothing, so there is nothing to compare."""
    from agentrl.learner.policy import load_model, load_tokenizer

    path = str(tiny_model_dir("chatml"))
    tok, model = load_tokenizer(path), load_model(path)
    m = learner(model, path, {}, async_mode=False).update(shifted_batch(model, tok))
    assert not any(k.startswith("policy/behavior_") for k in m)


def test_unknown_proximal_is_refused():
    from agentrl.algorithms import build_algorithm

    with pytest.raises(ValueError, match="off_policy.proximal must be 'recompute' or 'behavior'"):
        build_algorithm({"off_policy": {"proximal": "old"}})
