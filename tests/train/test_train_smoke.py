"""The training loop end to end on the tiny GuessNumber env: SFT, eval, RL steps, checkpoint."""

from __future__ import annotations

import collections
import json

import pytest

from agentrl.config import load_config
from agentrl.metrics import read_metrics

CONFIG = """
run: {name: smoke, output_dir: OUT, seed: 0}
model:
  path: MODEL
  init: {arch: qwen2, template: chatml, vocab_size: 400, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, corpus_episodes: 10}
env: {id: agentrl/GuessNumber-v0, kwargs: {high: 8, max_turns: 4}, num_envs: 4}
rollout: {group_size: 2, tasks_per_step: 2, max_new_tokens: 24, max_total_tokens: 1024}
sft: {enabled: true, episodes: 8, epochs: 1, batch_size: 4}
trainer: {total_steps: 2, lr: 1e-3, micro_batch_size: 2, checkpoint_every: 1, eval_episodes: 4}
logging: {progress: false, tensorboard: false, log_trajectories: 4}
algorithm: {estimator: grpo, loss: {name: ppo}, aggregation: token-mean}
"""


def make_cfg(tmp_path, extra=()):
    p = tmp_path / "smoke.yaml"
    p.write_text(CONFIG.replace("OUT", str(tmp_path / "run")).replace("MODEL", str(tmp_path / "model")))
    return load_config(p, overrides=list(extra))


def merge_prefill_split(row: dict) -> dict:
    """``row`` with each ``<prefix>/prefill_tokens`` and ``<prefix>/cached_tokens`` pair replaced by
    their sum ``<prefix>/prompt_tokens``, for comparing two runs of one seed: the sum (the prompt
    tokens the episodes sent) is fixed, the split is not, since identical prompts admitted in
    the same engine step are prefilled once and which requests share a step is timing."""
    out = dict(row)
    for k in [k for k in out if k == "prefill_tokens" or k.endswith("/prefill_tokens")]:
        prefix = k[: -len("prefill_tokens")]
        out[prefix + "prompt_tokens"] = out.pop(k) + out.pop(prefix + "cached_tokens")
    return out


def test_train_end_to_end(tmp_path, guess_env_id):
    from agentrl.train import train

    summary = train(make_cfg(tmp_path))
    assert summary["train_steps"] == 2
    run = tmp_path / "run"
    rows = read_metrics(run / "metrics.jsonl")
    steps = [r["train_step"] for r in rows if "rollout/reward_mean" in r]
    assert steps == [1, 2]
    row = [r for r in rows if r["train_step"] == 2 and "loss/total" in r][0]
    for key in ("loss/policy", "policy/ratio_mean", "rollout/success", "rollout/turns_mean", "time/step_s", "throughput/learner_tokens_per_s", "entropy/step/0"):
        assert key in row, key
    assert abs(row["policy/ratio_mean"] - 1.0) < 1e-4  # one on-policy update
    # every training episode is in samples.jsonl (log_trajectories = tasks_per_step x group_size):
    # per step 2 tasks x 2 samples, and the step's success and reward are those episodes' means
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    for step in (1, 2):
        mine = [s for s in samples if s["train_step"] == step]
        metrics = [r for r in rows if r["train_step"] == step and "rollout/success" in r][0]
        assert sorted(collections.Counter(s["task_id"] for s in mine).values()) == [2, 2]
        assert metrics["rollout/episodes"] == 4.0 and metrics["rollout/failed_frac"] == 0.0
        assert metrics["rollout/success"] == pytest.approx(sum(s["success"] for s in mine) / 4)
        assert metrics["rollout/reward_mean"] == pytest.approx(sum(s["reward"] for s in mine) / 4)
    # held-out evaluation: exactly eval_episodes episodes before and after RL, the summary is the
    # metrics row logged at the last train_step, and GuessNumber's success is its 0/1 reward
    for label, at in (("before_rl", 0), ("after_rl", 2)):
        ev = summary[label]
        logged = [r for r in rows if f"eval/{label}/success" in r]
        assert len(logged) == 1 and logged[0]["train_step"] == at
        assert {k: logged[0][k] for k in ev} == ev
        assert ev[f"eval/{label}/episodes"] == 4.0 and ev[f"eval/{label}/failed_frac"] == 0.0
        assert (ev[f"eval/{label}/success"] * 4).is_integer()
        assert ev[f"eval/{label}/success"] == ev[f"eval/{label}/reward_mean"]
    assert summary["after_rl_step"] == 2
    assert summary["sft"]["episodes"] == 8
    assert (run / "summary.json").exists() and (run / "config.yaml").exists() and (run / "training.png").exists()
    assert json.loads((run / "run_info.json").read_text())["versions"]["torch"].startswith("2.")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001", "step_000002"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failing_step_still_closes_rollout_collector_and_logger(tmp_path, guess_env_id, monkeypatch, mode):
    """An exception inside the loop (here the learner's update) propagates, and the rollout
    (engine, sandboxes), the async collector and the metrics writers are closed on the way out."""
    from agentrl.learner.learner import Learner
    from agentrl.metrics import MetricsLogger
    from agentrl.rollout.async_collector import AsyncCollector
    from agentrl.rollout.local import LocalRollout
    from agentrl.train import train

    closed: list[str] = []
    for cls, name in ((LocalRollout, "rollout"), (AsyncCollector, "collector"), (MetricsLogger, "logger")):
        original = cls.close

        def close(self, _original=original, _name=name):
            closed.append(_name)
            return _original(self)

        monkeypatch.setattr(cls, "close", close)

    def update(self, batch):
        raise RuntimeError("learner blew up")

    monkeypatch.setattr(Learner, "update", update)
    with pytest.raises(RuntimeError, match="learner blew up"):
        train(make_cfg(tmp_path, [f"run.mode={mode}", "sft.enabled=false"]))
    expected = ["logger", "collector", "rollout"] if mode == "async" else ["logger", "rollout"]
    assert closed == expected
