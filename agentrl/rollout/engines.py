"""Generation engines behind one interface: prompt ids in, sampled ids and behavior logprobs out.

- :class:`HFEngine`: HF transformers on CPU (the default, and what the tests run). It batches
  concurrent requests itself: episodes call ``await engine.agenerate(prompt)`` independently,
  and requests that arrive together are generated as one left-padded batch.
- :class:`VLLMEngine` (``agentrl.rollout.vllm_engine``): vLLM on GPU, with weight sync from the
  learner (optional extra ``agentrl[vllm]``).
- :class:`OpenAIEngine` (``agentrl.rollout.openai_engine``): any OpenAI-compatible completions
  server (vLLM, SGLang, TGI) for evaluation.

``behavior_logprobs`` are ``log_softmax(logits / temperature)`` at the sampled token: the
tempered full distribution, before top-k/top-p filtering (the convention of verl and vLLM's
default logprobs), which is what the learner recomputes.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one request.

    Attributes:
        temperature: > 0; logprobs are reported at this temperature.
        top_p: nucleus sampling mass in (0, 1]; 1 disables it.
        top_k: keep the k most likely tokens; 0 disables it.
        max_new_tokens: cap on generated tokens for this turn.
        stop_token_ids: generation ends after any of these (the template's end-of-turn).
        seed: per-request seed; the same seed and prompt give the same sample regardless of
            which other requests share the batch (up to float noise of batched matmuls).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature} (use a small value like 1e-3 for near-greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"top_k must be >= 0 and max_new_tokens >= 1, got {self.top_k} and {self.max_new_tokens}")


@dataclass
class Generation:
    """One sampled continuation: ``ids`` (including the stop token when one was hit),
    ``logprobs`` (one per id), ``finish_reason`` ("stop" or "length"), and the policy
    ``version`` of the weights that produced it."""

    ids: list[int]
    logprobs: list[float]
    finish_reason: str
    version: int


class Engine(abc.ABC):
    """Generation backend. ``version`` counts weight updates (train_steps) it has received."""

    version: int = 0

    @abc.abstractmethod
    async def agenerate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        """Sample one continuation of ``prompt_ids``. Raises on engine failure (the rollout
        records the episode as failed)."""

    async def agenerate_many(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generation]:
        return list(await asyncio.gather(*(self.agenerate(p, s) for p, s in zip(prompts, params))))

    def update_weights(self, state_dict: dict[str, torch.Tensor] | None, version: int) -> None:
        """Load new policy weights (None: the engine shares the learner's module) and set the version."""
        self.version = version

    def close(self) -> None:
        """Release resources."""


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside top-k / top-p with -inf. logits: [N, V] (already tempered)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _cache_kwarg(model: Any) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; support both."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def sample_batch(
    model: Any,
    prompts: list[list[int]],
    params: list[SamplingParams],
    *,
    pad_token_id: int,
    generators: list[torch.Generator],
) -> list[tuple[list[int], list[float], str]]:
    """Batched sampling with a KV cache: left-pad, prefill, then one token per step.

    Each row samples with its own generator (a CPU ``torch.Generator``, whatever the model's
    device) and its own params (temperature, top-k/p, stop ids, max tokens); rows that finished
    keep being fed a pad token (their outputs ignored).
    Returns (ids, logprobs, finish_reason) per prompt.
    """
    B = len(prompts)
    L = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long, device=device)
    attention = torch.zeros((B, L), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        input_ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention[i, L - len(p) :] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    cache_kw = _cache_kwarg(model)
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    next_logits = out.logits[:, -1, :].float()
    max_new = max(p.max_new_tokens for p in params)
    temps = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)[:, None]
    results: list[tuple[list[int], list[float], str]] = [([], [], "length") for _ in range(B)]
    done = [False] * B
    last_pos = position_ids[:, -1]
    for step in range(max_new):
        logits = next_logits / temps
        logp_all = torch.log_softmax(logits, dim=-1)
        tokens = torch.empty(B, dtype=torch.long)
        # the seeded generators live on the CPU (same draws whatever the model's device): one
        # [B, V] copy per step instead of a device generator per row
        sample_logits = logits.cpu()
        for i in range(B):
            if done[i]:
                tokens[i] = pad_token_id
                continue
            row = _filter_logits(sample_logits[i : i + 1], params[i].top_k, params[i].top_p)
            tokens[i] = torch.multinomial(row.softmax(-1), 1, generator=generators[i])[0, 0]
        chosen_logp = logp_all.gather(-1, tokens[:, None].to(device))[:, 0].tolist()
        for i in range(B):
            if done[i]:
                continue
            tok = int(tokens[i])
            ids, lps, _ = results[i]
            ids.append(tok)
            lps.append(chosen_logp[i])
            if tok in params[i].stop_token_ids:
                results[i] = (ids, lps, "stop")
                done[i] = True
            elif len(ids) >= params[i].max_new_tokens:
                done[i] = True
        if all(done):
            break
        attention = torch.cat([attention, torch.ones((B, 1), dtype=torch.long, device=device)], dim=1)
        last_pos = last_pos + 1
        out = model(
            input_ids=tokens[:, None].to(device),
            attention_mask=attention,
            position_ids=last_pos[:, None],
            use_cache=True,
            **{cache_kw: cache},
        )
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        next_logits = out.logits[:, -1, :].float()
    return results


