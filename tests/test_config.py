"""Experiment configs: loading, overrides, and clear errors before any work starts."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

import pytest

from agentrl.config import (CHOICES, FAULT_KINDS, RANGES, ConfigError, FaultConfig, ModelConfig, ModelInitConfig, TrainConfig,
                            apply_overrides, field_problems, from_dict, load_config, read_config_data, to_dict)

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


def test_overrides_reach_list_items_by_index(tmp_path):
    path = write(tmp_path, BASE)
    shaped = ["algorithm={estimator: grpo, loss: ppo, shaping: [{name: empg, k: 1.0}, {name: entropy_advantage}]}"]
    cfg = load_config(path, overrides=[*shaped, "algorithm.shaping.1.alpha=0.25", "algorithm.shaping.0.k=2"])
    assert [s.options for s in cfg.algorithm.shaping] == [{"k": 2}, {"alpha": 0.25}]
    with pytest.raises(ConfigError, match=re.escape("algorithm.shaping is a list of 2 item(s), so '2' must be an index 0..1")):
        load_config(path, overrides=[*shaped, "algorithm.shaping.2.k=0.5"])
    with pytest.raises(ConfigError, match=re.escape("algorithm.shaping[0]: unknown option 'kk' for shaping 'empg'. Did you mean 'k'?")):
        load_config(path, overrides=[*shaped, "algorithm.shaping.0.kk=1"])


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
        # out-of-range values, one line naming the key, the value and the range
        ("trainer.lr=-1e-4", "trainer.lr must be > 0, got -0.0001"),
        ("trainer.mini_batches=0", "trainer.mini_batches must be >= 1, got 0"),  # was a ZeroDivisionError
        ("trainer.betas=[0.9, 1.0]", "trainer.betas[1] must be in [0, 1), got 1.0"),
        ("trainer.lr_schedule=cosin", "trainer.lr_schedule must be 'constant' or 'cosine', got 'cosin'"),
        ("rollout.top_p=0", "rollout.top_p must be in (0, 1], got 0.0"),
        ("rollout.temperature=.nan", "rollout.temperature must be a finite number > 0, got nan"),
        ("env.step_timeout_s=0", "env.step_timeout_s must be > 0 or null, got 0.0"),
        ("ray.num_cpus=0", "ray.num_cpus must be >= 1 or null, got 0"),
        ("rollout.faults=[{point: step, rate: 1.5}]", "rollout.faults[0].rate must be in [0, 1], got 1.5"),
        ("rollout.faults=[{point: close, kind: garbage}]", "rollout.faults[0]: kind 'garbage' cannot be injected at point 'close'"),
        ("model.init.num_heads=3", "model.init.hidden_size (64) must divide by model.init.num_heads (3)"),
        ("model.init.vocab_size=263", "model.init.vocab_size must be >= 264 with template 'chatml'"),
        ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints must be >= 1, got 0 (the newest checkpoint is always kept)"),
        # the algorithm section is checked by load_config too
        ("algorithm.loss={name: ppo, eps_high: -1}", "algorithm.loss.eps_high must be >= 0, got -1.0"),
        ("algorithm.loss={name: ppo, clip_ratio_c: 0.5}", "algorithm.loss.clip_ratio_c must be > 1 or null, got 0.5"),
        ("algorithm.kl={coef: -0.1}", "algorithm.kl.coef must be >= 0, got -0.1"),
        ("algorithm.loss={name: ppx}", "algorithm.loss: unknown loss 'ppx'. Did you mean 'ppo'?"),
        ("algorithm.aggregation={name: seq-mean}", "unknown aggregation 'seq-mean'. Did you mean one of 'seq-mean-token-sum', 'seq-mean-token-mean', 'seq-mean-token-sum-norm'?"),
        ("run.name.x=1", "override 'run.name.x=1': run.name is a value ('"),
        ("algorithm.controllers=[{name: bapo, ratio_upper_start: 0.28}]", "algorithm.controllers[0] (bapo): bapo bounds are absolute ratios"),
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
    from agentrl.algorithms.config import AlgorithmConfig

    assert child.algorithm == AlgorithmConfig.from_dict({"estimator": {"name": "rloo"}})  # replaced whole, nothing of the base's left


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
    from agentrl.algorithms.config import AlgorithmConfig

    assert cfg.algorithm == AlgorithmConfig.from_dict(yaml.safe_load(path.read_text())["algorithm"])


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


# ----------------------------------------------------------------------------- value ranges
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _unwrap_optional(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def _leaves(cls=TrainConfig, prefix=""):
    """(dotted key, owning config class, field name, annotation) of every leaf setting of
    ``cls``, walking into sections, optional sections (model.init) and lists of sections
    (rollout.faults[], a list element written ``[]``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], prefix + f.name
        inner = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner):
            yield from _leaves(inner, key + ".")
        elif typing.get_origin(inner) is list and dataclasses.is_dataclass(typing.get_args(inner)[0]):
            yield from _leaves(typing.get_args(inner)[0], key + "[].")
        else:
            yield key, cls, f.name, tp


