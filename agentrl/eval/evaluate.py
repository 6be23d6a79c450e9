"""``agentrl eval``: play a policy on held-out tasks of one or more envs and measure it.

The policy is an HF model folder, a run folder of ``agentrl train`` (its latest checkpoint,
with the run's env and rollout settings as defaults), or, with ``--engine openai``, a model
name served by an OpenAI-compatible server. Episodes are played by the same AgentLoop and
engines as training (no generation code of its own): ``episodes`` held-out tasks, each
``samples`` times (group members differ in sampling seed), at ``temperature``.

Metrics per env: success rate, mean return, turns, generated tokens, truncation, failed
episodes, tool errors per episode by status (``invalid_call``, ``runtime_error``,
``timeout``, ...), and pass@k per task (the unbiased estimator of Chen et al. 2021, averaged
over tasks; episodes that failed outside the policy count as unsuccessful samples).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .stats import pass_at_k

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    """What ``agentrl eval`` runs. ``None`` fields take the run folder's setting when the
    policy is a run folder, else the default named in the field comment."""

    policy: str
    envs: list[str] = field(default_factory=list)  # default: the run's env.id
    episodes: int = 32  # held-out tasks per env
    samples: int | None = None  # per task; default max(ks)
    ks: list[int] = field(default_factory=lambda: [1])
    split: str | None = None  # default "test" (a run's env.eval_split)
    temperature: float | None = None  # default 1.0 (a run's rollout.eval_temperature)
    engine: str = "hf"
    base_url: str | None = None
    tokenizer: str | None = None  # default: the policy folder (openai: required unless a run folder)
    chat_template: str | None = None
    env_options: dict[str, Any] | None = None  # default {} (a run's env.eval_kwargs or env.kwargs)
    max_new_tokens: int | None = None  # default 128
    max_total_tokens: int | None = None  # default 4096
    tools_in_prompt: bool | None = None  # default True
    num_envs: int | None = None  # default: the run's env.num_envs, else 16
    context: dict[str, Any] | None = None  # rollout.context form; default: the run's, else full (one sequence)
    seed: int = 0
    imports: list[str] = field(default_factory=list)


def resolve_policy(policy: str) -> tuple[str, dict[str, Any] | None]:
    """(model path or name, the run's resolved config or None). A run folder (config.yaml +
    checkpoints/) gives its latest checkpoint's model; a checkpoint's ``model`` folder inside
    a run gives that model and the run's config."""
    from agentrl.learner.checkpoint import latest_checkpoint

    p = Path(policy).expanduser()
    if (p / "config.yaml").is_file() and (p / "checkpoints").is_dir():
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise FileNotFoundError(f"run folder {policy!r} has no complete checkpoint under checkpoints/")
        return str(ckpt / "model"), yaml.safe_load((p / "config.yaml").read_text())
    run_dir = p.parents[2] if p.name == "model" and len(p.parents) > 2 else None  # <run>/checkpoints/step_N/model
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        return str(p), yaml.safe_load((run_dir / "config.yaml").read_text())
    return policy, None


def check_policy_path(policy: str, *, env_given: bool) -> None:
    """Fail fast (FileNotFoundError) for a policy that is not an existing path and either looks
    like a local one (:func:`agentrl.config.looks_like_local_path`: it would otherwise be
    looked up on the Hugging Face Hub, retrying the network) or is all there is to say which
    env to evaluate on (no --env)."""
    from agentrl.config import looks_like_local_path

    if Path(policy).expanduser().exists():
        return
    if looks_like_local_path(policy):
        raise FileNotFoundError(
            f"policy path {policy!r} does not exist; pass a run folder of `agentrl train` (e.g. runs/NAME), "
            f"a checkpoint's model folder, an HF model folder or a Hugging Face Hub id (org/name)"
        )
    if not env_given:
        raise FileNotFoundError(
            f"policy path {policy!r} does not exist, and without --env only a run folder as --policy says which env "
            f"to evaluate on; pass an existing run folder, or --env ID for a Hugging Face Hub model"
        )


