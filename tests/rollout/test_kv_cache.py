"""HFEngine's per-episode KV cache and continuous batching (issue 12): the same ids and
behavior logprobs with the cache on and off (several turns with tool output), eviction under a
tiny cap, release when an episode fails mid-turn, invalidation by a weight update, a
mismatched prompt re-prefilling, and a late request joining (and leaving) a running batch."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import agentrl.envs as envs
from agentrl.models.chat import ChatFormat
from agentrl.rollout import AgentLoop, EpisodeSpec, HFEngine, SamplingParams
from agentrl.rollout.local import summarize

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    path = tiny_model_dir("chatml")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, tok


def play(model, tok, guess_env_id, n=3, turns=6, **engine_kw):
    engine = HFEngine(model, pad_token_id=tok.pad_token_id, seed=1, **engine_kw)
    loop = AgentLoop([envs.make(guess_env_id, max_turns=turns) for _ in range(n)], engine, ChatFormat(tok),
                     SamplingParams(temperature=0.7, top_k=50, top_p=0.95, max_new_tokens=24), max_total_tokens=100_000)
    trajs = asyncio.run(loop.collect([EpisodeSpec({"task_index": i}, sample_index=i, seed=i) for i in range(n)]))
    loop.close()
    return engine, trajs


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert not x.failed and not y.failed, (x.failure_reason, y.failure_reason)
        assert x.input_ids == y.input_ids
        assert x.loss_mask == y.loss_mask
        torch.testing.assert_close(torch.tensor(x.behavior_logprobs), torch.tensor(y.behavior_logprobs), atol=1e-5, rtol=0)


def test_cache_on_and_off_give_the_same_ids_and_logprobs(setup, guess_env_id):
    model, tok = setup
    off_engine, off = play(model, tok, guess_env_id, kv_cache=False)
    on_engine, on = play(model, tok, guess_env_id)
    assert_same(on, off)
    for t in on:
        assert t.num_turns == 6
        # a turn prefills only what was appended since the last: prefill + cached = all prompts
        assert t.metrics["prefill_tokens"] < 1.1 * len(t.input_ids)
        assert t.metrics["cached_tokens"] > 0 and t.metrics["cache_misses"] == 0
    for t in off:
        assert t.metrics["cached_tokens"] == 0 and t.metrics["prefill_tokens"] > 2 * len(t.input_ids)
    m = summarize(on)
    assert m["rollout/prefill_tokens"] == sum(t.metrics["prefill_tokens"] for t in on) and m["rollout/cached_tokens"] > 0
    assert m["rollout/cache_evictions"] == 0 and m["rollout/cache_misses"] == 0
    assert on_engine.cached_keys == []  # every episode released its cache


def test_eviction_under_a_tiny_cap_gives_the_same_results(setup, guess_env_id):
    model, tok = setup
    _, off = play(model, tok, guess_env_id, kv_cache=False)
    engine, on = play(model, tok, guess_env_id, max_cached_tokens=1)
    assert_same(on, off)
    assert engine.stats["cache_evictions"] > 0
    assert sum(t.metrics["cache_evictions"] for t in on) > 0
    assert summarize(on)["rollout/cache_evictions"] > 0
    assert engine.cached_keys == []


def test_an_episode_failing_mid_turn_releases_its_cache(setup, guess_env_id, monkeypatch):
    model, tok = setup
    engine = HFEngine(model, pad_token_id=tok.pad_token_id, seed=1)
    env = envs.make(guess_env_id, max_turns=6)
    core = env.unwrapped
    real_step, calls = core.astep, []

    async def failing_step(text):
        calls.append(len(engine.cached_keys))  # the cache of this episode is held during its turns
        if len(calls) == 3:
            raise RuntimeError("env broke")
        return await real_step(text)

    monkeypatch.setattr(core, "astep", failing_step)
    loop = AgentLoop([env], engine, ChatFormat(tok), SamplingParams(temperature=0.7, max_new_tokens=16), max_total_tokens=100_000)
    (traj,) = asyncio.run(loop.collect([EpisodeSpec({"task_index": 0})]))
    loop.close()
    assert traj.failed and "env broke" in traj.failure_reason
    assert calls == [1, 1, 1] and traj.metrics["cached_tokens"] > 0
    assert engine.cached_keys == [] and engine.cached_tokens_held == 0


def test_a_weight_update_invalidates_and_a_mismatch_re_prefills(setup):
    model, tok = setup
    engine = HFEngine(model, pad_token_id=tok.pad_token_id, seed=1)
    prompt = [5, 9, 13, 17, 21]
    p = SamplingParams(temperature=0.7, max_new_tokens=4, seed=3, cache_key="ep")

    async def turns(update: str):
        g1 = await engine.agenerate(prompt, p)
        nxt = prompt + g1.ids + [30, 31]
        if update == "weights":
            await asyncio.to_thread(engine.update_weights, None, engine.version + 1)
        elif update == "mismatch":
            nxt = [6] + nxt[1:]
        g2 = await engine.agenerate(nxt, p)
        engine.release("ep")
        return g1, g2, nxt

    g1, g2, nxt = asyncio.run(turns(""))
    assert (g1.prefill_tokens, g1.cached_tokens, g1.cache_miss) == (5, 0, "")
    assert g2.cached_tokens == len(prompt) + len(g1.ids) - 1 and g2.prefill_tokens == len(nxt) - g2.cached_tokens
    ref = engine.generate([nxt], [p])[0]  # the no-cache path
    assert g2.ids == ref.ids
    torch.testing.assert_close(torch.tensor(g2.logprobs), torch.tensor(ref.logprobs), atol=1e-5, rtol=0)
    for update in ("weights", "mismatch"):
        _, g2, nxt = asyncio.run(turns(update))
        assert g2.cache_miss == ("invalidated" if update == "weights" else "mismatch")
        assert g2.cached_tokens == 0 and g2.prefill_tokens == len(nxt)
    assert engine.stats["cache_invalidations"] == 1 and engine.stats["cache_misses"] == 2
    assert engine.cached_keys == []


def test_a_late_request_joins_the_running_batch_and_leaves_when_done(setup):
    model, tok = setup
    engine = HFEngine(model, pad_token_id=tok.pad_token_id, seed=1)
    long_p = SamplingParams(temperature=0.7, max_new_tokens=60, seed=1)
    short_p = SamplingParams(temperature=0.7, max_new_tokens=3, seed=2)
    short_prompt = [7, 8, 9, 10, 11, 12, 13, 14, 15, 16]

    async def main():
        long = asyncio.ensure_future(engine.agenerate([3, 4, 5], long_p))
        while engine.stats["batches"] < 5:
            await asyncio.sleep(0.001)
        short = await engine.agenerate(short_prompt, short_p)
        return short, long.done(), await long

    short, long_running, long = asyncio.run(main())
    assert not long_running  # the short request did not wait for the long one to finish
    assert len(short.ids) == 3 and len(long.ids) == 60
    for prompt, p, gen in (([3, 4, 5], long_p, long), (short_prompt, short_p, short)):
        ref = engine.generate([prompt], [p])[0]
        assert gen.ids == ref.ids
        torch.testing.assert_close(torch.tensor(gen.logprobs), torch.tensor(ref.logprobs), atol=1e-5, rtol=0)


def test_copies_of_one_prompt_admitted_together_are_prefilled_once(setup):
    """A GRPO group: G requests with one prompt (own seeds) and another prompt, admitted in one
    step: the prompt runs through prefill once, the copies count it as cached, and every
    request's ids and logprobs are those of the path without a cache (which prefills each)."""
    model, tok = setup
    p, q = [3, 4, 5, 6, 7, 8, 9], [10, 11, 12]
    prompts = [p, p, q, p, p]
    params = [SamplingParams(temperature=1.0, max_new_tokens=12, seed=s) for s in range(5)]
    engine = HFEngine(model, pad_token_id=tok.pad_token_id, seed=1)
    gens = asyncio.run(engine.agenerate_many(prompts, params))
    ref = HFEngine(model, pad_token_id=tok.pad_token_id, seed=1, kv_cache=False).generate(prompts, params)
    for g, r in zip(gens, ref):
        assert g.ids == r.ids
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(r.logprobs), atol=1e-5, rtol=0)
    assert len({tuple(g.ids) for g in gens[:2] + gens[3:]}) > 1  # the copies sampled apart
    assert [(g.prefill_tokens, g.cached_tokens) for g in gens] == [(7, 0), (0, 7), (3, 0), (0, 7), (0, 7)]
    assert (engine.stats["prefill_tokens"], engine.stats["shared_prefill_tokens"], engine.stats["cached_tokens"]) == (10, 21, 21)


