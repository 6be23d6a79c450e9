"""Experiment configs: loading, overrides, and clear errors before any work starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentrl.config import ConfigError, TrainConfig, apply_overrides, from_dict, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]

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
        # an override's typo names the override and the full corrected key
        ("trainer.totl_steps=3", "override 'trainer.totl_steps=3': unknown config key 'trainer.totl_steps'. Did you mean 'trainer.total_steps'?"),
        ("rolout.group_size=3", "override 'rolout.group_size=3': unknown config key 'rolout.group_size'. Did you mean 'rollout'?"),
        ("model.init.initialiser_range=0.1", "Did you mean 'model.init.initializer_range'? Valid keys of model.init: arch,"),
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


def test_a_typo_in_the_file_names_the_file(tmp_path):
    path = write(tmp_path, BASE + "\nlogging: {progres: false}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: unknown config key 'logging.progres'. Did you mean 'progress'?")):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: [unclosed"))


def test_from_dict_nested_types():
    cfg = from_dict(TrainConfig, {"trainer": {"betas": [0.9, 0.95]}, "model": {"path": "p", "init": None}})
    assert cfg.trainer.betas == (0.9, 0.95) and cfg.model.init is None
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}


def test_base_chain_merges_recursively_but_replaces_algorithm(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, BASE)  # c.yaml
    (tmp_path / "sub" / "m.yaml").write_text(
        "base: ../c.yaml\n"
        "trainer: {lr: 0.5}\n"
        "env: {kwargs: {extra: 1}}\n"
        "algorithm: {estimator: {name: rloo}}\n"
    )
    parent = load_config(tmp_path / "c.yaml")
    child = load_config(tmp_path / "sub" / "m.yaml", overrides=["trainer.total_steps=7"])
    assert child.trainer.lr == 0.5 and child.trainer.total_steps == 7
    assert child.trainer.micro_batch_size == parent.trainer.micro_batch_size  # kept from the base
    assert child.env.kwargs == {**parent.env.kwargs, "extra": 1}  # merged one level further down
    assert child.algorithm == {"estimator": {"name": "rloo"}}  # replaced whole, nothing of the base's left


def test_base_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="form a cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml' does not exist"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [x]\n")
    with pytest.raises(ConfigError, match="base must be the path of another config file"):
        load_config(tmp_path / "d.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "methods").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_method_config_is_a_complete_experiment(path):
    """`agentrl train configs/methods/<m>.yaml` works as the README says: the quickstart's
    model/env/rollout/SFT/trainer with the method's own algorithm section only."""
    import yaml

    cfg = load_config(path)
    quick = load_config(ROOT / "configs" / "quickstart.yaml")
    assert cfg.run.name == path.stem and cfg.run.output_dir == f"runs/{path.stem}"
    assert cfg.env == quick.env and cfg.model == quick.model and cfg.sft == quick.sft
    assert cfg.algorithm == yaml.safe_load(path.read_text())["algorithm"]


def test_env_option_typos_fail_in_check_config_with_a_suggestion(tmp_path, capsys):
    """env.kwargs / env.eval_kwargs are checked against the env constructor's signature (its
    **kwargs followed into ToolEnv) before any work, as one `error:` line from `agentrl train`."""
    from agentrl.cli import main
    from agentrl.train import check_config

    text = BASE.replace("agentrl/GuessNumber-v0", "agentrl/ShellQuest-v0").replace("{high: 16}", "{horizon: 5}")
    path = write(tmp_path, text)
    check_config(load_config(path))  # valid names pass
    with pytest.raises(ConfigError, match=re.escape("env.kwargs: unknown option 'horizn' for agentrl/ShellQuest-v0. Did you mean 'horizon'?")):
        check_config(load_config(path, overrides=["env.kwargs.horizn=5"]))
    with pytest.raises(ConfigError, match=re.escape("env.eval_kwargs: unknown option 'max_turn' for agentrl/ShellQuest-v0. Did you mean 'max_turns'?")):
        check_config(load_config(path, overrides=["env.eval_kwargs={max_turn: 5}"]))
    assert main(["train", str(path), "env.kwargs.horizn=5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean 'horizon'?" in err and "Traceback" not in err


@pytest.mark.parametrize("model_path", ["runs/nope/model", "./nope", "out/checkpoints/step_000001/model"])
def test_missing_local_model_path_fails_in_check_config(tmp_path, model_path):
    """The same rule as `agentrl eval --policy` (agentrl.config.looks_like_local_path)."""
    from agentrl.train import check_config

    path = write(tmp_path, BASE.replace("agentrl/GuessNumber-v0", "agentrl/ShellQuest-v0").replace("{high: 16}", "{}"))
    with pytest.raises(ConfigError, match=re.escape(f"model.path {model_path!r} does not exist")):
        check_config(load_config(path, overrides=[f"model.path={model_path}", "model.init=null"]))


def test_train_cli_usage_missing_file_and_bad_override_value(tmp_path, capsys, monkeypatch):
    from agentrl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train"])
    assert exit_.value.code == 2
    assert "the following arguments are required: config\n" in capsys.readouterr().err  # overrides are optional
    monkeypatch.chdir(ROOT)
    assert main(["train", "configs/methods/cipso.yaml"]) == 2
    assert "does not exist. Did you mean configs/methods/cispo.yaml?" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=re.escape("override 'env.kwargs={high: 16': the value '{high: 16' is not valid YAML")):
        load_config(write(tmp_path, BASE), overrides=["env.kwargs={high: 16"])