def fill_defaults(s: EvalSettings, run_cfg: dict[str, Any] | None) -> EvalSettings:
    """Settings with every None replaced (from the run config when there is one)."""
    env = (run_cfg or {}).get("env", {})
    ro = (run_cfg or {}).get("rollout", {})
    return dataclasses.replace(
        s,
        envs=s.envs or ([env["id"]] if env.get("id") else []),
        samples=s.samples if s.samples is not None else max(s.ks),
        split=s.split or env.get("eval_split", "test"),
        temperature=s.temperature if s.temperature is not None else float(ro.get("eval_temperature", 1.0)),
        env_options=s.env_options if s.env_options is not None else dict(env.get("eval_kwargs") or env.get("kwargs") or {}),
        num_envs=s.num_envs or int(env.get("num_envs") or 16),
        max_new_tokens=s.max_new_tokens or int(ro.get("max_new_tokens", 128)),
        max_total_tokens=s.max_total_tokens or int(ro.get("max_total_tokens", 4096)),
        tools_in_prompt=s.tools_in_prompt if s.tools_in_prompt is not None else bool(ro.get("tools_in_prompt", True)),
        context={**dict(ro.get("context") or {"policy": "full"}), **(s.context or {})},
        chat_template=s.chat_template or (run_cfg or {}).get("model", {}).get("chat_template"),
        imports=s.imports or list((run_cfg or {}).get("run", {}).get("imports") or []),
    )


def check_settings(s: EvalSettings) -> None:
    """Raise ValueError with the fix for settings that cannot work."""
    import agentrl.envs as envs

    if not s.envs:
        raise ValueError("no env to evaluate on: pass --env ID (or a run folder as --policy)")
    known = envs.list_envs()
    for env_id in s.envs:
        if env_id not in known:
            from agentrl.envs.base import suggest

            raise ValueError(f"unknown environment {env_id!r}.{suggest(env_id, known)} Registered: {', '.join(known)}")
    if s.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {s.episodes}")
    if min(s.ks) < 1 or max(s.ks) > (s.samples or 0):
        raise ValueError(f"pass@k needs 1 <= k <= samples per task; got k={s.ks} with --samples {s.samples}; raise --samples to at least {max(s.ks)}")
    if s.engine not in ("hf", "vllm", "openai"):
        raise ValueError(f"--engine must be hf, vllm or openai, got {s.engine!r}")
    if s.engine == "openai" and not s.base_url:
        raise ValueError("--engine openai needs --base-url (e.g. http://localhost:8000/v1)")


def _engine(s: EvalSettings, model_path: str, tokenizer: Any) -> Any:
    """The training code's engine factory on a config holding just what it reads."""
    from agentrl.config import TrainConfig
    from agentrl.rollout.local import make_engine

    cfg = TrainConfig()
    cfg.model.path, cfg.rollout.engine, cfg.rollout.openai_base_url = model_path, s.engine, s.base_url
    cfg.env.num_envs, cfg.run.seed = s.num_envs, s.seed
    model = None
    if s.engine == "hf":
        from agentrl.learner.policy import load_model

        model = load_model(model_path)
        model.eval()
    return make_engine(cfg, model, tokenizer)


def env_metrics(trajs: list[Any], *, samples: int, ks: list[int]) -> dict[str, Any]:
    """Metrics of one env's episodes, listed task by task with ``samples`` consecutive
    episodes per task (the order :func:`episode_specs` makes)."""
    from agentrl.rollout.local import summarize

    base = summarize(trajs, prefix="eval")
    out: dict[str, Any] = {k.split("/", 1)[1]: v for k, v in base.items()}
    statuses: dict[str, float] = {}
    for t in trajs:
        for k, v in t.metrics.items():
            if k.startswith("tool_status/"):
                statuses[k.split("/", 1)[1]] = statuses.get(k.split("/", 1)[1], 0.0) + float(v)
    out["tool_errors_by_status"] = {k: v / max(len(trajs), 1) for k, v in sorted(statuses.items())}
    tasks = [trajs[i: i + samples] for i in range(0, len(trajs), samples)]
    out["tasks"] = len(tasks)
    out["samples_per_task"] = samples
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(len(g), sum(bool(t.success) and not t.failed for t in g), k) for g in tasks) / len(tasks)
    return out


def episode_specs(num_tasks: int, s: EvalSettings) -> list[Any]:
    """The held-out episodes of training's evaluation (same tasks and env seeds for the same
    seed), each repeated ``samples`` times with sample_index 0..samples-1."""
    from agentrl.rollout.tasks import eval_specs

    return [dataclasses.replace(spec, sample_index=j) for spec in eval_specs(num_tasks, s.episodes, split=s.split or "test", seed=s.seed) for j in range(s.samples or 1)]


