"""``agentrl train CONFIG.yaml``: the training loop, top to bottom.

    prepare run folder -> model (create a tiny one if asked) -> resume or SFT warm start
    -> evaluate before RL -> for each train_step:
           tasks -> rollout (multi-turn episodes, G per task; in async mode the finished
                    groups of a rollout that never stops, agentrl/rollout/async_collector.py) -> collate
           -> learner.update (advantages, minibatch updates, controllers)
           -> sync weights to the engine -> log -> checkpoint
    -> evaluate after RL -> summary, plots

Components do the work (rollout, learner, algorithms, checkpoint, metrics); this file only
calls them in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import random
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agentrl.config import TrainConfig, to_dict

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- setup helpers
def seed_everything(seed: int, num_threads: int = 1) -> None:
    torch.set_num_threads(num_threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


RUN_INFO_PACKAGES = ("agentrl", "torch", "transformers", "gymnasium", "ray", "vllm", "trl")


def environment_info(packages: tuple[str, ...] = RUN_INFO_PACKAGES) -> dict[str, Any]:
    """``{git_commit, python, platform, versions}``: the code and software a result came from
    (git commit of this checkout, "" without git; versions of the installed ``packages``).
    Written as run_info.json by every run and recorded by the benchmarks."""
    import importlib.metadata as md

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except Exception:
        commit = ""
    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"git_commit": commit, "python": platform.python_version(), "platform": platform.platform(), "versions": versions}


def write_run_info(cfg: TrainConfig, out: Path) -> None:
    """Resolved config, git commit and package versions next to the results."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (out / "run_info.json").write_text(json.dumps(environment_info(), indent=2))


def ensure_model(cfg: TrainConfig) -> None:
    """Create the tiny model at ``model.path`` from ``model.init`` when the folder is missing."""
    path = Path(cfg.model.path)
    if cfg.model.init is None or (path / "config.json").exists():
        return
    from agentrl.models.tiny import create_tiny_model, env_corpus

    init = cfg.model.init
    log.info("creating a tiny %s model at %s (tokenizer trained on %d expert episodes of %s)", init.arch, path, init.corpus_episodes, cfg.env.id)
    texts = env_corpus([cfg.env.id], episodes=init.corpus_episodes, template=init.template, env_kwargs={cfg.env.id: cfg.env.kwargs}, seed=cfg.run.seed, tools_in_prompt=cfg.rollout.tools_in_prompt,
                       step_timeout_s=cfg.env.step_timeout_s, reset_timeout_s=cfg.env.reset_timeout_s, max_failed_frac=cfg.sft.max_failed_frac)
    create_tiny_model(
        path, texts, template=init.template, arch=init.arch, vocab_size=init.vocab_size, seed=cfg.run.seed,
        hidden_size=init.hidden_size, num_layers=init.num_layers, num_heads=init.num_heads, num_kv_heads=init.num_kv_heads,
        initializer_range=init.initializer_range,
    )


def check_config(cfg: TrainConfig) -> Any:
    """Everything that can be checked before work starts: env id, env option names,
    algorithm names and keys, model path. Returns the built algorithm config. Raises with a clear message."""
    import agentrl.envs as envs
    from agentrl.config import ConfigError, algorithm_config, import_modules, looks_like_local_path

    import_modules(cfg.run.imports)  # envs registered outside agentrl (Ray workers import them too)
    known = envs.list_envs()
    if cfg.env.id not in known:
        from agentrl.envs.base import suggest

        raise ConfigError(f"env.id: unknown environment {cfg.env.id!r}.{suggest(cfg.env.id, known)} Registered: {', '.join(known)}")
    for key in ("kwargs", "eval_kwargs"):  # option names against the constructor's signature (values: when built)
        try:
            envs.check_options(cfg.env.id, getattr(cfg.env, key) or {})
        except envs.EnvOptionError as e:
            raise ConfigError(f"env.{key}: {e}") from None
    algo_cfg = algorithm_config(cfg)  # load_config ran it too; again for a config built in code
    if cfg.run.mode == "async" and algo_cfg.dynamic_sampling.enabled:
        raise ConfigError("algorithm.dynamic_sampling is not supported with run.mode: async (it regenerates whole batches "
                          "round by round); disable it or use run.mode: sync")
    path = Path(cfg.model.path)
    if cfg.model.init is None and not path.exists() and looks_like_local_path(cfg.model.path):
        raise ConfigError(f"model.path {cfg.model.path!r} does not exist; run `agentrl model init --out {cfg.model.path}` or add a model.init section")
    return algo_cfg


