"""Failure containment end to end: a fault injected at every point of an episode (reset,
before generate, between generate and step, inside step, close), of every kind (raise, hang,
garbage, a killed sandbox), and training still runs its 2 train_steps, counts the failures by
kind in metrics.jsonl, and trains nothing on the failed episodes.

Every point and kind runs on the local backend in sync and async mode (one run each); one run
with all of them at once runs in async mode locally and, in tests/distributed/test_ray_faults.py,
in both modes on Ray. A buggy env plugin (step raises on 1 call in 5) trains, and its SFT warm
start skips the failing demonstrations.
"""

from __future__ import annotations

import json

import pytest

from agentrl.config import load_config
from agentrl.metrics import read_metrics

pytestmark = pytest.mark.timeout(600)

CONFIG = """
run: {name: faults, output_dir: OUT, seed: 0}
model: {path: MODEL}
env: {id: agentrl/SandboxedGuessNumber-v0, kwargs: {high: 8, max_turns: 4}, num_envs: 4, step_timeout_s: 60, reset_timeout_s: 60, close_timeout_s: 60}
rollout: {group_size: 2, tasks_per_step: 4, max_new_tokens: 16, max_total_tokens: 1024, tools_in_prompt: false, generate_timeout_s: 60}
trainer: {total_steps: 2, lr: 1e-3, micro_batch_size: 4, checkpoint_every: 1, eval_episodes: 4}
logging: {progress: false, tensorboard: false}
algorithm: {estimator: grpo, loss: {name: ppo}, aggregation: token-mean}
"""

# (point, kind) -> the failure kind an episode hit by it ends with
CASES = {
    ("reset", "raise"): "env_reset",
    ("reset", "hang"): "env_timeout",
    ("reset", "garbage"): "env_invalid_output",
    ("before_generate", "raise"): "engine",
    ("before_generate", "hang"): "engine_timeout",
    ("after_generate", "raise"): "rollout",
    ("after_generate", "garbage"): "engine_invalid_output",
    ("after_generate", "kill_sandbox"): "sandbox_error",
    ("step", "raise"): "env_step",
    ("step", "hang"): "env_timeout",
    ("step", "garbage"): "env_invalid_output",
}
# Timeouts are generous in CONFIG (a sandboxed reset under a load average of 5 took over 2 s:
# sandboxed code runs at a low CPU weight); a hang fault tightens only the timeout that ends it.
HANG_TIMEOUT = {"reset": ["env.reset_timeout_s=2"], "step": ["env.step_timeout_s=2"],
                "before_generate": ["rollout.generate_timeout_s=5"], "close": ["env.close_timeout_s=2"]}
ALL_TIMEOUTS = [t for ts in HANG_TIMEOUT.values() for t in ts]
# per opportunity: some episodes of every step are hit, rarely all (per-turn points strike up
# to max_turns times an episode)
RATE = {"reset": 0.3, "before_generate": 0.15, "after_generate": 0.15, "step": 0.15}

ALL_AT_ONCE = [{"point": p, "kind": k, "rate": 0.08} for (p, k) in CASES] + [{"point": "close", "kind": "raise", "rate": 0.5}]


@pytest.fixture(scope="module")
def fault_env_file(tmp_path_factory, guess_env_id) -> str:
    from tests.train.fault_env import write_fault_envs

    return write_fault_envs(tmp_path_factory.mktemp("fault_envs"))


def make_cfg(tmp_path, model_dir, fault_env_file, faults, extra=()):
    p = tmp_path / "faults.yaml"
    p.write_text(CONFIG.replace("OUT", str(tmp_path / "run")).replace("MODEL", str(model_dir)))
    return load_config(p, overrides=[f"run.imports=[{fault_env_file}]", f"rollout.faults={json.dumps(faults)}", *extra])


