"""EnvLoops (agentrl/rollout/local.py): the env instances and episode running shared by
LocalRollout and the Ray EnvWorker: the training loop, the evaluation loop built once on first
use with ``env.eval_kwargs``, both with the given ``num_envs``; sandbox metrics; close failures
summed over both loops."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from agentrl.config import TrainConfig
from agentrl.rollout.agent_loop import EpisodeSpec
from agentrl.rollout.engines import HFEngine
from agentrl.rollout.local import EnvLoops

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def loops(tiny_model_dir, guess_env_id):
    from agentrl.learner.policy import load_model, load_tokenizer
    from agentrl.models.chat import ChatFormat

    path = tiny_model_dir("chatml")
    tok, model = load_tokenizer(str(path)), load_model(str(path))
    cfg = TrainConfig()
    cfg.env.id, cfg.env.num_envs = guess_env_id, 4
    cfg.env.kwargs, cfg.env.eval_kwargs = {"high": 8, "num_tasks": 5}, {"high": 8, "num_tasks": 3}
    cfg.rollout.max_new_tokens, cfg.rollout.max_total_tokens = 8, 256
    engine = HFEngine(model, pad_token_id=tok.pad_token_id, max_batch_size=4)
    out = EnvLoops(cfg, engine, ChatFormat(tok), num_envs=2)
    yield out
    out.close()
    engine.close()


def test_train_and_eval_loops(loops):
    assert len(loops.train.envs) == 2 and loops.loop() is loops.train
    assert loops.num_tasks("train") == 5
    specs = [EpisodeSpec({"task_index": i, "split": "train"}, seed=i) for i in range(3)]  # more than the 2 instances
    trajs = asyncio.run(loops.collect(specs))
    assert [t.task_id for t in trajs] == ["guess/train/0", "guess/train/1", "guess/train/2"]
    assert loops._eval is None  # built only when evaluation is asked for

    traj = asyncio.run(loops.play(EpisodeSpec({"task_index": 1, "split": "test"}, seed=0), evaluation=True))
    ev = loops.loop(evaluation=True)
    assert traj.task_id == "guess/test/1" and not traj.failed, traj.failure_reason
    assert ev is loops.loop(True) and ev is not loops.train  # one evaluation loop, kept
    assert len(ev.envs) == 2 and ev.envs[0].unwrapped.num_tasks("test") == 3  # num_envs and eval_kwargs


def test_sandbox_metrics_and_close_failures_of_both_loops(loops, monkeypatch):
    env = loops.train.envs[0].unwrapped
    assert loops.sandbox_metrics() == {"rollout/env_instances_replaced": 0.0, **env.sandbox.metrics()}
    loops.train.replaced_envs = 2
    fake = SimpleNamespace(metrics=lambda: {"sandbox/calls": 7.0})
    monkeypatch.setattr(type(env), "sandbox", property(lambda self: fake))
    assert loops.sandbox_metrics() == {"rollout/env_instances_replaced": 2.0, "sandbox/calls": 7.0}

    def no_metrics():
        raise AttributeError("no sandbox here")

    fake.metrics = no_metrics  # a sandbox that cannot report: left out
    assert loops.sandbox_metrics() == {"rollout/env_instances_replaced": 2.0}

    def broken_close():
        raise OSError("close failed")

    for loop in (loops.train, loops.loop(evaluation=True)):
        loop.envs[1].close = broken_close
    assert loops.close() == {"error": 2}
    assert loops.close() == {"error": 2}  # idempotent
