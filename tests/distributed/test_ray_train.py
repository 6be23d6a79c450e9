"""``run.backend: ray`` trains the smoke config of tests/train end to end on a local Ray cluster,
and gives the same numbers as the local backend for the same seed.

Why equal is achievable: every episode's sampling seed is a function of (run seed, task,
sample index, turn), not of which process or batch runs it; the GenerationWorker loads the
same weights the local engine shares; the learner rank runs the same Learner on the same
batch. What could still differ is float summation order (batch composition in the engine,
thread counts in the learner): the rollout statistics are compared exactly, learner
numbers within 1e-5 relative. The engine's prefill/cached split is batch composition too (a
prompt that arrives in the same engine step as an equal one is prefilled once and counted as
cached), so those two are compared through their sum, the prompt tokens the episodes sent.
"""

from __future__ import annotations

import math

import pytest

from agentrl.metrics import read_metrics
from tests.train.test_train_smoke import make_cfg, merge_prefill_split

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RAY = ["run.backend=ray", "ray.env_workers=2", "ray.generation_workers=1", "ray.learner_ranks=1",
       "ray.cpus_per_generation_worker=0.5", "ray.cpus_per_learner_rank=0.5", "ray.startup_timeout_s=480"]
NOT_COMPARED = ("time/", "throughput/", "sandbox/")  # sandbox/*: counters of the process's shared sandbox (other runs in it included)
RAY_ONLY = ("rollout/env_worker_restarts", "rollout/generation_worker_restarts", "rollout/episodes_lost_to_dead_env_workers")


def _comparable(row: dict) -> dict:
    return merge_prefill_split({k: v for k, v in row.items() if not k.startswith(NOT_COMPARED) and not k.endswith("time_s") and k not in RAY_ONLY})


@pytest.mark.parametrize("context", [[], ["rollout.context={policy: window, window: 2}"]], ids=["full", "turn_samples"])
def test_ray_backend_trains_like_local(tmp_path, ray_cluster, guess_env_file, context):
    """Also with a turn-level context policy (issue 16): turn samples travel from the env
    workers and train on the learner rank as they do locally."""
    from agentrl.train import train

    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    imports = f"run.imports=[{guess_env_file}]"
    RAY_RUN = [*RAY, *context]
    local = train(make_cfg(tmp_path / "local", [imports, *context]))
    summary = train(make_cfg(tmp_path / "ray", [imports, *RAY_RUN, f"model.path={tmp_path / 'local' / 'model'}"]))  # the same tiny model

    # the checks of tests/train/test_train_smoke.py, on the ray run
    assert summary["train_steps"] == 2
    run = tmp_path / "ray" / "run"
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["train_step"] for r in rows if "rollout/reward_mean" in r] == [1, 2]
    last = next(r for r in rows if r["train_step"] == 2 and "loss/total" in r)
    for key in ("loss/policy", "policy/ratio_mean", "rollout/success", "rollout/turns_mean", "time/step_s", "entropy/step/0", *RAY_ONLY):
        assert key in last, key
    assert abs(last["policy/ratio_mean"] - 1.0) < 1e-4
    if context:  # one sample per turn of every episode
        assert last["rollout/samples"] == last["rollout/turns_mean"] * last["rollout/episodes"]
    assert last["rollout/failed_frac"] == 0.0 and last["rollout/env_worker_restarts"] == 0.0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    assert (run / "summary.json").exists() and (run / "training.png").exists()

    # same numbers as the local backend
    local_rows = read_metrics(tmp_path / "local" / "run" / "metrics.jsonl")
    assert len(local_rows) == len(rows)
    for a, b in zip(local_rows, rows):
        a, b = _comparable(a), _comparable(b)
        assert a.keys() == b.keys()
        for k in a:
            if k.startswith(("rollout/", "eval/", "env/")):
                assert a[k] == b[k], (a["train_step"], k, a[k], b[k])
            else:
                assert math.isclose(a[k], b[k], rel_tol=1e-5, abs_tol=1e-6), (a["train_step"], k, a[k], b[k])
    assert _comparable(summary["after_rl"]) == _comparable(local["after_rl"])

    # resume under ray from the step-1 checkpoint: step 2 is redone with the same numbers
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_000002")
    train(make_cfg(tmp_path / "ray", [imports, *RAY_RUN, f"model.path={tmp_path / 'local' / 'model'}"]))
    again = read_metrics(run / "metrics.jsonl")
    assert [r["train_step"] for r in again if "rollout/reward_mean" in r] == [1, 2]
    redone = _comparable(next(r for r in again if r["train_step"] == 2 and "loss/total" in r))
    first = _comparable(last)
    assert redone.keys() == first.keys()
    for k in first:
        assert math.isclose(first[k], redone[k], rel_tol=1e-5, abs_tol=1e-6), (k, first[k], redone[k])
