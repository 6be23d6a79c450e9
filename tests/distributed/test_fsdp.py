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


def test_uneven_shares_pad_and_equal_one_process(ray_cluster, tiny_model_dir):
    """Short batches (dynamic sampling with a round limit returns fewer episodes than asked):
    6 rows -> mini-batches of 3 over 2 ranks (rank 0: 2 micro-batches, rank 1: 1 and a padding
    one), then 3 rows -> mini-batches of 1 (rank 1 holds no row at all: only padding). Without
    padding the ranks run different numbers of forwards, backwards and BAPO all-reduces and the
    collectives wait for each other until the process group's timeout (this test's timeout bounds
    that). With it, the update equals the single-process one on the same rows: the single
    process's micro-batches of 2 are the unions of the ranks' micro-batches of 1, so BAPO's
    per-micro-batch bounds see the same rows too."""
    from agentrl.algorithms import build_algorithm
    from agentrl.distributed.learner_group import LearnerGroup
    from agentrl.learner.learner import Learner
    from agentrl.learner.policy import load_model, load_tokenizer

    path = str(tiny_model_dir("chatml"))
    tok = load_tokenizer(path)
    base = load_model(path)
    batches = [make_batch(base, tok.pad_token_id, base.config.vocab_size, B=6, seed=1),
               make_batch(base, tok.pad_token_id, base.config.vocab_size, B=3, seed=2)]

    single_model = copy.deepcopy(base)
    single_cfg = from_dict(TrainConfig, {"model": {"path": path}, "trainer": trainer(2), "algorithm": ALGORITHM})
    single = Learner(single_model, build_algorithm(ALGORITHM), single_cfg.trainer, seed=0)
    m1 = [single.update(b) for b in batches]

    mirror = copy.deepcopy(base)
    cfg = from_dict(TrainConfig, {
        "run": {"backend": "ray", "device": "cpu", "seed": 0}, "model": {"path": path},
        "trainer": trainer(1), "algorithm": ALGORITHM,
        "ray": {"learner_ranks": 2, "cpus_per_learner_rank": 0.5, "startup_timeout_s": 480},
    })
    group = LearnerGroup(cfg, mirror)
    try:
        m2 = [group.update(b) for b in batches]
    finally:
        group.close()

    for (name, p1), p2 in zip(single_model.named_parameters(), mirror.parameters()):
        torch.testing.assert_close(p2, p1, rtol=1e-5, atol=1e-5, msg=name)
    assert any(not torch.equal(p, q) for p, q in zip(base.parameters(), mirror.parameters()))
    # Padding adds no tokens, no sequences and no metric values. (bapo/* are means over each rank's
    # real micro-batches of the bounds found for their union: with uneven shares a union is
    # counted once or twice, so they are left out here; the equal weights show the same bounds.)
    for a, b in zip(m1, m2):
        assert a.keys() == b.keys()
        for key in ("loss/total", "loss/policy", "loss/kl", "policy/grad_norm", "advantages/mean", "entropy/step/0",
                    "entropy/step/1", "policy/clipfrac/turn_0", "policy/skipped_mini_batches"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a[key], b[key])


def test_bf16_runs_keep_float32_master_weights(tiny_model_dir, tmp_path):
    """``model.dtype: bfloat16`` with FSDP: the sharded parameters (what AdamW updates) are
    float32, every unit computes in bfloat16 and reduces gradients in float32
    (``fsdp.mixed_precision``). One gloo rank in this process; no Ray."""
    import torch.distributed as dist

    from agentrl.distributed import fsdp
    from agentrl.distributed.cluster import free_port
    from agentrl.learner.policy import load_model, load_tokenizer, sequence_logprobs

    assert fsdp.mixed_precision("float32") is None and fsdp.master_dtype("float32") == "float32"
    policy = fsdp.mixed_precision("bfloat16")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert fsdp.master_dtype("bfloat16") == "float32"

    path = str(tiny_model_dir("chatml"))
    tok = load_tokenizer(path)
    lm = load_model(path, dtype=fsdp.master_dtype("bfloat16"))
    batch = make_batch(lm, tok.pad_token_id, lm.config.vocab_size, B=2)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        root = fsdp.shard_policy(lm, mp_policy=policy)
        seen: list[torch.dtype] = []
        layer = fsdp._decoder_layers(lm)[0]
        hook = layer.register_forward_pre_hook(lambda m, args: seen.append(next(m.parameters()).dtype))
        logp, _ = sequence_logprobs(root, batch.input_ids, batch.attention_mask, compute_entropy=False)
        hook.remove()
        logp[batch.loss_mask].sum().backward()
        assert seen == [torch.bfloat16]  # unsharded for the forward in param_dtype
        for name, p in root.named_parameters():
            assert p.dtype == torch.float32, name  # the master weights
            assert p.grad is not None and p.grad.dtype == torch.float32, name
        units = [m for m in root.modules() if isinstance(m, torch.distributed.fsdp.FSDPModule)]
        assert len(units) == len(fsdp._decoder_layers(lm)) + 1
        for m in units:
            state = m._get_fsdp_state()  # torch internals: the policy each unit applies
            group = state._fsdp_param_group
            if group is not None:
                assert (group.mp_policy.param_dtype, group.mp_policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    finally:
        dist.destroy_process_group()
