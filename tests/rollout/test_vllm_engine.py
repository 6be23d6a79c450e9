"""VLLMEngine: the parts that need no GPU, against a fake ``vllm`` module (the arguments it
passes, how it batches concurrent requests, parses outputs, loads weights and stamps versions),
The GPU conformance test (vLLM's sampled ids re-scored by the learner give the logprobs vLLM
reported, before and after a weight sync) lives in benchmarks/gpu_tests/ and runs from
benchmarks/gpu_smoke.sh, so the CPU suite never carries a skipped test."""

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


# The keywords agentrl passes to vllm.LLM (VLLMEngine) and those docs/distributed.md tells users
# to set in rollout.vllm: all are vllm.LLM / EngineArgs parameters in VLLM_CHECKED. Any other
# keyword is a TypeError, as an unknown EngineArgs field is in vLLM.
LLM_KEYWORDS = {"seed", "logprobs_mode", "worker_extension_cls", "enable_prefix_caching", "gpu_memory_utilization", "max_model_len",
                "tensor_parallel_size", "dtype", "enforce_eager"}
# vLLM's Worker methods a worker extension must not shadow.
WORKER_METHODS = {"update_weights", "sleep", "wake_up", "load_model", "reload_weights"}


class FakeSamplingParams:
    """``vllm.SamplingParams`` with only the fields agentrl sets (all are fields of vLLM's
    msgspec struct; any other keyword is a TypeError, as there)."""

    def __init__(self, *, n=1, temperature=1.0, top_p=1.0, top_k=0, max_tokens=16, stop_token_ids=None, ignore_eos=False, seed=None,
                 logprobs=None, detokenize=True, skip_special_tokens=True):
        self.n, self.temperature, self.top_p, self.top_k, self.max_tokens = n, temperature, top_p, top_k, max_tokens
        self.stop_token_ids, self.ignore_eos, self.seed, self.logprobs = stop_token_ids, ignore_eos, seed, logprobs
        self.detokenize, self.skip_special_tokens = detokenize, skip_special_tokens


class FakeLLM:
    """Deterministic stand-in: token k of a completion is (last prompt id + k + 1) % 50, its
    logprob -0.1 * (k + 1); stops at a stop id or max_tokens. With enable_prefix_caching it
    reports ``num_cached_tokens`` as the longest prefix shared with an earlier request (vLLM
    V1's RequestOutput field); with ``report_cached=False`` it leaves the field out.

    Strict where vLLM is: unknown constructor keywords raise TypeError; ``generate`` raises
    ValueError for the whole call when one prompt is longer than ``max_model_len`` (default
    ``default_max_model_len``, what vLLM would derive from the model config, exposed as
    ``llm_engine.model_config.max_model_len``); a prompt whose last id is in ``abort_ids``
    comes back with finish reason "abort" after one token."""

    report_cached = True
    default_max_model_len = 1024
    abort_ids: frozenset = frozenset()

    def __init__(self, model, **kwargs):
        unknown = sorted(set(kwargs) - LLM_KEYWORDS)
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {unknown[0]!r}")
        kwargs = {"model": model, **kwargs}
        self.kwargs, self.calls, self.rpcs, self.resets, self.loaded = kwargs, [], [], 0, None
        self.seen: list[list[int]] = []
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=kwargs.get("max_model_len", self.default_max_model_len)))

    def _cached(self, prompt):
        if not self.kwargs.get("enable_prefix_caching"):
            return 0
        best = 0
        for old in self.seen:
            n = 0
            while n < min(len(old), len(prompt) - 1) and old[n] == prompt[n]:
                n += 1
            best = max(best, n)
        return best

    def generate(self, requests, /, sampling_params=None, *, use_tqdm=True, lora_request=None):
        limit = self.llm_engine.model_config.max_model_len
        for req in requests:
            if len(req["prompt_token_ids"]) > limit:  # vLLM's input check: the whole call fails
                raise ValueError(f"The decoder prompt (length {len(req['prompt_token_ids'])}) is longer than the maximum model length of {limit}.")
        self.calls.append((requests, sampling_params))
        outs = []
        for req, sp in zip(requests, sampling_params):
            # VLLMEngine caps max_tokens at the room left (vLLM would stop there with "length")
            assert isinstance(sp, FakeSamplingParams) and len(req["prompt_token_ids"]) + sp.max_tokens <= limit
            ids = []
            for k in range(sp.max_tokens):
                ids.append((req["prompt_token_ids"][-1] + k + 1) % 50)
                if ids[-1] in sp.stop_token_ids:
                    break
            finish = "stop" if ids[-1] in sp.stop_token_ids else "length"
            if req["prompt_token_ids"][-1] in self.abort_ids:
                ids, finish = ids[:1], "abort"
            logprobs = [{t: SimpleNamespace(logprob=-0.1 * (k + 1), rank=1)} for k, t in enumerate(ids)]
            out = SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, logprobs=logprobs, finish_reason=finish)],
                                  prompt_token_ids=list(req["prompt_token_ids"]))
            if self.report_cached:
                out.num_cached_tokens = self._cached(req["prompt_token_ids"])
            self.seen.append(list(req["prompt_token_ids"]) + ids)
            outs.append(out)
        return outs

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
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
    module.SamplingParams = FakeSamplingParams
    module.__version__ = "0.0-fake"
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    return module