LEAVES = list(_leaves())


def _numeric(tp) -> bool:
    tp = _unwrap_optional(tp)
    if typing.get_origin(tp) is tuple:
        return all(a in (int, float) for a in typing.get_args(tp))
    return tp in (int, float)


def _wrong_type(tp):
    """A YAML value of the wrong type for annotation ``tp``."""
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        return "maybe"
    if tp in (int, float) or origin is tuple:
        return "many"
    if tp is str:
        return [1, 2]
    return 5  # dicts, lists, Any-valued mappings


def _outside(spec: str, integer: bool):
    """A value just outside range ``spec``, or None for "any"."""
    rule = spec.split(";")[0].strip()
    if rule == "any":
        return None
    if rule[0] in "[(":
        lo = float(rule[1:-1].split(",")[0])
        value = lo - 1 if rule[0] == "[" else lo
    else:
        op, bound = rule.split()
        b = float(bound)
        value = {">=": b - 1, ">": b, "<=": b + 1, "<": b}[op]
    return int(value) if integer else value


def _override(key: str, value) -> str:
    """``key=value`` with ``value`` as YAML (JSON is YAML); a list element's field becomes the
    whole list of one element (``rollout.faults=[{"rate": 2}]``)."""
    if "[]." in key:
        head, tail = key.split("[].", 1)
        return f"{head}={json.dumps([{tail: value}])}"
    return f"{key}={json.dumps(value)}"


def _fails_with_one_line_naming(key: str, override: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, overrides=[override])
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert msg.startswith(f"{QUICKSTART}: ") and key.replace("[]", "[0]") in msg, (override, msg)
    return msg


def test_every_numeric_field_has_a_range_and_every_string_choice_matches_the_code():
    from agentrl.models.chat import TEMPLATE_NAMES
    from agentrl.models.tiny import ARCHS

    classes = {cls for _, cls, _, _ in LEAVES}
    missing = [key for key, cls, name, tp in LEAVES if _numeric(tp) and name not in RANGES.get(cls, {})]
    assert not missing, f"give these numeric settings a range in agentrl.config.RANGES: {missing}"
    stale = [f"{c.__name__}.{n}" for c, fields in {**RANGES, **CHOICES}.items() for n in fields
             if c not in classes or n not in {f.name for f in dataclasses.fields(c)}]
    assert not stale, stale
    assert CHOICES[ModelInitConfig]["template"] == CHOICES[ModelConfig]["chat_template"] == TEMPLATE_NAMES
    assert CHOICES[ModelInitConfig]["arch"] == ARCHS
    assert set(CHOICES[FaultConfig]["kind"]) == {k for kinds in FAULT_KINDS.values() for k in kinds}
    # the defaults are valid values
    assert field_problems(TrainConfig()) is None


@pytest.mark.parametrize("key, cls, name, tp", LEAVES, ids=[leaf[0] for leaf in LEAVES])
def test_every_setting_rejects_a_wrong_type_and_an_out_of_range_value_in_one_line(key, cls, name, tp):
    """The sweep: for every leaf key of TrainConfig, a value of the wrong type, one outside the
    key's range (RANGES) and one outside its choices (CHOICES) each fail in load_config on the
    quickstart, before any work, with a ConfigError of one line that names the key."""
    _fails_with_one_line_naming(key, _override(key, _wrong_type(tp)))
    spec = RANGES.get(cls, {}).get(name)
    if spec is not None and (bad := _outside(spec, _unwrap_optional(tp) is int)) is not None:
        value = [0.9, bad] if typing.get_origin(tp) is tuple else bad
        msg = _fails_with_one_line_naming(key, _override(key, value))
        assert "must be" in msg and f"got {bad!r}" in msg.replace(f"got {float(bad)!r}", f"got {bad!r}"), msg
    if name in CHOICES.get(cls, {}):
        msg = _fails_with_one_line_naming(key, _override(key, "bogus"))
        assert "got 'bogus'" in msg, msg


