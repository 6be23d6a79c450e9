"""Study files for ``agentrl compare``: which methods, seeds, env variants and extra axes to
run, and the complete training config of every run they expand to.

A study file (YAML; every key but ``study`` and ``base`` optional)::

    study: long_horizon_entropy        # name, recorded in the results folder
    base: configs/quickstart.yaml      # complete training config: every section but
                                       # ``algorithm`` comes from here
    methods: all                       # or a list of file stems of methods_dir (grpo, empg, ...)
    methods_dir: configs/methods       # each method file contributes its algorithm section only
    seeds: [0, 1, 2]
    overrides: {trainer.total_steps: 40}            # dotted overrides for every run
    envs:                                           # env variants: name -> dotted overrides
      h10: {env.kwargs.horizon: 10}
      h50: {env.kwargs.horizon: 50, rollout.max_total_tokens: 4096}
    axes:                                           # optional extra axes (cross product)
      offpolicy:
        sync: {}                                    # a level: dotted overrides ...
        async_s4:                                   # ... or overrides for a subset of runs
          overrides: {run.mode: async, rollout.max_staleness: 4, algorithm.off_policy.behavior_is_cap: 5.0}
          methods: [bapo, grpo, cispo]
          envs: [h50]
          seeds: [0, 1]                             # (a pilot, say: fewer seeds for one level)
    env_methods: {h50: [grpo, empg]}   # optional: the methods run at an env variant (default: all)
    shared_sft: true                   # one SFT warm start per (env variant, seed)
    target_success: 0.5                # for "train_steps to reach target"
    final_window: 5                    # final entropy = mean over the last N train_steps
    smooth: 1                          # moving-average window of the report's curves
    smoke: {methods: [grpo, empg], seeds: [0], ...}  # replaces top-level keys under --smoke

Overrides apply in the order base -> ``overrides`` -> env variant -> axis levels, so the more
specific setting wins. The ``algorithm`` section comes from the method file, before the axis
levels: a level may change ``algorithm.*`` keys (for every method it applies to); ``overrides``
and env variants may not (ConfigError). Relative paths are looked up from the current directory, then from the
study file's folder and its parents.

With ``shared_sft`` (default) and ``sft.enabled`` in the resolved config, every (env variant,
seed) gets one run with ``trainer.total_steps=0`` that creates the tiny model (``model.init``)
and warm-starts it; each method run of that (env variant, seed) then starts from that run's
checkpoint (``model.path``, no ``model.init``, ``sft.enabled=false``). Axis levels run from the
same warm start, so they may not change ``model.*``, ``sft.*``, ``env.*`` or ``run.seed``
(make such a change an env variant instead).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentrl.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    from_dict,
    read_config_data,
    resolve_config_paths,
    to_dict,
    validate,
)

__all__ = ["SFT_CHECKPOINT", "AxisLevel", "RunSpec", "Study", "check_runs", "expand_runs", "load_study"]

#: The checkpoint of a ``trainer.total_steps=0`` run that holds its (SFT) model.
SFT_CHECKPOINT = "checkpoints/step_000000/model"
_SHARED_SFT_FORBIDDEN = ("model.", "sft.", "env.", "run.seed")


@dataclass(frozen=True)
class AxisLevel:
    """One level of an extra axis: ``overrides`` for the runs it applies to; ``methods``,
    ``envs`` and ``seeds`` (None: all) restrict which runs get this level. A (method, env
    variant, seed) that no level of an axis fits has no run, and an (env variant, seed) left
    without method runs has no warm start."""

    overrides: dict[str, Any]
    methods: tuple[str, ...] | None = None
    envs: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None


@dataclass
class Study:
    """A parsed study file (see the module docstring for the YAML form)."""

    name: str
    base: Path
    methods: list[str]
    methods_dir: Path
    seeds: list[int]
    envs: dict[str, dict[str, Any]]
    axes: dict[str, dict[str, AxisLevel]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    env_methods: dict[str, list[str]] = field(default_factory=dict)
    shared_sft: bool = True
    target_success: float = 0.5
    final_window: int = 1
    smooth: int = 1
    smoke: bool = False
    source: Path | None = None

    @property
    def identity(self) -> str:
        """What a results folder belongs to: the study name, and ``smoke`` for the CI variant."""
        return f"{self.name} (smoke)" if self.smoke else self.name


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study: its ``key`` (also its folder under ``runs/`` or
    ``sft/``), ``kind`` ("sft": the shared warm start, "rl": a method run), coordinates, the
    complete resolved config (``to_dict`` form) and the key of the SFT run it starts from."""

    key: str
    kind: str
    env: str
    seed: int
    method: str | None
    levels: tuple[tuple[str, str], ...]
    config: dict[str, Any]
    needs: str | None = None

    @property
    def variant(self) -> str:
        """The method with its axis levels: what the report compares across seeds."""
        return " @ ".join([self.method or "sft", *(lvl for _, lvl in self.levels)])


