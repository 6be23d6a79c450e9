"""Study files: expansion into runs (methods x seeds x env variants x axis levels, shared SFT)
and clear errors for bad input, all before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agentrl.config import ConfigError
from agentrl.eval.compare import claim_folder, compare
from agentrl.eval.study import check_runs, expand_runs, load_study

ROOT = Path(__file__).resolve().parents[2]


def _algo(section):
    """An algorithm section in its resolved form (run configs hold every default spelled out)."""
    from agentrl.algorithms.config import AlgorithmConfig

    return AlgorithmConfig.from_dict(section)
STUDY = ROOT / "configs" / "studies" / "long_horizon_entropy.yaml"
OFF_POLICY = ROOT / "configs" / "studies" / "off_policy.yaml"


def _variant(guess_study: Path, name: str, text: str) -> Path:
    """A study next to the test study (same base.yaml) with ``text`` appended/overriding."""
    data = yaml.safe_load(guess_study.read_text())
    data.update(yaml.safe_load(text))
    path = guess_study.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_long_horizon_study_expands_to_its_pre_registered_design(tmp_path):
    """The design in the header of configs/studies/long_horizon_entropy.yaml: 14 methods (one
    per paper of the seed list) at h10, GRPO, Clip-Cov, KL-Cov, EMPG and EntroPIC at h50, 3
    seeds, one warm start per (horizon, seed) with the pilot's settings."""
    study = load_study(STUDY)
    h10 = ["grpo", "dapo", "clip_cov", "kl_cov", "forking_tokens", "cispo", "entropy_advantage", "archer", "empg", "bapo",
           "entropic", "skywork", "prorl", "w_reinforce"]
    assert study.methods == h10 and study.seeds == [0, 1, 2]
    runs = expand_runs(study, tmp_path)
    rl = [r for r in runs if r.kind == "rl"]
    assert [r.method for r in rl if r.env == "h10" and r.seed == 0] == h10
    assert [r.method for r in rl if r.env == "h50" and r.seed == 2] == ["grpo", "clip_cov", "kl_cov", "empg", "entropic"]
    assert len(rl) == (14 + 5) * 3 and sum(r.kind == "sft" for r in runs) == 2 * 3
    assert {r.env: r.config["env"]["kwargs"]["horizon"] for r in rl} == {"h10": 10, "h50": 50}
    def setting(cfg):  # a warm start's config less its names and paths
        return {**{k: v for k, v in cfg.items() if k not in ("run", "model")}, "model": {**cfg["model"], "path": None}, "seed": cfg["run"]["seed"]}

    pilot = {(r.env, r.seed): setting(r.config) for r in expand_runs(load_study(ROOT / "configs" / "studies" / "long_horizon_pilot.yaml"), tmp_path / "p")
             if r.kind == "sft"}
    assert set(pilot) == {("h10", 0), ("h10", 1), ("h30", 0), ("h50", 0)}
    shared = [r for r in runs if r.kind == "sft" and (r.env, r.seed) in pilot]
    assert len(shared) == 3 and all(setting(r.config) == pilot[(r.env, r.seed)] for r in shared)  # the pilot's warm starts
    for r in runs:
        if r.kind == "sft":
            continue
        method_file = yaml.safe_load((ROOT / "configs" / "methods" / f"{r.method}.yaml").read_text())
        assert _algo(r.config["algorithm"]) == _algo(method_file["algorithm"])  # the method file's algorithm section and nothing else
        assert r.config["env"]["kwargs"]["vocab"] == "small" and r.config["run"]["num_threads"] == 1
        assert r.config["model"]["path"] == str(tmp_path.resolve() / r.needs / "checkpoints" / "step_000000" / "model")
        assert r.config["trainer"]["total_steps"] >= 30  # the floor for any budget cut
    # every method run comes after the warm start it needs
    order = [r.key for r in runs]
    assert all(order.index(r.needs) < order.index(r.key) for r in rl)
    check_runs(runs)  # env ids, algorithm sections and env options (horizons) are all valid


