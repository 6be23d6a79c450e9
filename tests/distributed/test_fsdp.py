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


def test_bf16_checkpoint_resumes_the_float32_masters(ray_cluster, tiny_model_dir):
    """``model.dtype: bfloat16`` on 2 FSDP ranks: the learner state carries the float32 master
    weights (the checkpointed model is bf16), and a new group loading it trains on from exactly
    those masters, not from their bf16 rounding."""
    import ray

    from agentrl.distributed.learner_group import LearnerGroup
    from agentrl.learner.policy import load_model, load_tokenizer

    path = str(tiny_model_dir("chatml"))
    tok = load_tokenizer(path)
    base = load_model(path)
    batch = make_batch(base, tok.pad_token_id, base.config.vocab_size, B=4)
    cfg = from_dict(TrainConfig, {
        "run": {"backend": "ray", "device": "cpu", "seed": 0}, "model": {"path": path, "dtype": "bfloat16"},
        "trainer": trainer(1), "algorithm": ALGORITHM,
        "ray": {"learner_ranks": 2, "cpus_per_learner_rank": 0.5, "startup_timeout_s": 480},
    })
    group = LearnerGroup(cfg, copy.deepcopy(base).to(torch.bfloat16))
    try:
        group.update(batch)
        state = group.state_dict()
    finally:
        group.close()
    masters = state["master_weights"]
    assert all(v.dtype == torch.float32 for v in masters.values())
    # the masters hold what bf16 cannot: some weight differs from its bf16 rounding
    assert any(not torch.equal(v, v.to(torch.bfloat16).float()) for v in masters.values())

    resumed = LearnerGroup(cfg, copy.deepcopy(base).to(torch.bfloat16))  # the mirror: as loaded from a checkpoint
    try:
        resumed.load_state_dict(state)
        weights = ray.get([r._full_weights.remote() for r in resumed.ranks])[0]  # a collective: every rank
    finally:
        resumed.close()
    for k, v in masters.items():
        assert torch.equal(weights[k], v), k


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


def test_one_rank_fsdp_update_on_device(tiny_model_dir, tmp_path):
    """One FSDP2 rank in this process (no Ray), on ``AGENTRL_TEST_DEVICE``: NCCL on cuda (the
    gpu_smoke step ``fsdp_one_rank``), gloo on CPU. (a) float32: two Learner updates through the
    sharded policy equal the unsharded Learner's (weights within 1e-5). (b) bfloat16 mixed
    precision (float32 masters, bf16 compute, fp32 reduce): the logprobs stay within 0.05 of the
    float32 ones (bf16 has 8 mantissa bits) and the same two updates keep the weights float32 and
    move them like the float32 run (the updates' cosine at least 0.95). The figures go
    to ``$AGENTRL_RESULTS_DIR/fsdp_one_rank_<device>.json``."""
    import json

    import torch.distributed as dist

    from agentrl.algorithms import build_algorithm
    from agentrl.distributed import fsdp
    from agentrl.distributed.cluster import free_port
    from agentrl.learner.learner import Learner
    from agentrl.learner.policy import load_model, load_tokenizer, sequence_logprobs

    path = str(tiny_model_dir("chatml"))
    tok = load_tokenizer(path)
    base = load_model(path)  # float32, CPU: builds the batch's behavior logprobs
    batch = make_batch(base, tok.pad_token_id, base.config.vocab_size)
    cfg = from_dict(TrainConfig, {"model": {"path": path}, "trainer": trainer(2), "algorithm": ALGORITHM})

    def learn(model, ref=None) -> tuple[Learner, list[dict]]:  # ref: the frozen KL reference (FSDP cannot deepcopy)
        learner = Learner(model, build_algorithm(ALGORITHM), cfg.trainer, seed=0, ref_model=ref)
        return learner, [learner.update(batch), learner.update(batch)]

    def on_device(m):
        return copy.deepcopy(m).to(DEVICE)

    def logprobs(model):
        with torch.no_grad():
            ids, mask = batch.input_ids.to(DEVICE), batch.attention_mask.to(DEVICE)
            logp, _ = sequence_logprobs(model, ids, mask, compute_entropy=False)
        return logp.float().cpu()[batch.loss_mask]

    plain = on_device(base)
    logp32 = logprobs(plain)
    _, m_plain = learn(plain)
    want = {k: v.detach().float().cpu() for k, v in plain.state_dict().items()}

    backend = "nccl" if DEVICE == "cuda" else "gloo"
    if DEVICE == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        sharded = fsdp.shard_policy(on_device(base))
        _, m_sharded = learn(sharded, fsdp.shard_policy(on_device(base)).eval().requires_grad_(False))
        got = fsdp.full_state_dict(sharded)

        mixed = fsdp.shard_policy(on_device(base), mp_policy=fsdp.mixed_precision("bfloat16"))
        logp16 = logprobs(mixed)
        ref16 = fsdp.shard_policy(on_device(base).to(torch.bfloat16)).eval().requires_grad_(False)  # as LearnerRank
        _, m_mixed = learn(mixed, ref16)
        got16 = fsdp.full_state_dict(mixed)
    finally:
        dist.destroy_process_group()

    start = {k: v.float() for k, v in base.state_dict().items()}
    err32 = max((got[k].float() - want[k]).abs().max().item() for k in want)
    assert err32 <= 1e-5, f"sharded float32 update differs from the unsharded one by {err32:.2e}"
    for a, b in zip(m_plain, m_sharded):
        assert abs(a["loss/total"] - b["loss/total"]) <= 1e-5 * max(1.0, abs(a["loss/total"]))

    lp_err = (logp16 - logp32).abs().max().item()
    assert 0 < lp_err <= 0.05, f"bf16 logprobs differ from float32 by {lp_err:.3g} (0 would mean bf16 never ran)"
    assert all(v.dtype == torch.float32 for v in got16.values())  # the master weights
    step32 = torch.cat([(want[k] - start[k]).flatten() for k in want])
    step16 = torch.cat([(got16[k].float() - start[k]).flatten() for k in want])
    rel = ((step16 - step32).norm() / step32.norm()).item()
    cos = torch.nn.functional.cosine_similarity(step16, step32, dim=0).item()
    # AdamW normalises each coordinate, so where a gradient is near zero bf16 noise flips its
    # sign: the bf16 update is close in direction (cosine), not equal coordinate by coordinate
    assert cos >= 0.95, f"the bf16 run's update has cosine {cos:.3f} with the float32 run's (relative difference {rel:.3f})"

    figures = {"device": DEVICE, "backend": backend, "torch": torch.__version__,
               "fp32_sharded_vs_unsharded_max_weight_err": err32, "bf16_vs_fp32_max_logprob_err": lp_err,
               "bf16_vs_fp32_update_rel_diff": rel, "bf16_vs_fp32_update_cosine": cos,
               "loss_total": {"fp32": [m["loss/total"] for m in m_plain], "bf16": [m["loss/total"] for m in m_mixed]}}
    out = os.environ.get("AGENTRL_RESULTS_DIR")
    if out:
        with open(os.path.join(out, f"fsdp_one_rank_{DEVICE}.json"), "w") as f:
            json.dump(figures, f, indent=2)
    print(json.dumps(figures))
