"""Turn-level context policies (issue 16): each turn's prompt is built by the policy and each
turn is its own training sample. Conformance per policy and chat template (the ids trained are
the ids sampled, turn by turn; the learner's logprobs over each collated row match the
behavior logprobs to 1e-5), the prompts hold what the policy says, a user-registered policy,
the expert's SFT samples, and bad settings caught before any work."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import agentrl.envs as envs
from agentrl.config import ConfigError, load_config
from agentrl.models.chat import ChatFormat
from agentrl.rollout import AgentLoop, EpisodeSpec, HFEngine, SamplingParams
from agentrl.rollout.context import CONTEXT_POLICIES, ContextPolicy, check_cap, make_context_policy
from agentrl.rollout.expert import play_experts
from agentrl.types import collate

from .test_conformance import RecordingEngine, recompute_logprobs

TURNS = 6


class TurnCount(ContextPolicy):
    """A user policy: the window plus a memory line counting the turns so far."""

    name = "turn_count"

    def memory(self, env, turns):
        return f"turns so far: {len(turns)}"


@pytest.fixture(scope="module", autouse=True)
def turn_count_policy():
    CONTEXT_POLICIES.register("turn_count", summary="test policy: window plus a turn counter", paper="")(TurnCount)
    yield
    CONTEXT_POLICIES.unregister("turn_count")


def _play(template, tiny_model_dir, guess_env_id, policy, temperature=0.7, episodes=3):
    path = tiny_model_dir(template)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    chat = ChatFormat(tok)
    engine = RecordingEngine(HFEngine(model, pad_token_id=tok.pad_token_id, seed=1))
    loop = AgentLoop([envs.make(guess_env_id, max_turns=TURNS) for _ in range(episodes)], engine, chat,
                     SamplingParams(temperature=temperature, max_new_tokens=24), max_total_tokens=100_000, context=policy)
    trajs = asyncio.run(loop.collect([EpisodeSpec({"task_index": i}, sample_index=i, seed=i) for i in range(episodes)]))
    loop.close()
    return model, tok, chat, engine, trajs


@pytest.mark.parametrize("template", ["chatml", "llama3", "qwen3"])
@pytest.mark.parametrize("policy", ["window", "turn_count"])
def test_each_turn_sample_trains_the_sampled_ids_and_logprobs_match(template, policy, tiny_model_dir, guess_env_id):
    temperature = 0.7
    model, tok, chat, engine, trajs = _play(template, tiny_model_dir, guess_env_id, make_context_policy(policy, window=2), temperature)
    batch = collate(trajs, pad_token_id=tok.pad_token_id)
    assert batch.batch_size == 3 * TURNS and batch.episode_ids.tolist() == [e for e in range(3) for _ in range(TURNS)]
    assert batch.turn_samples
    row = 0
    for e, traj in enumerate(trajs):
        assert not traj.failed, traj.failure_reason
        assert traj.num_turns == TURNS and len(traj.segments) == TURNS and traj.metrics["samples"] == TURNS
        start = 0
        for turn, n in enumerate(traj.segments):
            seg = traj.input_ids[start : start + n]
            # exactly one engine call made this sample: its prompt, the ids sampled, and for a
            # turn cut at max_new_tokens the end-of-turn token closing it (not trained)
            (prompt, gen), = [(p, g) for p, g in engine.calls if seg[: len(p) + len(g.ids)] == p + g.ids]
            closing = [] if gen.finish_reason == "stop" else [chat.eos_token_id]
            assert seg == prompt + gen.ids + closing
            mask = traj.loss_mask[start : start + n]
            assert [t for t, m in zip(seg, mask) if m] == gen.ids  # trained = sampled, the prompt is not trained
            assert mask == [False] * len(prompt) + [True] * len(gen.ids) + [False] * len(closing)
            assert traj.turn_ids[start + len(prompt) : start + len(prompt) + len(gen.ids)] == [turn] * len(gen.ids)
            # the prompt shows the head and at most the last 2 turns, with the marker for the rest
            text = tok.decode(prompt)
            left_out = max(turn - 2, 0)
            assert (f"[{left_out} earlier turn(s) not shown]" in text) == (left_out > 0)
            assert (f"[memory] turns so far: {turn}" in text) == (policy == "turn_count")
            # the collated row is this sample; the learner's logprobs over it match the sampler's
            ids = batch.input_ids[row, :n].tolist()
            assert ids == seg and batch.loss_mask[row, :n].tolist() == mask and not batch.loss_mask[row, n:].any()
            lp = recompute_logprobs(model, ids, temperature)
            m = torch.tensor(mask[1:])
            torch.testing.assert_close(lp[m], torch.tensor(traj.behavior_logprobs[start + 1 : start + n])[m], atol=1e-5, rtol=0)
            assert batch.rewards[row] == traj.reward and batch.episode_ids[row] == e
            start += n
            row += 1
        assert traj.metrics["context_left_out_turns"] == sum(max(k - 2, 0) for k in range(TURNS))


def test_full_is_the_one_sequence_path(tiny_model_dir, guess_env_id):
    *_, trajs = _play("chatml", tiny_model_dir, guess_env_id, make_context_policy("full"), episodes=2)
    assert all(not t.segments for t in trajs)
    batch = collate(trajs, pad_token_id=0)
    assert batch.batch_size == 2 and batch.episode_ids.tolist() == [0, 1] and not batch.turn_samples


def test_a_prompt_over_the_cap_shows_fewer_turns(tiny_model_dir, guess_env_id):
    """With a cap that fits the head and about one turn, the window of 4 shrinks (counted as
    dropped turns) and no sample exceeds the cap."""
    path = tiny_model_dir("chatml")
    tok = AutoTokenizer.from_pretrained(path)
    chat = ChatFormat(tok)
    env = envs.make(guess_env_id, max_turns=TURNS)
    head, _ = env.unwrapped.reset(options={"task_index": 0})
    cap = len(chat.prompt_ids(list(head))) + 60
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    loop = AgentLoop([env], HFEngine(model, pad_token_id=tok.pad_token_id, seed=1), chat, SamplingParams(max_new_tokens=16),
                     max_total_tokens=cap, tools_in_prompt=False, context=make_context_policy("window", window=4))
    (traj,) = asyncio.run(loop.collect([EpisodeSpec({"task_index": 0})]))
    loop.close()
    assert not traj.failed and len(traj.segments) >= 3
    assert max(traj.segments) <= cap + 1  # + 1: the end-of-turn token closing a cut turn
    assert traj.metrics["context_dropped_turns"] > 0 and traj.metrics["context_tokens_max"] <= cap - 1


def test_expert_sft_samples_use_the_rl_prompts(tiny_model_dir, guess_env_id):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir("chatml"))
    chat = ChatFormat(tok)
    policy = make_context_policy("window", window=1)
    data = play_experts(guess_env_id, chat, episodes=4, env_kwargs={"max_turns": 8}, context=policy, max_total_tokens=4096)
    for traj in data.trajectories:
        assert traj.success and len(traj.segments) == traj.num_turns
        samples = traj.turn_samples()
        assert [len(s.input_ids) for s in samples] == traj.segments
        for k, s in enumerate(samples):
            assert s.turn_ids[-1] == k and s.loss_mask[-1] and not s.loss_mask[0]
            assert ("earlier turn(s) not shown" in tok.decode(s.input_ids)) == (k >= 2)


BASE = ["model.init.corpus_episodes=2"]
QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")


@pytest.mark.parametrize("override, message", [
    ("rollout.context={policy: window, window: 0}", "rollout.context.window must be >= 1"),
    ("rollout.context.policy=windw", "unknown context policy 'windw'. Did you mean 'window'?"),
    ("rollout.context={policy: window, max_turns: 3}", "Valid keys of rollout.context: policy, window, marker, options"),
    ("rollout.context={policy: window, options: {depth: 2}}", "unknown option 'depth' for context policy 'window'"),
])
def test_bad_context_settings_fail_the_config_check(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(QUICKSTART, [*BASE, override])


def test_the_docs_user_policy_loads_from_run_imports_in_a_config_file(tmp_path):
    """docs/long_horizons.md's own example policy, in a file listed under run.imports, is
    known to the config check (the imports used to run only when the algorithm section was
    parsed, after the context check: a newcomer's `agentrl train` refused 'turn_count')."""
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "long_horizons.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", doc, re.DOTALL) if "CONTEXT_POLICIES.register" in block)
    name = re.search(r'register\("([a-z_]+)"', code).group(1)
    code = code.replace(f'"{name}"', '"doc_policy_from_a_file"')  # a name no other test registers
    (tmp_path / "doc_policy.py").write_text(code)
    (tmp_path / "c.yaml").write_text(f"base: {QUICKSTART}\nrun: {{imports: [{tmp_path / 'doc_policy.py'}]}}\n"
                                     "rollout: {context: {policy: doc_policy_from_a_file, window: 2}}\n")
    cfg = load_config(tmp_path / "c.yaml", BASE)
    assert cfg.rollout.context.policy == "doc_policy_from_a_file" and "doc_policy_from_a_file" in CONTEXT_POLICIES
    policy = make_context_policy("doc_policy_from_a_file", window=2)
    assert policy.memory(None, [[], [], []]) == "turns so far: 3"


def test_summary_needs_an_env_with_state_summary(tiny_model_dir, guess_env_id):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir("chatml"))
    with pytest.raises(ValueError, match="has no state_summary"):
        AgentLoop([envs.make(guess_env_id)], RecordingEngine(None), ChatFormat(tok), SamplingParams(), context=make_context_policy("summary"))


def test_a_cap_below_the_task_plus_one_turn_is_an_error_before_any_work(tiny_model_dir, guess_env_id):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir("chatml"))
    chat = ChatFormat(tok)
    env = envs.make(guess_env_id)
    n = check_cap(chat, make_context_policy("window"), env, cap=10_000, max_new_tokens=64, tools_in_prompt=True)
    assert n == len(chat.prompt_ids(list(env.unwrapped.reset(options={"task_index": 0})[0]), env.unwrapped.tool_schemas))
    with pytest.raises(ValueError, match=rf"the first prompt \(system prompt, task, tool schemas and memory\) is {n} tokens, so with one turn "
                                         rf"of rollout.max_new_tokens=64 it needs {n + 64} tokens, more than rollout.max_total_tokens={n + 63}"):
        check_cap(chat, make_context_policy("window"), env, cap=n + 63, max_new_tokens=64, tools_in_prompt=True)
