"""Failure containment on the Ray backend: every injection point and kind at once
(tests/train/test_faults.py's ALL_AT_ONCE), sync and async. The faults strike inside the
EnvWorkers' agent loops; the run finishes its train_steps, counts the failures by kind, trains
nothing on the failed episodes and records the env closes that failed in the workers."""

from __future__ import annotations

import pytest

from tests.distributed.test_ray_train import RAY
from tests.train.test_faults import ALL_AT_ONCE, ALL_TIMEOUTS, MODES, check_all_at_once, fault_env_file, make_cfg, recorded_batches  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("mode", list(MODES))
def test_all_faults_at_once_on_ray(tmp_path, ray_cluster, tiny_model_dir, fault_env_file, recorded_batches, mode):  # noqa: F811
    from agentrl.train import train

    summary = train(make_cfg(tmp_path, tiny_model_dir("chatml"), fault_env_file, ALL_AT_ONCE, [*RAY, *MODES[mode], *ALL_TIMEOUTS]))
    check_all_at_once(tmp_path, summary, recorded_batches)
