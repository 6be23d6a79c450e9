"""Experiment configs: loading, overrides, and clear errors before any work starts."""

from __future__ import annotations

import re

import pytest

from agentrl.config import ConfigError, TrainConfig, apply_overrides, from_dict, load_config, to_dict

BASE = """
run: {name: t, output_dir: OUT, seed: 3}
model: {path: runs/x/model, init: {arch: qwen2, hidden_size: 64}}
env: {id: agentrl/GuessNumber-v0, kwargs: {high: 16}, num_envs: 4}
rollout: {group_size: 4, tasks_per_step: 2, max_new_tokens: 32}
trainer: {total_steps: 3, lr: 1e-4, mini_batches: 2, micro_batch_size: 2}
algorithm: {estimator: grpo}
"""


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_load_and_override(tmp_path):
    cfg = load_config(write(tmp_path, BASE), overrides=["trainer.total_steps=7", "env.kwargs.high=32", "rollout.temperature=0.5"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.trainer.total_steps == 7 and cfg.trainer.lr == 1e-4  # "1e-4" is a YAML string; coerced
    assert cfg.env.kwargs == {"high": 32} and cfg.rollout.temperature == 0.5
    assert cfg.model.init.hidden_size == 64 and cfg.model.init.num_layers == 4
    assert to_dict(cfg)["run"]["seed"] == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.totl_steps=3", "unknown config key 'trainer.totl_steps'. Did you mean 'total_steps'?"),
        ("rolout.group_size=3", "unknown config key 'rolout'. Did you mean 'rollout'?"),
        ("trainer.total_steps=many", "trainer.total_steps: expected an integer, got str 'many'"),
        ("trainer.mini_batches=3", "does not divide into trainer.mini_batches=3"),
        ("run.backend=slurm", "run.backend must be 'local' or 'ray'"),
        ("model.path=", "model.path is empty"),
        ("trainer", "must look like section.key=value"),
    ],
)
def test_bad_configs_fail_early_with_a_fix(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, BASE), overrides=[override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: [unclosed"))


def test_from_dict_nested_types():
    cfg = from_dict(TrainConfig, {"trainer": {"betas": [0.9, 0.95]}, "model": {"path": "p", "init": None}})
    assert cfg.trainer.betas == (0.9, 0.95) and cfg.model.init is None
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}
