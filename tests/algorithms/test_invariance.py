"""Micro-batch and data-parallel invariance of every term of every method.

The learner splits a mini-batch into K micro-batches (``trainer.micro_batch_size``) and over data-
parallel ranks; that must be a memory setting only. Each case below runs one mini-batch the way
the learner does (phase 1 on the whole rollout batch; the mini-batch statistics over all the
micro-batches and ranks when the method asks for them; every micro-batch's loss with the
mini-batch's global denominators, backward; ``end_train_step``) and compares the summed loss,
the accumulated gradients with respect to the logprobs and the entropy, and the algorithm's state
afterwards (controller states: EntroPIC's integral, Skywork's coefficient, ...) with the
one-micro-batch result, for K = 1, 2, 4, an uneven and a shuffled split, and 2 ranks (threads
with an all-reduce that sums over them).

* Methods whose components say they are split-invariant (every shipped config but the four
  below) must give the same result on an arbitrary batch.
* Methods that select per loss call by design (Clip-Cov's and KL-Cov's per-call top-k/random
  draw, BAPO's per-micro-batch bound search, the 80/20 mask's per-call quantile) must still not
  scale with K: on a mini-batch made of identical copies of one block, where every per-call
  statistic is the same at any split, they give the same result too. Their dependence on the
  split on an arbitrary batch is shown, and the learner keeps their split (grouping_blocker).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import yaml

from agentrl.algorithms import build_algorithm
from agentrl.algorithms.config import AlgorithmConfig
from agentrl.algorithms.registry import REGISTRIES
from agentrl.learner.learner import grouping_blocker

from .helpers import close
from .synthetic import micro_batch, multi_turn_batch, rollout_batch

ROOT = Path(__file__).resolve().parents[2]
METHOD_CONFIGS = {p.stem: yaml.safe_load(p.read_text())["algorithm"] for p in sorted((ROOT / "configs" / "methods").glob("*.yaml"))}
VARIANTS = {
    # terms the shipped configs leave at 0 or at their defaults
    "archer_kl_both_groups": {"loss": {"name": "archer", "kl_coef_low": 0.5, "kl_coef_high": 0.25}},
    "entropic_large_ki": {"controllers": [{"name": "entropic", "target_entropy": 0.5, "kp": 1.0, "ki": 0.5,
                                           "high_prob_threshold": 0.2}]},
    "forking_kept_proximal": {"token_mask": {"name": "forking_tokens", "entropy_source": "proximal", "normalize": "kept"}},
    "forking_kept_proximal_seq_mean": {"token_mask": {"name": "forking_tokens", "entropy_source": "proximal", "normalize": "kept"},
                                       "aggregation": "seq-mean-token-mean"},
    "kl_and_entropy_bonus": {"kl": {"coef": 0.05}, "entropy_coef": 0.01},
    "seq_mean_token_sum": {"aggregation": "seq-mean-token-sum"},
    "episode_mean_token_mean": {"aggregation": "episode-mean-token-mean"},  # one row per episode here
    "token_sum_norm": {"aggregation": {"name": "seq-mean-token-sum-norm", "norm_length": 64}},
    "off_policy_is": {"off_policy": {"behavior_is_cap": 2.0}},
    "skywork_entropy_measure": {"controllers": [{"name": "skywork", "coef_init": 0.004, "measure": "entropy"}]},
    "forking_current_kept": {"token_mask": {"name": "forking_tokens", "entropy_source": "current", "normalize": "kept"}},
    "bapo_kl": {"controllers": ["bapo"], "kl": {"coef": 0.05}},
    "kl_k1": {"kl": {"coef": 0.05, "estimator": "k1"}},
    "kl_k2": {"kl": {"coef": 0.05, "estimator": "k2"}},
}
CASES = {**METHOD_CONFIGS, **VARIANTS}
BATCH_DEPENDENT = {"clip_cov", "kl_cov", "bapo", "bapo_kl", "forking_tokens", "forking_current_kept"}
#: per-call selections that keep a fixed count per call: on the copies batch, counts that scale
#: with the call (KL-Cov's top 25%, every Clip-Cov candidate) so each copy selects alike
COPIES_OVERRIDES = {
    "clip_cov": {"clip_cov_ratio": 1.0, "clip_cov_lb": 0.0, "clip_cov_ub": 100.0},  # every positive-covariance token
    "kl_cov": {"kl_cov_ratio": 0.25},
}

SPLITS = {  # name -> per rank, the micro-batches' rows
    "K1": [[list(range(8))]],
    "K2": [[[0, 1, 2, 3], [4, 5, 6, 7]]],
    "K4": [[[0, 1], [2, 3], [4, 5], [6, 7]]],
    "uneven": [[[0, 1, 2], [3, 4, 5, 6, 7]]],
    "shuffled": [[[5, 1, 7], [0, 2, 3, 4, 6]]],
    "2ranks": [[[0, 1, 2, 3]], [[4, 5, 6, 7]]],
    "2ranks_K2": [[[0, 1], [2, 3]], [[4, 5], [6, 7]]],
}
#: on the copies batch (4 copies of a 2-row block) only splits along copies keep per-call statistics equal
COPY_SPLITS = ("K2", "K4", "2ranks", "2ranks_K2")


class _Ranks:
    """An all-reduce over ``n`` threads: each passes its tensor, all get the sum."""

    def __init__(self, n: int) -> None:
        self.barrier = threading.Barrier(n, timeout=60)
        self.slots: list[torch.Tensor | None] = [None] * n

    def all_reduce(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.detach().clone()
            self.barrier.wait()
            out = torch.stack([s for s in self.slots]).sum(0)  # type: ignore[misc]
            self.barrier.wait()
            return out

        return reduce


def _state(algo) -> dict[str, torch.Tensor]:
    out = {}
    for cname, cstate in algo.state_dict()["controllers"].items():
        for k, v in cstate.items():
            out[f"{cname}/{k}"] = torch.as_tensor(v).float()
    return out


def _rank(config, d, micro_batches, all_reduce, seed_state):
    """One rank's mini-batch, the learner's way. Returns (loss sum, d logp, d entropy, state)."""
    algo = build_algorithm(config, all_reduce=all_reduce)
    if seed_state is not None:
        algo.load_state_dict(seed_state)
    adv = algo.compute_advantages(rollout_batch(d))
    logp = d["logprobs"].clone().requires_grad_(True)
    ent = d["entropy"].clone().requires_grad_(True)
    n_tok, n_seq = adv.loss_mask.sum(), adv.loss_mask.any(1).sum()  # the whole mini-batch, all ranks

    def mb(rows, grad=True):
        idx = torch.tensor(rows)
        return micro_batch(d, adv.advantages, adv.loss_mask, rows=idx, token_mask=adv.token_mask,
                           logprobs=logp[idx] if grad else logp[idx].detach(), entropy=ent[idx] if grad else ent[idx].detach())

    if algo.requirements()["mini_batch_stats"]:
        stats: dict[str, torch.Tensor] = {}
        for rows in micro_batches:
            for k, v in algo.mini_batch_stats(mb(rows, grad=False)).items():
                stats[k] = stats[k] + v if k in stats else v
        algo.begin_mini_batch(stats)
    total = torch.zeros(())
    for rows in micro_batches:
        loss, _ = algo.loss(mb(rows), num_tokens=n_tok, num_seqs=n_seq, micro_batch_fraction=len(rows) / 8)
        loss.backward()
        total = total + loss.detach()
    algo.end_mini_batch()
    algo.end_train_step()
    return total, logp.grad, ent.grad, _state(algo)


def run(config, d, split, seed_state=None):
    """The split's summed loss, gradients (summed over ranks) and per-rank algorithm states."""
    if len(split) == 1:
        total, g, e, state = _rank(config, d, split[0], None, seed_state)
        return total, g, e, [state]
    ranks = _Ranks(len(split))
    results: list = [None] * len(split)
    errors: list[BaseException] = []

    def work(r):
        try:
            results[r] = _rank(config, d, split[r], ranks.all_reduce(r), seed_state)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
            ranks.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(split))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    total = sum(r[0] for r in results)
    g = sum(r[1] for r in results)
    e = None if results[0][2] is None else sum(r[2] for r in results)
    return total, g, e, [r[3] for r in results]


