"""VLLMEngine: the parts that need no GPU, against a fake ``vllm`` module (the arguments it
passes, how it batches concurrent requests, parses outputs, loads weights and stamps versions),
and, on a CUDA machine with vLLM installed, conformance with the learner (run by
benchmarks/gpu_smoke.sh: sampled ids re-scored by the HF model give the logprobs vLLM reported,
before and after a weight sync)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from agentrl.rollout.engines import SamplingParams

pytestmark = pytest.mark.timeout(600)


class FakeLLM:
    """Deterministic stand-in: token k of a completion is (last prompt id + k + 1) % 50, its
    logprob -0.1 * (k + 1); stops at a stop id or max_tokens."""

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.rpcs, self.resets, self.loaded = kwargs, [], [], 0, None

    def generate(self, requests, sampling_params, use_tqdm=True):
        self.calls.append((requests, sampling_params))
        outs = []
        for req, sp in zip(requests, sampling_params):
            ids = []
            for k in range(sp.max_tokens):
                ids.append((req["prompt_token_ids"][-1] + k + 1) % 50)
                if ids[-1] in sp.stop_token_ids:
                    break
            finish = "stop" if ids[-1] in sp.stop_token_ids else "length"
            logprobs = [{t: SimpleNamespace(logprob=-0.1 * (k + 1), rank=1)} for k, t in enumerate(ids)]
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, logprobs=logprobs, finish_reason=finish)]))
        return outs

    def collective_rpc(self, method, args=()):
        """Like vLLM's: call ``method`` of the worker extension on each (here: one) worker."""
        from agentrl.rollout.vllm_engine import WeightLoaderExtension

        received = []
        worker = SimpleNamespace(device=torch.device("cpu"), model_runner=SimpleNamespace(model=SimpleNamespace(load_weights=lambda weights: received.extend(weights))))
        self.rpcs.append(method)
        out = getattr(WeightLoaderExtension, method)(worker, *args)
        self.loaded = dict(received)
        return [out]

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    module.__version__ = "0.0-fake"
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    return module


def test_llm_arguments_and_sampling_params(fake_vllm):
    from agentrl.rollout.vllm_engine import EXTENSION, VLLMEngine, to_vllm_params

    engine = VLLMEngine("/models/tiny", seed=3, gpu_memory_utilization=0.3)
    assert engine.llm.kwargs == {"model": "/models/tiny", "seed": 3, "logprobs_mode": "processed_logprobs",
                                 "worker_extension_cls": EXTENSION, "gpu_memory_utilization": 0.3}
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    sp = to_vllm_params(fake_vllm, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=5, stop_token_ids=(4,), seed=11))
    assert vars(sp) == {"n": 1, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "max_tokens": 5, "stop_token_ids": [4], "ignore_eos": True,
                        "seed": 11, "logprobs": 0, "detokenize": False, "skip_special_tokens": False}
    assert to_vllm_params(fake_vllm, SamplingParams(top_k=20)).top_k == 20
    assert to_vllm_params(fake_vllm, SamplingParams()).ignore_eos is False  # no stop ids: the model's EOS ends it


def test_concurrent_requests_are_batched_and_parsed(fake_vllm):
    from agentrl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine("m", batch_wait_s=0.05)
    params = SamplingParams(max_new_tokens=6, stop_token_ids=(13,))

    async def run():
        return await asyncio.gather(*(engine.agenerate([1, 2, p], params) for p in (10, 30, 40)))

    gens = asyncio.run(run())
    assert len(engine.llm.calls) == 1 and [r["prompt_token_ids"] for r in engine.llm.calls[0][0]] == [[1, 2, 10], [1, 2, 30], [1, 2, 40]]
    assert gens[0].ids == [11, 12, 13] and gens[0].finish_reason == "stop"  # the stop token is kept
    assert gens[1].ids == [31, 32, 33, 34, 35, 36] and gens[1].finish_reason == "length"
    assert gens[0].logprobs == pytest.approx([-0.1, -0.2, -0.3])
    assert {g.version for g in gens} == {0}
    engine.close()


def test_update_weights_loads_hf_names_and_versions_outputs(fake_vllm):
    from agentrl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine("m")
    state = {"model.embed_tokens.weight": torch.ones(3, 2), "lm_head.weight": torch.zeros(3, 2)}
    engine.update_weights(state, 4)
    assert engine.llm.rpcs == ["agentrl_load_weights"] and engine.llm.resets == 1
    assert engine.llm.loaded.keys() == state.keys() and torch.equal(engine.llm.loaded["model.embed_tokens.weight"], torch.ones(3, 2))
    assert engine.generate([[1]], [SamplingParams(max_new_tokens=2)])[0].version == 4
    engine.update_weights(None, 5)  # version only
    assert engine.llm.rpcs == ["agentrl_load_weights"] and engine.version == 5


def test_old_or_missing_vllm_is_explained(fake_vllm, monkeypatch):
    from agentrl.rollout.vllm_engine import VLLMEngine

    def old_llm(**kwargs):
        raise TypeError("__init__() got an unexpected keyword argument 'logprobs_mode'")

    monkeypatch.setattr(fake_vllm, "LLM", old_llm)
    with pytest.raises(RuntimeError, match="too old: agentrl needs vllm>=0.10.2"):
        VLLMEngine("m")
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install 'agentrl\[vllm\]'"):
        VLLMEngine("m")


# ----------------------------------------------------------------------------- on a GPU
def _real_vllm() -> bool:
    if not torch.cuda.is_available():
        return False
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(not _real_vllm(), reason="needs CUDA and vLLM (benchmarks/gpu_smoke.sh)")
def test_vllm_logprobs_match_the_learner_on_gpu(tmp_path_factory, guess_env_id):
    """Sampled ids re-scored by the HF model (learner's sequence_logprobs, fp32) give vLLM's
    logprobs at T=0.8, before and after a weight sync that changes the model."""
    from agentrl.learner.policy import load_model, load_tokenizer, sequence_logprobs
    from agentrl.models.chat import ChatFormat
    from agentrl.models.tiny import create_tiny_model, env_corpus
    from agentrl.rollout.vllm_engine import VLLMEngine

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
