"""Generation engines behind one interface: prompt ids in, sampled ids and behavior logprobs out.

- :class:`HFEngine`: HF transformers on CPU (the default, and what the tests run). It batches
  concurrent requests itself (continuous batching: a request joins the running decode batch at
  the next token step) and keeps each episode's KV cache between turns (``params.cache_key``),
  so a turn prefills only the tokens the env appended. See docs/engine_cache.md.
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
from collections import OrderedDict
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
        cache_key: the episode this request belongs to (AgentLoop sets a fresh key per
            episode); an engine with a KV cache keeps the episode's cache under it between
            turns until :meth:`Engine.release`. None: no cache kept. Engines without a cache
            ignore it.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    cache_key: str | None = None

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
    ``version`` of the weights that produced it.

    Cache accounting (0 / "" where an engine does not report it): ``prefill_tokens``, prompt
    tokens run through prefill for this request; ``cached_tokens``, prompt tokens served from
    the episode's kept KV cache (``prefill_tokens + cached_tokens == len(prompt)`` for HFEngine);
    ``cache_miss``, why an episode's earlier cache could not be used: "evicted" (memory cap),
    "invalidated" (weights changed since), "mismatch" (the prompt does not extend the cached
    tokens), else "".
    """

    ids: list[int]
    logprobs: list[float]
    finish_reason: str
    version: int
    prefill_tokens: int = 0
    cached_tokens: int = 0
    cache_miss: str = ""


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

    def release(self, cache_key: str) -> None:
        """Drop what the engine keeps for episode ``cache_key`` (its KV cache); the episode
        ended. Never raises for an unknown key; a no-op for engines without a cache."""

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


KV = list[tuple[torch.Tensor, torch.Tensor]]
"""A KV cache as plain tensors: per layer (keys, values), each [B, heads, S, head_dim]."""


def _to_kv(cache: Any) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _as_cache(kv: KV, config: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=list(kv), config=config)


def _pad_left(kv: KV, n: int) -> KV:
    if n <= 0:
        return kv
    out = []
    for k, v in kv:
        z = k.new_zeros(k.shape[0], k.shape[1], n, k.shape[3])
        out.append((torch.cat([z, k], 2), torch.cat([z, v], 2)))
    return out


@dataclass
class _Cached:
    """An idle episode's KV cache: ``ids`` are the tokens whose KV ``kv`` holds ([1, H, len, D])."""

    ids: list[int]
    kv: KV
    version: int


@dataclass
class _Row:
    """One request in the running decode batch."""

    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator
    fut: Any
    length: int  # tokens whose KV the batch holds for this row
    next_logits: torch.Tensor | None = None  # [V] float32, the logits for the next token
    prefill_tokens: int = 0
    cached_tokens: int = 0
    cache_miss: str = ""
    version: int = 0

    def __post_init__(self) -> None:
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish = "length"


