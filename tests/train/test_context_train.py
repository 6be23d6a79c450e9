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


# ---------------------------------------------------------------- batches counted in turns
class _Rounds:
    """A rollout whose k-th ``collect`` returns episodes with ``turns[k]`` turn samples each
    (``None``: a failed episode), and a sampler counting the specs it handed out."""

    def __init__(self, turns: list[list[int | None]]):
        self.turns, self.calls, self.position = turns, 0, 0

    def next_specs(self, want: int, G: int) -> list[tuple[int, int]]:
        specs = [(self.position + i, j) for i in range(want) for j in range(G)]
        self.position += want
        return specs

    def collect(self, specs: list[tuple[int, int]]) -> list:
        from agentrl.types import Trajectory

        out = []
        for (task, j), n in zip(specs, self.turns[self.calls]):
            t = Trajectory(task_id=f"t{task}", sample_index=j, failed=n is None)
            for k in range(n or 1):
                t.append([5, 6], generated=False)
                t.append([7], generated=True, turn=k, logprobs=[0.0], version=0)
                t.segments.append(3)
            t.turn_rewards = [0.0] * (n or 1)
            out.append(t)
        self.calls += 1
        return out


def _turn_cfg(tmp_path, tiny_model_dir, guess_env_id, overrides: list[str]):
    (tmp_path / "c.yaml").write_text(CONFIG.format(out=tmp_path / "run", model=tiny_model_dir("chatml"), env=guess_env_id))
    return load_config(tmp_path / "c.yaml", overrides)


@pytest.mark.parametrize("turns, target, rounds, samples", [
    ([[1, 1, 2, 1], [3, 1, 1, 1], [5, 5, 5, 5]], 10, 2, 11),   # short episodes: two rounds of 4 episodes (5 + 6 samples)
    ([[40, 2, 3, 9], [1, 1, 1, 1]], 10, 1, 54),                 # one long episode: one round, whole groups (54 >= 10)
    ([[1, None, None, 1], [None, None, 1, None], [1, 1, 1, 1]], 10, 3, 7),  # failures (2 + 1 + 4 samples): ceil(10 / 4) = 3 rounds at most
])
def test_turns_per_step_plays_rounds_until_the_batch_holds_that_many_turn_samples(tmp_path, tiny_model_dir, guess_env_id,
                                                                                turns, target, rounds, samples):
    from agentrl.train import collect_batch, turn_samples

    cfg = _turn_cfg(tmp_path, tiny_model_dir, guess_env_id, [f"rollout.turns_per_step={target}"])
    fake = _Rounds(turns)
    trajs, played = collect_batch(fake, fake, cfg, None)
    assert played == rounds == fake.calls and fake.position == 2 * rounds  # tasks_per_step tasks per round, whole groups
    assert len(trajs) == 4 * rounds and turn_samples(trajs) == samples


def test_turns_per_step_trains_end_to_end(tmp_path, tiny_model_dir, guess_env_id):
    from agentrl.train import train

    cfg = _turn_cfg(tmp_path, tiny_model_dir, guess_env_id, ["rollout.turns_per_step=20"])
    assert train(cfg)["train_steps"] == 2
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss/total" in r]
    for r in rows:  # rounds of 4 episodes of at most 6 turns: at least 20 samples, or the round cap ceil(20 / 4) = 5
        n = r["rollout/generation_rounds"]
        assert r["rollout/episodes"] == 4 * n
        assert r["rollout/samples"] >= 20 or n == 5
        assert r["rollout/samples"] <= 19 + 24  # the last round added at most 4 x 6


def test_turns_per_step_trains_end_to_end_in_async_mode(tmp_path, tiny_model_dir, guess_env_id):
    from agentrl.train import train

    cfg = _turn_cfg(tmp_path, tiny_model_dir, guess_env_id, ["rollout.turns_per_step=20", "run.mode=async", "rollout.max_staleness=1"])
    assert train(cfg)["train_steps"] == 2
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss/total" in r]
    assert len(rows) == 2
    for r in rows:  # whole groups of 2 until >= 20 turn samples (episodes never fail here)
        assert r["rollout/samples"] >= 20 and r["rollout/episodes"] % 2 == 0
        assert r["async/staleness_max"] <= 1


@pytest.mark.parametrize("overrides, fragment", [
    (["rollout.turns_per_step=8", "rollout.context.policy=full"], "only a turn-level rollout.context.policy makes"),
    (["rollout.turns_per_step=0"], "rollout.turns_per_step"),
])
def test_turns_per_step_bad_settings_are_clear_errors(tmp_path, tiny_model_dir, guess_env_id, overrides, fragment):
    from agentrl.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match=fragment):
        _turn_cfg(tmp_path, tiny_model_dir, guess_env_id, overrides)


def test_the_train_cli_prints_a_cap_too_small_as_one_error_line(tmp_path, tiny_model_dir, guess_env_id, capsys):
    from agentrl.cli import main

    (tmp_path / "c.yaml").write_text(CONFIG.format(out=tmp_path / "run", model=tiny_model_dir("chatml"), env=guess_env_id))
    rc = main(["train", str(tmp_path / "c.yaml"), "rollout.max_total_tokens=40", "rollout.max_new_tokens=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: rollout.context.policy='window': the first prompt")
    assert not any(line.startswith("Traceback") for line in err)