@pytest.fixture
def recorded_batches(monkeypatch):
    """Every TrainBatch the training loop collates (the driver's, whichever backend)."""
    import agentrl.types

    batches = []
    original = agentrl.types.collate

    def collate(trajectories, **kwargs):
        batch = original(trajectories, **kwargs)
        batches.append((list(trajectories), batch))
        return batch

    monkeypatch.setattr(agentrl.types, "collate", collate)
    return batches


def check_run(tmp_path, summary, batches, expected_kinds):
    """The run finished its 2 train_steps; failures are counted by kind; failed rows train nothing."""
    assert summary["train_steps"] == 2
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in rows if "rollout/episodes" in r and "loss/total" in r]
    assert [r["train_step"] for r in steps] == [1, 2]
    counted = {}
    for r in steps:
        for k, v in r.items():
            if k.startswith("rollout/failed/"):
                counted[k.removeprefix("rollout/failed/")] = counted.get(k.removeprefix("rollout/failed/"), 0) + v
        failed = sum(v for k, v in r.items() if k.startswith("rollout/failed/"))
        assert failed == pytest.approx(r["rollout/failed_frac"] * r["rollout/episodes"])  # every failure has a kind
        assert failed < r["rollout/episodes"], "the rates must leave some episodes alive"
    for kind in expected_kinds:
        assert counted.get(kind, 0) > 0, (kind, counted)
    assert set(counted) <= set(expected_kinds), counted
    trained = [(t, b) for t, b in batches if len(t) == 8]  # the train_steps' batches (not dynamic-sampling probes)
    assert len(trained) == 2
    n_failed = 0
    for trajs, batch in trained:
        for i, t in enumerate(trajs):
            assert bool(batch.failed[i]) == t.failed
            if t.failed:
                n_failed += 1
                assert t.failure_kind in expected_kinds and t.failure_reason
                assert not batch.loss_mask[i].any()  # no token of a failed episode is trained on
                assert len(t.anchor_keys) == t.num_turns
    assert n_failed > 0
    return counted


MODES = {"sync": [], "async": ["run.mode=async", "rollout.max_staleness=1"]}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("point,kind", list(CASES), ids=[f"{p}-{k}" for p, k in CASES])
def test_every_injection_point_is_contained(tmp_path, tiny_model_dir, fault_env_file, recorded_batches, point, kind, mode):
    from agentrl.train import train

    cfg = make_cfg(tmp_path, tiny_model_dir("chatml"), fault_env_file, [{"point": point, "kind": kind, "rate": RATE[point]}],
                   [*MODES[mode], *(HANG_TIMEOUT[point] if kind == "hang" else [])])
    summary = train(cfg)
    check_run(tmp_path, summary, recorded_batches, [CASES[point, kind]])
    if kind == "hang" and point != "before_generate":  # a timed-out env instance is replaced by a fresh one
        rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
        assert max(r.get("rollout/env_instances_replaced", 0) for r in rows) > 0


@pytest.mark.parametrize("kind,key", [("raise", "error"), ("hang", "timeout")])
def test_a_failing_env_close_does_not_stop_the_run_from_ending(tmp_path, tiny_model_dir, fault_env_file, kind, key):
    import time

    from agentrl.train import train

    cfg = make_cfg(tmp_path, tiny_model_dir("chatml"), fault_env_file, [{"point": "close", "kind": kind, "rate": 1.0}],
                   ["trainer.total_steps=1", *HANG_TIMEOUT["close"]])
    t0 = time.monotonic()
    summary = train(cfg)
    assert summary["train_steps"] == 1
    # 4 training env instances fail to close; evaluation envs close normally (faults there are opt-in)
    assert summary["env_close_failures"] == {key: 4}
    last = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert last[f"rollout/close_failed/{key}"] == 4.0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["env_close_failures"] == {key: 4}
    if kind == "hang":
        assert time.monotonic() - t0 < 120  # the 2 s close timeout ended it, not the 24 h hang