def test_a_group_of_episodes_of_one_task_matches_the_uncached_path(setup, guess_env_id):
    """Four episodes of one task (a group): their first turns share one prefill, and the
    multi-turn episodes are the uncached path's."""
    model, tok = setup
    results = []
    for kw in ({"kv_cache": False}, {}):
        engine = HFEngine(model, pad_token_id=tok.pad_token_id, seed=1, **kw)
        loop = AgentLoop([envs.make(guess_env_id, max_turns=4) for _ in range(4)], engine, ChatFormat(tok),
                         SamplingParams(temperature=0.7, top_k=50, top_p=0.95, max_new_tokens=24), max_total_tokens=100_000)
        results.append((engine, asyncio.run(loop.collect([EpisodeSpec({"task_index": 0}, sample_index=i, seed=i) for i in range(4)]))))
        loop.close()
    (_, off), (engine, on) = results
    assert_same(on, off)
    assert engine.stats["shared_prefill_tokens"] > 0 and engine.stats["cache_misses"] == 0 and engine.cached_keys == []


def test_many_episodes_through_a_small_batch_match_the_uncached_path(setup, guess_env_id):
    """Ten episodes through a 3-row batch: rows join dead slots, longer rows move the write
    column (gaps for the others), the buffers are rebuilt, and suffixes of different cache
    lengths are prefilled together; ids and logprobs still match the path without a cache."""
    model, tok = setup
    _, off = play(model, tok, guess_env_id, n=10, kv_cache=False)
    engine, on = play(model, tok, guess_env_id, n=10, max_batch_size=3)
    assert_same(on, off)
    assert engine._batch.reused > 0 and engine._batch.rebuilds > 1
    assert engine.stats["cache_misses"] == 0 and engine.cached_keys == []