_KEYS = {f.name for f in dataclasses.fields(Study)} - {"smoke", "source"}
_KEYS = (_KEYS - {"name"}) | {"study", "smoke"}


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _find(path: str, study_dir: Path) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    for parent in [study_dir, *study_dir.resolve().parents]:
        if (parent / p).exists():
            return parent / p
    return p


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted config keys to values (e.g. {{trainer.total_steps: 5}}), got {value!r}")
    return dict(value)


def _names(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of names, got {value!r}")
    return tuple(value)


def _parse_axes(raw: Any, source: str) -> dict[str, dict[str, AxisLevel]]:
    axes: dict[str, dict[str, AxisLevel]] = {}
    for axis, levels in _mapping(raw, f"{source}: axes").items():
        if not isinstance(levels, dict) or not levels:
            raise ConfigError(f"{source}: axes.{axis}: expected a mapping of level name -> overrides, got {levels!r}")
        axes[axis] = {}
        for level, spec in levels.items():
            where = f"{source}: axes.{axis}.{level}"
            spec = _mapping(spec, where)
            if spec and set(spec) <= {"overrides", "methods", "envs", "seeds"}:
                seeds = spec.get("seeds")
                if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)):
                    raise ConfigError(f"{where}.seeds: expected a list of integers (seeds of the study), got {seeds!r}")
                axes[axis][str(level)] = AxisLevel(_mapping(spec.get("overrides"), where + ".overrides"), _names(spec.get("methods"), where + ".methods"),
                                                   _names(spec.get("envs"), where + ".envs"), None if seeds is None else tuple(seeds))
            else:
                axes[axis][str(level)] = AxisLevel(spec)
    return axes


