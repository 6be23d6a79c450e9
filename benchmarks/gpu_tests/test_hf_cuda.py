"""GPU-only conformance of the HF engine with the learner on CUDA, run by benchmarks/gpu_smoke.sh
(kept out of tests/, so the CPU suite has no skipped tests): the CPU test
tests/rollout/test_conformance.py, with the model on the GPU. 6-turn GuessNumber episodes with
tool output per chat template; the ids trained on are the ids sampled, and the learner's
recomputation (``sequence_logprobs``, fp32, one forward over the whole trajectory) matches the
behavior logprobs the engine recorded (batched, KV-cached decoding) within 1e-4.

``AGENTRL_GPU_TEST_DEVICE=cpu`` runs the same code on the CPU (to check the test itself)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import guess_env_id, tiny_model_dir  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(600)
DEVICE = os.environ.get("AGENTRL_GPU_TEST_DEVICE", "cuda")
TOL = 1e-4  # fp32 on a GPU: different kernels for decoding (KV cache) and the full forward


@pytest.mark.parametrize("template", ["chatml", "llama3", "qwen3"])
def test_hf_engine_on_gpu_matches_the_learner(template, tiny_model_dir, guess_env_id):  # noqa: F811
    import agentrl.envs as envs
    from agentrl.learner.policy import load_model, load_tokenizer, sequence_logprobs
    from agentrl.models.chat import ChatFormat
    from agentrl.rollout import AgentLoop, EpisodeSpec, HFEngine, SamplingParams

    assert DEVICE == "cpu" or torch.cuda.is_available(), "this test needs CUDA: run it through benchmarks/gpu_smoke.sh"
    path = str(tiny_model_dir(template))
    tok = load_tokenizer(path)
    model = load_model(path, device=DEVICE).eval()
    assert next(model.parameters()).device.type == DEVICE
    chat = ChatFormat(tok)
    temperature = 0.7
    loop = AgentLoop(
        [envs.make(guess_env_id, max_turns=6) for _ in range(4)], HFEngine(model, pad_token_id=tok.pad_token_id, seed=1), chat,
        SamplingParams(temperature=temperature, max_new_tokens=24), max_total_tokens=100_000,
    )
    trajs = asyncio.run(loop.collect([EpisodeSpec({"task_index": i}, sample_index=i, seed=i) for i in range(4)]))
    loop.close()
    errors = []
    for traj in trajs:
        assert not traj.failed, traj.failure_reason
        assert traj.num_turns == 6 and sum(traj.loss_mask) < len(traj.input_ids)  # tool output between turns
        ids = torch.tensor([traj.input_ids], device=DEVICE)
        with torch.no_grad():
            lp, _ = sequence_logprobs(model, ids, torch.ones_like(ids), temperature=temperature, compute_entropy=False)
        mask = torch.tensor(traj.loss_mask, dtype=torch.bool)  # lp[0, t]: logprob of token t given < t
        behavior = torch.tensor(traj.behavior_logprobs)
        errors.append((lp[0].cpu()[mask] - behavior[mask]).abs())
    err = torch.cat(errors)
    out = os.environ.get("AGENTRL_RESULTS_DIR")
    if out:
        f = Path(out, "hf_cuda_conformance.json")
        results = json.loads(f.read_text()) if f.exists() else {}
        results[template] = {"device": DEVICE, "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else None, "tokens": err.numel(),
                             "max_abs_err": err.max().item(), "mean_abs_err": err.mean().item(), "tolerance": TOL}
        f.write_text(json.dumps(results, indent=2))
    assert err.max().item() < TOL, err.max().item()