class EpisodeProgress:
    """Progress of one evaluation: episodes done / total and successes so far, as a tqdm bar on
    stderr redrawn every :func:`agentrl.metrics.progress_interval` seconds (0.1 on a terminal;
    30 when stderr is a file or a pipe, so a log gets a line every 30 s plus the final one).
    Call it with each finished Trajectory (the ``on_done`` of ``collect``/``evaluate``).
    ``enabled=False`` counts without drawing (training's ``logging.progress: false``).
    ``leave=None``: keep the finished bar only when stderr is not a terminal (a log keeps the
    final count; on a terminal the line is cleared, below training's own bar)."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, leave: bool | None = True) -> None:
        self.total, self.done, self.successes, self.failed = total, 0, 0, 0
        self.bar = None
        if enabled:
            import sys

            from tqdm.auto import tqdm

            from agentrl.metrics import progress_interval

            leave = (not sys.stderr.isatty()) if leave is None else leave
            self.bar = tqdm(total=total, desc=desc, unit="episode", mininterval=progress_interval(), leave=leave)

    def __call__(self, traj: Any) -> None:
        self.done += 1
        self.failed += bool(traj.failed)
        self.successes += bool(traj.success) and not traj.failed
        if self.bar is not None:
            failed = f" ({self.failed} failed)" if self.failed else ""
            self.bar.set_postfix_str(f"success {self.successes}/{self.done}{failed}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def checkpoint_step(model_path: str) -> int | None:
    """The train_step of a run's checkpoint model folder (``.../checkpoints/step_N/model``),
    else None."""
    from agentrl.learner.checkpoint import PREFIX

    p = Path(model_path)
    name = p.parent.name if p.name == "model" else ""
    return int(name[len(PREFIX):]) if name.startswith(PREFIX) and name[len(PREFIX):].isdigit() else None


def evaluate_policy(settings: EvalSettings, *, progress: bool = True, save_episodes: int = 0, episodes_dir: str | Path | None = None) -> dict[str, Any]:
    """Play the policy on every env of ``settings``; returns a JSON-ready dict with the
    settings used and per-env metrics. Raises ValueError/FileNotFoundError for bad input.
    ``progress``: an :class:`EpisodeProgress` bar per env. ``save_episodes`` > 0: the first
    that many episodes of each env (in --env order) go to ``episodes_dir/samples.jsonl``
    (replaced), written by training's own samples.jsonl writer; ``train_step`` is the
    checkpoint's step for a run checkpoint, else null."""
    if save_episodes < 0:
        raise ValueError(f"--save-episodes must be >= 0 (episodes per env to save), got {save_episodes}")
    if save_episodes and episodes_dir is None:
        raise ValueError(f"--save-episodes {save_episodes} needs a folder for samples.jsonl; pass --json PATH (the episodes go to <PATH without .json>_episodes/samples.jsonl)")
    if settings.engine != "openai":  # a served model's name may be a path on the server
        check_policy_path(settings.policy, env_given=bool(settings.envs))  # before importing torch
    import agentrl.envs as envs
    from agentrl.config import import_modules
    from agentrl.learner.policy import load_tokenizer
    from agentrl.models.chat import ChatFormat
    from agentrl.rollout.agent_loop import AgentLoop
    from agentrl.rollout.context import check_cap, make_context_policy
    from agentrl.rollout.engines import SamplingParams
    from agentrl.sandboxes import run_sync

    model_path, run_cfg = resolve_policy(settings.policy)
    s = fill_defaults(settings, run_cfg)
    import_modules(s.imports, source="--import" if settings.imports else "run.imports")
    check_settings(s)
    if s.engine == "openai" and not s.tokenizer and not Path(model_path).exists():
        raise ValueError(f"--engine openai with model name {model_path!r}: pass --tokenizer (an HF tokenizer folder or name for that model) so prompts are tokenized as the server expects")
    tokenizer = load_tokenizer(s.tokenizer or model_path, s.chat_template)
    chat = ChatFormat(tokenizer)
    c = s.context or {}
    context = make_context_policy(c.get("policy", "full"), window=c.get("window"), marker=c.get("marker", True), options=c.get("options"))
    engine = _engine(s, model_path, tokenizer)
    params = SamplingParams(temperature=float(s.temperature or 1.0), max_new_tokens=int(s.max_new_tokens or 128))
    result: dict[str, Any] = {"policy": settings.policy, "model": model_path, "settings": {k: v for k, v in dataclasses.asdict(s).items() if k != "policy"}, "envs": {}}
    if save_episodes:
        samples = Path(episodes_dir) / "samples.jsonl"  # type: ignore[arg-type]
        samples.parent.mkdir(parents=True, exist_ok=True)
        samples.unlink(missing_ok=True)  # _save_samples appends: a new evaluation replaces the file
    try:
        for env_id in s.envs:
            instances = [envs.make(env_id, **(s.env_options or {})) for _ in range(max(1, min(s.num_envs, s.episodes * (s.samples or 1))))]
            if not context.full:  # a per-turn cap that cannot hold the task and one turn: say so, do not play 0-turn episodes
                try:
                    check_cap(chat, context, instances[0], cap=int(s.max_total_tokens or 4096), max_new_tokens=int(s.max_new_tokens or 128),
                              tools_in_prompt=bool(s.tools_in_prompt), split=s.split or "test")
                except BaseException:
                    for e in instances:
                        e.close()
                    raise
            loop = AgentLoop(instances, engine, chat, params, max_total_tokens=int(s.max_total_tokens or 4096), tools_in_prompt=bool(s.tools_in_prompt),
                             context=context)
            try:
                specs = episode_specs(instances[0].unwrapped.num_tasks(s.split or "test"), s)
                t0 = time.perf_counter()
                bar = EpisodeProgress(len(specs), f"eval {env_id}", enabled=progress)
                try:
                    trajs = run_sync(loop.collect(specs, on_done=bar))
                finally:
                    bar.close()
                metrics = env_metrics(trajs, samples=s.samples or 1, ks=s.ks)
                metrics["wall_time_s"] = time.perf_counter() - t0
            finally:
                loop.close()
            log.info("%s: success %.3f over %d episodes", env_id, metrics["success"], len(trajs))
            result["envs"][env_id] = metrics
            if save_episodes:
                from agentrl.train import _save_samples  # the samples.jsonl writer of training

                _save_samples(samples.parent, checkpoint_step(model_path), trajs, save_episodes)  # type: ignore[arg-type]
                result["episodes_file"] = str(samples)
    finally:
        engine.close()
    return result