def test_the_sweep_covers_every_leaf():
    import agentrl.config as config

    sections = {v for v in vars(config).values() if isinstance(v, type) and dataclasses.is_dataclass(v)} - {TrainConfig}
    assert {cls for _, cls, _, _ in LEAVES} == sections | {TrainConfig}  # every config class is walked into (algorithm: a leaf of TrainConfig)
    assert {"trainer.lr", "rollout.faults[].rate", "model.init.vocab_size", "env.step_timeout_s", "sft.max_failed_frac",
            "rollout.generate_timeout_s", "ray.episode_timeout_s", "trainer.betas"} <= {key for key, *_ in LEAVES}


def _algorithm_slots():
    """(override prefix, key in messages, registry, entry) for every registered component: each
    in the slot of the algorithm section that takes its kind."""
    from agentrl.algorithms.registry import REGISTRIES

    slots = {"estimators": "estimator", "losses": "loss", "aggregations": "aggregation", "token_masks": "token_mask",
             "shaping": "shaping", "controllers": "controllers", "kl": "kl"}
    for kind, registry in REGISTRIES.items():
        for entry in registry:
            yield slots[kind], entry


def _algorithm_override(slot: str, name: str, option: str, value) -> tuple[str, str]:
    spec = {"name": name, option: value}
    if slot == "kl":
        return f"algorithm.kl={json.dumps({'estimator': name, 'options': {option: value}})}", f"algorithm.kl.options.{option}"
    if slot in ("shaping", "controllers"):
        return f"algorithm.{slot}={json.dumps([spec])}", f"algorithm.{slot}[0].{option}"
    return f"algorithm.{slot}={json.dumps(spec)}", f"algorithm.{slot}.{option}"


ALGORITHM_OPTIONS = [(slot, e.name, opt) for slot, e in _algorithm_slots() for opt in e.options()]


def test_every_numeric_method_option_has_a_range_its_default_satisfies():
    from agentrl.algorithms.config import SECTION_RANGES
    from agentrl.algorithms.registry import OPTION_RANGES, REGISTRIES, range_problem

    missing, bad_default = [], []
    for _, entry in _algorithm_slots():
        ranges, defaults = entry.ranges(), entry.options()
        for opt, default in defaults.items():
            numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
            if (numeric or default is None) and opt not in ranges:
                missing.append(f"{entry.kind} {entry.name}: {opt}")
            if numeric and opt in ranges and range_problem(default, ranges[opt], opt):
                bad_default.append(f"{entry.kind} {entry.name}: {opt}={default} outside {ranges[opt]}")
    assert not missing, f"declare a range (OPTION_RANGES in agentrl/algorithms/registry.py) for {missing}"
    assert not bad_default, bad_default
    known = {(r.kind, e.name): e.options() for r in REGISTRIES.values() for e in r}
    stale = [(k, o) for k, opts in OPTION_RANGES.items() for o in opts if k not in known or o not in known[k]]
    assert not stale, stale
    for cls, fields in SECTION_RANGES.items():
        for name, spec in fields.items():
            default = getattr(cls(), name)
            assert default is None or range_problem(default, spec, name) is None, (cls, name)