def test_off_policy_study_expands_to_three_methods_at_three_off_policy_levels(tmp_path):
    """configs/studies/off_policy.yaml (issue 7): BAPO, PPO clip (grpo) and CISPO, each sync,
    async at staleness 4 (decoupled) and async coupled to the sampler, 3 seeds, at horizon 10,
    one shared warm start per seed with the settings of the main study's h10 warm starts (so
    both studies start from the same SFT). Loads and validates every run; trains nothing."""
    study = load_study(OFF_POLICY)
    assert study.methods == ["grpo", "bapo", "cispo"] and study.seeds == [0, 1, 2] and list(study.axes) == ["offpolicy"]
    runs = expand_runs(study, tmp_path)
    rl = [r for r in runs if r.kind == "rl"]
    assert len(rl) == 3 * 3 * 3 and [r.key for r in runs if r.kind == "sft"] == ["sft/h10/seed0", "sft/h10/seed1", "sft/h10/seed2"]
    want = {  # level -> (run.mode, max_staleness, off_policy section)
        "sync": ("sync", 0, None),
        "async_s4": ("async", 4, {"behavior_is_cap": 5.0}),
        "async_s4_coupled": ("async", 4, {"proximal": "behavior"}),
    }
    for r in rl:
        level = dict(r.levels)["offpolicy"]
        mode, k, off_policy = want[level]
        assert (r.config["run"]["mode"], r.config["rollout"]["max_staleness"]) == (mode, k), r.key
        algorithm = yaml.safe_load((ROOT / "configs" / "methods" / f"{r.method}.yaml").read_text())["algorithm"]
        if off_policy is not None:
            algorithm["off_policy"] = off_policy
        assert _algo(r.config["algorithm"]) == _algo(algorithm), r.key  # the method's section plus the level's keys only
        assert r.config["env"]["kwargs"]["horizon"] == 10 and r.config["rollout"]["max_total_tokens"] == 1024
        assert r.config["trainer"]["total_steps"] == 30 and r.config["trainer"]["eval_episodes"] == 128
        assert r.needs == f"sft/h10/seed{r.seed}" and r.variant == f"{r.method} @ {level}"
    def setting(cfg):  # a warm start's config less its names and paths
        return {**{k: v for k, v in cfg.items() if k not in ("run", "model")}, "model": {**cfg["model"], "path": None}, "seed": cfg["run"]["seed"]}

    main = {r.seed: setting(r.config) for r in expand_runs(load_study(STUDY), tmp_path / "main") if r.kind == "sft" and r.env == "h10"}
    assert {r.seed: setting(r.config) for r in runs if r.kind == "sft"} == main
    assert (study.target_success, study.final_window, study.smooth) == (0.7, 10, 5)  # read as the main study is
    check_runs(runs)  # env options, algorithm sections, async mode's checks
    smoke = load_study(OFF_POLICY, smoke=True)
    smoke_runs = expand_runs(smoke, tmp_path / "smoke")
    assert len([r for r in smoke_runs if r.kind == "rl"]) == 2 * 3 and smoke.overrides["trainer.total_steps"] == 2
    check_runs(smoke_runs)


def test_algorithm_keys_belong_to_axis_levels_not_overrides(guess_study, tmp_path):
    path = _variant(guess_study, "algo_axis", "axes: {prox: {coupled: {algorithm.off_policy.proximal: behavior}}}")
    runs = [r for r in expand_runs(load_study(path), tmp_path) if r.kind == "rl"]
    assert {r.method for r in runs} == {"grpo", "empg"}
    for r in runs:  # applied after the method file's section, to every method
        algorithm = yaml.safe_load((ROOT / "configs" / "methods" / f"{r.method}.yaml").read_text())["algorithm"]
        assert _algo(r.config["algorithm"]) == _algo({**algorithm, "off_policy": {"proximal": "behavior"}})
    for text in ("overrides: {algorithm.entropy_coef: 0.01}", "envs: {high4: {env.kwargs.high: 4, algorithm.kl.coef: 0.1}}"):
        with pytest.raises(ConfigError, match="takes its algorithm section from its method file"):
            load_study(_variant(guess_study, "algo_bad", text))


def test_smoke_variant_is_small():
    study = load_study(STUDY, smoke=True)
    assert study.identity == "long_horizon_entropy (smoke)"
    assert study.methods == ["grpo", "empg"] and study.seeds == [0] and list(study.envs) == ["h10"]
    assert study.overrides["trainer.total_steps"] == 2