def load_study(path: str | Path, *, smoke: bool = False) -> Study:
    """Parse and check a study file (names and paths; configs are checked by
    :func:`check_runs`). ``smoke``: apply the file's ``smoke:`` section. Raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {str(path)!r} does not exist; see configs/studies/ for examples")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a study file is a mapping (study:, base:, methods:, ...), got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown study key {unknown[0]!r}.{_suggest(unknown[0], sorted(_KEYS))} Valid keys: {', '.join(sorted(_KEYS))}")
    smoke_section = data.pop("smoke", None)
    if smoke:
        if not isinstance(smoke_section, dict):
            raise ConfigError(f"{path}: --smoke needs a 'smoke:' section (a mapping of study keys that replace the top-level ones)")
        bad = sorted(set(smoke_section) - _KEYS - {"study"})
        if bad:
            raise ConfigError(f"{path}: unknown key in smoke: {bad[0]!r}.{_suggest(bad[0], sorted(_KEYS))}")
        data.update(smoke_section)
    for key in ("study", "base"):
        if key not in data:
            raise ConfigError(f"{path}: missing required key {key!r} (study: a name; base: a complete training config such as configs/quickstart.yaml)")
    here = path.parent
    base = _find(str(data["base"]), here)
    if not base.is_file():
        raise ConfigError(f"{path}: base config {str(data['base'])!r} not found (looked in the current directory and above {here})")
    methods_dir = _find(str(data.get("methods_dir", "configs/methods")), here)
    if not methods_dir.is_dir():
        raise ConfigError(f"{path}: methods_dir {str(data.get('methods_dir', 'configs/methods'))!r} is not a folder")
    available = sorted(p.stem for p in methods_dir.glob("*.yaml"))
    methods = data.get("methods", "all")
    methods = available if methods == "all" else list(_names(methods, f"{path}: methods") or ())
    for m in methods:
        if m not in available:
            raise ConfigError(f"{path}: unknown method {m!r}.{_suggest(m, available)} Methods in {methods_dir}: {', '.join(available)}")
    if len(set(methods)) != len(methods) or not methods:
        raise ConfigError(f"{path}: methods must be a non-empty list without repeats, got {methods}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of distinct integers, got {seeds!r}")
    envs = _mapping(data.get("envs") or {"default": {}}, f"{path}: envs")
    envs = {str(k): _mapping(v, f"{path}: envs.{k}") for k, v in envs.items()}
    env_methods = {str(k): list(_names(v, f"{path}: env_methods.{k}") or ()) for k, v in _mapping(data.get("env_methods"), f"{path}: env_methods").items()}
    for env, names in env_methods.items():
        if env not in envs:
            raise ConfigError(f"{path}: env_methods names unknown env variant {env!r}.{_suggest(env, list(envs))} Known: {', '.join(envs)}")
        for m in names:
            if m not in methods:
                raise ConfigError(f"{path}: env_methods.{env} names {m!r}, which is not one of the study's methods ({', '.join(methods)}); add it to methods: first")
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"{path}: env_methods.{env} must be a non-empty list without repeats, got {names}")
    axes = _parse_axes(data.get("axes"), str(path))
    for axis, levels in axes.items():
        for level, spec in levels.items():
            for name, known, values in (("method", methods, spec.methods), ("env variant", list(envs), spec.envs)):
                for v in values or ():
                    if v not in known:
                        raise ConfigError(f"{path}: axes.{axis}.{level} names unknown {name} {v!r}.{_suggest(v, known)} Known: {', '.join(known)}")
            for v in spec.seeds or ():
                if v not in seeds:
                    raise ConfigError(f"{path}: axes.{axis}.{level} names seed {v}, which is not in the study's seeds {seeds}")
    study = Study(
        name=str(data["study"]), base=base, methods=methods, methods_dir=methods_dir, seeds=seeds, envs=envs, axes=axes,
        overrides=_mapping(data.get("overrides"), f"{path}: overrides"), env_methods=env_methods, shared_sft=bool(data.get("shared_sft", True)),
        target_success=float(data.get("target_success", 0.5)), final_window=int(data.get("final_window", 1)),
        smooth=int(data.get("smooth", 1)), smoke=smoke, source=path,
    )
    for where, over in [("overrides", study.overrides), *((f"envs.{k}", v) for k, v in envs.items())]:
        bad_keys = [k for k in over if k == "algorithm" or k.startswith("algorithm.")]
        if bad_keys:
            raise ConfigError(
                f"{path}: {where} sets {bad_keys[0]!r}, but every run takes its algorithm section from its method file; "
                f"put algorithm changes in an axis level (applied after the method's section) or in the method files"
            )
    if study.final_window < 1 or study.smooth < 1:
        raise ConfigError(f"{path}: final_window and smooth must be >= 1, got {study.final_window} and {study.smooth}")
    if study.shared_sft:
        for axis, levels in axes.items():
            for level, spec in levels.items():
                for key in spec.overrides:
                    if key.startswith(_SHARED_SFT_FORBIDDEN):
                        raise ConfigError(
                            f"{path}: axes.{axis}.{level} overrides {key!r}, but with shared_sft every level starts from the same "
                            f"warm start; make it an env variant (envs:) or set shared_sft: false"
                        )
    return study


# ----------------------------------------------------------------------------- expansion
def _apply(data: dict[str, Any], overrides: dict[str, Any], where: str) -> dict[str, Any]:
    # JSON is valid YAML, so apply_overrides parses each value back exactly
    try:
        return apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _resolve(data: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        cfg = from_dict(TrainConfig, data)
        validate(cfg, source=where)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return to_dict(cfg)


def _method_algorithm(study: Study, method: str) -> tuple[dict[str, Any], list[str]]:
    """A method file's ``algorithm`` section and its ``run.imports`` (a method defined in the
    user's own file registers its components there): the two things compare takes from it."""
    path = study.methods_dir / f"{method}.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data, dict):
        resolve_config_paths(data, path.parent)  # its .py imports: next to the method file
    if not isinstance(data, dict) or not isinstance(data.get("algorithm"), dict):
        raise ConfigError(f"{path}: a method file needs an 'algorithm:' section (compare takes it and run.imports from the file)")
    imports = (data.get("run") or {}).get("imports") or []
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise ConfigError(f"{path}: run.imports must be a list of module names or .py paths, got {imports!r}")
    return copy.deepcopy(data["algorithm"]), list(imports)