@pytest.mark.parametrize("slot, name, option", ALGORITHM_OPTIONS, ids=[f"{s}:{n}.{o}" for s, n, o in ALGORITHM_OPTIONS])
def test_every_method_option_rejects_a_wrong_type_and_an_out_of_range_value_at_load(slot, name, option):
    """algorithm.loss.eps_high=-1 and friends fail in load_config (not after SFT, when the
    method first runs), one line naming the key, what it takes and what it got."""
    entry = next(e for s, e in _algorithm_slots() if s == slot and e.name == name)
    override, key = _algorithm_override(slot, name, option, [1])
    msg = _fails_with_one_line_naming(key, override)
    assert "expected" in msg and msg.endswith("got list [1]"), msg
    spec = entry.ranges().get(option)
    bad = None if spec is None else _outside(spec, type(entry.options()[option]) is int)
    if bad is not None:
        override, key = _algorithm_override(slot, name, option, bad)
        msg = _fails_with_one_line_naming(key, override)
        assert re.search(rf"must be .+, got {re.escape(str(bad))}", msg), msg


@pytest.mark.parametrize("override, key", [
    ("algorithm.credit={gamma: 1.5}", "algorithm.credit.gamma"),
    ("algorithm.kl={coef: -1}", "algorithm.kl.coef"),
    ("algorithm.dynamic_sampling={max_num_gen_batches: -1}", "algorithm.dynamic_sampling.max_num_gen_batches"),
    ("algorithm.overlong={penalty_factor: -1}", "algorithm.overlong.penalty_factor"),
    ("algorithm.overlong={max_response_tokens: 0}", "algorithm.overlong.max_response_tokens"),
    ("algorithm.off_policy={behavior_is_cap: 0}", "algorithm.off_policy.behavior_is_cap"),
    ("algorithm.entropy_coef=-0.01", "algorithm.entropy_coef"),
    ("algorithm.seed=-1", "algorithm.seed"),
    ("algorithm.overlong={enabled: maybe}", "algorithm.overlong.enabled"),
    ("algorithm.off_policy={proximal: [1]}", "algorithm.off_policy.proximal"),
    ("algorithm.kl={options: 5}", "algorithm.kl.options"),  # was "algorithm: 'int' object is not iterable"
    ("algorithm.shaping=[5]", "algorithm.shaping[0]"),
    # BAPO builds its search grid as a list: 0.8 / 1e-9 bounds ran out of memory
    ("algorithm.controllers=[{name: bapo, ratio_upper_step: 1.0e-9}]", "algorithm.controllers[0] (bapo): ratio_upper_max"),
])
def test_algorithm_sections_reject_bad_values_at_load(override, key):
    _fails_with_one_line_naming(key, override)


def test_group_size_one_is_refused_only_for_estimators_with_a_group_baseline():
    from agentrl.algorithms.registry import ESTIMATORS

    needs = {e.name for e in ESTIMATORS if e.extra.get("needs_group")}
    assert needs == {"grpo", "rloo", "gigpo"}  # read from agentrl/algorithms/estimators.py
    for entry in ESTIMATORS:
        overrides = ["rollout.group_size=1", "trainer.micro_batch_size=8", f"algorithm.estimator={entry.name}"]
        if entry.name in needs:
            with pytest.raises(ConfigError, match=re.escape(f"rollout.group_size=1: estimator {entry.name!r} takes its baseline from")) as err:
                load_config(QUICKSTART, overrides=overrides)
            assert "\n" not in str(err.value) and "reinforce_pp" in str(err.value)  # names the estimators that work
        else:
            assert load_config(QUICKSTART, overrides=overrides).rollout.group_size == 1
    with pytest.raises(ConfigError, match="algorithm.dynamic_sampling keeps only groups whose rewards differ"):
        load_config(QUICKSTART, overrides=["rollout.group_size=1", "algorithm={estimator: reinforce_pp, dynamic_sampling: {enabled: true}}"])