def test_llm_arguments_and_sampling_params(fake_vllm):
    from agentrl.rollout.vllm_engine import EXTENSION, VLLMEngine, to_vllm_params

    engine = VLLMEngine("/models/tiny", seed=3, gpu_memory_utilization=0.3)
    assert engine.llm.kwargs == {"model": "/models/tiny", "seed": 3, "logprobs_mode": "processed_logprobs",
                                 "worker_extension_cls": EXTENSION, "enable_prefix_caching": True,
                                 "gpu_memory_utilization": 0.3}
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

    def old_llm(model, **kwargs):
        raise TypeError("__init__() got an unexpected keyword argument 'logprobs_mode'")

    monkeypatch.setattr(fake_vllm, "LLM", old_llm)
    with pytest.raises(RuntimeError, match="too old: agentrl needs vllm>=0.10.2"):
        VLLMEngine("m")
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install 'agentrl\[vllm\]'"):
        VLLMEngine("m")


def test_prefix_caching_is_on_by_default_and_cached_tokens_are_reported(fake_vllm, monkeypatch):
    from agentrl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine("/models/tiny")
    assert engine.llm.kwargs["enable_prefix_caching"] is True
    p = SamplingParams(max_new_tokens=3, cache_key="ep")
    (g1,) = engine.generate([[1, 2, 3]], [p])
    assert (g1.prefill_tokens, g1.cached_tokens) == (3, 0)
    (g2,) = engine.generate([[1, 2, 3, *g1.ids, 7, 8]], [p])  # the next turn extends the episode
    assert (g2.prefill_tokens, g2.cached_tokens) == (2, 6)
    engine.release("ep")  # a no-op: vLLM matches prefixes itself

    off = VLLMEngine("/models/tiny", enable_prefix_caching=False)  # the user's rollout.vllm wins
    assert off.llm.kwargs["enable_prefix_caching"] is False
    (g,) = off.generate([[1, 2, 3]], [p])
    assert (g.prefill_tokens, g.cached_tokens) == (3, 0)

    monkeypatch.setattr(FakeLLM, "report_cached", False)  # no num_cached_tokens: both stay 0
    (g,) = VLLMEngine("/models/tiny").generate([[1, 2, 3]], [p])
    assert (g.prefill_tokens, g.cached_tokens) == (0, 0)