def test_extra_axis_of_overrides_for_a_subset_of_methods(guess_study, tmp_path):
    # the off-policy axis of issue 7: BAPO vs PPO clip vs CISPO at staleness 4, next to the sync runs
    path = _variant(guess_study, "axes", """
methods: [grpo, bapo, cispo, empg]
axes:
  offpolicy:
    sync: {}
    async_s4: {overrides: {run.mode: async, rollout.max_staleness: 4}, methods: [bapo, grpo, cispo]}
""")
    runs = [r for r in expand_runs(load_study(path), tmp_path) if r.kind == "rl"]
    keys = {r.key for r in runs if r.seed == 0}
    assert keys == {"high4/sync/grpo/seed0", "high4/sync/bapo/seed0", "high4/sync/cispo/seed0", "high4/sync/empg/seed0",
                    "high4/async_s4/grpo/seed0", "high4/async_s4/bapo/seed0", "high4/async_s4/cispo/seed0"}
    for r in runs:
        asyn = dict(r.levels)["offpolicy"] == "async_s4"
        assert (r.config["run"]["mode"], r.config["rollout"]["max_staleness"]) == (("async", 4) if asyn else ("sync", 0))
        assert r.variant == f"{r.method} @ {dict(r.levels)['offpolicy']}"
        assert r.needs == f"sft/high4/seed{r.seed}"  # both levels start from the same warm start


def test_axis_levels_restricted_to_seeds_and_envs_leave_no_unneeded_warm_start(guess_study, tmp_path):
    # a pilot: GRPO trains long at one env variant with two seeds; at the others, seed 0's warm
    # start is only evaluated (0 train_steps); no warm start for a (variant, seed) without runs
    path = _variant(guess_study, "pilot", """
methods: [grpo]
seeds: [0, 1]
envs: {high4: {}, high6: {env.kwargs.high: 6}}
axes:
  steps:
    long: {overrides: {trainer.total_steps: 7}, envs: [high4]}
    sft_eval: {overrides: {trainer.total_steps: 0}, envs: [high6], seeds: [0]}
""")
    runs = expand_runs(load_study(path), tmp_path)
    assert [r.key for r in runs] == ["sft/high4/seed0", "high4/long/grpo/seed0", "sft/high4/seed1", "high4/long/grpo/seed1",
                                     "sft/high6/seed0", "high6/sft_eval/grpo/seed0"]
    assert [r.config["trainer"]["total_steps"] for r in runs if r.kind == "rl"] == [7, 7, 0]
    assert runs[-1].config["env"]["kwargs"]["high"] == 6 and runs[-1].needs == "sft/high6/seed0"