def _seed_state(config):
    """An algorithm state with every controller term active (Skywork's gate open, EntroPIC's
    integral non-zero), so a term that vanishes at the initial state is still compared."""
    algo = build_algorithm(config)
    for c in algo.controllers:
        if c.name == "skywork":
            c.update(torch.tensor(0.0))
        if c.name == "entropic":
            c.control(torch.tensor(1.0))
    return algo.state_dict()


def copies_batch() -> dict[str, torch.Tensor]:
    """Four identical copies of a 2-row block (rows 2c, 2c+1), each copy its own group, with
    8 policy tokens per block and distinct values: at any split along copies, every per-call
    count, mean, quantile and covariance is the same."""
    g = torch.Generator().manual_seed(11)
    t = 8
    mask = torch.zeros(2, t, dtype=torch.bool)
    mask[0, 1:5] = True
    mask[1, 2:6] = True
    turn_ids = torch.where(mask, torch.zeros((), dtype=torch.long), torch.full((), -1, dtype=torch.long))
    block = {
        "rewards": torch.tensor([1.0, 0.0]), "loss_mask": mask, "turn_ids": turn_ids,
        "turn_rewards": torch.tensor([[1.0], [0.0]]), "anchor_ids": torch.tensor([[0], [1]]),
        "correct": torch.tensor([True, False]), "response_lengths": mask.sum(1) * 40,
        "terminated": torch.ones(2, dtype=torch.bool), "truncated": torch.zeros(2, dtype=torch.bool),
    }
    logp = -torch.rand(2, t, generator=g) * 3
    block.update({
        "proximal_logprobs": logp, "behavior_logprobs": logp + 0.05 * torch.randn(2, t, generator=g),
        "entropy": torch.rand(2, t, generator=g) * 2, "ref_logprobs": logp + 0.1 * torch.randn(2, t, generator=g),
        "logprobs": logp + 0.3 * torch.randn(2, t, generator=g),
    })
    d = {k: torch.cat([v] * 4) for k, v in block.items()}
    d["group_ids"] = torch.arange(8) // 2
    return d