def test_train_cli_bad_lr_is_one_error_line_in_seconds_without_a_run_folder(tmp_path):
    """`agentrl train configs/quickstart.yaml trainer.lr=-1e-4` as a new user typed it: it used to
    start SFT and fail 13 s later in a 34-line torch traceback. Now exit 2 with one line, before
    torch is even imported, and nothing written."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quickstart.yaml").write_text(QUICKSTART.read_text())
    code = ("import sys; from agentrl.cli import main; rc = main(sys.argv[1:]); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)")
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code, "train", "configs/quickstart.yaml", "trainer.lr=-1e-4"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    assert run.returncode == 2, run.stderr
    assert run.stderr == "error: configs/quickstart.yaml: trainer.lr must be > 0, got -0.0001\n"
    assert run.stdout.strip() == "no torch"
    assert not (tmp_path / "runs").exists()
    assert wall < 15, f"{wall:.1f} s (about 1 s on an idle machine)"


def test_a_component_registered_by_run_imports_is_known_and_range_checked_at_load(tmp_path):
    """load_config builds the algorithm section after importing run.imports (which may
    register components), and a component's own ranges= apply."""
    from agentrl.algorithms.registry import LOSSES

    plugin = tmp_path / "capped_loss_plugin.py"
    plugin.write_text(
        "from agentrl.algorithms.registry import LOSSES\n"
        "@LOSSES.register('capped_plugin', summary='test plugin', paper='none', inputs=('logprobs',), ranges={'cap': '> 0'})\n"
        "def capped_plugin(*, logprobs, cap: float = 2.0):\n"
        "    return logprobs.sum() * 0, {}\n")
    try:
        ok = load_config(QUICKSTART, overrides=[f"run.imports=[{plugin}]", "algorithm.loss={name: capped_plugin, cap: 1.5}"])
        assert ok.algorithm.loss.to_dict() == {"name": "capped_plugin", "cap": 1.5}
        _fails_with_one_line_naming("algorithm.loss.cap", "algorithm.loss={name: capped_plugin, cap: -1}")
    finally:
        LOSSES.unregister("capped_plugin")
        sys.modules.pop("agentrl_user.capped_loss_plugin", None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rollout.temperature=0.005"],
         "rollout.temperature=0.005 with rollout.engine vllm: vLLM samples any temperature in (0, 0.01) at 0.01 while the "
         "learner recomputes logprobs at 0.005, so the ratios would be off; use rollout.temperature >= 0.01"),
        (["rollout.eval_temperature=0.001"],
         "rollout.eval_temperature=0.001 with rollout.engine vllm: vLLM samples any temperature in (0, 0.01) at 0.01, so "
         "the evaluation would not run at the setting it reports; use rollout.eval_temperature >= 0.01"),
        (["rollout.max_total_tokens=4096", "rollout.vllm={max_model_len: 2048}"],
         "rollout.max_total_tokens=4096 is more than rollout.vllm.max_model_len=2048: vLLM refuses prompts longer than "
         "max_model_len, so long episodes would fail; lower rollout.max_total_tokens or raise rollout.vllm.max_model_len to at least 4096"),
    ],
)
def test_vllm_settings_that_would_skew_logprobs_or_fail_episodes_are_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_config(write(tmp_path, BASE), overrides=["rollout.engine=vllm", *overrides])
    assert "\n" not in str(err.value)
    # the same values pass with the HF engine (it samples at any temperature > 0 and has no max_model_len)
    load_config(write(tmp_path, BASE), overrides=overrides)
    # and the vllm engine accepts temperature 0.01 and a max_model_len that holds the episode
    load_config(write(tmp_path, BASE), overrides=["rollout.engine=vllm", "rollout.temperature=0.01", "rollout.max_total_tokens=2048",
                                                  "rollout.vllm={max_model_len: 2048}"])


def test_the_vllm_engine_defaults_its_dtype_to_the_learners(monkeypatch):
    import agentrl.rollout.vllm_engine as vllm_engine
    from agentrl.rollout.local import make_engine

    seen = []
    monkeypatch.setattr(vllm_engine, "VLLMEngine", lambda path, **kw: seen.append(kw))
    cfg = TrainConfig()
    cfg.rollout.engine, cfg.model.dtype = "vllm", "bfloat16"
    make_engine(cfg, None, None)
    cfg.rollout.vllm = {"dtype": "float16", "max_model_len": 512}  # an explicit setting wins
    make_engine(cfg, None, None)
    assert [kw.get("dtype") for kw in seen] == ["bfloat16", "float16"] and seen[1]["max_model_len"] == 512