# ----------------------------------------------------------------------------- resuming with a changed config
RESUME_SAFE_KEYS: dict[str, str] = {
    "run.name": "a label in logs, plots and reports",
    "run.output_dir": "where the run folder is now (it may have been moved)",
    "run.resume": "true whenever a run resumes",
    "logging.progress": "the progress bar",
    "logging.tensorboard": "extra copies of the metrics",
    "logging.wandb": "extra copies of the metrics",
    "logging.log_trajectories": "how many transcripts go to samples.jsonl",
    "trainer.checkpoint_every": "how often checkpoints are written (saving reads the RNG state, never advances it)",
    "trainer.keep_checkpoints": "how many checkpoints stay on disk",
}
"""Config keys that may differ between a run folder's config.yaml and a resumed run without
notice: none of them can change what is trained or measured. ``run.num_threads`` is not one:
on CPU the thread count can change float rounding. ``trainer.total_steps`` may grow (the run
goes on; recorded in config_changes.jsonl) unless ``trainer.lr_schedule`` is "cosine", whose
learning rate depends on it. Every other difference stops the run unless it is forced."""

CONFIG_CHANGES = "config_changes.jsonl"
"""In a run folder: one line per resume that changed the config, ``{train_step, changes:
[{key, old, new}], forced, time}``; the config before it is kept as config.until_step_<N>.yaml."""

_ABSENT = object()