def _with_overrides(name, config):
    if name not in COPIES_OVERRIDES:
        return config
    loss = config["loss"] if isinstance(config["loss"], dict) else {"name": config["loss"]}
    return {**config, "loss": {**loss, **COPIES_OVERRIDES[name]}}


def _compare(config, d, splits, state):
    ref_loss, ref_g, ref_e, ref_states = run(config, d, SPLITS["K1"], state)
    assert ref_g.abs().sum() > 0, "the reference gradient is zero: the case tests nothing"
    for split in splits:
        loss, g, e, states = run(config, d, SPLITS[split], state)
        close(loss, ref_loss, atol=1e-6, rtol=1e-5)
        close(g, ref_g, atol=1e-7, rtol=1e-5)
        if ref_e is not None:
            close(e, ref_e, atol=1e-7, rtol=1e-5)
        for s in states:  # every rank ends in the one-process state
            assert s.keys() == ref_states[0].keys()
            for k in s:
                close(s[k], ref_states[0][k], atol=1e-6, rtol=1e-5)


def _components(config) -> set[tuple[str, str]]:
    """The (registry, name) pairs a case's update runs through (a KL estimator only at coef > 0)."""
    c = AlgorithmConfig.from_dict(config)
    used = {("estimators", c.estimator.name), ("losses", c.loss.name), ("aggregations", c.aggregation.name)}
    used |= {("shaping", s.name) for s in c.shaping} | {("controllers", s.name) for s in c.controllers}
    if c.token_mask is not None:
        used.add(("token_masks", c.token_mask.name))
    if c.kl.coef > 0:
        used.add(("kl", c.kl.estimator))
    return used


