"""Two FSDP2 learner ranks (Ray actors, gloo on CPU) give the single-process update.

The batch, the weights and the settings are the same; the ranks each train on half of every
mini-batch with ``trainer.micro_batch_size`` 1, the single process on whole micro-batches of 2
(= the union of the ranks' micro-batches, so per-micro-batch controllers such as BAPO, whose
statistics are summed across ranks through ``all_reduce``, see the same rows). A reference model
(KL term) is sharded too. Equal up to float summation order: tolerances 1e-5.

On a machine with 2+ GPUs the same test runs the ranks with NCCL (``AGENTRL_TEST_DEVICE=cuda``,
used by benchmarks/gpu_smoke.sh).
"""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch

from agentrl.config import TrainConfig, from_dict
from agentrl.types import Trajectory, collate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DEVICE = os.environ.get("AGENTRL_TEST_DEVICE", "cpu")
ALGORITHM = {
    "estimator": {"name": "grpo"},
    "loss": {"name": "ppo", "clip_ratio_c": 3.0},
    "controllers": [{"name": "bapo", "target_ratio": 1.0}],
    "kl": {"coef": 0.05},
    "aggregation": {"name": "token-mean"},
}


def make_trajectories(vocab: int, *, B: int = 8, seed: int = 0) -> list[Trajectory]:
    """B trajectories in groups of 2, random tokens, two generated turns each (behavior
    logprobs 0)."""
    rng = random.Random(seed)
    trajs = []
    for b in range(B):
        n_prompt, n_gen = rng.randint(6, 14), rng.randint(4, 12)
        t = Trajectory(task_id=f"task/{b // 2}", sample_index=b % 2)
        t.append([rng.randrange(3, vocab) for _ in range(n_prompt)], generated=False)
        half = n_gen // 2
        t.append([rng.randrange(3, vocab) for _ in range(half)], generated=True, turn=0, logprobs=[0.0] * half, version=0)
        t.append([rng.randrange(3, vocab) for _ in range(2)], generated=False)
        t.append([rng.randrange(3, vocab) for _ in range(n_gen - half)], generated=True, turn=1, logprobs=[0.0] * (n_gen - half), version=0)
        t.turn_rewards = [0.0, float(rng.random() < 0.5)]
        trajs.append(t)
    return trajs


def make_batch(model, pad_token_id: int, vocab: int, *, B: int = 8, seed: int = 0):
    """:func:`make_trajectories` collated, with behavior logprobs from ``model`` (so the
    first ratio is 1)."""
    from agentrl.learner.policy import sequence_logprobs

    batch = collate(make_trajectories(vocab, B=B, seed=seed), pad_token_id=pad_token_id)
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, batch.input_ids, batch.attention_mask, compute_entropy=False)
    batch.behavior_logprobs = torch.where(batch.loss_mask, logp, torch.zeros(()))
    return batch


def trainer(micro_batch_size: int) -> dict:
    return {"lr": 1e-3, "mini_batches": 2, "ppo_epochs": 2, "micro_batch_size": micro_batch_size, "grad_clip": 1.0}


def test_two_fsdp_ranks_equal_one_process(ray_cluster, tiny_model_dir):
    from agentrl.algorithms import build_algorithm
    from agentrl.distributed.learner_group import LearnerGroup
    from agentrl.learner.learner import Learner
    from agentrl.learner.policy import load_model, load_tokenizer

    if DEVICE == "cuda" and torch.cuda.device_count() < 2:  # NCCL: one GPU per rank
        pytest.fail(f"AGENTRL_TEST_DEVICE=cuda runs 2 ranks on 2 GPUs, found {torch.cuda.device_count()}; "
                    "unset AGENTRL_TEST_DEVICE to run the same test on CPU with gloo")
    path = str(tiny_model_dir("chatml"))
    tok = load_tokenizer(path)
    base = load_model(path)
    batch = make_batch(base, tok.pad_token_id, base.config.vocab_size)

    single_model = copy.deepcopy(base)
    single_cfg = from_dict(TrainConfig, {"model": {"path": path}, "trainer": trainer(2), "algorithm": ALGORITHM})
    single = Learner(single_model, build_algorithm(ALGORITHM), single_cfg.trainer, seed=0)
    m1 = single.update(batch)

    mirror = copy.deepcopy(base)
    gpus = 1.0 if DEVICE == "cuda" else 0.0
    cfg = from_dict(TrainConfig, {
        "run": {"backend": "ray", "device": DEVICE, "seed": 0}, "model": {"path": path},
        "trainer": trainer(1), "algorithm": ALGORITHM,
        "ray": {"learner_ranks": 2, "cpus_per_learner_rank": 0.5, "gpus_per_learner_rank": gpus, "startup_timeout_s": 480},
    })
    group = LearnerGroup(cfg, mirror)
    try:
        m2 = group.update(batch)
        state = group.state_dict()
        group.load_state_dict(state)  # the checkpoint round trip (full optimizer state, sharded on load)
        single.update(batch)
        group.update(batch)
    finally:
        group.close()

    for (name, p1), p2 in zip(single_model.named_parameters(), mirror.parameters()):
        torch.testing.assert_close(p2, p1, rtol=1e-5, atol=1e-5, msg=name)
    assert any(not torch.equal(p, q) for p, q in zip(base.parameters(), mirror.parameters()))  # it did train
    # Metrics that do not depend on how rows are split into micro-batches must agree (grad_norm
    # would be off by 2x if the ranks averaged instead of summed gradients). Means over
    # micro-batches (policy/ratio_mean, clipfrac, kl_ref) legitimately differ: 4 per-rank
    # micro-batches of 1 row vs 2 of 2 rows.
    assert m1.keys() == m2.keys()
    for key in ("loss/total", "loss/policy", "loss/kl", "policy/grad_norm", "rollout/kept_frac", "advantages/mean",
                "entropy/step/0", "entropy/step/1", "policy/clipfrac/turn_0", "bapo/c_low", "bapo/c_high", "bapo/pos_frac"):
        assert abs(m1[key] - m2[key]) <= 1e-5 * max(1.0, abs(m1[key])), (key, m1[key], m2[key])
    assert state["optimizer_format"] == "fsdp_full" and state["optimizer"]["state"]
    assert state["ref_model"] is not None and set(state["ref_model"]) >= {"model.embed_tokens.weight"}