def test_a_decode_step_split_into_long_and_short_rows_gives_the_same_episodes(setup, guess_env_id):
    """With ``split_min_saving=0`` every decode step whose rows differ in length runs as two
    forwards (the longest rows, then the short ones reading only their own columns): the
    episodes are those of the path without a cache, and the split really happened."""
    model, tok = setup
    _, off = play(model, tok, guess_env_id, n=10, kv_cache=False)
    engine, on = play(model, tok, guess_env_id, n=10, max_batch_size=6, split_min_saving=0)
    assert_same(on, off)
    assert engine.stats["decode_forwards"] > engine.stats["batches"], engine.stats  # some steps ran as two forwards


def test_groups_split_the_slots_where_it_saves_cells():
    from agentrl.rollout.engines import _Batch, _Row

    def row(length, col):
        r = _Row([], None, None, None, length)
        r.col = col
        return r

    b = _Batch()
    b.width = 1000
    b.rows = [row(1000, 0), row(990, 10), None, row(100, 900), row(50, 950)]
    # one forward: 5 slots x 1001 columns = 5005 cells; split after slot 2: 2 x 1001 + 3 x 101 = 2305
    assert b.groups(min_saving=0) == [(0, 2, 0), (2, 5, 900)]
    assert b.groups(min_saving=3000) == [(0, 5, 0)]  # saves 2700 < 3000: one forward
    b.rows = [row(1000, 0), row(1000, 0), row(1000, 0)]
    assert b.groups(min_saving=0) == [(0, 3, 0)]  # nothing to save