def test_every_shipped_method_and_every_registered_component_is_covered():
    assert set(METHOD_CONFIGS) == {p.stem for p in (ROOT / "configs" / "methods").glob("*.yaml")} and len(METHOD_CONFIGS) >= 20
    assert BATCH_DEPENDENT <= set(CASES) and set(COPIES_OVERRIDES) <= BATCH_DEPENDENT
    covered = set().union(*(_components(c) for c in CASES.values()))
    registered = {(r, e.name) for r, reg in REGISTRIES.items() for e in reg}
    assert registered - covered == set(), "registered components no invariance case runs: add a VARIANTS entry"


@pytest.mark.parametrize("name", sorted(n for n in CASES if n not in BATCH_DEPENDENT))
def test_split_invariant_methods_give_the_one_micro_batch_update_at_any_split(name):
    config = CASES[name]
    assert grouping_blocker(build_algorithm(config), ref_logprobs=True) is None, f"{name}: its components must say split_invariant"
    _compare(config, multi_turn_batch(seed=3), [s for s in SPLITS if s != "K1"], _seed_state(config))


@pytest.mark.parametrize("name", sorted(BATCH_DEPENDENT))
def test_per_call_methods_do_not_scale_with_the_number_of_micro_batches(name):
    config = _with_overrides(name, CASES[name])
    _compare(config, copies_batch(), COPY_SPLITS, _seed_state(config))


@pytest.mark.parametrize("name", sorted(BATCH_DEPENDENT))
def test_per_call_methods_depend_on_the_split_and_the_learner_keeps_it(name):
    config = _with_overrides(name, CASES[name])
    assert grouping_blocker(build_algorithm(config), ref_logprobs=True) is not None
    d = multi_turn_batch(seed=3)
    _, whole, _, _ = run(config, d, SPLITS["K1"])
    _, split, _, _ = run(config, d, [[[i] for i in range(8)]])
    assert not torch.allclose(whole, split, atol=1e-6), f"{name}: expected the split to change the gradient"


def test_a_term_that_scaled_with_k_is_caught():
    # The old EntroPIC: a per-micro-batch mean added to the loss unweighted. Four micro-batches of
    # the copies batch then carry 4x the adjustment; the comparison above must see it.
    from agentrl.algorithms.controllers import EntroPICController

    config = {"controllers": [{"name": "entropic", "target_entropy": 0.5, "high_prob_threshold": 0.2}]}
    d = copies_batch()
    _, g1, _, _ = run(config, d, SPLITS["K1"])
    original = EntroPICController.begin_mini_batch

    def per_call(self, stats):  # ignores the mini-batch count: each call normalises by itself
        original(self, {**stats, "entropic/high_prob_tokens": stats["entropic/high_prob_tokens"] / 4})

    EntroPICController.begin_mini_batch = per_call
    try:
        _, g4, _, _ = run(config, d, SPLITS["K4"])
    finally:
        EntroPICController.begin_mini_batch = original
    assert not torch.allclose(g1, g4, atol=1e-6)


@pytest.mark.parametrize("name", ["empg", "reinforce_pp"])
def test_batch_level_normalisation_depends_on_batch_composition(name):
    # EMPG min-max/mean-g/zero-mean and REINFORCE++ whitening use the whole rollout batch given
    # (phase 1, once per rollout batch: never split): the advantages of rows 0-3 change when rows
    # 4-7 are left out.
    config = {"shaping": ["empg"]} if name == "empg" else {"estimator": "reinforce_pp"}
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