class HFEngine(Engine):
    """HF transformers generation on CPU (or one GPU), batching concurrent requests.

    Args:
        model: a ``PreTrainedModel`` (shared with the learner in local mode: no weight copy).
        pad_token_id: id used for padding.
        max_batch_size: most requests generated together.
        batch_wait_s: how long the batcher waits for more requests after the first arrives.
        seed: base seed for requests without their own seed.
    """

    def __init__(self, model: Any, *, pad_token_id: int, max_batch_size: int = 64, batch_wait_s: float = 0.02, seed: int = 0) -> None:
        self.model = model
        #: token ids the model can emit (its config's vocab_size; AgentLoop checks generations against it)
        self.vocab_size: int | None = getattr(getattr(model, "config", None), "vocab_size", None)
        self.pad_token_id = pad_token_id
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.seed = seed
        self.version = 0
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._requests = 0
        self._lock = threading.Lock()  # one forward pass at a time (learner may share the model)
        self.stats = {"batches": 0, "requests": 0, "generated_tokens": 0, "generate_time_s": 0.0}

    def _generator(self, params: SamplingParams) -> torch.Generator:
        self._requests += 1
        g = torch.Generator()
        g.manual_seed(params.seed if params.seed is not None else self.seed * 1_000_003 + self._requests)
        return g

    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generation]:
        """Synchronous batched generation (used by the batcher and by simple callers)."""
        gens = [self._generator(p) for p in params]
        t0 = time.perf_counter()
        with self._lock:
            version = self.version  # read under the lock: the weights of this batch cannot change mid-batch
            was_training = self.model.training
            self.model.eval()
            try:
                rows = sample_batch(self.model, prompts, params, pad_token_id=self.pad_token_id, generators=gens)
            finally:
                self.model.train(was_training)
        self.stats["batches"] += 1
        self.stats["requests"] += len(prompts)
        self.stats["generated_tokens"] += sum(len(r[0]) for r in rows)
        self.stats["generate_time_s"] += time.perf_counter() - t0
        return [Generation(ids, lps, reason, version) for ids, lps, reason in rows]

    def update_weights(self, state_dict: dict[str, torch.Tensor] | None, version: int) -> None:
        """None: the module is shared with the learner (local mode), only the version moves.
        Else (a Ray GenerationWorker's own copy) the weights are loaded between batches, under
        the same lock as generation, so every batch is sampled by exactly one version."""
        with self._lock:
            if state_dict is not None:
                self.model.load_state_dict(state_dict)
            self.version = version

    async def agenerate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        if not prompt_ids:
            raise ValueError("agenerate() got an empty prompt")
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._batcher())
        fut: asyncio.Future = loop.create_future()
        await self._queue.put((prompt_ids, params, fut))
        return await fut

    async def _batcher(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = time.perf_counter() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            try:
                gens = await asyncio.to_thread(self.generate, [b[0] for b in batch], [b[1] for b in batch])
                for (_, _, fut), gen in zip(batch, gens):
                    if not fut.done():
                        fut.set_result(gen)
            except Exception as e:  # an engine failure fails these requests, not the batcher
                log.exception("generation failed for a batch of %d", len(batch))
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