def _level_combos(study: Study, method: str, env: str, seed: int) -> list[tuple[tuple[str, str], ...]]:
    combos: list[tuple[tuple[str, str], ...]] = [()]
    for axis, levels in study.axes.items():
        fitting = [lvl for lvl, spec in levels.items()
                   if (spec.methods is None or method in spec.methods) and (spec.envs is None or env in spec.envs) and (spec.seeds is None or seed in spec.seeds)]
        combos = [c + ((axis, lvl),) for c in combos for lvl in fitting]
    return combos


def expand_runs(study: Study, out: Path) -> list[RunSpec]:
    """Every run of the study with complete resolved configs writing under ``out`` (absolute
    paths), ordered env variant, seed, method: each shared SFT run comes right before the
    method runs that start from it. Raises ConfigError naming the run whose config is invalid."""
    out = Path(out).resolve()
    base = read_config_data(study.base)  # its base: chain and its .py imports resolved next to each file
    base_algorithm = base.pop("algorithm", {}) or {}
    runs: list[RunSpec] = []
    for env, env_over in study.envs.items():
        for seed in study.seeds:
            common = _apply(copy.deepcopy(base), study.overrides, f"{study.source}: overrides")
            common = _apply(common, env_over, f"{study.source}: envs.{env}")
            common.setdefault("run", {})
            common["run"]["seed"] = seed
            common["run"]["resume"] = True
            if (common.get("model") or {}).get("init") is not None:
                common["model"]["path"] = str(out / "models" / env / f"seed{seed}")
            shared = study.shared_sft and (common.get("sft") or {}).get("enabled", False)
            env_methods = [m for m in study.methods if m in study.env_methods.get(env, study.methods)]  # study order
            combos = {m: _level_combos(study, m, env, seed) for m in env_methods}
            sft_key = None
            if shared and any(combos.values()):
                sft_key = f"sft/{env}/seed{seed}"
                data = copy.deepcopy(common)
                data["algorithm"] = copy.deepcopy(base_algorithm)
                data["run"].update(name=sft_key.replace("/", "-"), output_dir=str(out / sft_key))
                data.setdefault("trainer", {}).update(total_steps=0, eval_episodes=1)  # its model is evaluated by every method run
                runs.append(RunSpec(sft_key, "sft", env, seed, None, (), _resolve(data, f"run {sft_key}")))
            for method in env_methods:
                for levels in combos[method]:
                    key = "/".join([env, *(lvl for _, lvl in levels), method, f"seed{seed}"])
                    data = copy.deepcopy(common)
                    data["algorithm"], imports = _method_algorithm(study, method)
                    known = data["run"].get("imports") or []
                    data["run"]["imports"] = [*known, *(i for i in imports if i not in known)]
                    for axis, lvl in levels:  # after the method's algorithm: a level may set algorithm.* keys
                        data = _apply(data, study.axes[axis][lvl].overrides, f"{study.source}: axes.{axis}.{lvl}")
                    data["run"].update(name=key.replace("/", "-"), output_dir=str(out / "runs" / key))
                    if shared:
                        data["model"] = {**data["model"], "path": str(out / sft_key / SFT_CHECKPOINT), "init": None}
                        data["sft"] = {**data["sft"], "enabled": False}
                    runs.append(RunSpec(key, "rl", env, seed, method, levels, _resolve(data, f"run {key}"), sft_key))
    return runs


def check_runs(runs: list[RunSpec]) -> None:
    """What can be checked before any training: run.imports, env ids (with suggestions),
    algorithm sections, and env options (each env variant is built once). Raises ConfigError."""
    import agentrl.envs as envs
    from agentrl.train import check_config

    built: set[str] = set()
    for run in runs:
        cfg = from_dict(TrainConfig, run.config)
        if run.kind == "rl" and run.needs is not None:
            # the shared warm start does not exist yet: check the rest with a placeholder
            cfg.model.path = "shared-sft-model"
        try:
            check_config(cfg)
        except ConfigError as e:
            raise ConfigError(f"run {run.key}: {e}") from None
        env_key = json.dumps([cfg.env.id, cfg.env.kwargs, cfg.env.eval_kwargs], sort_keys=True, default=str)
        if env_key not in built:
            built.add(env_key)
            for kwargs in (cfg.env.kwargs, cfg.env.eval_kwargs):
                if kwargs is None:
                    continue
                try:
                    envs.make(cfg.env.id, **kwargs).close()
                except Exception as e:
                    raise ConfigError(f"run {run.key}: env {cfg.env.id} does not accept env options {kwargs}: {type(e).__name__}: {e}") from None