class HFEngine(Engine):
    """HF transformers generation on CPU (or one GPU), batching concurrent requests.

    With ``kv_cache`` (the default) the engine runs **continuous batching** with a **per-episode
    KV cache**: a request joins the running decode batch at the next token step (its uncached
    prompt suffix is prefilled first, one request at a time), every step is one batched decode
    forward over all active rows (left-padded to a common cache length, each row at its own
    position), and a row that stops leaves the batch at once. When the request has a
    ``params.cache_key``, the row's KV (prompt + generated tokens but the last) is kept under
    that key after it finishes; the episode's next request that starts with those tokens
    prefills only the rest (the tool output, the next assistant header). A prompt that does not
    start with the cached tokens re-prefills from scratch (``cache_miss="mismatch"``). Idle
    caches are dropped by :meth:`release` (AgentLoop calls it when an episode ends, however it
    ends), evicted least-recently-used past ``max_cached_tokens`` (the episode re-prefills,
    ``"evicted"``), and invalidated by :meth:`update_weights` (their KV was computed by older
    weights, ``"invalidated"``). Sampling is the same as without the cache: the request's own
    seeded CPU generator and the same filtering, so ids match the ``kv_cache=False`` path and
    logprobs match to float noise (tests/rollout/test_kv_cache.py checks 1e-5).

    A weight update waits until the running rows finish (no new row is admitted meanwhile), so
    each Generation is sampled by exactly one version.

    Why not transformers' own continuous batching (``generate_batch`` /
    ``ContinuousBatchingManager``, measured with transformers 5.24.0 on CPU, tiny Qwen2, sdpa):
    with ``ContinuousBatchingConfig(return_logprobs=True)`` the logprob it returns is
    ``log(softmax(processed scores))`` *after* top-k/top-p filtering (with top_k=20 it reported
    -3.0 where log_softmax(logits/T) is -5.8), not the full tempered distribution the learner
    recomputes; it samples with one global ``torch.multinomial`` per batch (one manager seed,
    no per-request generator, so a sample depends on the batch it shared); and a request's
    paged blocks are freed when it finishes (prefix sharing is opportunistic across live
    requests, no per-episode cache kept across turns or released on demand). It also took 21 s
    for 2 prompts x 8 tokens on CPU (paged-attention setup and warmup).

    ``kv_cache=False`` is the previous path (escape hatch, and the reference of the equivalence
    test): the batcher waits ``batch_wait_s`` and generates what arrived as one left-padded
    batch with :func:`sample_batch`, prefilling every prompt from scratch.

    Args:
        model: a ``PreTrainedModel`` (shared with the learner in local mode: no weight copy).
        pad_token_id: id used for padding.
        max_batch_size: most requests generated together.
        batch_wait_s: (``kv_cache=False``) how long the batcher waits for more requests after
            the first arrives.
        seed: base seed for requests without their own seed.
        kv_cache: continuous batching with per-episode KV caches (True) or the batch-at-once
            path without kept caches (False).
        max_cached_tokens: cap on the tokens held by idle episode caches (their KV memory is
            ``2 * layers * kv_heads * head_dim * dtype bytes`` per token); past it the least
            recently used are evicted. 0: no cap.

    ``stats`` counts batches (decode steps with the cache), requests, generated_tokens,
    generate_time_s, prefill_tokens, cached_tokens, cache_evictions, cache_misses,
    cache_invalidations.
    """

    def __init__(
        self, model: Any, *, pad_token_id: int, max_batch_size: int = 64, batch_wait_s: float = 0.02, seed: int = 0,
        kv_cache: bool = True, max_cached_tokens: int = 0,
    ) -> None:
        if max_cached_tokens < 0:
            raise ValueError(f"max_cached_tokens must be >= 0, got {max_cached_tokens}")
        self.model = model
        #: token ids the model can emit (its config's vocab_size; AgentLoop checks generations against it)
        self.vocab_size: int | None = getattr(getattr(model, "config", None), "vocab_size", None)
        self.pad_token_id = pad_token_id
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.seed = seed
        self.kv_cache = kv_cache
        self.max_cached_tokens = max_cached_tokens
        self.version = 0
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._requests = 0
        self._lock = threading.Lock()  # one forward pass at a time (learner may share the model)
        self._cache_lock = threading.Lock()  # the idle caches (release() comes from the event loop)
        self._caches: OrderedDict[str, _Cached] = OrderedDict()
        self._evicted: set[str] = set()  # evicted keys not yet released (their next turn is a counted miss)
        self._invalidated: set[str] = set()  # keys whose cache a weight update dropped, not yet released
        self._active_keys: set[str] = set()
        self._released_active: set[str] = set()  # released while a request of theirs was running
        self._rows: list[_Row] = []
        self._kv: KV | None = None  # the running batch's cache, [len(rows), H, S, D]
        self._mask: torch.Tensor | None = None  # [len(rows), S] 1 where the cache holds a real token
        self._waiting: list[tuple[list[int], SamplingParams, Any]] = []
        self._update_pending = 0
        self.stats = {"batches": 0, "requests": 0, "generated_tokens": 0, "generate_time_s": 0.0, "prefill_tokens": 0,
                      "cached_tokens": 0, "cache_evictions": 0, "cache_misses": 0, "cache_invalidations": 0}

    def _generator(self, params: SamplingParams) -> torch.Generator:
        self._requests += 1
        g = torch.Generator()
        g.manual_seed(params.seed if params.seed is not None else self.seed * 1_000_003 + self._requests)
        return g

    @property
    def cached_keys(self) -> list[str]:
        """Keys of the idle episode caches held now (oldest first)."""
        with self._cache_lock:
            return list(self._caches)

    @property
    def cached_tokens_held(self) -> int:
        """Tokens held by idle episode caches now."""
        with self._cache_lock:
            return sum(len(c.ids) for c in self._caches.values())

    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generation]:
        """Synchronous batched generation without kept caches (the ``kv_cache=False`` batcher,
        and simple callers)."""
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
        self.stats["prefill_tokens"] += sum(len(p) for p in prompts)
        self.stats["generate_time_s"] += time.perf_counter() - t0
        return [Generation(ids, lps, reason, version, prefill_tokens=len(p)) for (ids, lps, reason), p in zip(rows, prompts)]

    def update_weights(self, state_dict: dict[str, torch.Tensor] | None, version: int) -> None:
        """None: the module is shared with the learner (local mode), only the version moves.
        Else (a Ray GenerationWorker's own copy, async mode's copy) the weights are loaded under
        the same lock as generation, once the running rows have finished (no row is admitted
        meanwhile), so every Generation is sampled by exactly one version. Every kept episode
        cache is dropped (``cache_invalidations``; the episode's next turn re-prefills, a miss "invalidated")."""
        self._update_pending += 1
        try:
            while True:
                with self._lock:
                    if not self._rows:
                        if state_dict is not None:
                            self.model.load_state_dict(state_dict)
                        self.version = version
                        with self._cache_lock:
                            self._invalidated.update(self._caches)
                            self.stats["cache_invalidations"] += len(self._caches)
                            self._caches.clear()
                        return
                time.sleep(0.002)
        finally:
            self._update_pending -= 1

    def release(self, cache_key: str) -> None:
        with self._cache_lock:
            self._caches.pop(cache_key, None)
            self._evicted.discard(cache_key)
            self._invalidated.discard(cache_key)
            if cache_key in self._active_keys:
                self._released_active.add(cache_key)

    async def agenerate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        if not prompt_ids:
            raise ValueError("agenerate() got an empty prompt")
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._scheduler() if self.kv_cache else self._batcher())
        fut: asyncio.Future = loop.create_future()
        await self._queue.put((list(prompt_ids), params, fut))
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

    # -- continuous batching -------------------------------------------------------------

    async def _scheduler(self) -> None:
        """Admit waiting requests at each token step and run one decode step for all rows."""
        queue = self._queue
        assert queue is not None
        try:
            while True:
                if not self._rows and not self._waiting:
                    self._waiting.append(await queue.get())
                while not queue.empty():
                    self._waiting.append(queue.get_nowait())
                admit: list[tuple[list[int], SamplingParams, Any]] = []
                if not self._update_pending:  # a weight update waits for the rows to drain
                    room = self.max_batch_size - len(self._rows)
                    admit, self._waiting = self._waiting[:room], self._waiting[room:]
                    admit = [a for a in admit if not a[2].done()]  # cancelled while waiting
                if not admit and not self._rows:
                    await asyncio.sleep(0.002)
                    continue
                try:
                    done = await asyncio.to_thread(self._step, admit)
                except Exception as e:  # an engine failure fails these requests, not the scheduler
                    log.exception("generation step failed for %d running and %d new requests", len(self._rows), len(admit))
                    futs = [r.fut for r in self._rows] + [a[2] for a in admit]
                    self._drop_batch()
                    for fut in futs:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for fut, gen in done:
                    if not fut.done():
                        fut.set_result(gen)
        finally:  # cancelled (engine closed, loop ended): running rows are gone
            self._drop_batch()
            for _, _, fut in self._waiting:
                if not fut.done():
                    fut.cancel()
            self._waiting = []

    def _drop_batch(self) -> None:
        with self._lock:
            with self._cache_lock:
                for r in self._rows:
                    self._active_keys.discard(r.params.cache_key)  # type: ignore[arg-type]
            self._rows, self._kv, self._mask = [], None, None

    def _step(self, admit: list[tuple[list[int], SamplingParams, Any]]) -> list[tuple[Any, Generation]]:
        """One scheduler step under the lock: prefill and admit ``admit``, sample one token for
        every row, retire the finished rows, one batched decode forward for the others.
        Returns the finished (future, Generation)."""
        t0 = time.perf_counter()
        with self._lock:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    for prompt, params, fut in admit:
                        self._admit(prompt, params, fut)
                    done = self._sample_and_retire()
                    if self._rows:
                        self._decode()
            finally:
                self.model.train(was_training)
        self.stats["batches"] += 1
        self.stats["generate_time_s"] += time.perf_counter() - t0
        return done

    def _take_cache(self, prompt: list[int], key: str | None) -> tuple[_Cached | None, str]:
        """The usable idle cache of ``key`` for ``prompt`` (taken out while the row runs) and
        the miss reason when there was one to use."""
        if key is None:
            return None, ""
        with self._cache_lock:
            if key in self._active_keys:  # two requests of one episode at once: the second goes uncached
                return None, ""
            self._active_keys.add(key)
            cached = self._caches.pop(key, None)
            if cached is None:
                if key in self._evicted:
                    self._evicted.discard(key)
                    return None, "evicted"
                if key in self._invalidated:
                    self._invalidated.discard(key)
                    return None, "invalidated"
                return None, ""
        if cached.version != self.version:  # (update_weights drops them all; kept as a guard)
            return None, "invalidated"
        n = len(cached.ids)
        if n >= len(prompt) or prompt[:n] != cached.ids:
            return None, "mismatch"
        return cached, ""

    def _admit(self, prompt: list[int], params: SamplingParams, fut: Any) -> None:
        cached, miss = self._take_cache(prompt, params.cache_key)
        if miss:
            self.stats["cache_misses"] += 1
        device = next(self.model.parameters()).device
        start = len(cached.ids) if cached is not None else 0
        suffix = torch.tensor([prompt[start:]], dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {}
        if cached is not None:
            kwargs[_cache_kwarg(self.model)] = _as_cache(cached.kv, self.model.config)
        out = self.model(
            input_ids=suffix, attention_mask=torch.ones((1, len(prompt)), dtype=torch.long, device=device),
            position_ids=torch.arange(start, len(prompt), device=device)[None], use_cache=True, **kwargs,
        )
        kv = _to_kv(getattr(out, "cache", None) or getattr(out, "past_key_values", None))
        row = _Row(prompt, params, self._generator(params), fut, len(prompt), out.logits[0, -1].float(),
                   prefill_tokens=len(prompt) - start, cached_tokens=start, cache_miss=miss, version=self.version)
        self.stats["requests"] += 1
        self.stats["prefill_tokens"] += row.prefill_tokens
        self.stats["cached_tokens"] += row.cached_tokens
        self._join(row, kv)

    def _join(self, row: _Row, kv: KV) -> None:
        """Add ``row`` (its cache ``kv``: [1, H, row.length, D]) to the running batch."""
        device = kv[0][0].device
        mask = torch.ones((1, row.length), dtype=torch.long, device=device)
        if self._kv is None or self._mask is None or not self._rows:
            self._rows, self._kv, self._mask = [row], kv, mask
            return
        S = self._mask.shape[1]
        if row.length < S:
            kv, mask = _pad_left(kv, S - row.length), torch.cat([mask.new_zeros(1, S - row.length), mask], 1)
        elif row.length > S:
            self._kv = _pad_left(self._kv, row.length - S)
            self._mask = torch.cat([self._mask.new_zeros(len(self._rows), row.length - S), self._mask], 1)
        self._kv = [(torch.cat([k0, k1], 0), torch.cat([v0, v1], 0)) for (k0, v0), (k1, v1) in zip(self._kv, kv)]
        self._mask = torch.cat([self._mask, mask], 0)
        self._rows.append(row)

    def _sample_and_retire(self) -> list[tuple[Any, Generation]]:
        """Sample one token per row (as :func:`sample_batch` does); finished rows leave the
        batch, their KV kept under their cache key."""
        rows = self._rows
        device = rows[0].next_logits.device  # type: ignore[union-attr]
        logits = torch.stack([r.next_logits for r in rows])  # type: ignore[misc]
        temps = torch.tensor([r.params.temperature for r in rows], dtype=torch.float32, device=device)[:, None]
        logits = logits / temps
        logp_all = torch.log_softmax(logits, dim=-1)
        sample_logits = logits.cpu()
        tokens = torch.empty(len(rows), dtype=torch.long)
        for i, r in enumerate(rows):
            row = _filter_logits(sample_logits[i : i + 1], r.params.top_k, r.params.top_p)
            tokens[i] = torch.multinomial(row.softmax(-1), 1, generator=r.generator)[0, 0]
        chosen = logp_all.gather(-1, tokens[:, None].to(device))[:, 0].tolist()
        keep: list[int] = []
        done: list[tuple[Any, Generation]] = []
        for i, r in enumerate(rows):
            tok = int(tokens[i])
            r.ids.append(tok)
            r.logprobs.append(chosen[i])
            self.stats["generated_tokens"] += 1
            if tok in r.params.stop_token_ids:
                r.finish = "stop"
            elif len(r.ids) < r.params.max_new_tokens:
                keep.append(i)
                continue
            self._retire(i, r)
            done.append((r.fut, Generation(r.ids, r.logprobs, r.finish, r.version, prefill_tokens=r.prefill_tokens,
                                           cached_tokens=r.cached_tokens, cache_miss=r.cache_miss)))
        self._tokens = tokens
        if len(keep) < len(rows):
            self._select(keep)
        return done

    def _retire(self, i: int, r: _Row) -> None:
        """Keep row ``i``'s KV (prompt + ids but the last: that token was never fed) under its key."""
        key = r.params.cache_key
        if key is None:
            return
        with self._cache_lock:
            self._active_keys.discard(key)
            if key in self._released_active:  # the episode ended while this request ran
                self._released_active.discard(key)
                return
        assert self._kv is not None and self._mask is not None
        S = self._mask.shape[1]
        kv = [(k[i : i + 1, :, S - r.length :].clone(), v[i : i + 1, :, S - r.length :].clone()) for k, v in self._kv]
        ids = r.prompt + r.ids[:-1]
        assert len(ids) == r.length
        with self._cache_lock:
            self._caches[key] = _Cached(ids, kv, r.version)
            self._evict()

    def _evict(self) -> None:
        """Drop least recently used idle caches past ``max_cached_tokens`` (under _cache_lock)."""
        if not self.max_cached_tokens:
            return
        held = sum(len(c.ids) for c in self._caches.values())
        while held > self.max_cached_tokens and self._caches:
            key, c = self._caches.popitem(last=False)
            held -= len(c.ids)
            self._evicted.add(key)
            self.stats["cache_evictions"] += 1

    def _select(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` in the batch; trim leading columns no row uses."""
        self._rows = [self._rows[i] for i in keep]
        self._tokens = self._tokens[keep]
        if not self._rows:
            self._kv, self._mask = None, None
            return
        assert self._kv is not None and self._mask is not None
        idx = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        trim = self._mask.shape[1] - max(r.length for r in self._rows)
        self._kv = [(k.index_select(0, idx)[:, :, trim:], v.index_select(0, idx)[:, :, trim:]) for k, v in self._kv]
        self._mask = self._mask.index_select(0, idx)[:, trim:]

    def _decode(self) -> None:
        """One batched decode forward: each row's sampled token at its own position."""
        assert self._kv is not None and self._mask is not None
        device = self._mask.device
        B = len(self._rows)
        mask = torch.cat([self._mask, torch.ones((B, 1), dtype=torch.long, device=device)], 1)
        positions = torch.tensor([[r.length] for r in self._rows], dtype=torch.long, device=device)
        out = self.model(
            input_ids=self._tokens[:, None].to(device), attention_mask=mask, position_ids=positions, use_cache=True,
            **{_cache_kwarg(self.model): _as_cache(self._kv, self.model.config)},
        )
        self._kv = _to_kv(getattr(out, "cache", None) or getattr(out, "past_key_values", None))
        self._mask = mask
        logits = out.logits[:, -1, :].float()
        for i, r in enumerate(self._rows):
            r.length += 1
            r.next_logits = logits[i]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        with self._cache_lock:
            self._caches.clear()
            self._evicted.clear()
            self._invalidated.clear()