def test_fakes_are_strict_and_the_extension_fits_vllms_worker(fake_vllm):
    import importlib

    from agentrl.rollout.vllm_engine import EXTENSION, VLLM_CHECKED, VLLMEngine, WeightLoaderExtension

    with pytest.raises(TypeError, match="unexpected keyword argument 'gpu_memory_utilisation'"):
        VLLMEngine("m", gpu_memory_utilisation=0.3)  # a typo in rollout.vllm fails as it would in vLLM
    with pytest.raises(TypeError):
        fake_vllm.SamplingParams(max_new_tokens=5)
    # vLLM resolves worker_extension_cls by its dotted name (module path, then attribute)
    module, name = EXTENSION.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is WeightLoaderExtension
    own = {m for m in vars(WeightLoaderExtension) if not m.startswith("__")}
    assert own == {"agentrl_load_weights"} and not own & WORKER_METHODS
    assert VLLM_CHECKED.startswith(">=0.10.2")


def test_an_over_long_prompt_fails_only_its_request(fake_vllm):
    from agentrl.rollout.faults import EpisodeFailure
    from agentrl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine("m", max_model_len=8, batch_wait_s=0.05)
    assert engine.max_model_len == 8
    params = SamplingParams(max_new_tokens=4)

    async def run():
        return await asyncio.gather(*(engine.agenerate(p, params) for p in ([1, 2, 10], list(range(1, 10)), [1, 2, 3, 4, 5, 30], list(range(8)))),
                                    return_exceptions=True)

    short, too_long, capped, full = asyncio.run(run())
    assert len(engine.llm.calls) == 1 and len(engine.llm.calls[0][0]) == 2  # one generate call, without the over-long prompts
    assert short.ids == [11, 12, 13, 14] and short.finish_reason == "length"
    assert capped.ids == [31, 32] and capped.finish_reason == "length"  # capped at the 2 tokens left in max_model_len
    for failed, n in ((too_long, 9), (full, 8)):  # longer than max_model_len, and no room for one token
        assert isinstance(failed, EpisodeFailure) and failed.kind == "engine_prompt_too_long" and f"has {n} tokens" in str(failed)
    assert engine.stats["requests"] == 4 and engine.stats["generated_tokens"] == 6
    engine.close()


def test_an_aborted_request_fails_its_episode_and_is_not_a_truncation(fake_vllm, monkeypatch, tiny_model_dir, guess_env_id):
    from agentrl import envs
    from agentrl.learner.policy import load_tokenizer
    from agentrl.models.chat import ChatFormat
    from agentrl.rollout.agent_loop import AgentLoop, EpisodeSpec
    from agentrl.rollout.faults import FAILURE_KINDS, EpisodeFailure
    from agentrl.rollout.vllm_engine import VLLMEngine

    monkeypatch.setattr(FakeLLM, "abort_ids", frozenset({10}))
    engine = VLLMEngine("m")
    ok, aborted = engine.generate([[1, 2, 3], [1, 2, 10]], [SamplingParams(max_new_tokens=3)] * 2)
    assert ok.finish_reason == "length" and len(ok.ids) == 3
    assert isinstance(aborted, EpisodeFailure) and aborted.kind == "engine_aborted" and "engine_aborted" in FAILURE_KINDS
    assert "finish_reason 'abort'" in str(aborted)

    monkeypatch.setattr(FakeLLM, "abort_ids", frozenset(range(100_000)))  # every request aborts
    tok = load_tokenizer(tiny_model_dir())
    loop = AgentLoop([envs.make(guess_env_id, high=8, max_turns=3)], VLLMEngine("m"), ChatFormat(tok), SamplingParams(max_new_tokens=8),
                     max_total_tokens=512)
    (traj,) = asyncio.run(loop.collect([EpisodeSpec({"task_index": 0, "split": "test"}, seed=5)]))
    loop.close()
    assert traj.failed and traj.failure_kind == "engine_aborted" and not traj.truncated
    assert "turns_cut_at_max_tokens" not in traj.metrics