def check_all_at_once(tmp_path, summary, batches):
    """All points at once: the run finishes, every failure has a kind, several kinds occur,
    failed rows train nothing, and the injected close failures are on the record."""
    kinds = sorted(set(CASES.values()))
    assert summary["train_steps"] == 2
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "rollout/episodes" in r]
    assert [r["train_step"] for r in rows] == [1, 2]
    # A step whose episodes all failed skips its update (no loss/* keys), by design: on a loaded
    # machine the 2-s reset timeout can end a whole step's episodes (fresh-clone check beside a
    # 2-job study: step 1 skipped). At least one step must have trained, on finite values.
    trained = [r for r in rows if "loss/total" in r]
    assert trained and all(r["loss/total"] is not None for r in trained), rows
    assert all(r["policy/skipped_update"] == 1.0 and r["rollout/failed_frac"] == 1.0 for r in rows if r not in trained), rows
    seen = set()
    for r in rows:
        failed = {k.removeprefix("rollout/failed/"): v for k, v in r.items() if k.startswith("rollout/failed/")}
        assert sum(failed.values()) == pytest.approx(r["rollout/failed_frac"] * r["rollout/episodes"])
        assert set(failed) <= set(kinds), failed
        seen |= set(failed)
    assert len(seen) >= 4, seen
    for trajs, batch in batches:
        for i, t in enumerate(trajs):
            if t.failed:
                assert t.failure_kind in kinds and not batch.loss_mask[i].any() and len(t.anchor_keys) == t.num_turns
    assert summary["env_close_failures"]["error"] >= 1


def test_all_faults_at_once_async(tmp_path, tiny_model_dir, fault_env_file, recorded_batches):
    from agentrl.train import train

    summary = train(make_cfg(tmp_path, tiny_model_dir("chatml"), fault_env_file, ALL_AT_ONCE, [*MODES["async"], *ALL_TIMEOUTS]))
    check_all_at_once(tmp_path, summary, recorded_batches)


def test_a_buggy_env_plugin_trains_and_its_sft_skips_failed_demonstrations(tmp_path, tiny_model_dir, fault_env_file, recorded_batches):
    """The env of the bug report: step raises on 1 call in 5. SFT on its expert skips the
    demonstrations that hit the bug (counted, logged); RL counts them as env_step failures."""
    from agentrl.train import train

    cfg = make_cfg(tmp_path, tiny_model_dir("chatml"), fault_env_file, [], [
        "env.id=agentrl/FlakyGuessNumber-v0", "env.kwargs={high: 8, max_turns: 4, raise_every: 5}",
        "sft.enabled=true", "sft.episodes=48", "sft.steps=3", "sft.batch_size=4", "sft.max_failed_frac=0.9",
    ])
    summary = train(cfg)  # 16 expert env instances play 3 episodes each: their 5th and 10th step calls raise
    assert 0 < summary["sft"]["failed_episodes"] < 48
    assert summary["sft"]["failed_by_kind"] == {"env_error": summary["sft"]["failed_episodes"]}
    assert summary["sft"]["episodes"] == 48 - summary["sft"]["failed_episodes"]
    row0 = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "sft/failed_episodes" in r)
    assert row0["sft/failed_episodes"] == summary["sft"]["failed_episodes"]
    check_run(tmp_path, summary, recorded_batches, ["env_step"])


def test_sft_stops_with_a_clear_error_when_too_many_demonstrations_fail(tmp_path, tiny_model_dir, fault_env_file):
    from agentrl.rollout.expert import ExpertFailures
    from agentrl.train import train

    cfg = make_cfg(tmp_path, tiny_model_dir("chatml"), fault_env_file, [], [
        "env.id=agentrl/FlakyGuessNumber-v0", "env.kwargs={high: 8, max_turns: 4, raise_every: 2}",
        "sft.enabled=true", "sft.episodes=8", "sft.max_failed_frac=0.25",
    ])
    with pytest.raises(ExpertFailures, match=r"of 8 expert episodes of agentrl/FlakyGuessNumber-v0 failed .* more than the 25% allowed by sft.max_failed_frac"):
        train(cfg)


