"""GPU-only conformance of the vLLM engine with the learner, run by benchmarks/gpu_smoke.sh on a
CUDA machine with vLLM installed (kept out of tests/, so the CPU suite has no skipped tests):
sampled ids re-scored by the HF model in fp32 give the logprobs vLLM reported, before and after
a weight sync that changes the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from agentrl.rollout.engines import SamplingParams
from tests.conftest import guess_env_id  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(600)

# ----------------------------------------------------------------------------- on a GPU
def _real_vllm() -> bool:
    if not torch.cuda.is_available():
        return False
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_vllm_logprobs_match_the_learner_on_gpu(tmp_path_factory, guess_env_id):
    """Sampled ids re-scored by the HF model (learner's sequence_logprobs, fp32) give vLLM's
    logprobs at T=0.8, before and after a weight sync that changes the model."""
    from agentrl.learner.policy import load_model, load_tokenizer, sequence_logprobs
    from agentrl.models.chat import ChatFormat
    from agentrl.models.tiny import create_tiny_model, env_corpus
    from agentrl.rollout.vllm_engine import VLLMEngine

    assert _real_vllm(), "this test needs CUDA and vLLM: run it through benchmarks/gpu_smoke.sh on a GPU machine"

    texts = env_corpus([guess_env_id], episodes=12, template="chatml")
    # head_dim 64: every vLLM attention backend supports it (the CPU tests' 16 is unusual)
    path = str(create_tiny_model(tmp_path_factory.mktemp("tiny_vllm"), texts, template="chatml", vocab_size=600, hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2))
    tok = load_tokenizer(path)
    hf = load_model(path, device="cuda").eval()
    dtype = os.environ.get("AGENTRL_VLLM_DTYPE", "float32")
    engine = VLLMEngine(path, seed=0, dtype=dtype, gpu_memory_utilization=0.3, max_model_len=2048, enforce_eager=True)
    chat = ChatFormat(tok)
    prompts = [chat.prompt_ids([{"role": "user", "content": f"Find the secret integer between 1 and {n}."}], None) for n in (8, 50, 1000, 3)]
    params = [SamplingParams(temperature=0.8, max_new_tokens=48, stop_token_ids=tuple(chat.stop_token_ids), seed=s) for s in range(len(prompts))]

    def max_error(version: int) -> tuple[float, float]:
        gens = engine.generate(prompts, params)
        errs = []
        for p, g in zip(prompts, gens):
            assert g.version == version and len(g.ids) == len(g.logprobs) > 0
            ids = torch.tensor([p + g.ids], device="cuda")
            with torch.no_grad():
                lp, _ = sequence_logprobs(hf, ids, torch.ones_like(ids), temperature=0.8, compute_entropy=False)
            errs.extend((lp[0, len(p):].cpu() - torch.tensor(g.logprobs)).abs().tolist())
        return max(errs), sum(errs) / len(errs)

    before = max_error(0)
    with torch.no_grad():  # a different policy: perturb every weight, then sync it
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    engine.update_weights({k: v.detach().cpu() for k, v in hf.state_dict().items()}, 1)
    after = max_error(1)
    tol = 1e-3 if dtype == "float32" else 0.1
    out = os.environ.get("AGENTRL_RESULTS_DIR")
    if out:
        Path(out, "vllm_conformance.json").write_text(json.dumps({"dtype": dtype, "max_abs_err_before": before[0], "mean_abs_err_before": before[1],
                                                                  "max_abs_err_after_sync": after[0], "mean_abs_err_after_sync": after[1], "tolerance": tol}, indent=2))
    assert before[0] < tol and after[0] < tol, (before, after)
    engine.close()
