"""Training with a turn-level context policy (issue 16), end to end on the tiny model: SFT on
the policy's turn samples, RL in sync and async mode, held-out evaluation, the turn-sample
metrics, and a cap too small for the task stopping before any work."""

from __future__ import annotations

import pytest

from agentrl.config import load_config
from agentrl.metrics import read_metrics

pytestmark = pytest.mark.timeout(600)

CONFIG = """
run: {{name: ctx, output_dir: {out}, seed: 0}}
model: {{path: {model}}}
env: {{id: {env}, kwargs: {{high: 64, max_turns: 6}}, num_envs: 4}}
rollout: {{group_size: 2, tasks_per_step: 2, max_new_tokens: 16, max_total_tokens: 400, tools_in_prompt: false,
          context: {{policy: window, window: 2}}}}
sft: {{enabled: true, episodes: 8, steps: 4, warmup_steps: 1, batch_size: 8, max_tokens: 400}}
trainer: {{total_steps: 2, lr: 1e-3, micro_batch_size: 3, mini_batches: 2, checkpoint_every: 1, eval_episodes: 4}}
logging: {{progress: false, tensorboard: false, log_trajectories: 1}}
algorithm: {{estimator: grpo, loss: {{name: ppo}}, aggregation: token-mean}}
"""


@pytest.mark.parametrize("mode", [[], ["run.mode=async", "rollout.max_staleness=1"]], ids=["sync", "async"])
def test_window_policy_trains_on_turn_samples(tmp_path, tiny_model_dir, guess_env_id, mode):
    from agentrl.train import train

    (tmp_path / "c.yaml").write_text(CONFIG.format(out=tmp_path / "run", model=tiny_model_dir("chatml"), env=guess_env_id))
    summary = train(load_config(tmp_path / "c.yaml", mode))
    assert summary["train_steps"] == 2 and summary["sft"]["episodes"] == 8
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "rollout/samples" in r and "loss/total" in r]
    assert [r["train_step"] for r in rows] == [1, 2]
    for r in rows:
        # 4 episodes of the random tiny policy, up to 6 turns each: one sample per turn
        assert r["rollout/samples"] == pytest.approx(r["rollout/turns_mean"] * r["rollout/episodes"] * (1 - r["rollout/failed_frac"]))
        assert 4 <= r["rollout/samples"] <= 24 and r["loss/total"] is not None
        assert 0 < r["rollout/context_tokens_max"] <= 400 and r["rollout/context_left_out_turns_mean"] >= 0
    ev = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/after_rl/samples" in r)
    assert ev["eval/after_rl/samples"] >= 4


def test_a_cap_too_small_for_the_task_stops_before_sft(tmp_path, tiny_model_dir, guess_env_id):
    from agentrl.train import train

    (tmp_path / "c.yaml").write_text(CONFIG.format(out=tmp_path / "run", model=tiny_model_dir("chatml"), env=guess_env_id))
    cfg = load_config(tmp_path / "c.yaml", ["rollout.max_total_tokens=40", "rollout.max_new_tokens=16"])
    with pytest.raises(ValueError, match=r"more than rollout.max_total_tokens=40 \(the per-turn context cap\)"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or "sft/expert_episodes" not in (tmp_path / "run" / "metrics.jsonl").read_text()