def test_agentrl_train_reports_too_many_failed_demonstrations_in_one_line(tmp_path, tiny_model_dir, fault_env_file, capsys):
    from agentrl.cli import main

    (tmp_path / "faults.yaml").write_text(CONFIG.replace("OUT", str(tmp_path / "run")).replace("MODEL", str(tiny_model_dir("chatml"))))
    rc = main(["train", str(tmp_path / "faults.yaml"), f"run.imports=[{fault_env_file}]", "env.id=agentrl/FlakyGuessNumber-v0",
               "env.kwargs={high: 8, max_turns: 4, raise_every: 2}", "sft.enabled=true", "sft.episodes=8", "sft.max_failed_frac=0.25"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("error: SFT warm start: ") and "sft.max_failed_frac" in err[-1], err[-3:]
    assert "Traceback" not in "\n".join(err)


def test_the_tokenizer_corpus_skips_failing_expert_episodes(fault_env_file):
    """model.init plays expert episodes for the tokenizer before any model exists: a flaky env
    loses some of them (skipped), a broken one stops with one line naming the stage."""
    from agentrl.config import import_modules
    from agentrl.models.tiny import env_corpus
    from agentrl.rollout.expert import ExpertFailures

    import_modules([fault_env_file])
    eid = "agentrl/FlakyGuessNumber-v0"

    def corpus(raise_every, frac):
        return env_corpus([eid], episodes=12, template="chatml", env_kwargs={eid: {"high": 8, "max_turns": 4, "raise_every": raise_every}},
                          max_failed_frac=frac)

    clean = corpus(0, 0.5)
    texts = corpus(5, 0.9)  # one instance plays all 12: its 5th, 10th, ... step calls raise
    assert len(clean) == 12 and 0 < len(texts) < 12
    assert all(t in clean for t in texts)  # the surviving episodes are the clean run's
    with pytest.raises(ExpertFailures, match=r"of 12 expert episodes of agentrl/FlakyGuessNumber-v0 failed .*flaky env: step call") as e:
        corpus(2, 0.25)
    assert e.value.stage == "tokenizer corpus"


def test_a_tool_env_that_overrides_only_the_sync_step_is_refused():
    from agentrl.envs import ToolEnv

    with pytest.raises(TypeError, match=r"Bad overrides ToolEnv.step\(\) but not astep\(\).*async def astep"):
        class Bad(ToolEnv):
            def step(self, action):
                return super().step(action)

    class Good(ToolEnv):  # the async override (the sync wrapper calls it) is fine
        async def astep(self, action):
            return await super().astep(action)

        def step(self, action):
            return super().step(action)


def test_the_tokenizer_corpus_times_out_a_hanging_expert_step(fault_env_file):
    """A step that hangs (every 5th call sleeps an hour) ends its corpus episode after the step
    timeout; the others are kept."""
    import asyncio
    import time

    import agentrl.envs as envs
    from agentrl.config import import_modules
    from agentrl.models.tiny import env_corpus

    import_modules([fault_env_file])
    base = type(envs.make("agentrl/FlakyGuessNumber-v0").unwrapped).__mro__[1]  # GuessNumber

    class HangingGuess(base):
        calls = 0

        async def _astep(self, action):
            HangingGuess.calls += 1
            if HangingGuess.calls % 5 == 0:
                await asyncio.sleep(3600)
            return await super()._astep(action)

    envs.register_env("HangingGuessCorpusTest", HangingGuess)
    eid = "agentrl/HangingGuessCorpusTest-v0"
    t0 = time.monotonic()
    texts = env_corpus([eid], episodes=6, template="chatml", env_kwargs={eid: {"high": 8, "max_turns": 4}}, step_timeout_s=0.5, max_failed_frac=0.9)
    assert 0 < len(texts) < 6 and HangingGuess.calls >= 5
    assert time.monotonic() - t0 < 60  # the 0.5 s step timeout ended the hangs, not the hour