@pytest.mark.parametrize("gpus, ranks, ok", [(0.5, 2, False), (0.25, 4, False), (0.5, 1, True), (1.0, 2, True), (0.0, 2, True)])
def test_fractional_gpus_with_several_learner_ranks_are_refused(tmp_path, gpus, ranks, ok):
    """Two FSDP ranks that Ray places on one GPU (fractional ``gpus_per_learner_rank``) both pick
    that device and NCCL fails; one rank may share a GPU with the engine."""
    overrides = ["run.backend=ray", f"ray.learner_ranks={ranks}", f"ray.gpus_per_learner_rank={gpus}"]
    if ok:
        assert load_config(write(tmp_path, BASE), overrides=overrides).ray.gpus_per_learner_rank == gpus
        return
    message = (f"ray.gpus_per_learner_rank={gpus:g} with ray.learner_ranks={ranks}: fractional GPUs let Ray put two learner ranks "
               "on one GPU, where NCCL fails (both ranks pick the same device); set ray.gpus_per_learner_rank: 1 (one GPU per rank) "
               "or ray.learner_ranks: 1")
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_config(write(tmp_path, BASE), overrides=overrides)
    assert "\n" not in str(err.value)


def test_a_config_for_another_env_extends_a_base_without_its_env_options(tmp_path):
    """Switching env.id (in a file over its base, or by an override) starts env.kwargs and
    env.eval_kwargs afresh; the generic env keys and every other section are inherited."""
    (tmp_path / "base.yaml").write_text("env: {id: agentrl/ShellQuest-v0, kwargs: {vocab: small, horizon: 4}, "
                                        "eval_kwargs: {horizon: 8}, num_envs: 6}\ntrainer: {lr: 0.002}\n")
    (tmp_path / "mine.yaml").write_text("base: base.yaml\nenv: {id: agentrl/GuessNumber-v0, kwargs: {high: 8}}\n")
    data = read_config_data(tmp_path / "mine.yaml")
    assert data["env"] == {"id": "agentrl/GuessNumber-v0", "kwargs": {"high": 8}, "num_envs": 6}
    assert data["trainer"] == {"lr": 0.002}
    # the same env id merges as before
    (tmp_path / "same.yaml").write_text("base: base.yaml\nenv: {id: agentrl/ShellQuest-v0, kwargs: {horizon: 10}}\n")
    assert read_config_data(tmp_path / "same.yaml")["env"]["kwargs"] == {"vocab": "small", "horizon": 10}
    # by override: the file's options go, the override's own options apply, in any order
    cfg = load_config(tmp_path / "base.yaml", overrides=["env.kwargs.high=5", "env.id=agentrl/GuessNumber-v0", "model.path=m"])
    assert (cfg.env.id, cfg.env.kwargs, cfg.env.eval_kwargs, cfg.env.num_envs) == ("agentrl/GuessNumber-v0", {"high": 5}, None, 6)
    cfg = load_config(tmp_path / "base.yaml", overrides=["env.kwargs.horizon=5", "model.path=m"])
    assert cfg.env.kwargs == {"vocab": "small", "horizon": 5}


def test_run_imports_in_a_file_resolve_relative_to_that_file(tmp_path, monkeypatch):
    """A .py entry of run.imports is found next to the config that names it (a base's next to
    the base), whatever the working directory; dotted names and absolute paths are kept;
    an override on the command line is relative to the working directory."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").mkdir()
    absolute = tmp_path / "abs_x.py"
    for f in (tmp_path / "a" / "base_env.py", tmp_path / "a" / "b" / "kv.py", absolute, tmp_path / "elsewhere" / "cli.py"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("X = 1\n")  # validate imports every entry: they must exist where they resolve
    (tmp_path / "a" / "base.yaml").write_text(f"run: {{imports: [base_env.py, json, {absolute}]}}\nmodel: {{path: m}}\n")
    (tmp_path / "a" / "b" / "mine.yaml").write_text("base: ../base.yaml\nrun: {imports: [../base_env.py, kv.py]}\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(tmp_path / "a" / "base.yaml")
    assert cfg.run.imports == [str((tmp_path / "a" / "base_env.py").resolve()), "json", str(absolute)]
    cfg = load_config(tmp_path / "a" / "b" / "mine.yaml")
    assert cfg.run.imports == [str((tmp_path / "a" / "base_env.py").resolve()), str((tmp_path / "a" / "b" / "kv.py").resolve())]
    cfg = load_config(tmp_path / "a" / "b" / "mine.yaml", overrides=["run.imports=[cli.py]"])
    assert cfg.run.imports == ["cli.py"]