def config_differences(old: Any, new: Any, where: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every leaf that differs between two config dicts (lists of
    the same length are compared item by item: ``algorithm.shaping.0.k_f``); a key missing on
    one side has the value ``_ABSENT`` there (shown as "(not set)", recorded as null)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [d for k in keys for d in config_differences(old.get(k, _ABSENT), new.get(k, _ABSENT), f"{where}.{k}" if where else str(k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in config_differences(a, b, f"{where}.{i}")]
    return [] if old == new else [(where, old, new)]


def _show(v: Any) -> str:
    if v is _ABSENT:
        return "(not set)"  # a key of a mapping (env.kwargs, a component's options): its default applies
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _saved_config(path: Path) -> dict[str, Any]:
    """A run folder's config.yaml resolved by the current code (so a field added since then
    reads as its default, not as a difference); the file as written when that fails."""
    from agentrl.config import from_dict

    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return to_dict(from_dict(TrainConfig, raw))
    except Exception:
        return raw


def check_resume(cfg: TrainConfig, *, force_resume: bool = False) -> dict[str, Any] | None:
    """Compare ``cfg`` with the config.yaml of the run it is about to resume (``run.resume``
    and a checkpoint in ``run.output_dir``). Differences in :data:`RESUME_SAFE_KEYS` are
    ignored; a larger ``trainer.total_steps`` is allowed; any other difference raises
    ConfigError naming each (``key: old -> new``) unless ``force_resume``. Returns the change
    to record (``{train_step, changes, forced, time}``), or None when there is nothing to record."""
    from agentrl.config import ConfigError
    from agentrl.learner.checkpoint import PREFIX, latest_checkpoint

    out = Path(cfg.run.output_dir)
    ckpt = latest_checkpoint(out) if cfg.run.resume else None
    saved = out / "config.yaml"
    if ckpt is None or not saved.is_file():
        return None
    step = int(ckpt.name[len(PREFIX):])
    diffs = [d for d in config_differences(_saved_config(saved), to_dict(cfg)) if d[0] not in RESUME_SAFE_KEYS]
    if not diffs:
        return None

    def extends(key: str, old: Any, new: Any) -> bool:
        return key == "trainer.total_steps" and isinstance(old, int) and new > old and cfg.trainer.lr_schedule != "cosine"

    refused = [d for d in diffs if not extends(*d)]
    if refused and not force_resume:
        shown = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in refused)
        raise ConfigError(
            f"run folder {str(out)!r} holds a run at train_step {step} with other settings: {shown}. Resuming would train and "
            f"evaluate one run under two settings; pass a new run.output_dir (e.g. run.output_dir={out}-2) to start a new run, or "
            f"--force-resume (Python: train(cfg, force_resume=True)) to continue this one with the new settings, recorded in {CONFIG_CHANGES}"
            + (" (trainer.total_steps may only grow, and not with lr_schedule cosine)" if any(k == "trainer.total_steps" for k, _, _ in refused) else "")
        )
    return {"train_step": step, "changes": [{"key": k, "old": None if a is _ABSENT else a, "new": None if b is _ABSENT else b} for k, a, b in diffs],
            "forced": bool(refused), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def record_config_change(out: Path, change: dict[str, Any]) -> None:
    """Append ``change`` to ``<out>/config_changes.jsonl`` and keep the config it replaces as
    ``config.until_step_<N>.yaml`` (the first one kept, when a step is changed twice)."""
    kept = out / f"config.until_step_{change['train_step']:06d}.yaml"
    if not kept.exists():
        kept.write_text((out / "config.yaml").read_text())
    with (out / CONFIG_CHANGES).open("a") as f:
        f.write(json.dumps(change) + "\n")


def _evaluate(rollout: Any, cfg: TrainConfig, label: str, step: int, config_version: int) -> dict[str, float]:
    """:func:`evaluate` plus ``eval/<label>/train_step`` and ``eval/<label>/config_version``:
    which weights were measured, under which settings (the number of forced config changes
    before it), so evaluations of one run folder are never mixed up."""
    out = evaluate(rollout, cfg, label)
    return {**out, f"eval/{label}/train_step": float(step), f"eval/{label}/config_version": float(config_version)}


def read_config_changes(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / CONFIG_CHANGES
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def evaluate(rollout: Any, cfg: TrainConfig, label: str) -> dict[str, float]:
    """Success on the held-out split with fixed tasks and seeds (same before and after)."""
    from agentrl.rollout.local import summarize
    from agentrl.rollout.tasks import eval_specs

    n = rollout.num_tasks(cfg.env.eval_split)
    specs = eval_specs(n, cfg.trainer.eval_episodes, split=cfg.env.eval_split, seed=cfg.run.seed)
    t0 = time.perf_counter()
    from agentrl.eval.evaluate import EpisodeProgress

    bar = EpisodeProgress(len(specs), f"eval {label}", enabled=cfg.logging.progress, leave=None)
    try:
        trajs = rollout.evaluate(specs, on_done=bar)
    finally:
        bar.close()
    out = summarize(trajs, prefix=f"eval/{label}")
    out[f"eval/{label}/time_s"] = time.perf_counter() - t0
    failed = sum(t.failed for t in trajs)
    # success is over the episodes that did not fail: say how many those were
    log.info("eval %s: success %.3f over %d held-out episodes%s", label, out[f"eval/{label}/success"], len(trajs),
             f" ({failed} failed, not counted in success)" if failed else "")
    return out


# ----------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, *, force_resume: bool = False) -> dict[str, Any]:
    """Run the experiment described by ``cfg``; returns the summary (also in summary.json).

    Resuming a run folder whose config.yaml differs from ``cfg`` stops before any work with
    the differences (:func:`check_resume`) unless they are harmless or ``force_resume``; a
    forced change is recorded in the run folder and marks the 'before RL' evaluation as
    measured under other settings (docs/evaluation.md, "Resuming with a changed config").

    The rollout (sandboxes, engine), the async collector, the learner (Ray actors) and the
    metrics writers are closed however the run ends, an exception included."""
    with contextlib.ExitStack() as closing:
        return _train(cfg, closing, force_resume)


def _train(cfg: TrainConfig, closing: contextlib.ExitStack, force_resume: bool = False) -> dict[str, Any]:
    from agentrl.algorithms import build_algorithm
    from agentrl.learner.checkpoint import latest_checkpoint, load_state, save_checkpoint, set_rng_state
    from agentrl.learner.policy import load_model, load_tokenizer
    from agentrl.learner.sft import sft
    from agentrl.metrics import MetricsLogger
    from agentrl.rollout.context import policy_of
    from agentrl.rollout.expert import play_experts
    from agentrl.rollout.local import summarize
    from agentrl.rollout.tasks import TaskSampler
    from agentrl.types import collate

    algo_cfg = check_config(cfg)
    out = Path(cfg.run.output_dir)
    change = check_resume(cfg, force_resume=force_resume)  # before config.yaml is rewritten
    if change is not None:
        record_config_change(out, change)
    write_run_info(cfg, out)
    seed_everything(cfg.run.seed, cfg.run.num_threads)
    ensure_model(cfg)
    ckpt = latest_checkpoint(out) if cfg.run.resume else None
    model_path = str(ckpt / "model") if ckpt else cfg.model.path
    tokenizer = load_tokenizer(model_path, cfg.model.chat_template)
    # with backend "ray" the trained copies live in the learner ranks (on run.device); this one,
    # kept in sync with them, is what SFT warm-starts, checkpoints save and the rollout receives
    driver_device = cfg.run.device if cfg.run.backend == "local" else "cpu"
    model = load_model(model_path, dtype=cfg.model.dtype, device=driver_device, gradient_checkpointing=cfg.model.gradient_checkpointing)
    rollout = make_rollout(cfg, model, tokenizer)
    closing.callback(rollout.close)
    sampler = TaskSampler(rollout.num_tasks(cfg.env.train_split), seed=cfg.run.seed, split=cfg.env.train_split)
    feed = make_async_collector(cfg, rollout, sampler) if cfg.run.mode == "async" else None
    if feed is not None:
        closing.callback(feed.close)  # runs first: stops the producer before the rollout closes
    tasks = feed or sampler  # what checkpoints record as the data position
    logger = MetricsLogger.for_run(out, cfg)
    closing.callback(logger.close)
    summary: dict[str, Any] = {"run": cfg.run.name, "output_dir": str(out)}

    context = policy_of(cfg.rollout.context)
    if not context.full:  # a context cap that cannot hold the task and one turn: stop before any work
        import agentrl.envs as envs
        from agentrl.rollout.context import check_cap

        probe = envs.make(cfg.env.id, **cfg.env.kwargs)
        try:
            check_cap(rollout.chat, context, probe, cap=cfg.rollout.max_total_tokens, max_new_tokens=cfg.rollout.max_new_tokens,
                      tools_in_prompt=cfg.rollout.tools_in_prompt, split=cfg.env.train_split)
        finally:
            probe.close()
    if ckpt is None and cfg.sft.enabled:
        # before the learner exists, so the reference policy (KL methods) is the SFT policy
        t0 = time.perf_counter()
        experts = play_experts(cfg.env.id, rollout.chat, episodes=cfg.sft.episodes, env_kwargs=cfg.env.kwargs, split=cfg.env.train_split, seed=cfg.run.seed,
                               tools_in_prompt=cfg.rollout.tools_in_prompt, step_timeout_s=cfg.env.step_timeout_s, reset_timeout_s=cfg.env.reset_timeout_s,
                               max_failed_frac=cfg.sft.max_failed_frac, context=context, max_total_tokens=cfg.rollout.max_total_tokens)
        data = experts.trajectories
        # under a turn-level context policy each turn is one SFT sample (batch size and token cap count samples)
        losses = sft(model, [s for t in data for s in t.turn_samples()], pad_token_id=tokenizer.pad_token_id, epochs=cfg.sft.epochs, steps=cfg.sft.steps, warmup_steps=cfg.sft.warmup_steps, lr=cfg.sft.lr, batch_size=cfg.sft.batch_size, max_tokens=cfg.sft.max_tokens, seed=cfg.run.seed, progress=cfg.logging.progress)
        expert_success = sum(t.success for t in data) / len(data)  # what SFT imitates: the plots' reference line
        summary["sft"] = {"episodes": len(data), "failed_episodes": len(experts.failures), "failed_by_kind": experts.failure_counts(),
                          "expert_success": expert_success, "losses": losses, "time_s": time.perf_counter() - t0}
        logger.log(0, {"sft/expert_episodes": float(len(data)), "sft/failed_episodes": float(len(experts.failures)), "sft/expert_success": expert_success,
                       **{f"sft/failed/{k}": float(v) for k, v in experts.failure_counts().items()}})
    learner = make_learner(cfg, model, algo_cfg)
    closing.callback(learner.close)
    filter_algo = build_algorithm(algo_cfg) if algo_cfg.dynamic_sampling.enabled else None

    step = 0
    if ckpt is not None:
        state = load_state(ckpt)
        learner.load_state_dict(state["learner"])
        tasks.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        summary.update(state.get("summary", {}))
        summary.update(run=cfg.run.name, output_dir=str(out))  # where the folder is now, not where it was
        step = int(state["step"])
        log.info("resumed from %s at train_step %d%s", ckpt, step, "" if change is None else " with config changes: " + "; ".join(
            f"{c['key']}: {_show(c['old'])} -> {_show(c['new'])}" for c in change["changes"]) + (" (forced)" if change["forced"] else ""))
    changes = read_config_changes(out) if ckpt is not None else []
    version = sum(bool(c.get("forced")) for c in changes)  # forced config changes so far: the settings' version
    if changes:
        summary["config_changes"] = changes
    if _config_version(summary, "after_rl") != version:
        summary.pop("after_rl", None)  # measured under earlier settings: evaluate again
    rollout.sync_weights(model, step)
    # at train_step 0 the weights are still those 'before RL': measure them again under new settings
    if ckpt is None or (step == 0 and _config_version(summary, "before_rl") != version):
        summary["before_rl"] = _evaluate(rollout, cfg, "before_rl", 0, version)
        logger.log(0, summary["before_rl"])
        save_checkpoint(out, 0, model=model, tokenizer=tokenizer, state=_state(learner, tasks, summary), keep=cfg.trainer.keep_checkpoints)
    logger.truncate_after(step)

    bar = _progress(cfg, step)
    env_short = cfg.env.id.split("/", 1)[-1]
    while step < cfg.trainer.total_steps:
        t0 = time.perf_counter()
        if feed is not None:  # async: the batch episodes finished while the learner trained
            trajs, rollout_metrics = feed.next_batch(step)
        else:
            trajs, rounds = collect_batch(rollout, sampler, cfg, filter_algo)
            rollout_metrics = {"rollout/generation_rounds": float(rounds)}
        t1 = time.perf_counter()
        batch = collate(trajs, pad_token_id=tokenizer.pad_token_id)
        metrics = learner.update(batch)
        t2 = time.perf_counter()
        step += 1
        rollout.sync_weights(model, step)
        metrics.update(summarize(trajs, cfg.env.id))
        metrics.update(rollout_metrics)
        metrics.update(rollout.sandbox_metrics())
        gen_tokens = float(batch.loss_mask.sum())
        step_s = time.perf_counter() - t0
        # async: the batch was generated while earlier steps trained; t1 - t0 is only the wait
        rollout_s = step_s if feed is not None else t1 - t0
        metrics.update({
            "time/rollout_s": t1 - t0, "time/learner_s": t2 - t1, "time/step_s": step_s,
            "throughput/rollout_tokens_per_s": gen_tokens / max(rollout_s, 1e-9),
            "throughput/learner_tokens_per_s": float(batch.attention_mask.sum()) * cfg.trainer.ppo_epochs / max(t2 - t1, 1e-9),
        })
        if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step < cfg.trainer.total_steps:
            metrics.update(_evaluate(rollout, cfg, f"step_{step}", step, version))
        logger.log(step, metrics)
        _save_samples(out, step, trajs, cfg.logging.log_trajectories)
        if step % cfg.trainer.checkpoint_every == 0 or step == cfg.trainer.total_steps:
            save_checkpoint(out, step, model=model, tokenizer=tokenizer, state=_state(learner, tasks, summary), keep=cfg.trainer.keep_checkpoints)
        if bar is not None:
            bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.2f}", success=f"{metrics['rollout/success']:.2f}",
                            entropy=f"{metrics.get('policy/entropy', float('nan')):.2f}", refresh=False)
            bar.update(1)  # redraws at most every progress_interval() seconds
    if bar is not None:
        bar.close()
    if feed is not None:
        feed.close()  # episodes still in flight are discarded (before the final evaluation uses the rollout)

    if step == 0 and "before_rl" in summary:  # no RL happened (e.g. an SFT-only run): nothing new to evaluate
        summary["after_rl"] = {k.replace("eval/before_rl/", "eval/after_rl/"): v for k, v in summary["before_rl"].items()}
        summary["after_rl_step"] = 0
    if "after_rl" not in summary or summary.get("after_rl_step") != step:
        summary["after_rl"] = _evaluate(rollout, cfg, "after_rl", step, version)
        summary["after_rl_step"] = step
        logger.log(step, summary["after_rl"])
        save_checkpoint(out, step, model=model, tokenizer=tokenizer, state=_state(learner, tasks, summary), keep=cfg.trainer.keep_checkpoints)
    close_failures = rollout.close()  # now, so a stuck or failing env close is on the record (the ExitStack's close is then a no-op)
    if close_failures:
        summary["env_close_failures"] = close_failures
        logger.log(step, {f"rollout/close_failed/{k}": float(v) for k, v in close_failures.items()})
    summary["train_steps"] = step
    summary["env"] = env_short
    # False after a forced config change: 'before RL' was measured under other settings
    summary["before_rl_comparable"] = _config_version(summary, "before_rl") == _config_version(summary, "after_rl")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    try:
        from agentrl.plots import plot_training

        summary["plots"] = [str(p) for p in plot_training(out)]
    except Exception as e:  # plotting must never lose a finished run
        log.warning("plotting failed: %s", e)
    return summary


def make_learner(cfg: TrainConfig, model: Any, algo_cfg: Any) -> Any:
    """The learner that trains ``model``: in this process, or Ray actors (FSDP2 over several
    ranks) that load their new weights back into ``model`` after every update."""
    if cfg.run.backend == "ray":
        from agentrl.distributed.learner_group import LearnerGroup

        return LearnerGroup(cfg, model)
    from agentrl.algorithms import build_algorithm
    from agentrl.learner.learner import Learner

    return Learner(model, build_algorithm(algo_cfg), cfg.trainer, temperature=cfg.rollout.temperature, async_mode=cfg.run.mode == "async", seed=cfg.run.seed)


def turn_samples(trajs: list[Any]) -> int:
    """Training rows of ``trajs``: one per turn sample (one per episode played as one
    sequence); failed episodes train nothing and count 0."""
    return sum(t.num_samples for t in trajs)


def _kept_groups(filter_algo: Any, trajs: list[Any]) -> list[Any]:
    """The trajectories of the groups DAPO dynamic sampling keeps (one row per episode)."""
    from agentrl.algorithms.algorithm import RolloutBatch
    from agentrl.types import collate

    b = collate([replace(t, segments=[]) for t in trajs], pad_token_id=0)  # one row per episode, turn samples or not
    keep = filter_algo.keep_groups(RolloutBatch(rewards=b.rewards, group_ids=b.group_ids, loss_mask=b.loss_mask, correct=b.success, truncated=b.truncated))
    return [t for t, k in zip(trajs, keep.tolist()) if k]


def collect_batch(rollout: Any, sampler: Any, cfg: TrainConfig, filter_algo: Any) -> tuple[list[Any], int]:
    """One train_step's trajectories: ``tasks_per_step`` groups of ``group_size``.

    With DAPO dynamic sampling (``filter_algo`` given), groups whose success is uniform are
    dropped and more groups are generated, round after round, until ``tasks_per_step`` groups
    are kept or ``max_num_gen_batches`` rounds ran (0: no limit); the batch is then the kept
    groups (fewer than asked when the limit was hit). Returns (trajectories, rounds).

    With ``rollout.turns_per_step`` N (batches counted in turns, turn-level context policies):
    rounds of ``tasks_per_step`` groups are played, each to the end, until the batch holds at
    least N turn samples (:func:`turn_samples`; with dynamic sampling, of the kept groups). So
    a step of short episodes plays more rounds, and a step of long ones fewer; groups stay
    whole (a group's advantages need all its episodes' returns), so the batch holds N to N +
    one round's samples, and no episode is in flight at the cut. At most
    ``ceil(N / (tasks_per_step * group_size))`` rounds are played (each non-failed episode
    gives at least one sample, so that many suffice unless episodes fail; with dynamic
    sampling, ``max_num_gen_batches`` times that, 0: no limit); the batch is then what they
    gave.
    """
    G, want = cfg.rollout.group_size, cfg.rollout.tasks_per_step
    target = cfg.rollout.turns_per_step
    trajs = rollout.collect(sampler.next_specs(want, G))
    if target is not None:
        return _collect_turns(rollout, sampler, cfg, filter_algo, trajs, target)
    if filter_algo is None:
        return trajs, 1
    limit = filter_algo.config.dynamic_sampling.max_num_gen_batches
    kept: list[Any] = []
    rounds = 0
    while True:
        rounds += 1
        kept += _kept_groups(filter_algo, trajs)
        if len(kept) >= want * G or (limit and rounds >= limit):
            break
        trajs = rollout.collect(sampler.next_specs(want, G))
    if not kept:  # nothing informative: train on the last round (zero advantages) rather than stop
        log.info("dynamic sampling kept no group in %d rounds; training on the last round", rounds)
        kept = trajs
    return kept[: want * G], rounds


def _collect_turns(rollout: Any, sampler: Any, cfg: TrainConfig, filter_algo: Any, trajs: list[Any], target: int) -> tuple[list[Any], int]:
    """:func:`collect_batch` with ``rollout.turns_per_step``: rounds until ``target`` turn samples."""
    G, want = cfg.rollout.group_size, cfg.rollout.tasks_per_step
    limit = math.ceil(target / (want * G))
    if filter_algo is not None:
        gen = filter_algo.config.dynamic_sampling.max_num_gen_batches
        limit = limit * gen if gen else 0
    kept: list[Any] = []
    rounds = 0
    while True:
        rounds += 1
        kept += _kept_groups(filter_algo, trajs) if filter_algo is not None else trajs
        have = turn_samples(kept)
        if have >= target or (limit and rounds >= limit):
            break
        trajs = rollout.collect(sampler.next_specs(want, G))
    if have < target:
        log.info("rollout.turns_per_step=%d: %d rounds gave %d turn samples (failed episodes or dropped groups); training on them",
                 target, rounds, have)
    if not kept:  # nothing kept by dynamic sampling: train on the last round (zero advantages)
        kept = trajs
    return kept, rounds


def make_async_collector(cfg: TrainConfig, rollout: Any, sampler: Any) -> Any:
    """``run.mode: async``: episodes keep running while the learner trains, with at most
    ``rollout.max_staleness`` versions between a token's sampler and the weights it trains
    (docs/async.md); ``next_batch(step)`` replaces ``collect_batch``."""
    from agentrl.rollout.async_collector import AsyncCollector

    r = cfg.rollout
    return AsyncCollector(rollout, sampler, group_size=r.group_size, tasks_per_step=r.tasks_per_step, max_staleness=r.max_staleness,
                          order=r.async_order, turns_per_step=r.turns_per_step)


def make_rollout(cfg: TrainConfig, model: Any, tokenizer: Any) -> Any:
    if cfg.run.backend == "ray":
        from agentrl.distributed.ray_backend import RayRollout

        return RayRollout(cfg, model, tokenizer)
    from agentrl.rollout.local import LocalRollout

    return LocalRollout(cfg, model, tokenizer)


def _config_version(summary: dict[str, Any], label: str) -> int | None:
    """The settings version an evaluation in the summary was measured under (0 for runs from
    before versions were recorded); None without that evaluation."""
    ev = summary.get(label)
    return None if ev is None else int(ev.get(f"eval/{label}/config_version", 0))


def _state(learner: Any, sampler: Any, summary: dict[str, Any]) -> dict[str, Any]:
    return {"learner": learner.state_dict(), "sampler": sampler.state_dict(), "summary": summary}


def _progress(cfg: TrainConfig, start: int) -> Any:
    if not cfg.logging.progress:
        return None
    from tqdm.auto import tqdm

    from agentrl.metrics import progress_interval

    return tqdm(total=cfg.trainer.total_steps, initial=start, desc=f"train {cfg.run.name}", unit="step", mininterval=progress_interval())



def _save_samples(out: Path, step: int, trajs: list[Any], n: int) -> None:
    if n <= 0:
        return
    with (out / "samples.jsonl").open("a") as f:
        for t in trajs[:n]:
            f.write(json.dumps({"train_step": step, "task_id": t.task_id, "reward": t.reward, "success": t.success, "messages": t.messages}) + "\n")