def print_tables(result: dict[str, Any], console: Any = None) -> None:
    """Rich tables, one column per env (narrow enough for a terminal): the headline metrics,
    then tool errors per episode by status."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    envs_ = result["envs"]
    ks = sorted({int(k.split("@")[1]) for m in envs_.values() for k in m if k.startswith("pass@")})

    def f(x: float, d: int = 3) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"

    st = result["settings"]
    console.print(f"agentrl eval: {result['policy']}\n  model {result['model']}, split {st['split']}, temperature {st['temperature']:g}, engine {st['engine']}")
    table = Table(title="held-out evaluation")
    table.add_column("metric")
    for env_id in envs_:
        table.add_column(env_id.split("/", 1)[-1], justify="right")
    rows = [
        ("episodes (tasks x samples)", lambda m: f"{int(m['episodes'])} ({m['tasks']} x {m['samples_per_task']})"),
        ("success rate", lambda m: f(m["success"])),
        ("mean return", lambda m: f(m["reward_mean"])),
        ("turns per episode", lambda m: f(m["turns_mean"], 1)),
        ("generated tokens per episode", lambda m: f(m["generated_tokens_mean"], 1)),
        ("truncated fraction", lambda m: f(m["truncated_frac"])),
        ("failed fraction (not the policy)", lambda m: f(m["failed_frac"])),
        ("tool errors per episode", lambda m: f(m["tool_errors_mean"], 2)),
        *((f"pass@{k}", (lambda m, k=k: f(m[f"pass@{k}"]))) for k in ks),
        ("wall time (s)", lambda m: f(m["wall_time_s"], 1)),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(m) for m in envs_.values()))
    console.print(table)
    statuses = sorted({s for m in envs_.values() for s in m["tool_errors_by_status"]})
    if statuses:
        errors = Table(title="tool errors per episode, by status")
        errors.add_column("status")
        for env_id in envs_:
            errors.add_column(env_id.split("/", 1)[-1], justify="right")
        for status in statuses:
            errors.add_row(status, *(f(m["tool_errors_by_status"].get(status, 0.0), 2) for m in envs_.values()))
        console.print(errors)