def test_env_methods_run_a_subset_of_the_methods_at_one_env_variant(guess_study, tmp_path):
    path = _variant(guess_study, "env_methods", """
methods: [grpo, empg, clip_cov]
seeds: [0]
envs: {high4: {}, high6: {env.kwargs.high: 6}}
env_methods: {high6: [clip_cov, grpo]}
""")
    runs = expand_runs(load_study(path), tmp_path)
    # study order of methods at every variant, whatever order env_methods lists them in
    assert [r.key for r in runs] == ["sft/high4/seed0", "high4/grpo/seed0", "high4/empg/seed0", "high4/clip_cov/seed0",
                                     "sft/high6/seed0", "high6/grpo/seed0", "high6/clip_cov/seed0"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("env_methods: {high5: [grpo]}", "env_methods names unknown env variant 'high5'. Did you mean 'high4'"),
        ("env_methods: {high4: [kl_cov]}", "names 'kl_cov', which is not one of the study's methods"),
        ("axes: {x: {a: {overrides: {}, seeds: [5]}}}", "names seed 5, which is not in the study's seeds"),
        ("axes: {x: {a: {overrides: {}, seeds: 0}}}", "expected a list of integers"),
        ("methods: [grpo, grpoo]", "unknown method 'grpoo'. Did you mean 'grpo'"),
        ("methods: [klcov]", "Did you mean 'kl_cov'"),
        ("envs: {bad: {env.id: agentrl/GuessNumbr-v0}}", "unknown environment 'agentrl/GuessNumbr-v0'"),
        ("envs: {bad: {env.kwargs.high: 1}}", "does not accept env options"),
        ("overrides: {trainer.total_step: 3}", "Did you mean 'total_steps'"),
        ("seed: [0]", "unknown study key 'seed'. Did you mean 'seeds'"),
        ("seeds: [0, 0]", "distinct integers"),
        ("base: nowhere.yaml", "base config 'nowhere.yaml' not found"),
        ("axes: {x: {a: {sft.steps: 3}}}", "shared_sft"),
        ("axes: {x: {a: {overrides: {}, methods: [ppo]}}}", "unknown method 'ppo'"),
    ],
)
def test_bad_study_gets_a_clear_error_before_any_training(guess_study, tmp_path, text, message):
    path = _variant(guess_study, "bad", text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as info:
        compare(path, out=tmp_path / "out", train_fn=lambda cfg: pytest.fail("nothing may train"))
    assert str(path) in str(info.value) or "run " in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unknown_env_error_suggests_the_registered_id(guess_study, tmp_path):
    path = _variant(guess_study, "bad_env", "envs: {bad: {env.id: agentrl/GuessNumbr-v0}}")
    with pytest.raises(ConfigError, match="Did you mean.*GuessNumber-v0"):
        check_runs(expand_runs(load_study(path), tmp_path))


def test_results_folder_of_another_study_is_refused(guess_study, tmp_path):
    other = _variant(guess_study, "other", "study: another_study")
    out = tmp_path / "out"
    study = load_study(other)
    claim_folder(out, study, expand_runs(study, out))
    with pytest.raises(ConfigError, match="holds the results of study 'another_study'.*not 'guess_study'"):
        compare(guess_study, out=out, train_fn=lambda cfg: pytest.fail("nothing may train"))
    # the smoke variant of a study is a different study too
    smoke = load_study(guess_study, smoke=True)
    with pytest.raises(ConfigError, match=r"guess_study \(smoke\)"):
        claim_folder(out, smoke, [])
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an agentrl compare results folder"):
        compare(guess_study, out=stray, train_fn=lambda cfg: pytest.fail("nothing may train"))
    assert json.loads((out / "study.json").read_text())["identity"] == "another_study"


def test_cli_reports_bad_study_with_exit_code_2(guess_study, tmp_path, capsys):
    from agentrl.cli import main

    path = _variant(guess_study, "bad_cli", "methods: [grpoo]")
    assert main(["compare", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "unknown method 'grpoo'" in capsys.readouterr().err


def test_turn_level_study_expands_to_its_design(tmp_path):
    """configs/studies/long_horizon_turns.yaml (issue 16): six methods at h50 as one sequence
    and at h50 and h200 under the summary policy, GRPO also with episode-equal weighting on the
    turn-level variants, 3 seeds, one warm start per (variant, seed). Trains nothing."""
    study = load_study(ROOT / "configs" / "studies" / "long_horizon_turns.yaml")
    methods = ["grpo", "gigpo", "empg", "clip_cov", "kl_cov", "entropic"]
    runs = expand_runs(study, tmp_path)
    rl = [r for r in runs if r.kind == "rl"]
    assert study.methods == methods and len(rl) == 3 * (6 + 7 + 7) and sum(r.kind == "sft" for r in runs) == 3 * 3
    for r in runs:
        ctx, cap = r.config["rollout"]["context"], r.config["rollout"]["max_total_tokens"]
        horizon = r.config["env"]["kwargs"]["horizon"]
        if r.env == "h50_full":
            assert (ctx["policy"], cap, horizon) == ("full", 4096, 50)
        else:
            assert (ctx["policy"], ctx["window"], cap) == ("summary", 2, 1024) and horizon == {"h50_summary": 50, "h200_summary": 200}[r.env]
        if r.kind == "rl":
            level = dict(r.levels)["aggregation"]
            method_file = yaml.safe_load((ROOT / "configs" / "methods" / f"{r.method}.yaml").read_text())["algorithm"]
            if level == "episode":
                assert r.method == "grpo" and r.env != "h50_full"
                method_file["aggregation"] = "episode-mean-token-mean"
            assert _algo(r.config["algorithm"]) == _algo(method_file), r.key
    check_runs(runs)
    smoke = expand_runs(load_study(ROOT / "configs" / "studies" / "long_horizon_turns.yaml", smoke=True), tmp_path / "smoke")
    assert [r.key for r in smoke if r.kind == "rl"] == ["h10_summary/paper/grpo/seed0", "h10_summary/episode/grpo/seed0",
                                                        "h10_summary/paper/empg/seed0"]
    check_runs(smoke)
