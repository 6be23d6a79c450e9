"""vLLM generation on GPU (optional extra ``pip install 'agentrl[vllm]'``; imported lazily).

What it relies on (vLLM >= 0.10.2, V1 engine; the calls below were checked against vLLM's
source for :data:`VLLM_CHECKED`):

- ``vllm.LLM(model=..., logprobs_mode="processed_logprobs")``: sample logprobs are computed
  from the logits the sampler actually used, i.e. after temperature. With ``top_k``/``top_p``
  off (the default) that is ``log_softmax(logits / T)``, the convention of
  :mod:`agentrl.rollout.engines` that the learner recomputes. With top-k/top-p on, vLLM reports
  the logprob under the *filtered* distribution, which is larger than the learner's; a warning
  says so once. (The default ``raw_logprobs`` would ignore the temperature.)
- ``SamplingParams(logprobs=0)``: only the sampled token's logprob; ``seed`` per request;
  ``stop_token_ids`` with ``ignore_eos=True`` (stop exactly where the chat template's
  end-of-turn is, like HFEngine); ``detokenize=False`` (the agent loop decodes itself). The
  output ``token_ids`` end with the stop token when one was hit.
- Weight sync: ``LLM(worker_extension_cls=...)`` adds :class:`WeightLoaderExtension` to vLLM's
  workers and ``LLM.collective_rpc("agentrl_load_weights", args=(named_tensors,))`` calls
  ``model_runner.model.load_weights`` with HF parameter names (vLLM maps them onto its fused
  layers), then ``reset_prefix_cache()`` drops KV blocks computed with the old weights.
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set unless the user set it) keeps the engine core in this
  process, so the tensors are handed over without serialization (tensor parallelism > 1 uses
  vLLM's own worker processes and pickles them).
- Automatic prefix caching: ``enable_prefix_caching=True`` unless ``rollout.vllm`` sets it.
  An episode's turns share their whole history as a prefix, so vLLM reuses the KV blocks of
  the previous turn (while they are not evicted) and prefills only the appended tokens (the
  HF engine's per-episode cache, done by vLLM's block hashing). Each Generation reports
  ``cached_tokens = RequestOutput.num_cached_tokens`` and ``prefill_tokens = len(prompt) -
  cached_tokens`` when vLLM exposes ``num_cached_tokens`` (vLLM V1 does); where it is absent
  (None, older versions) both stay 0 (unknown, not "nothing cached"). ``cache_key`` is not
  needed (vLLM matches prefixes by content) and :meth:`Engine.release` is a no-op.
- ``LLM.generate`` raises (``ValueError``) for the whole call when one prompt is longer than
  ``max_model_len`` (``llm.llm_engine.model_config.max_model_len``). So each request is
  checked first: a prompt with no room left for one generated token fails alone
  (:class:`~agentrl.rollout.faults.EpisodeFailure` "engine_prompt_too_long", its episode ends
  as failed data) and the others are generated; ``max_tokens`` is capped at the room left.
- ``finish_reason`` is "stop", "length" or "abort" (the engine aborted the request); an
  aborted request fails its episode ("engine_aborted"), it is not a truncated turn.
- ``dtype``: ``make_engine`` passes ``model.dtype`` unless ``rollout.vllm`` sets it (vLLM's
  "auto" serves a float32 config as float16). vLLM samples any temperature in (0, 0.01) at
  0.01; the config check refuses those temperatures with this engine (the learner would
  recompute logprobs at the configured one).

Concurrent requests from many episodes are batched like HFEngine's: requests that arrive
within ``batch_wait_s`` of each other go to vLLM as one ``LLM.generate`` call (vLLM schedules
them with continuous batching inside it). Unverified on a GPU in this repository's CI; see
benchmarks/gpu_smoke.sh for the check to run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import torch

from .batcher import QueuedEngine, serve_batches
from .engines import Engine, Generation, SamplingParams
from .faults import EpisodeFailure

log = logging.getLogger(__name__)

EXTENSION = "agentrl.rollout.vllm_engine.WeightLoaderExtension"

VLLM_CHECKED = ">=0.10.2,<0.12"
"""The vllm range for the ``vllm`` extra. The floor is the first release with every keyword used
here (``logprobs_mode``, ``worker_extension_cls``); the ``LLM``/``EngineArgs`` keywords, the
``SamplingParams`` fields, ``RequestOutput``, ``collective_rpc``, ``reset_prefix_cache`` and the
prompt-length check were read in vLLM's source (0.10-era ``LLM``, a recent ``SamplingParams``);
the ceiling keeps out releases no one has checked this module against. The fakes in
tests/rollout/test_vllm_engine.py accept exactly the keywords used."""


def import_vllm() -> Any:
    """``import vllm`` with an install hint when it is missing."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "rollout.engine 'vllm' needs vLLM on a CUDA machine: pip install 'agentrl[vllm]' "
            f"(or use rollout.engine: hf on CPU). Import failed with: {e}"
        ) from e
    return vllm


class WeightLoaderExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``): loads HF-named tensors."""

    def agentrl_load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        device = getattr(self, "device", None)
        model = self.model_runner.model  # type: ignore[attr-defined]
        model.load_weights(weights=((name, t.to(device) if device is not None else t) for name, t in named_tensors))
        return len(named_tensors)


def to_vllm_params(vllm: Any, params: SamplingParams) -> Any:
    """Our SamplingParams as ``vllm.SamplingParams`` (see the module docstring)."""
    stop = list(params.stop_token_ids)
    return vllm.SamplingParams(
        n=1,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,
        max_tokens=params.max_new_tokens,
        stop_token_ids=stop,
        ignore_eos=bool(stop),
        seed=params.seed,
        logprobs=0,
        detokenize=False,
        skip_special_tokens=False,
    )


def _logprob_value(entry: Any, token_id: int) -> float:
    """The sampled token's logprob from one position of vLLM's ``logprobs`` (a dict of
    token id -> Logprob; with ``logprobs=0`` it holds just the sampled token)."""
    value = entry[token_id]
    return float(getattr(value, "logprob", value))


def parse_output(request_output: Any, version: int) -> Generation:
    """A vLLM ``RequestOutput`` (one completion) as a Generation stamped with ``version``.
    Raises :class:`EpisodeFailure` ("engine_aborted") for finish reason "abort"."""
    out = request_output.outputs[0]
    ids = [int(t) for t in out.token_ids]
    if out.finish_reason == "abort":
        raise EpisodeFailure("engine_aborted", f"vLLM aborted the request after {len(ids)} generated tokens (finish_reason 'abort')")
    if out.finish_reason not in ("stop", "length"):
        raise EpisodeFailure("engine_invalid_output", f"vLLM returned finish_reason {out.finish_reason!r}; expected 'stop', 'length' or 'abort'")
    if out.logprobs is None or len(out.logprobs) != len(ids):
        raise RuntimeError(f"vLLM returned {0 if out.logprobs is None else len(out.logprobs)} logprobs for {len(ids)} tokens; was logprobs=0 set?")
    logprobs = [_logprob_value(entry, tok) for entry, tok in zip(out.logprobs, ids)]
    reason = out.finish_reason
    cached = getattr(request_output, "num_cached_tokens", None)
    prompt = getattr(request_output, "prompt_token_ids", None)
    if isinstance(cached, int) and prompt is not None:
        return Generation(ids, logprobs, reason, version, prefill_tokens=len(prompt) - cached, cached_tokens=cached)
    return Generation(ids, logprobs, reason, version)


class VLLMEngine(QueuedEngine, Engine):
    """In-process ``vllm.LLM`` behind the Engine interface.

    Args:
        model_path: HF model name or folder (architecture and initial weights).
        seed: engine seed (requests carry their own seeds too).
        max_batch_size: most requests sent to vLLM in one ``generate`` call.
        batch_wait_s: how long the batcher waits for more requests after the first.
        **llm_kwargs: passed to ``vllm.LLM`` (``gpu_memory_utilization``, ``max_model_len``,
            ``tensor_parallel_size``, ``dtype``, ``enforce_eager``, ...): ``rollout.vllm``.
            ``enable_prefix_caching`` defaults to True here (an episode's turns share their
            history as a prefix); set it False in ``rollout.vllm`` to turn it off.
    """

    def __init__(self, model_path: str, *, seed: int = 0, max_batch_size: int = 256, batch_wait_s: float = 0.01, **llm_kwargs: Any) -> None:
        self.vllm = import_vllm()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs = {"model": model_path, "seed": seed, "logprobs_mode": "processed_logprobs", "worker_extension_cls": EXTENSION,
                  "enable_prefix_caching": True, **llm_kwargs}
        try:
            self.llm = self.vllm.LLM(**kwargs)
        except TypeError as e:
            if "logprobs_mode" in str(e) or "worker_extension_cls" in str(e):
                raise RuntimeError(f"this vLLM ({getattr(self.vllm, '__version__', '?')}) is too old: agentrl needs vllm>=0.10.2 ({e})") from e
            raise
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        engine_len = getattr(getattr(getattr(self.llm, "llm_engine", None), "model_config", None), "max_model_len", None)
        given = engine_len if engine_len is not None else kwargs.get("max_model_len")
        self.max_model_len: int | None = int(given) if given is not None else None
        self.version = 0
        self._lock = threading.Lock()  # one generate / weight load at a time
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._warned_filtering = False
        self.stats = {"batches": 0, "requests": 0, "generated_tokens": 0, "generate_time_s": 0.0, "weight_loads": 0}

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generation | EpisodeFailure]:
        """Synchronous batched generation (the batcher's worker; simple callers may use it).
        One result per prompt, in order: a Generation, or the EpisodeFailure of a request that
        failed alone (a prompt with no room left in ``max_model_len``, an aborted request),
        which the batcher raises to that request only."""
        if not self._warned_filtering and any(p.top_k or p.top_p < 1 for p in params):
            self._warned_filtering = True
            log.warning("vLLM reports logprobs of the top-k/top-p filtered distribution; the learner recomputes the "
                        "unfiltered one, so the first-update ratio is not exactly 1 (see docs/distributed.md, VLLMEngine)")
        t0 = time.perf_counter()
        limit, params = self.max_model_len, list(params)
        results: list[Generation | EpisodeFailure | None] = [None] * len(prompts)
        todo = []
        for i, (p, sp) in enumerate(zip(prompts, params)):
            if limit is not None and len(p) >= limit:
                results[i] = EpisodeFailure("engine_prompt_too_long", f"the prompt has {len(p)} tokens and vLLM's max_model_len is {limit}: no "
                                            "room for a generated token (lower rollout.max_total_tokens or raise rollout.vllm.max_model_len)")
            else:
                todo.append(i)
                if limit is not None and sp.max_new_tokens > limit - len(p):
                    params[i] = replace(sp, max_new_tokens=limit - len(p))
        if todo:
            requests = [{"prompt_token_ids": list(prompts[i])} for i in todo]
            vparams = [to_vllm_params(self.vllm, params[i]) for i in todo]
            with self._lock:
                version = self.version
                outputs = self.llm.generate(requests, sampling_params=vparams, use_tqdm=False)
            for i, o in zip(todo, outputs):
                try:
                    results[i] = parse_output(o, version)
                except EpisodeFailure as e:
                    results[i] = e
        gens = [r for r in results if isinstance(r, Generation)]
        self.stats["batches"] += 1
        self.stats["requests"] += len(prompts)
        self.stats["generated_tokens"] += sum(len(g.ids) for g in gens)
        self.stats["generate_time_s"] += time.perf_counter() - t0
        return results  # type: ignore[return-value]

    def _serve(self) -> Coroutine[Any, Any, None]:
        """What serves the request queue of ``agenerate`` (:class:`~agentrl.rollout.batcher.QueuedEngine`)."""
        return self._batcher()

    async def _batcher(self) -> None:
        """One ``LLM.generate`` per batch of what arrives within ``batch_wait_s``
        (:func:`agentrl.rollout.batcher.serve_batches`, in a to_thread worker)."""
        assert self._queue is not None
        await serve_batches(self._queue, self.generate, max_batch_size=self.max_batch_size, batch_wait_s=self.batch_wait_s,
                            what="vLLM generation", logger=log)

    # ------------------------------------------------------------------ weights
    def update_weights(self, state_dict: dict[str, torch.Tensor] | None, version: int) -> None:
        """Load the learner's weights (HF names) into vLLM's model as ``version``; between
        batches (under the generation lock)."""
        with self._lock:
            if state_dict is not None:
                self.llm.collective_rpc("agentrl_load_weights", args=(list(state_dict.items()),))
                self.llm.reset_prefix_cache()
                self.stats["weight_loads"] += 1
            self.version = version

    def close(self) -> None:
        self._stop_serving()
