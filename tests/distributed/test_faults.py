"""Fault handling of RayRollout: a worker killed mid-rollout (``ray.kill``) costs only the
episodes it had in flight (failed Trajectories saying which worker died), is replaced, and the
rollout goes on; an episode past ``ray.episode_timeout_s`` is failed and cancelled. Every test
runs under a timeout so a regression shows up as a failure, not a hang."""

from __future__ import annotations

import threading

import pytest

from agentrl.config import TrainConfig, from_dict
from agentrl.rollout.agent_loop import EpisodeSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

VERSION = 3
STEP_DELAY_S = 0.4  # 6 turns: an episode takes >= 2.4 s, so a kill at 1 s lands mid-episode


@pytest.fixture(scope="module")
def rollout(ray_cluster, tiny_model_dir, guess_env_file):
    from agentrl.distributed.ray_backend import RayRollout
    from agentrl.learner.policy import load_model, load_tokenizer

    path = str(tiny_model_dir("chatml"))
    cfg = from_dict(TrainConfig, {
        "run": {"seed": 0, "backend": "ray", "imports": [guess_env_file]},
        "model": {"path": path},
        "env": {"id": "agentrl/SlowGuessNumber-v0", "kwargs": {"high": 1000, "max_turns": 6, "step_delay_s": STEP_DELAY_S}, "num_envs": 4},
        "rollout": {"max_new_tokens": 12, "max_total_tokens": 2048},
        "ray": {"env_workers": 2, "generation_workers": 1, "cpus_per_generation_worker": 0.5, "health_check_s": 0.2, "startup_timeout_s": 480},
    })
    model = load_model(path)
    r = RayRollout(cfg, model, load_tokenizer(path))
    r.sync_weights(model, VERSION)
    yield r
    r.close()


def specs(n: int, offset: int = 0) -> list[EpisodeSpec]:
    return [EpisodeSpec({"task_index": offset + i, "split": "train"}, sample_index=0, seed=offset + i) for i in range(n)]


def kill_later(get_handle, delay_s: float = 1.0) -> threading.Timer:
    import ray

    timer = threading.Timer(delay_s, lambda: ray.kill(get_handle()))
    timer.start()
    return timer


def assert_healthy(rollout, n: int = 4) -> None:
    trajs = rollout.collect(specs(n, offset=30))
    assert [t.failed for t in trajs] == [False] * n, [t.failure_reason for t in trajs]
    assert all(v == VERSION for t in trajs for v, m in zip(t.policy_versions, t.loss_mask) if m)


def test_killed_env_worker_fails_its_inflight_episodes_only(rollout):
    timer = kill_later(lambda: rollout.env_workers[0])
    trajs = rollout.collect(specs(8))
    timer.join()
    assert len(trajs) == 8
    failed = [t for t in trajs if t.failed]
    # env worker 0 holds 2 of the 4 env instances: its 2 in-flight episodes are lost, no more
    assert len(failed) == 2, [t.failure_reason for t in trajs]
    assert all("env worker 0 died" in t.failure_reason for t in failed)
    assert all(t.task_id.startswith("guess/train/") and not t.input_ids for t in failed)  # named, empty, masked out
    assert all(t.num_turns == 6 or t.success for t in trajs if not t.failed)  # the others ran to the end
    assert rollout.failures["env_worker_restarts"] == 1
    assert rollout.sandbox_metrics()["rollout/episodes_lost_to_dead_env_workers"] == 2.0
    assert_healthy(rollout)


def test_killed_generation_worker_is_replaced_with_the_latest_weights(rollout):
    # Pings every 5 s: the episodes (awake every 0.4 s) reach the dead worker before the driver
    # notices, so some requests are certainly in flight on it (a fast ping could rewire the
    # EnvWorkers before any request is lost, a legitimate outcome this test would not see).
    rollout.cfg.ray.health_check_s = 5.0
    timer = kill_later(lambda: rollout.generation_workers[0])
    try:
        trajs = rollout.collect(specs(8, offset=20))
    finally:
        timer.join()
        rollout.cfg.ray.health_check_s = 0.2
    assert len(trajs) == 8
    failed = [t for t in trajs if t.failed]
    assert failed, "the episodes in flight when the generation worker died must fail"
    assert all("WorkerDied: generation worker 0 died" in t.failure_reason for t in failed), [t.failure_reason for t in failed]
    assert len(failed) <= 4  # only episodes in flight at the kill; the queued ones wait for the replacement
    ok = [t for t in trajs if not t.failed]
    assert ok and all(v == VERSION for t in ok for v, m in zip(t.policy_versions, t.loss_mask) if m)
    assert rollout.failures["generation_worker_restarts"] == 1
    assert_healthy(rollout)


def test_episode_timeout_fails_and_cancels(rollout):
    rollout.cfg.ray.episode_timeout_s = 1.0  # driver-side setting; episodes take >= 2.4 s
    try:
        trajs = rollout.collect(specs(4, offset=40))
    finally:
        rollout.cfg.ray.episode_timeout_s = 0.0
    assert [t.failed for t in trajs] == [True] * 4
    assert all("TimeoutError" in t.failure_reason for t in trajs)
    assert_healthy(rollout)


def test_a_batch_with_a_dead_workers_episode_still_trains(tiny_model_dir):
    """The failed Trajectory a dead worker leaves (no tokens) collates and trains: finite loss,
    only the other rows contribute."""
    import math

    from agentrl.algorithms import build_algorithm
    from agentrl.learner.learner import Learner
    from agentrl.learner.policy import load_model, load_tokenizer
    from agentrl.types import Trajectory, collate
    from tests.distributed.test_fsdp import make_trajectories

    path = str(tiny_model_dir("chatml"))
    tok, model = load_tokenizer(path), load_model(path)
    dead = Trajectory(task_id="task/0", sample_index=2, failed=True, failure_reason="WorkerDied: env worker 0 died during the episode")
    batch = collate([*make_trajectories(model.config.vocab_size, B=4), dead], pad_token_id=tok.pad_token_id)
    cfg = from_dict(TrainConfig, {"model": {"path": path}, "trainer": {"micro_batch_size": 5}})  # one micro-batch holds them all
    metrics = Learner(model, build_algorithm({"estimator": {"name": "grpo"}}), cfg.trainer).update(batch)
    assert math.isfinite(metrics["loss/total"]) and math.isfinite(metrics["policy/grad_norm"])
    assert all(math.isfinite(p.detach().abs().sum().item()) for p in model.parameters())


def test_a_worker_that_cannot_start_fails_fast_with_its_error(ray_cluster, tiny_model_dir, guess_env_file):
    """A broken ``run.imports`` entry surfaces as the workers' own error, not a hang."""
    from agentrl.distributed.ray_backend import RayRollout
    from agentrl.learner.policy import load_model, load_tokenizer

    path = str(tiny_model_dir("chatml"))
    cfg = from_dict(TrainConfig, {
        "run": {"backend": "ray", "imports": [guess_env_file, "/nonexistent/agentrl_test_envs.py"]},
        "model": {"path": path}, "env": {"id": "agentrl/GuessNumber-v0", "num_envs": 1},
        "ray": {"env_workers": 1, "cpus_per_generation_worker": 0.5, "startup_timeout_s": 120},
    })
    with pytest.raises(Exception, match="could not import '/nonexistent/agentrl_test_envs.py'"):
        RayRollout(cfg, load_model(path), load_tokenizer(path))
