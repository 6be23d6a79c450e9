"""The composition layer: configs load, both phases run for every method file, errors are clear."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from agentrl.algorithms import (AlgorithmConfig, MicroBatch, RolloutBatch, UnknownNameError, build_algorithm,
                                load_algorithm_config)

from .helpers import close
from .synthetic import micro_batch, multi_turn_batch, rollout_batch

ROOT = Path(__file__).resolve().parents[2]
METHOD_FILES = sorted((ROOT / "configs" / "methods").glob("*.yaml"))
COMMON_KEYS = {"loss/total", "loss/policy", "loss/kl", "loss/entropy_bonus", "loss/controllers", "policy/ratio_mean",
               "policy/approx_kl", "policy/clipfrac_low", "policy/clipfrac_high", "policy/entropy", "policy/behavior_kl"}
METHOD_KEYS = {"bapo": "bapo/c_high", "entropic": "entropic/alpha", "skywork": "skywork/coef", "empg": "empg/g_mean",
               "forking_tokens": "forking/threshold", "clip_cov": "clip_cov/selected_frac",
               "kl_cov": "kl_cov/selected_frac", "archer": "archer/high_entropy_frac",
               "entropy_advantage": "entropy_adv/psi_mean", "gigpo": "gigpo/step_group_size_mean"}


def test_method_files_exist_with_header():
    names = {p.stem for p in METHOD_FILES}
    for required in ("grpo", "dapo", "clip_cov", "kl_cov", "cispo", "forking_tokens", "entropy_advantage", "archer",
                     "empg", "bapo", "entropic", "skywork", "prorl", "w_reinforce", "psr", "nsr", "gigpo", "rloo",
                     "reinforce_pp"):
        assert required in names
    for p in METHOD_FILES:
        text = p.read_text()
        assert text.startswith("# "), p
        assert f"agentrl train configs/methods/{p.name}" in text, p


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda p: p.stem)
def test_every_method_file_runs_both_phases(path):
    cfg = load_algorithm_config(path)
    assert AlgorithmConfig.from_dict(cfg.to_dict()) == cfg
    algo = build_algorithm(cfg)
    d = multi_turn_batch()
    adv = algo.compute_advantages(rollout_batch(d))
    assert adv.advantages.shape == d["loss_mask"].shape and torch.isfinite(adv.advantages).all()
    assert not (adv.advantages != 0)[~adv.loss_mask].any()
    logp = d["logprobs"].clone().requires_grad_(True)
    ent = d["entropy"].clone().requires_grad_(True)
    mb = micro_batch(d, adv.advantages, adv.loss_mask, token_mask=adv.token_mask, logprobs=logp, entropy=ent)
    loss, metrics = algo.loss(mb, num_tokens=adv.loss_mask.sum(), num_seqs=adv.loss_mask.any(1).sum())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    assert not logp.grad[~adv.loss_mask].any()
    missing = COMMON_KEYS - set(metrics)
    assert not missing, missing
    if cfg.kl.coef > 0:
        assert "policy/kl_ref" in metrics
    for name, key in METHOD_KEYS.items():
        used = name in (cfg.loss.name, cfg.estimator.name) or name in [s.name for s in cfg.shaping + cfg.controllers] \
            or (cfg.token_mask is not None and cfg.token_mask.name == name)
        if used:
            assert key in metrics or key in adv.metrics, (name, key)
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    step = algo.end_train_step()
    assert all(v.dim() == 0 and not v.requires_grad for v in step.metrics.values())
    state = algo.state_dict()
    restored = build_algorithm(cfg)
    restored.load_state_dict(state)
    again = restored.state_dict()
    assert again["step"] == state["step"] == 1
    for name, cstate in state["controllers"].items():  # every controller's state comes back exactly
        assert again["controllers"][name].keys() == cstate.keys()
        for k, v in cstate.items():
            assert torch.equal(torch.as_tensor(again["controllers"][name][k]), torch.as_tensor(v)), (name, k)


def test_unknown_keys_names_and_options_suggest():
    with pytest.raises(UnknownNameError, match="Did you mean 'loss'"):
        AlgorithmConfig.from_dict({"losss": {"name": "ppo"}})
    with pytest.raises(UnknownNameError, match="Did you mean 'ppo'.*Known losses: archer, cispo"):
        AlgorithmConfig.from_dict({"loss": {"name": "ppo_"}})
    with pytest.raises(UnknownNameError, match="Did you mean 'eps_high'"):
        AlgorithmConfig.from_dict({"loss": {"name": "ppo", "eps_hgh": 0.3}})
    with pytest.raises(UnknownNameError, match="Did you mean 'metric'"):
        AlgorithmConfig.from_dict({"dynamic_sampling": {"metrc": "acc"}})
    with pytest.raises(UnknownNameError, match="Did you mean 'empg'"):
        AlgorithmConfig.from_dict({"shaping": [{"name": "emgp"}]})
    with pytest.raises(UnknownNameError, match="estimator"):
        AlgorithmConfig.from_dict({"estimator": "grpoo"})


def test_invalid_combinations_raise_before_work():
    with pytest.raises(ValueError, match="bapo.*ppo"):
        AlgorithmConfig.from_dict({"loss": {"name": "cispo"}, "controllers": [{"name": "bapo"}]})
    with pytest.raises(ValueError, match="kl.coef"):
        AlgorithmConfig.from_dict({"controllers": [{"name": "prorl"}]})
    with pytest.raises(ValueError, match="twice"):
        AlgorithmConfig.from_dict({"shaping": ["empg", "empg"]})
    with pytest.raises(ValueError, match="absolute"):
        build_algorithm({"controllers": [{"name": "bapo", "ratio_lower_start": 0.2, "ratio_upper_start": 0.28}]})


def test_yaml_numeric_strings_are_coerced():
    cfg = AlgorithmConfig.from_dict({"loss": {"name": "clip_cov", "clip_cov_ratio": "2e-4"}, "kl": {"coef": "1e-4"}})
    assert cfg.loss.options["clip_cov_ratio"] == pytest.approx(2e-4) and cfg.kl.coef == pytest.approx(1e-4)


def test_missing_required_inputs_are_clear_errors():
    d = multi_turn_batch()
    algo = build_algorithm({"shaping": [{"name": "empg"}]})
    rb = rollout_batch(d)
    rb.entropy = None
    with pytest.raises(ValueError, match="RolloutBatch.entropy"):
        algo.compute_advantages(rb)
    ent_algo = build_algorithm({"controllers": [{"name": "entropic"}]})
    with pytest.raises(ValueError, match="MicroBatch.entropy"):
        ent_algo.loss(MicroBatch(logprobs=d["logprobs"], proximal_logprobs=d["proximal_logprobs"],
                                 advantages=torch.zeros_like(d["logprobs"]), loss_mask=d["loss_mask"]))
    with pytest.raises(ValueError, match="anchor_ids"):
        rb2 = rollout_batch(d)
        rb2.anchor_ids = None
        build_algorithm({"estimator": "gigpo"}).compute_advantages(rb2)
    bad = rollout_batch(d)
    bad.turn_ids = torch.where(bad.loss_mask, -1, bad.turn_ids)  # policy tokens without a turn id
    with pytest.raises(RuntimeError, match="turn id"):
        build_algorithm({}).compute_advantages(bad)
    with pytest.raises(ValueError, match="group_ids"):
        RolloutBatch(rewards=torch.zeros(2), group_ids=torch.zeros(3, dtype=torch.long),
                     loss_mask=torch.ones(2, 4, dtype=torch.bool)).validate()


def test_phase1_broadcasts_trajectory_advantage_to_policy_tokens():
    # Two rows in one group, rewards [1, 0] -> GRPO +/- 0.5/(std .707107 + 1e-6) on every policy token.
    lm = torch.tensor([[False, True, True, False, True], [False, True, False, True, False]])
    tid = torch.tensor([[-1, 0, 0, -1, 1], [-1, 0, -1, 1, -1]])
    out = build_algorithm({}).compute_advantages(RolloutBatch(rewards=torch.tensor([1.0, 0.0]),
                                                              group_ids=torch.tensor([0, 0]), loss_mask=lm, turn_ids=tid))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    close(out.advantages, [[0, a, a, 0, a], [0, -a, 0, -a, 0]])


def test_phase1_empg_through_turn_ids_matches_worked_example():
    # docs/methods.md §7e as tokens: tau1 (A=+1 via rewards) steps with token entropies averaging 0.2, 1.0;
    # tau2 (A=-1) 0.6, 1.4. A Dr.GRPO estimator with rewards [1, -1] in two singleton groups gives
    # exactly A = R. Final per-step values broadcast to every token of the step.
    tid = torch.tensor([[0, 0, -1, 1, 1], [0, -1, 1, 1, -1]])
    ent = torch.tensor([[0.1, 0.3, 9.0, 1.0, 1.0], [0.6, 9.0, 1.2, 1.6, 9.0]])
    algo = build_algorithm({"estimator": {"name": "grpo", "normalize_std": False}, "shaping": ["empg"]})
    out = algo.compute_advantages(RolloutBatch(rewards=torch.tensor([1.0, -1.0]), group_ids=torch.tensor([0, 1]),
                                               loss_mask=tid >= 0, turn_ids=tid, entropy=ent))
    f = [1.403917, 0.603360, -1.253662, -0.753614]
    close(out.advantages, [[f[0], f[0], 0, f[1], f[1]], [f[2], 0, f[3], f[3], 0]], atol=2e-6, rtol=0)
    close(out.metrics["empg/g_mean"], 1.0)


def test_phase1_gigpo_from_turn_rewards_and_anchors():
    # docs/methods.md §13e: three one-task rollouts reach the same state s. Rollout 1: turns (s, x, goal)
    # -> return at s = 0.95^2 (reward 1 on its 3rd turn); rollout 2: (s) fails; rollout 3: (s, goal).
    # Episode advantages use the per-step rows (code default): R rows [1,1,1, 0, 1,1] -> mean 5/6.
    tid = torch.tensor([[0, 1, 2], [0, -1, -1], [0, 1, -1]])
    tr = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    anchors = torch.tensor([[10, 11, 12], [10, -1, -1], [10, 13, -1]])
    algo = build_algorithm({"estimator": "gigpo", "credit": {"gamma": 0.95}})
    out = algo.compute_advantages(RolloutBatch(rewards=tr.sum(1), group_ids=torch.tensor([0, 0, 0]),
                                               loss_mask=tid >= 0, turn_ids=tid, turn_rewards=tr, anchor_ids=anchors))
    a_s = [0.285, -0.6175, 0.3325]  # at the shared state s (turn 0)
    mean_e = 5 / 6
    close(out.turn_advantages[:, 0], [1 - mean_e + a_s[0], 0 - mean_e + a_s[1], 1 - mean_e + a_s[2]])
    close(out.turn_advantages[0, 1:], [1 - mean_e, 1 - mean_e])  # singleton step groups: A_S = 0


def test_phase1_dynamic_sampling_overlong_and_psr_drop_rows():
    d = multi_turn_batch(b=8, group_size=4)
    d["correct"] = torch.tensor([True] * 4 + [True, False, True, False])
    algo = build_algorithm({"dynamic_sampling": {"enabled": True}})
    out = algo.compute_advantages(rollout_batch(d))
    assert out.keep.tolist() == [False] * 4 + [True] * 4
    assert not out.loss_mask[:4].any() and not out.advantages[:4].any()
    close(out.metrics["rollout/kept_frac"], 0.5)
    # overlong: lengths 40 * tokens vs L_max 400 / buffer 100 -> penalty min(-(len-300)/100, 0)
    lens = torch.tensor([100, 300, 350, 400, 0, 0, 0, 0])
    d["response_lengths"] = lens
    ov = build_algorithm({"overlong": {"enabled": True, "max_response_tokens": 400, "buffer_tokens": 100}})
    res = ov.compute_advantages(rollout_batch(d))
    close(res.rewards - d["rewards"], [0.0, 0.0, -0.5, -1.0, 0, 0, 0, 0])
    psr = build_algorithm({"estimator": "psr"}).compute_advantages(rollout_batch(d))
    assert torch.equal(psr.keep, d["correct"] & d["loss_mask"].any(1) | (d["correct"] & ~d["loss_mask"].any(1)))


def test_off_policy_is_weights_and_forking_token_weights():
    # behavior_is_cap 2: w = min(exp(prox - behavior), 2) multiplies each token's loss.
    d = multi_turn_batch()
    base = build_algorithm({})
    adv = base.compute_advantages(rollout_batch(d))
    mb = micro_batch(d, adv.advantages, adv.loss_mask)
    isw = build_algorithm({"off_policy": {"behavior_is_cap": 2.0}})
    _, m = isw.loss(mb)
    w = torch.exp(d["proximal_logprobs"] - d["behavior_logprobs"]).clamp(max=2.0)
    close(m["policy/behavior_is_mean"], w[adv.loss_mask].mean())
    fork = build_algorithm({"token_mask": {"name": "forking_tokens", "top_quantile": 0.2}})
    _, fm = fork.loss(mb)
    assert 0.15 <= float(fm["policy/token_mask_frac"]) <= 0.3


def test_skywork_and_prorl_flow_through_end_train_step():
    d = multi_turn_batch()
    algo = build_algorithm({"controllers": [{"name": "skywork", "target_entropy": 10.0, "delta": 1e-3}]})
    adv = algo.compute_advantages(rollout_batch(d))  # rollout NLL ~1.5 < 10 -> coef rises
    close(adv.metrics["rollout/nll"], -d["proximal_logprobs"][adv.loss_mask].mean())
    ent = d["entropy"].clone().requires_grad_(True)
    _, m = algo.loss(micro_batch(d, adv.advantages, adv.loss_mask, entropy=ent))
    close(m["skywork/effective_coef"], 0.0)  # lag: first step has no measurement yet
    step = algo.end_train_step()
    close(step.metrics["skywork/coef"], 1e-3)
    _, m2 = algo.loss(micro_batch(d, adv.advantages, adv.loss_mask, entropy=ent))
    close(m2["skywork/effective_coef"], 1e-3)
    pro = build_algorithm({"kl": {"coef": 1e-4}, "controllers": [{"name": "prorl", "reset_kl_threshold": 0.0}]})
    adv = pro.compute_advantages(rollout_batch(d))
    _, m3 = pro.loss(micro_batch(d, adv.advantages, adv.loss_mask))
    assert float(m3["loss/kl"]) > 0
    assert bool(pro.end_train_step().reset_reference)


def test_clip_cov_generator_state_round_trip():
    # Restoring the algorithm state restores the RNG stream: same random selection afterwards.
    d = multi_turn_batch()
    cfg = {"loss": {"name": "clip_cov", "clip_cov_ratio": 0.05, "clip_cov_lb": -100.0, "clip_cov_ub": 100.0}}
    a = build_algorithm(cfg)
    adv = a.compute_advantages(rollout_batch(d))
    mb = micro_batch(d, adv.advantages, adv.loss_mask)
    a.loss(mb)
    state = a.state_dict()
    want, _ = a.loss(mb)
    b = build_algorithm(cfg)
    b.load_state_dict(state)
    got, _ = b.loss(mb)
    close(got, want)
