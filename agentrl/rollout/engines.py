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
import concurrent.futures
import functools
import inspect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .batcher import QueuedEngine, serve_batches

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
            raise ValueError(f"temperature must be > 0, got {self.temperature} (use a small value like 0.05 for near-greedy; vLLM samples any temperature below 0.01 at 0.01)")
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


def _sample_tokens(logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row of tempered ``logits`` [N, V] (CPU) by inverse-CDF sampling: row i
    draws one uniform from its own seeded ``generators[i]`` and takes the first token whose
    cumulative probability (after its params' top-k / top-p filtering) reaches it. One
    batched softmax and cumsum for all rows (rows filtered alike are filtered together);
    per row only the draw, so a row's token depends on its own generator and logits only,
    never on the batch it shared. Returns ``[N]`` long."""
    n = logits.shape[0]
    filtered = logits
    kinds = {(p.top_k, p.top_p) for p in params}
    if kinds != {(0, 1.0)}:
        filtered = logits.clone()
        for top_k, top_p in kinds:
            rows = torch.tensor([i for i, p in enumerate(params) if (p.top_k, p.top_p) == (top_k, top_p)], dtype=torch.long)
            filtered[rows] = _filter_logits(logits[rows], top_k, top_p)
    cdf = torch.softmax(filtered, dim=-1).cumsum(dim=-1)
    # 1 - U(0, 1) is in (0, 1]: the target is never 0, so a token of probability 0 is never
    # taken (its cumulative probability equals the previous token's)
    u = 1.0 - torch.cat([torch.rand(1, generator=g) for g in generators]) if n else logits.new_zeros(0)
    tokens = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1).to(cdf.dtype))[:, 0]
    return tokens.clamp_(max=logits.shape[-1] - 1)


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
        # the seeded generators live on the CPU (same draws whatever the model's device): one
        # [B, V] copy per step instead of a device generator per row
        tokens = torch.full((B,), pad_token_id, dtype=torch.long)
        live = [i for i in range(B) if not done[i]]
        index = torch.tensor(live, dtype=torch.long)
        tokens[index] = _sample_tokens(logits.cpu()[index], [params[i] for i in live], [generators[i] for i in live])
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


@functools.cache
def _slot_layer() -> type:
    """The cache layer class over preallocated buffers (built on first use: importing
    transformers is slow, and the CLI imports this module)."""
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """Keys and values in buffers [B, H, capacity, D] whose first ``width`` columns are
        filled: ``update`` writes the new columns in place at ``width`` and returns views of the
        filled part. (DynamicCache concatenates instead, a copy of the whole cache per layer and
        token: about 3/4 of a decode step at 600 cached tokens, tiny Qwen2 on CPU.)"""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, width: int) -> None:
            super().__init__()
            self.buf_keys, self.buf_values, self.width = keys, values, width
            self.keys, self.values = keys[:, :, :width], values[:, :, :width]
            self.device, self.is_initialized = keys.device, True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            w, n = self.width, key_states.shape[-2]
            if w + n > self.buf_keys.shape[2]:
                raise RuntimeError(f"slot cache full: {w} + {n} columns > capacity {self.buf_keys.shape[2]}")
            self.buf_keys[:, :, w : w + n] = key_states
            self.buf_values[:, :, w : w + n] = value_states
            self.width = w + n
            self.keys, self.values = self.buf_keys[:, :, : w + n], self.buf_values[:, :, : w + n]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.width

    return SlotLayer


def _slot_cache(kv: KV, width: int) -> Any:
    """A transformers ``Cache`` over buffers ``kv`` ([B, H, capacity, D] per layer) of which the
    first ``width`` columns are filled; a forward of n tokens writes columns [width, width + n)."""
    from transformers.cache_utils import Cache

    layer = _slot_layer()
    return Cache(layers=[layer(k, v, width) for k, v in kv])


SPLIT_MIN_SAVING = 16384
"""Cells (slots x columns) a second decode forward must save before the batch is split (about
the linear layers' and Python's per-forward cost of a tiny model on CPU, in attention cells)."""


def _room(n: int) -> int:
    """Capacity for ``n`` (slots or columns): half again, so growth copies are amortised."""
    return n + n // 2 + 8


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
    next_token: int = 0  # the sampled token the next decode step feeds
    col: int = 0  # the batch buffer column of the row's first token (gaps may follow, never precede)

    def __post_init__(self) -> None:
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish = "length"


class _Batch:
    """The running decode batch's KV: per layer a key and a value buffer [slots, H, capacity, D],
    ``mask`` [slots, capacity] (1 where a column holds one of the slot's row's tokens) and one
    write column ``width`` shared by all slots (a decode step writes every slot's new token at
    ``width``).

    A row's tokens need not be contiguous: a row that joins longer than ``width`` moves the write
    column on and the other rows get a masked gap; a finished row leaves a dead slot, which the
    next joining row reuses. Dead slots stay in the decode (fed a pad token, their output
    ignored) until :meth:`rebuild` copies only the live rows, each right-aligned, into new
    buffers: when the capacity runs out, or the gaps or the dead slots outgrow the live part.
    Every buffer value stays finite (buffers start zeroed; every decoded slot attends at least
    its newest column; only real columns are copied in), so masked columns never turn an
    attention output into NaN.

    Attention reads every column of every slot, so columns a row does not use cost as much as
    its own: rows left of the write column (shorter rows), gaps and dead slots. :meth:`rebuild`
    orders the live rows longest first, and :meth:`groups` splits the slots into two decode
    forwards when that reads fewer columns (each forward reads only from its rows' first
    column), so a batch of long and short episodes does not pay the longest one's width for all.
    """

    def __init__(self) -> None:
        self.rows: list[_Row | None] = []
        self.kv: KV = []
        self.mask: torch.Tensor | None = None
        self.width = 0
        self.rebuilds = 0  # buffer rebuilds (counted for tests)
        self.reused = 0  # rows that joined into a dead slot

    @property
    def live(self) -> list[tuple[int, _Row]]:
        return [(i, r) for i, r in enumerate(self.rows) if r is not None]

    def clear(self) -> None:
        self.rows, self.kv, self.mask, self.width = [], [], None, 0

    def rebuild(self, slots: int, width: int, like: KV | None = None) -> None:
        """New buffers with the live rows only, right-aligned at the write column of the longest,
        and room for at least ``slots`` slots and ``width`` columns. ``like``: the KV whose
        shapes new buffers take when there are none yet."""
        live = self.live
        w = max((r.length for _, r in live), default=0)
        src = self.kv or like
        assert src, "rebuild needs a KV to take the buffer shapes from"
        n_slots, n_cols = _room(max(slots, len(live), 1)), _room(max(width, w + 1))
        device = src[0][0].device
        mask = torch.zeros((n_slots, n_cols), dtype=torch.long, device=device)
        if live and self.kv:
            assert self.mask is not None
            # column j of new row b holds column idx[b, j] of old slot b (gathered; padding takes
            # column 0, finite, masked)
            live = sorted(live, key=lambda x: -x[1].length)  # longest first: groups() can split off the short rows
            idx = torch.zeros((len(live), w), dtype=torch.long, device=device)
            for b, (i, r) in enumerate(live):
                cols = self.mask[i, : self.width].nonzero()[:, 0]
                assert len(cols) == r.length, (len(cols), r.length)
                idx[b, w - r.length :] = cols
                mask[b, w - r.length : w] = 1
            slots_idx = torch.tensor([i for i, _ in live], dtype=torch.long, device=device)
        kv = []
        for k, v in src:
            nk = k.new_zeros(n_slots, k.shape[1], n_cols, k.shape[3])
            nv = v.new_zeros(n_slots, v.shape[1], n_cols, v.shape[3])
            if live and self.kv:
                g = idx[:, None, :, None].expand(len(live), k.shape[1], w, k.shape[3])
                nk[: len(live), :, :w] = k.index_select(0, slots_idx)[:, :, : self.width].gather(2, g)
                nv[: len(live), :, :w] = v.index_select(0, slots_idx)[:, :, : self.width].gather(2, g)
            kv.append((nk, nv))
        self.rows = [r for _, r in live]
        for r in self.rows:
            r.col = w - r.length
        self.kv, self.mask, self.width = kv, mask, w
        self.rebuilds += 1

    def add(self, row: _Row, src: KV, j: int, spans: list[tuple[int, int]]) -> None:
        """Join ``row``: its ``row.length`` tokens' KV are the columns ``spans`` (in order) of
        row ``j`` of ``src`` ([n, H, S, D] per layer); they go to a free slot, ending at the
        write column."""
        n = row.length
        assert sum(b - a for a, b in spans) == n
        slot = next((i for i, r in enumerate(self.rows) if r is None), None)
        width = max(self.width, n)
        if (not self.kv or (slot is None and len(self.rows) >= self.kv[0][0].shape[0])
                or width + 1 > self.kv[0][0].shape[2]):
            self.rebuild(len(self.live) + 1, width + 1, like=src)
            slot, width = None, max(self.width, n)
        if slot is None:
            slot = len(self.rows)
            self.rows.append(None)
        else:
            self.reused += 1
        assert self.mask is not None
        self.width = width
        self.mask[slot] = 0
        self.mask[slot, width - n : width] = 1
        at = row.col = width - n
        for (bk, bv), (k, v) in zip(self.kv, src):
            pos = at
            for a, b in spans:
                bk[slot, :, pos : pos + b - a] = k[j, :, a:b]
                bv[slot, :, pos : pos + b - a] = v[j, :, a:b]
                pos += b - a
        self.rows[slot] = row

    def take(self, i: int) -> KV:
        """Slot ``i``'s row's KV ([1, H, length, D] per layer, copies) and free the slot."""
        r = self.rows[i]
        assert r is not None and self.mask is not None
        cols = self.mask[i, : self.width].nonzero()[:, 0]
        assert len(cols) == r.length, (len(cols), r.length)
        self.rows[i] = None
        return [(k[i : i + 1].index_select(2, cols), v[i : i + 1].index_select(2, cols)) for k, v in self.kv]

    def drop(self, i: int) -> None:
        self.rows[i] = None

    def decode_inputs(self, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """Inputs of one decode step over every slot: tokens [B, 1], positions [B, 1], the
        attention mask [B, width + 1] and the cache (compacting first when dead slots or gaps
        outgrow the live rows, or the capacity is used up)."""
        live = self.live
        longest = max(r.length for _, r in live)
        dead = len(self.rows) - len(live)
        # compact when gaps or dead slots make up a quarter of what a decode step reads (a
        # rebuild copies the live KV once, about what one step's attention reads)
        if (self.width + 1 > self.kv[0][0].shape[2] or self.width > longest + max(64, longest // 4)
                or (dead >= 4 and 4 * dead > len(live))):
            self.rebuild(len(live), longest + 1)
        assert self.mask is not None
        B, w = len(self.rows), self.width
        device = self.mask.device
        self.mask[:B, w] = 1
        tokens = torch.tensor([[r.next_token if r is not None else pad_token_id] for r in self.rows], dtype=torch.long, device=device)
        positions = torch.tensor([[r.length if r is not None else 0] for r in self.rows], dtype=torch.long, device=device)
        cache = _slot_cache([(k[:B], v[:B]) for k, v in self.kv], w)
        return tokens, positions, self.mask[:B, : w + 1], cache

    def groups(self, min_saving: int = SPLIT_MIN_SAVING) -> list[tuple[int, int, int]]:
        """The decode forwards of the next step as ``(first slot, end slot, first column)``:
        one over every slot, or two contiguous slot ranges when their columns, counted from each
        range's leftmost first column, come to ``min_saving`` fewer cells (slots x columns) than
        one forward's. The per-forward cost of the linear layers and the Python overhead is what
        ``min_saving`` weighs against."""
        B, w = len(self.rows), self.width
        cols = [r.col if r is not None else w for r in self.rows]
        whole = B * (w + 1)
        prefix, suffix = [w] * (B + 1), [w] * (B + 1)
        for i in range(B):
            prefix[i + 1] = min(prefix[i], cols[i])
        for i in range(B - 1, -1, -1):
            suffix[i] = min(suffix[i + 1], cols[i])
        best, cut = whole, 0
        for k in range(1, B):
            cells = k * (w + 1 - prefix[k]) + (B - k) * (w + 1 - suffix[k])
            if cells < best:
                best, cut = cells, k
        if cut == 0 or whole - best < max(min_saving, whole // 8):
            return [(0, B, prefix[B])]
        return [(0, cut, prefix[cut]), (cut, B, suffix[cut])]


def _prefill_chunks(rows: list[_Row]) -> list[list[_Row]]:
    """Group rows for batched prefill, shortest suffix first, so that padding at most doubles
    the suffix tokens of a group (plus 64)."""
    chunks: list[list[_Row]] = []
    cur: list[_Row] = []
    total = 0
    for r in sorted(rows, key=lambda r: r.prefill_tokens):
        s = r.prefill_tokens
        if cur and (len(cur) + 1) * s > 2 * (total + s) + 64:
            chunks.append(cur)
            cur, total = [], 0
        cur.append(r)
        total += s
    if cur:
        chunks.append(cur)
    return chunks


class HFEngine(QueuedEngine, Engine):
    """HF transformers generation on CPU (or one GPU), batching concurrent requests.

    With ``kv_cache`` (the default) the engine runs **continuous batching** with a **per-episode
    KV cache**: a request joins the running decode batch at the next token step (the uncached
    prompt suffixes of the requests admitted together are prefilled in batched forwards,
    :meth:`_prefill_chunk`), every step is one batched decode forward over all active rows
    (their KV in preallocated buffers written in place, :class:`_Batch`, each row at its own
    position), and a row that stops leaves the batch at once. All forwards run on one worker
    thread of the engine's own (one torch intra-op pool, not one per ``asyncio.to_thread``
    worker). When the request has a
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
        split_min_saving: a decode step runs as two forwards (long and short rows apart) when
            that reads at least this many fewer cells (slots x columns) of the cache, and an
            eighth fewer; a very large value keeps one forward.
        max_cached_tokens: cap on the tokens held by idle episode caches (their KV memory is
            ``2 * layers * kv_heads * head_dim * dtype bytes`` per token); past it the least
            recently used are evicted. 0: no cap.

    Requests admitted together with the same uncached prompt (the G samples of a GRPO group,
    the first turn of a group's episodes) are prefilled once: the copies take the first one's
    KV and logits and sample with their own generators; their prompt counts as
    ``cached_tokens`` (and ``shared_prefill_tokens``), as vLLM counts a prefix another request
    computed.

    ``stats`` counts batches (decode steps with the cache), requests, generated_tokens,
    generate_time_s, prefill_tokens, cached_tokens, shared_prefill_tokens, cache_evictions,
    cache_misses, cache_invalidations.
    """

    def __init__(
        self, model: Any, *, pad_token_id: int, max_batch_size: int = 64, batch_wait_s: float = 0.02, seed: int = 0,
        kv_cache: bool = True, max_cached_tokens: int = 0, split_min_saving: int = SPLIT_MIN_SAVING,
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
        self.split_min_saving = split_min_saving  # cells a second decode forward must save (_Batch.groups)
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
        self._batch = _Batch()  # the running rows and their KV
        # every forward runs on this one thread: torch keeps an intra-op thread pool per calling
        # thread, and asyncio.to_thread's changing workers left several pools spinning on the same
        # cores (2 cores, tiny Qwen2: 627 generated tokens/s through to_thread, 967 with one thread)
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")
        #: only the last position's logits are computed where the model supports it
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        self._waiting: list[tuple[list[int], SamplingParams, Any]] = []
        self._update_pending = 0
        self.stats = {"batches": 0, "requests": 0, "generated_tokens": 0, "generate_time_s": 0.0, "prefill_tokens": 0,
                      "cached_tokens": 0, "shared_prefill_tokens": 0, "cache_evictions": 0, "cache_misses": 0,
                      "cache_invalidations": 0, "decode_forwards": 0}

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
                    if not self._batch.live:
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

    def _serve(self) -> Coroutine[Any, Any, None]:
        """What serves the request queue of ``agenerate`` (:class:`~agentrl.rollout.batcher.QueuedEngine`)."""
        return self._scheduler() if self.kv_cache else self._batcher()

    async def _batcher(self) -> None:
        """``kv_cache=False``: batch-at-once generation of what arrives within ``batch_wait_s``
        (:func:`agentrl.rollout.batcher.serve_batches`), on the engine's forward thread."""
        assert self._queue is not None
        await serve_batches(self._queue, self.generate, max_batch_size=self.max_batch_size, batch_wait_s=self.batch_wait_s,
                            executor=self._thread, logger=log)

    # -- continuous batching -------------------------------------------------------------

    async def _scheduler(self) -> None:
        """Admit waiting requests at each token step and run one decode step for all rows."""
        queue = self._queue
        assert queue is not None
        try:
            while True:
                running = len(self._batch.live)
                if not running and not self._waiting:
                    self._waiting.append(await queue.get())
                while not queue.empty():
                    self._waiting.append(queue.get_nowait())
                admit: list[tuple[list[int], SamplingParams, Any]] = []
                if not self._update_pending:  # a weight update waits for the rows to drain
                    room = self.max_batch_size - running
                    admit, self._waiting = self._waiting[:room], self._waiting[room:]
                    admit = [a for a in admit if not a[2].done()]  # cancelled while waiting
                if not admit and not running:
                    await asyncio.sleep(0.002)
                    continue
                try:
                    done = await asyncio.get_running_loop().run_in_executor(self._thread, self._step, admit)
                except Exception as e:  # an engine failure fails these requests, not the scheduler
                    log.exception("generation step failed for %d running and %d new requests", running, len(admit))
                    futs = [r.fut for _, r in self._batch.live] + [a[2] for a in admit]
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
                for _, r in self._batch.live:
                    self._active_keys.discard(r.params.cache_key)  # type: ignore[arg-type]
            self._batch.clear()

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
                    if admit:
                        self._prefill(admit)
                    done = self._sample_and_retire()
                    if self._batch.live:
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

    def _prefill(self, admit: list[tuple[list[int], SamplingParams, Any]]) -> None:
        """Admit requests: take each one's idle episode cache, prefill the uncached suffixes in
        batched forwards (rows grouped by suffix length, :func:`_prefill_chunks`) and join the
        rows to the running batch."""
        rows: list[_Row] = []
        kept: dict[int, _Cached | None] = {}
        # identical uncached prompts admitted together (a group's samples of one task: GRPO's G
        # copies of a prompt, every episode's first turn) are prefilled once; the copies join
        # with the first one's KV and logits, and count their prompt as cached (as vLLM counts a
        # prefix shared with another request)
        first_of: dict[tuple[int, ...], _Row] = {}
        copies: dict[int, list[_Row]] = {}
        for prompt, params, fut in admit:
            cached, miss = self._take_cache(prompt, params.cache_key)
            if miss:
                self.stats["cache_misses"] += 1
            start = len(cached.ids) if cached is not None else 0
            original = first_of.get(tuple(prompt)) if cached is None else None
            if original is not None:
                start = len(prompt)
            row = _Row(prompt, params, self._generator(params), fut, len(prompt), prefill_tokens=len(prompt) - start,
                       cached_tokens=start, cache_miss=miss, version=self.version)
            if original is not None:
                copies[id(original)].append(row)
                self.stats["shared_prefill_tokens"] += len(prompt)
            else:
                rows.append(row)
                if cached is None:
                    first_of[tuple(prompt)] = row
                copies[id(row)] = []
            kept[id(row)] = cached
            self.stats["requests"] += 1
            self.stats["prefill_tokens"] += row.prefill_tokens
            self.stats["cached_tokens"] += row.cached_tokens
        for chunk in _prefill_chunks(rows):
            self._prefill_chunk(chunk, [kept[id(r)] for r in chunk], [copies[id(r)] for r in chunk])

    def _prefill_chunk(self, rows: list[_Row], caches: list[_Cached | None], copies: list[list[_Row]] | None = None) -> None:
        """One forward for ``rows``: each row's cached KV (``caches``) right-aligned at column C
        (the longest cached part), its suffix left-padded after it, a mask over the real columns
        and each token at its own position; the rows then join the batch with their real
        columns only, each followed by its ``copies`` (requests with the same uncached prompt:
        the same KV columns and logits, their own generators)."""
        device = next(self.model.parameters()).device
        n = len(rows)
        C = max(r.cached_tokens for r in rows)
        S = max(r.prefill_tokens for r in rows)
        ids = torch.full((n, S), self.pad_token_id, dtype=torch.long)
        pos = torch.zeros((n, S), dtype=torch.long)
        mask = torch.zeros((n, C + S), dtype=torch.long)
        for j, r in enumerate(rows):
            c, s = r.cached_tokens, r.prefill_tokens
            ids[j, S - s :] = torch.tensor(r.prompt[c:], dtype=torch.long)
            pos[j, S - s :] = torch.arange(c, c + s)
            mask[j, C - c : C] = 1
            mask[j, C + S - s :] = 1
        kwargs: dict[str, Any] = dict(self._last_logits_only)
        kv: KV | None = None
        if C:
            like = next(c.kv for c in caches if c is not None)
            kv = [(k.new_zeros(n, k.shape[1], C + S, k.shape[3]), v.new_zeros(n, v.shape[1], C + S, v.shape[3])) for k, v in like]
            for j, (r, cached) in enumerate(zip(rows, caches)):
                if cached is not None:
                    for (bk, bv), (k, v) in zip(kv, cached.kv):
                        bk[j, :, C - r.cached_tokens : C] = k[0]
                        bv[j, :, C - r.cached_tokens : C] = v[0]
            kwargs[_cache_kwarg(self.model)] = _slot_cache(kv, C)
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device), use_cache=True, **kwargs)
        if kv is None:
            kv = _to_kv(getattr(out, "cache", None) or getattr(out, "past_key_values", None))
        logits = out.logits[:, -1].float()
        for j, r in enumerate(rows):
            c, s = r.cached_tokens, r.prefill_tokens
            spans = ([(C - c, C)] if c else []) + [(C + S - s, C + S)]
            for row in [r] + (copies[j] if copies else []):
                row.next_logits = logits[j]
                self._batch.add(row, kv, j, spans)

    def _sample_and_retire(self) -> list[tuple[Any, Generation]]:
        """Sample one token per row (as :func:`sample_batch` does); finished rows leave the
        batch, their KV kept under their cache key."""
        live = self._batch.live
        rows = [r for _, r in live]
        device = rows[0].next_logits.device  # type: ignore[union-attr]
        logits = torch.stack([r.next_logits for r in rows])  # type: ignore[misc]
        temps = torch.tensor([r.params.temperature for r in rows], dtype=torch.float32, device=device)[:, None]
        logits = logits / temps
        logp_all = torch.log_softmax(logits, dim=-1)
        tokens = _sample_tokens(logits.cpu(), [r.params for r in rows], [r.generator for r in rows])
        chosen = logp_all.gather(-1, tokens[:, None].to(device))[:, 0].tolist()
        done: list[tuple[Any, Generation]] = []
        for (slot, r), tok, lp in zip(live, tokens.tolist(), chosen):
            r.ids.append(tok)
            r.logprobs.append(lp)
            self.stats["generated_tokens"] += 1
            if tok in r.params.stop_token_ids:
                r.finish = "stop"
            elif len(r.ids) < r.params.max_new_tokens:
                r.next_token = tok
                continue
            self._retire(slot, r)
            done.append((r.fut, Generation(r.ids, r.logprobs, r.finish, r.version, prefill_tokens=r.prefill_tokens,
                                           cached_tokens=r.cached_tokens, cache_miss=r.cache_miss)))
        return done

    def _retire(self, slot: int, r: _Row) -> None:
        """Free ``slot``, keeping its row's KV (prompt + ids but the last: that token was never
        fed) under the row's cache key."""
        key = r.params.cache_key
        if key is not None:
            with self._cache_lock:
                self._active_keys.discard(key)
                if key in self._released_active:  # the episode ended while this request ran
                    self._released_active.discard(key)
                    key = None
        if key is None:
            self._batch.drop(slot)
            return
        kv = self._batch.take(slot)
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

    def _decode(self) -> None:
        """One decode step: each row's sampled token at its own position, written in place at
        the batch's write column (dead slots feed a pad token), in one batched forward or two
        (:meth:`_Batch.groups`: long and short rows apart, each reading its own columns)."""
        tokens, positions, mask, cache = self._batch.decode_inputs(self.pad_token_id)
        w = self._batch.width
        kw = _cache_kwarg(self.model)
        logits = []
        for a, b, c in self._batch.groups(self.split_min_saving):
            part = cache if (a, c) == (0, 0) and b == len(self._batch.rows) else _slot_cache(
                [(k[a:b, :, c:], v[a:b, :, c:]) for k, v in self._batch.kv], w - c)
            out = self.model(input_ids=tokens[a:b], attention_mask=mask[a:b, c:], position_ids=positions[a:b], use_cache=True,
                             **{kw: part}, **self._last_logits_only)
            logits.append(out.logits[:, -1, :].float())
            self.stats["decode_forwards"] += 1
        self._batch.width += 1
        logits_all = logits[0] if len(logits) == 1 else torch.cat(logits)
        for i, r in self._batch.live:
            r.length += 1
            r.next_logits = logits_all[i]

    def close(self) -> None:
        self._stop_serving()
        with self._cache_lock:
            self._caches.clear()
            self._evicted.clear()
            self._invalidated.clear()
