"""Typed experiment configs: dataclasses with a docstring per field, complete flat YAML files,
dotted ``key=value`` overrides, and unknown keys rejected with a suggestion.

    cfg = load_config("configs/quickstart.yaml", overrides=["trainer.total_steps=5"])

Every problem is reported before any work starts (:class:`ConfigError`), with the file, the
dotted key, what was received and what is accepted.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentrl.ranges import range_problem


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says where and how to fix."""


@dataclass
class RunConfig:
    """What this run is and where it writes."""

    name: str = "run"
    """Run name (used in logs and reports)."""
    output_dir: str = "runs/run"
    """Folder for checkpoints, metrics.jsonl, plots and the resolved config."""
    seed: int = 0
    """Seed for model init, task order, sampling and the env."""
    backend: str = "local"
    """"local" (one process) or "ray" (rollout and learner as Ray actors)."""
    mode: str = "sync"
    """"sync" (generate then train) or "async" (rollouts keep going while the learner trains,
    within rollout.max_staleness; docs/async.md)."""
    ray_address: str | None = None
    """Ray cluster address for backend "ray"; None starts a local cluster."""
    device: str = "cpu"
    """Torch device of the learner ("cpu", "cuda")."""
    num_threads: int = 1
    """Torch intra-op CPU threads. 1 is fastest for tiny models and whenever other work (env
    steps, sandboxes) shares the cores: measured on 2 cores under load, a tiny-model forward
    took 7x longer with 2 threads than with 1. Raise it for bigger models on many idle cores."""
    resume: bool = True
    """Continue from the latest checkpoint in output_dir when there is one."""
    imports: list[str] = field(default_factory=list)
    """Modules imported before anything else, here and in every Ray worker: dotted names
    (``mypkg.envs``) or paths to ``.py`` files. How envs registered outside agentrl (and
    outside an installed entry point) reach Ray workers, which are separate processes."""


@dataclass
class ModelInitConfig:
    """A tiny model to create locally when ``model.path`` does not exist yet."""

    arch: str = "qwen2"
    """"qwen2" or "llama"."""
    template: str = "chatml"
    """Chat template: "chatml", "llama3" or "qwen3"."""
    vocab_size: int = 1024
    """BPE vocabulary size (bytes + merges + special tokens)."""
    hidden_size: int = 128
    """Model width."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    initializer_range: float = 0.02
    """Std of the normal init of the weights (HF's default 0.02). Tiny models learn to copy from
    tool output much sooner with about ``1/sqrt(hidden_size)``; the quickstart uses 0.1."""
    corpus_episodes: int = 200
    """Expert episodes of the training env used to train the tokenizer."""


@dataclass
class ModelConfig:
    """The policy model."""

    path: str = ""
    """HF model name or local folder (loaded with AutoModelForCausalLM)."""
    init: ModelInitConfig | None = None
    """Create a tiny model at ``path`` first if the folder does not exist."""
    chat_template: str | None = None
    """Override the tokenizer's chat template with a shipped one ("chatml", "llama3", "qwen3")."""
    dtype: str = "float32"
    """Parameter dtype: "float32" or "bfloat16"."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""


@dataclass
class EnvConfig:
    """The environment trained on."""

    id: str = "agentrl/ShellQuest-v0"
    """Gymnasium id of a registered agentrl env."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Options passed to the env constructor."""
    eval_kwargs: dict[str, Any] | None = None
    """Constructor options for evaluation envs (default: same as kwargs)."""
    num_envs: int = 16
    """Env instances, i.e. concurrent episodes during rollout."""
    train_split: str = "train"
    """Split the training tasks come from."""
    eval_split: str = "test"
    """Held-out split for evaluation."""
    step_timeout_s: float | None = None
    """Longest one env step (tool calls included) may take; past it the episode ends as
    failed (reason ``env_timeout``) and the others go on. None: the env class's own
    ``step_timeout_s`` (300 s in ToolEnv)."""
    reset_timeout_s: float | None = None
    """Longest an env reset may take (None: the env class's ``reset_timeout_s``, 300 s)."""
    close_timeout_s: float = 60.0
    """Longest closing an env instance may take at the end of a run; past it the close is
    abandoned (logged) so a stuck env never keeps a finished run from ending."""


@dataclass
class FaultConfig:
    """One injected fault, for testing that failures stay contained (docs/faults.md). Which
    opportunities it hits is a pure function of (episode seed, group member, turn, point), so
    a run with faults is as reproducible as one without."""

    point: str = "step"
    """Where: "reset" (env reset), "before_generate", "after_generate" (between the engine's
    answer and the env step), "step" (inside env.step) or "close" (closing an env instance)."""
    kind: str = "raise"
    """What: "raise" (an exception), "hang" (never returns; the point's timeout must end it),
    "garbage" (a malformed result: token ids outside the vocabulary from the engine, a
    non-message observation or a NaN reward from the env) or "kill_sandbox" (the env's
    sandbox sessions are killed, at "after_generate")."""
    rate: float = 1.0
    """Fraction of the opportunities hit, in [0, 1]."""
    turn: int | None = None
    """Only at this turn index (None: any turn)."""
    evaluation: bool = False
    """Also inject into held-out evaluation episodes (default: training episodes only)."""


@dataclass
class ContextConfig:
    """What each turn's prompt holds (docs/long_horizons.md; agentrl.rollout.context)."""

    policy: str = "full"
    """"full": the episode is one growing sequence, trained as one sample (the default).
    "window": each turn's prompt is the system prompt, the task and the last ``window`` turns,
    and each turn is its own training sample. "summary": the same plus the env's
    ``state_summary()`` as a memory string. Or a policy registered in
    ``agentrl.rollout.context.CONTEXT_POLICIES`` (a file in ``run.imports``)."""
    window: int | None = None
    """Turns each prompt shows, the most recent ones (None: the policy's default, 4 for
    window, 2 for summary). Not used by "full"."""
    marker: bool = True
    """Say in the prompt how many earlier turns were left out."""
    options: dict[str, Any] = field(default_factory=dict)
    """Further options of a registered policy."""


@dataclass
class RolloutConfig:
    """How trajectories are sampled."""

    engine: str = "hf"
    """"hf" (transformers, CPU), "vllm" (GPU) or "openai" (HTTP server, eval only)."""
    group_size: int = 8
    """G: trajectories per task (a GRPO group)."""
    tasks_per_step: int = 8
    """Distinct tasks per train_step; the batch holds tasks_per_step * group_size trajectories."""
    turns_per_step: int | None = None
    """Batches counted in turns (a turn-level ``context.policy``): a train_step takes whole
    groups until the batch holds at least this many turn samples, so episodes of 5 and of 500
    turns give batches of about the same size. Sync mode plays rounds of tasks_per_step groups
    to the end; async mode takes finished groups, and episodes running at the cut go on with
    the next weights (docs/long_horizons.md). None: tasks_per_step groups."""
    temperature: float = 1.0
    """Sampling temperature (logprobs and entropy are computed at it)."""
    top_p: float = 1.0
    """Nucleus sampling."""
    top_k: int = 0
    """Top-k sampling (0: off)."""
    max_new_tokens: int = 128
    """Cap on tokens per assistant turn."""
    max_total_tokens: int = 4096
    """Token budget of an episode, prompt included; reaching it truncates the episode."""
    tools_in_prompt: bool = True
    """Render the env's tool schemas into the prompt. False for tiny models trained from
    scratch: they learn the call format from SFT, and the schemas would triple their context."""
    eval_temperature: float = 1.0
    """Temperature for evaluation episodes."""
    max_staleness: int = 0
    """Async mode: most versions (train_steps) a trained token may lag the weights it is
    trained from; at most (max_staleness + 1) x tasks_per_step groups are in flight. 0 trains
    exactly what sync mode trains (docs/async.md)."""
    async_order: str = "completion"
    """Async mode: which finished groups a train_step takes. "completion": in finishing order,
    plus the groups that would otherwise outlive max_staleness (the learner waits for them), so
    long episodes are never starved; "fifo": in the order the groups started."""
    kv_cache: bool = True
    """Engine "hf": keep each episode's KV cache between turns and batch continuously (a turn
    prefills only the tokens the env appended; docs/engine_cache.md). False: every turn
    re-prefills the whole episode, batch at once (the previous path; an escape hatch)."""
    vllm: dict[str, Any] = field(default_factory=dict)
    """Extra vllm.LLM arguments (gpu_memory_utilization, max_model_len, tensor_parallel_size,
    ...). ``dtype`` defaults to ``model.dtype`` (vLLM's "auto" would serve a float32 model as
    float16, and the behavior logprobs would drift from the learner's)."""
    openai_base_url: str | None = None
    """Base URL of an OpenAI-compatible server for engine "openai"."""
    generate_timeout_s: float = 0.0
    """Longest one generation request (an assistant turn) may wait for the engine; past it
    the episode ends as failed (reason ``engine_timeout``). 0: no limit."""
    faults: list[FaultConfig] = field(default_factory=list)
    """Injected faults (testing; empty by default): see FaultConfig and docs/faults.md."""
    context: ContextConfig = field(default_factory=ContextConfig)
    """Context policy: one sequence per episode ("full") or one training sample per turn
    with a prompt built by a memory policy ("window", "summary"). Under a turn policy,
    ``max_total_tokens`` caps each turn's prompt plus its generation (the context window),
    not the episode; the env's own turn limit ends long episodes."""


@dataclass
class SFTConfig:
    """Supervised warm start on expert trajectories before RL."""

    enabled: bool = False
    """Run SFT before RL (skipped on resume when RL already started)."""
    episodes: int = 400
    """Expert episodes from the train split."""
    epochs: int = 3
    """Passes over the expert data (used when ``steps`` is 0)."""
    steps: int = 0
    """Optimizer steps on random batches of the expert data (overrides ``epochs`` when > 0)."""
    warmup_steps: int = 0
    """Linear learning-rate warmup steps."""
    lr: float = 1e-3
    """Learning rate."""
    batch_size: int = 16
    """Sequences per optimizer step."""
    max_tokens: int = 4096
    """Longest expert sequence kept."""
    max_failed_frac: float = 0.5
    """Expert episodes that fail (an env error, a timeout) are skipped, counted and logged;
    SFT stops with an error only when more than this fraction of them failed."""


@dataclass
class TrainerConfig:
    """The learner."""

    total_steps: int = 100
    """train_steps to run."""
    lr: float = 1e-5
    """AdamW learning rate."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    lr_schedule: str = "constant"
    """"constant" or "cosine" after warmup."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Max global grad norm (0: off)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    mini_batches: int = 1
    """Optimizer steps per epoch (the batch is split into this many mini-batches)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward (gradient accumulation inside a mini-batch)."""
    logits_chunk_size: int = 1024
    """Tokens per chunk when computing logprobs/entropy through the LM head."""
    group_by_length: bool = True
    """Assign each mini-batch's rows to micro-batches by length (longest first; every forward is
    cut to its rows' longest episode; on one process a micro-batch also closes before padding
    would be more than half of it), so one long episode widens only its own, smaller
    micro-batch. Used only where it cannot change the update (the loss has mini-batch-wide
    denominators); off regardless for methods that select or measure per micro-batch
    (clip_cov, kl_cov, archer with its KL, bapo, entropic, forking_tokens with entropy_source
    current; see ``agentrl.learner.learner.grouping_blocker``). Means over micro-batches among
    the metrics (policy/ratio_mean, ...) can move; the update does not."""
    checkpoint_every: int = 10
    """Save a checkpoint every N train_steps (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk."""
    eval_every: int = 0
    """Evaluate on the held-out split every N train_steps (0: only before and after)."""
    eval_episodes: int = 64
    """Held-out episodes per evaluation."""


@dataclass
class RayConfig:
    """Actors for ``run.backend: ray`` (the local backend ignores this section).
    See docs/distributed.md."""

    num_cpus: int | None = None
    """CPUs of the local Ray cluster agentrl starts when ``run.ray_address`` is None
    (None: all cores). Ignored when connecting to a cluster."""
    env_workers: int = 2
    """EnvWorker actors; ``env.num_envs`` env instances are split across them."""
    generation_workers: int = 1
    """GenerationWorker actors, each with its own engine and copy of the weights."""
    learner_ranks: int = 1
    """LearnerRank actors; more than one shards the policy with torch FSDP2."""
    cpus_per_env_worker: float = 0.0
    """CPUs Ray reserves per EnvWorker (they mostly wait on sandboxes and generation)."""
    cpus_per_generation_worker: float = 1.0
    """CPUs Ray reserves per GenerationWorker."""
    gpus_per_generation_worker: float = 0.0
    """GPUs per GenerationWorker (1 for a vLLM engine; fractions share a GPU)."""
    cpus_per_learner_rank: float = 1.0
    """CPUs Ray reserves per LearnerRank."""
    gpus_per_learner_rank: float = 0.0
    """GPUs per LearnerRank (1 with ``run.device: cuda``). A fraction only with one rank: two
    FSDP ranks on one GPU fail in NCCL, so load_config refuses it with ``learner_ranks > 1``."""
    startup_timeout_s: float = 600.0
    """Longest wait for actors to start (imports, model build) before failing with a message."""
    health_check_s: float = 2.0
    """Seconds between liveness pings of each worker during a rollout."""
    episode_timeout_s: float = 0.0
    """An episode running longer is recorded as failed and cancelled (0: no limit)."""


@dataclass
class LoggingConfig:
    """Where metrics go."""

    tensorboard: bool | None = None
    """Also write TensorBoard events: None (default) when tensorboard is installed (an info line
    says so when it is not), true to ask for them (a warning when it is not installed), false never."""
    wandb: bool = False
    """Also log to Weights & Biases: one W&B run per training run, with the resolved config and
    each metrics row at step train_step (docs/logging.md). Needs the extra: ``pip install
    'agentrl[wandb]'``; the config check fails when wandb cannot be imported."""
    wandb_project: str = "agentrl"
    """W&B project of the runs (1 to 128 characters, none of ``/ \\ # ? % :``)."""
    wandb_entity: str | None = None
    """W&B user or team owning the project; None: the logged-in account's default entity."""
    wandb_name: str | None = None
    """Display name of the W&B run; None: run.name."""
    wandb_tags: list[str] = field(default_factory=list)
    """Tags of the W&B run, each 1 to 64 characters (e.g. the method and the env)."""
    wandb_mode: str | None = None
    """"online" (stream to the W&B server), "offline" (write to the run folder's wandb/, or to
    $WANDB_DIR when set; upload later with ``wandb sync``) or "disabled" (log nothing); None: W&B's own choice (the
    WANDB_MODE variable, else what ``wandb online``/``wandb offline`` set, else online)."""
    progress: bool = True
    """Show a progress bar."""
    log_trajectories: int = 2
    """Transcripts saved per train_step (samples.jsonl)."""


@dataclass
class TrainConfig:
    """A complete experiment: what ``agentrl train CONFIG.yaml`` runs."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    algorithm: Any = field(default_factory=lambda: _parse_algorithm({}), metadata={"parse": lambda v, where, done: _parse_algorithm(v, done)})
    """The methods library's algorithm section: an
    :class:`agentrl.algorithms.config.AlgorithmConfig`, parsed and validated once, when the
    config is built (:func:`from_dict`; ``run.imports`` are imported first, since they may
    register components). Everything downstream takes this object, never the raw mapping."""
    ray: RayConfig = field(default_factory=RayConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# ----------------------------------------------------------------------------- valid values
UINT32 = "[0, 4294967295]"
"""Seeds: numpy takes 0 .. 2**32 - 1."""

RANGES: dict[type, dict[str, str]] = {
    RunConfig: {"seed": UINT32, "num_threads": ">= 1"},
    ModelInitConfig: {
        "vocab_size": ">= 257; 256 bytes + special tokens + merges",
        "hidden_size": ">= 2", "num_layers": ">= 1", "num_heads": ">= 1", "num_kv_heads": ">= 1",
        "initializer_range": "> 0", "corpus_episodes": ">= 1",
    },
    ContextConfig: {"window": ">= 1; the turns each prompt shows"},
    EnvConfig: {"num_envs": ">= 1", "step_timeout_s": "> 0", "reset_timeout_s": "> 0", "close_timeout_s": "> 0"},
    FaultConfig: {"rate": "[0, 1]", "turn": ">= 0"},
    RolloutConfig: {
        "group_size": ">= 1", "tasks_per_step": ">= 1",
        "temperature": "> 0; use a small value like 0.05 for near-greedy sampling (engine vllm: >= 0.01)", "top_p": "(0, 1]", "top_k": ">= 0",
        "max_new_tokens": ">= 1", "max_total_tokens": ">= 1",
        "eval_temperature": "> 0; use a small value like 0.05 for near-greedy sampling (engine vllm: >= 0.01)",
        "max_staleness": ">= 0", "generate_timeout_s": ">= 0; 0: no limit",
        "turns_per_step": ">= 1; turn samples per train_step (null: off)",
    },
    SFTConfig: {
        "episodes": ">= 1", "epochs": ">= 1", "steps": ">= 0; 0: use epochs", "warmup_steps": ">= 0", "lr": "> 0",
        "batch_size": ">= 1", "max_tokens": ">= 1", "max_failed_frac": "[0, 1]",
    },
    TrainerConfig: {
        "total_steps": ">= 0", "lr": "> 0", "warmup_steps": ">= 0", "weight_decay": ">= 0",
        "betas": "[0, 1)",  # each of the two (torch.optim.AdamW)
        "grad_clip": ">= 0; 0: off", "ppo_epochs": ">= 1", "mini_batches": ">= 1", "micro_batch_size": ">= 1",
        "logits_chunk_size": ">= 1", "checkpoint_every": ">= 1",
        "keep_checkpoints": ">= 1; the newest checkpoint is always kept", "eval_every": ">= 0; 0: only before and after",
        "eval_episodes": ">= 1",
    },
    RayConfig: {
        "num_cpus": ">= 1", "env_workers": ">= 1", "generation_workers": ">= 1", "learner_ranks": ">= 1",
        "cpus_per_env_worker": ">= 0", "cpus_per_generation_worker": ">= 0", "gpus_per_generation_worker": ">= 0",
        "cpus_per_learner_rank": "> 0; a Ray placement-group bundle needs a resource", "gpus_per_learner_rank": ">= 0",
        "startup_timeout_s": "> 0", "health_check_s": "> 0", "episode_timeout_s": ">= 0; 0: no limit",
    },
    LoggingConfig: {"log_trajectories": ">= 0"},
}
"""The valid values of every numeric field, per config class, wherever an instance sits
(``model.init``, each ``rollout.faults[i]``): ``">= 0"``, ``"> 0"``, ``"[0, 1]"``, ``"(0, 1]"``,
``"[0, 1)"``; ``"any"`` for any finite number. Every number must be finite (no nan, no inf).
An optional field (``float | None``) also takes null. Text after ``;`` is added to the message.
A tuple field's range applies to each element. :func:`validate` checks them generically;
tests/test_config.py fails when a numeric field of a config class has no entry here."""

FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "reset": ("raise", "hang", "garbage"),
    "before_generate": ("raise", "hang"),
    "after_generate": ("raise", "garbage", "kill_sandbox"),
    "step": ("raise", "hang", "garbage"),
    "close": ("raise", "hang"),
}
"""Injection points of :class:`FaultConfig` and the fault kinds each one takes."""

CHOICES: dict[type, dict[str, tuple[str, ...]]] = {
    RunConfig: {"backend": ("local", "ray"), "mode": ("sync", "async")},
    ModelInitConfig: {"arch": ("qwen2", "llama"), "template": ("chatml", "llama3", "qwen3")},
    ModelConfig: {"chat_template": ("chatml", "llama3", "qwen3"), "dtype": ("float32", "bfloat16")},
    FaultConfig: {"point": tuple(FAULT_KINDS), "kind": tuple(dict.fromkeys(k for kinds in FAULT_KINDS.values() for k in kinds))},
    RolloutConfig: {"engine": ("hf", "vllm", "openai"), "async_order": ("completion", "fifo")},
    TrainerConfig: {"lr_schedule": ("constant", "cosine")},
    LoggingConfig: {"wandb_mode": ("online", "offline", "disabled")},
}
"""The values a string field takes (agentrl.models.chat.TEMPLATE_NAMES, agentrl.models.tiny.ARCHS;
tests/test_config.py keeps them equal); checked like :data:`RANGES`."""


# ----------------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to annotation ``tp``; raises ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, where)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "", *, defer_parse: bool = False) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys with suggestions. A field
    whose ``metadata`` has a ``parse`` function (the ``algorithm`` section) is built by it,
    after the other fields: ``parse(value, key, built_fields)``; with ``defer_parse`` it keeps
    the raw value (``{}`` when absent) for :func:`validate` to parse last (it imports torch)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    later = []
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in hints:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {path!r}.{hint} Valid keys{' of ' + where if where else ''}: {', '.join(fields)}.")
        if "parse" in fields[key].metadata:
            later.append((key, value, path))
        else:
            kwargs[key] = _coerce(value, hints[key], path)
    if defer_parse:
        for name, f in fields.items():
            if "parse" in f.metadata and name not in data:
                kwargs[name] = {}
    for key, value, path in later:
        kwargs[key] = value if defer_parse else fields[key].metadata["parse"](value, path, kwargs)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if callable(getattr(v, "to_dict", None)):  # a section with its own YAML form (algorithm)
            return v.to_dict()
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def check_override_key(cls: type, item: str) -> None:
    """Raise ConfigError naming the override when the dotted key of ``item`` (``a.b.c=value``)
    is not a field of ``cls``'s sections, with the full corrected key as a suggestion. Keys
    under free-form mappings (``env.kwargs.*``) are not checked here."""
    key = item.split("=", 1)[0]
    parts, tp = key.split("."), cls
    for i, part in enumerate(parts):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if not dataclasses.is_dataclass(tp) and len(args) == 1 and dataclasses.is_dataclass(args[0]):
            tp = args[0]  # an optional section (model.init)
        if not dataclasses.is_dataclass(tp):
            return
        hints = typing.get_type_hints(tp)
        if part not in hints:
            where = ".".join(parts[:i])
            close = difflib.get_close_matches(part, list(hints), n=1)
            hint = f" Did you mean {'.'.join([*parts[:i], close[0]])!r}?" if close else ""
            raise ConfigError(f"override {item!r}: unknown config key {key!r}.{hint} "
                              f"Valid keys{' of ' + where if where else ''}: {', '.join(hints)}.")
        tp = hints[part]


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. trainer.total_steps=5)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            why = ", ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or type(e).__name__
            mark = getattr(e, "problem_mark", None)
            where = f" at character {mark.column + 1}" if mark is not None else ""
            raise ConfigError(
                f"override {item!r}: the value {raw!r} is not valid YAML ({why}{where}); values are parsed as YAML, "
                f"e.g. env.kwargs={{high: 16}} or run.name=my-run (quote a string holding ':', '{{' or '[')"
            ) from None
        node: Any = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):  # a list item by index: algorithm.shaping.0.k_f=1
                if not (part.isdigit() and int(part) < len(node)):
                    raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])} is a list of {len(node)} item(s), "
                                      f"so {part!r} must be an index 0..{len(node) - 1} (or set the whole list)")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])} is a value ({node!r}), not a section")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return data


WHOLE_SECTIONS = ("algorithm",)
"""Sections a config replaces whole instead of merging into its base's (a method is its whole
algorithm: CISPO on top of a GRPO + EMPG base must not keep EMPG's shaping)."""


def read_config_data(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a YAML experiment file with its ``base:`` chain resolved.

    ``base: other.yaml`` (relative to the file's folder) names a config this one extends:
    the file's mappings update the base's recursively (``trainer: {lr: 1e-4}`` changes only the
    learning rate, ``env: {kwargs: {horizon: 10}}`` only the horizon), except the sections in :data:`WHOLE_SECTIONS`
    (``algorithm``), which replace the base's whole. Bases may have bases. Raises ConfigError
    for a missing file, invalid YAML, a non-mapping, or a cycle of bases.
    """
    path = Path(path)
    if not path.is_file():
        siblings = sorted(p.name for p in path.parent.glob("*.y*ml")) if path.parent.is_dir() else []
        close = difflib.get_close_matches(path.name, siblings, n=1)
        hint = f" Did you mean {path.parent / close[0]}?" if close else ""
        raise ConfigError(f"config file {str(path)!r} does not exist.{hint} See configs/ for complete examples (e.g. configs/quickstart.yaml)")
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"{path}: 'base:' files form a cycle ({chain}); remove one of the base: lines")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    resolve_config_paths(data, path.parent)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be the path of another config file (relative to this one), got {base!r}")
    merged = read_config_data(path.parent / base, (*_seen, path.resolve()))
    _forget_other_env(merged, data)
    for section, value in data.items():
        merged[section] = value if section in WHOLE_SECTIONS else _deep_merge(merged.get(section), value)
    return merged


ENV_OPTION_KEYS = ("kwargs", "eval_kwargs")
"""The keys of the env section that are options of one env class: a layer (a file over its
base, or the overrides over the file) that switches ``env.id`` starts them afresh, so a config
for a new env can extend the quickstart without inheriting ShellQuest's ``env.kwargs``. The
other env keys (``num_envs``, splits, timeouts) are the same for every env and are kept."""


def _forget_other_env(below: dict[str, Any], layer: dict[str, Any]) -> None:
    """Drop ``below``'s env options when ``layer`` names a different ``env.id`` (in place)."""
    new_env, old_env = layer.get("env"), below.get("env")
    if not isinstance(new_env, dict) or not isinstance(old_env, dict) or "id" not in new_env:
        return
    if new_env["id"] != old_env.get("id", EnvConfig.id):
        for key in ENV_OPTION_KEYS:
            old_env.pop(key, None)


def resolve_config_paths(data: dict[str, Any], folder: Path) -> None:
    """Make the paths a config file *reads* relative to that file's folder (in place): its
    ``base:`` (read by :func:`read_config_data`) and the ``.py`` entries of ``run.imports``
    (made absolute here, so a base's imports stay relative to the base). Dotted module names,
    absolute paths and ``~`` paths are kept. Folders a run *writes* (``run.output_dir``, a
    ``model.path`` that ``model.init`` creates) stay relative to the working directory, as in
    other trainers. Overrides on the command line are relative to the working directory."""
    run = data.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("imports"), list):
        return
    run["imports"] = [
        str((folder / name).resolve()) if isinstance(name, str) and name.endswith(".py")
        and not Path(name).expanduser().is_absolute() and not name.startswith("~") else name
        for name in run["imports"]
    ]


def _deep_merge(base: Any, update: Any) -> Any:
    if isinstance(base, dict) and isinstance(update, dict):
        return {**base, **{k: _deep_merge(base.get(k), v) for k, v in update.items()}}
    return update


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML experiment file (resolving its ``base:`` chain, :func:`read_config_data`),
    apply overrides, validate. Raises ConfigError."""
    path = Path(path)
    data = read_config_data(path)
    for item in overrides or []:
        check_override_key(TrainConfig, item)
    applied = apply_overrides(copy.deepcopy(data), overrides or [])
    if (applied.get("env") or {}).get("id", EnvConfig.id) != (data.get("env") or {}).get("id", EnvConfig.id):
        # the overrides switch env.id: the file's env options belong to the old env (ENV_OPTION_KEYS);
        # the overrides that set env.kwargs.* for the new env apply to an empty mapping
        data["env"] = {k: v for k, v in (data.get("env") or {}).items() if k not in ENV_OPTION_KEYS}
        applied = apply_overrides(data, overrides or [])
    data = applied
    try:
        cfg = from_dict(TrainConfig, data, defer_parse=True)  # the algorithm section: parsed by validate, last
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    validate(cfg, source=str(path))
    return cfg


def _quoted_choices(choices: tuple[str, ...]) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def field_problems(obj: Any, where: str = "") -> str | None:
    """The first value of dataclass ``obj`` (and the config dataclasses inside it) outside its
    :data:`RANGES` or :data:`CHOICES`, as a one-line message naming the dotted key; None when
    every value is valid."""
    hints = typing.get_type_hints(type(obj))
    ranges, choices = RANGES.get(type(obj), {}), CHOICES.get(type(obj), {})
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{where}.{f.name}" if where else f.name
        if "parse" in f.metadata:  # validated by its own parser when built
            continue
        if dataclasses.is_dataclass(value):
            problem = field_problems(value, key)
        elif isinstance(value, list) and any(dataclasses.is_dataclass(v) for v in value):
            problem = next((p for i, v in enumerate(value) if (p := field_problems(v, f"{key}[{i}]"))), None)
        elif value is None:
            problem = None
        elif f.name in choices:
            options = choices[f.name]
            problem = None if value in options else f"{key} must be {_quoted_choices(options)}, got {value!r}"
        elif f.name in ranges and isinstance(value, tuple):
            problem = next((p for i, v in enumerate(value) if (p := range_problem(v, ranges[f.name], f"{key}[{i}]"))), None)
        elif f.name in ranges:
            problem = range_problem(value, ranges[f.name], key, _optional(hints[f.name]))
        else:
            problem = None
        if problem:
            return problem
    return None


VLLM_MIN_TEMPERATURE = 0.01
"""vLLM raises a temperature in (0, 0.01) to 0.01 (``vllm.sampling_params._MAX_TEMP``)."""


def validate(cfg: TrainConfig, source: str = "config") -> None:
    """Every check that can run before any work; raise ConfigError (one line naming the key).

    First each value against its :data:`RANGES` / :data:`CHOICES` entry, then the cross-field
    checks of the train config, then the ``algorithm:`` section (:func:`algorithm_config`,
    which imports agentrl.algorithms and so torch: last, so that the errors above come fast)."""

    def check(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{source}: {msg}")

    problem = field_problems(cfg)
    check(problem is None, problem or "")
    check(bool(cfg.model.path), "model.path is empty; give an HF model name or a local folder (with model.init to create a tiny one)")
    init = cfg.model.init
    if init is not None:
        check(init.hidden_size % init.num_heads == 0 and init.num_heads % init.num_kv_heads == 0,
              f"model.init.hidden_size ({init.hidden_size}) must divide by model.init.num_heads ({init.num_heads}) "
              f"and num_heads by model.init.num_kv_heads ({init.num_kv_heads})")
        check((init.hidden_size // init.num_heads) % 2 == 0,
              f"model.init: the head size hidden_size / num_heads = {init.hidden_size} / {init.num_heads} = "
              f"{init.hidden_size // init.num_heads} must be even (rotary position embeddings)")
        from agentrl.models.chat import TEMPLATE_TOKENS  # light: no torch, no transformers

        tokens = TEMPLATE_TOKENS[init.template]
        least = 256 + len([t for t in (tokens.pad, tokens.eos, tokens.bos, *tokens.extra) if t]) + 1
        check(init.vocab_size >= least, f"model.init.vocab_size must be >= {least} with template {init.template!r} "
              f"(256 bytes + its special tokens + merges), got {init.vocab_size}")
    batch = cfg.rollout.group_size * cfg.rollout.tasks_per_step
    check(
        batch % cfg.trainer.mini_batches == 0,
        f"the batch of {batch} trajectories (tasks_per_step {cfg.rollout.tasks_per_step} x group_size {cfg.rollout.group_size}) "
        f"does not divide into trainer.mini_batches={cfg.trainer.mini_batches}; pick mini_batches dividing {batch}",
    )
    mini = batch // cfg.trainer.mini_batches
    check(
        mini % cfg.trainer.micro_batch_size == 0 or cfg.trainer.micro_batch_size >= mini,
        f"a mini-batch of {mini} trajectories does not divide into trainer.micro_batch_size={cfg.trainer.micro_batch_size}",
    )
    check(not (cfg.run.mode == "async" and cfg.rollout.engine == "openai"),
          "run.mode: async needs an engine whose weights agentrl updates ('hf' or 'vllm'), not 'openai'")
    if cfg.rollout.engine == "vllm":
        t = cfg.rollout.temperature
        check(not 0 < t < VLLM_MIN_TEMPERATURE,
              f"rollout.temperature={t:g} with rollout.engine vllm: vLLM samples any temperature in (0, {VLLM_MIN_TEMPERATURE:g}) at "
              f"{VLLM_MIN_TEMPERATURE:g} while the learner recomputes logprobs at {t:g}, so the ratios would be off; "
              f"use rollout.temperature >= {VLLM_MIN_TEMPERATURE:g}")
        t = cfg.rollout.eval_temperature
        check(not 0 < t < VLLM_MIN_TEMPERATURE,
              f"rollout.eval_temperature={t:g} with rollout.engine vllm: vLLM samples any temperature in (0, "
              f"{VLLM_MIN_TEMPERATURE:g}) at {VLLM_MIN_TEMPERATURE:g}, so the evaluation would not run at the setting it "
              f"reports; use rollout.eval_temperature >= {VLLM_MIN_TEMPERATURE:g}")
        limit = cfg.rollout.vllm.get("max_model_len")
        check(not isinstance(limit, int) or cfg.rollout.max_total_tokens <= limit,
              f"rollout.max_total_tokens={cfg.rollout.max_total_tokens} is more than rollout.vllm.max_model_len={limit}: vLLM "
              f"refuses prompts longer than max_model_len, so long episodes would fail; lower rollout.max_total_tokens "
              f"or raise rollout.vllm.max_model_len to at least {cfg.rollout.max_total_tokens}")
    ctx = cfg.rollout.context
    try:
        from agentrl.rollout.context import CONTEXT_POLICIES, make_context_policy  # light: no torch

        if ctx.policy not in CONTEXT_POLICIES and cfg.run.imports:  # a policy registered by a run.imports file
            import_modules(cfg.run.imports)
        policy = make_context_policy(ctx.policy, window=ctx.window, marker=ctx.marker, options=ctx.options)
    except ValueError as e:  # UnknownNameError included: the known names are listed
        check(False, f"rollout.context: {e}")
    else:
        check(policy.full or cfg.rollout.max_new_tokens < cfg.rollout.max_total_tokens,
              f"rollout.context.policy={ctx.policy!r}: rollout.max_total_tokens={cfg.rollout.max_total_tokens} caps each turn's "
              f"prompt plus its generation, so it must exceed rollout.max_new_tokens={cfg.rollout.max_new_tokens}")
        tps = cfg.rollout.turns_per_step
        check(tps is None or not policy.full,
              f"rollout.turns_per_step={tps} counts turn samples, which only a turn-level rollout.context.policy makes "
              f"(window, summary or a registered one), got policy {ctx.policy!r}; set rollout.context.policy: window, or "
              f"drop turns_per_step (batches of tasks_per_step x group_size episodes)")
    for i, f in enumerate(cfg.rollout.faults):
        where = f"rollout.faults[{i}]"
        check(f.kind in FAULT_KINDS[f.point], f"{where}: kind {f.kind!r} cannot be injected at point {f.point!r}; "
              f"kinds there: {list(FAULT_KINDS[f.point])}")
        check(not (f.point == "before_generate" and f.kind == "hang" and cfg.rollout.generate_timeout_s <= 0),
              f"{where}: a hang before generate needs rollout.generate_timeout_s > 0 to end it (it is {cfg.rollout.generate_timeout_s})")
    if cfg.run.backend == "ray":
        r = cfg.ray
        check(r.env_workers <= cfg.env.num_envs,
              f"ray.env_workers={r.env_workers} is more than env.num_envs={cfg.env.num_envs}; every EnvWorker needs at least one env instance")
        # a mini-batch need not split evenly over the ranks: the learner pads the smaller shares
        # with zero-loss micro-batches (agentrl.learner.learner, "Uneven shares")
        g = r.gpus_per_learner_rank
        check(not (r.learner_ranks > 1 and 0 < g < 1),
              f"ray.gpus_per_learner_rank={g:g} with ray.learner_ranks={r.learner_ranks}: fractional GPUs let Ray put two learner "
              f"ranks on one GPU, where NCCL fails (both ranks pick the same device); set ray.gpus_per_learner_rank: 1 "
              f"(one GPU per rank) or ray.learner_ranks: 1")
    problem = wandb_problem(cfg.logging)
    check(problem is None, problem or "")
    try:
        algorithm_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


WANDB_PROJECT_BAD_CHARS = "/\\#?%:"
"""Characters W&B refuses in a project name (``wandb.Settings.validate_project``)."""


def wandb_problem(lc: LoggingConfig) -> str | None:
    """The first W&B setting of ``lc`` that W&B would refuse at ``wandb.init`` (mid-run, after
    the model is loaded), or ``logging.wandb: true`` without wandb installed; None when fine."""
    p = lc.wandb_project
    if not 1 <= len(p) <= 128 or any(c in p for c in WANDB_PROJECT_BAD_CHARS):
        return (f"logging.wandb_project must be 1 to 128 characters without any of {' '.join(WANDB_PROJECT_BAD_CHARS)}, got {p!r}; "
                f"pick a plain name such as 'agentrl'")
    for key, value in (("wandb_entity", lc.wandb_entity), ("wandb_name", lc.wandb_name)):
        if value is not None and not value.strip():
            return f"logging.{key} must be a non-empty string or null (null: {'your default entity' if key == 'wandb_entity' else 'run.name'}), got {value!r}"
    for i, tag in enumerate(lc.wandb_tags):
        if not 1 <= len(tag) <= 64:
            return f"logging.wandb_tags[{i}] must be 1 to 64 characters (W&B's limit), got {len(tag)}: {tag!r}; shorten or drop it"
    if lc.wandb:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            return ("logging.wandb is true but the wandb package is not installed; install it with "
                    "`pip install 'agentrl[wandb]'` (or `pip install -e '.[wandb]'` in a checkout), or set logging.wandb=false")
    return None


def _parse_algorithm(raw: Any, done: dict[str, Any] | None = None) -> Any:
    """The ``algorithm:`` mapping as an :class:`~agentrl.algorithms.config.AlgorithmConfig`
    (an AlgorithmConfig is taken as it is). ``done``: the config's fields built so far; its
    ``run.imports`` are imported first (they may register components). Imports torch. Raises
    ConfigError naming the key (``algorithm.loss.eps_high must be >= 0, got -1.0``) with a
    suggestion for an unknown name."""
    from agentrl.algorithms.config import AlgorithmConfig

    run = (done or {}).get("run")
    if run is not None:
        import_modules(run.imports)  # a component registered by one of them must be known (once per process)
    if isinstance(raw, AlgorithmConfig):
        return raw
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"algorithm: expected a mapping, got {type(raw).__name__} {raw!r}")
    try:
        return AlgorithmConfig.from_dict(raw)
    except (ValueError, KeyError, TypeError) as e:
        msg = str(e).strip("'\"") if isinstance(e, KeyError) else str(e)
        raise ConfigError(msg if "algorithm" in msg else f"algorithm: {msg}") from None


def algorithm_config(cfg: TrainConfig) -> Any:
    """``cfg.algorithm`` (parsed when the config was built) after its checks against the rest
    of the config (a group baseline needs groups); a raw mapping put there by hand is parsed
    here. Raises ConfigError naming the key."""
    from agentrl.algorithms.registry import ESTIMATORS

    algo = cfg.algorithm = _parse_algorithm(cfg.algorithm, {"run": cfg.run})
    g = cfg.rollout.group_size
    if g < 2 and ESTIMATORS.get(algo.estimator.name).extra.get("needs_group"):
        without = [e.name for e in ESTIMATORS if not e.extra.get("needs_group")]
        raise ConfigError(
            f"rollout.group_size={g}: estimator {algo.estimator.name!r} takes its baseline from the other trajectories of "
            f"the same task (its group), and a group of {g} has none; set rollout.group_size >= 2, or use an estimator "
            f"without a group baseline (algorithm.estimator: {', '.join(without)})")
    if g < 2 and algo.dynamic_sampling.enabled:
        raise ConfigError(f"rollout.group_size={g}: algorithm.dynamic_sampling keeps only groups whose rewards differ, and a group "
                          f"of {g} never does; set rollout.group_size >= 2 or disable dynamic_sampling")
    return algo


def looks_like_local_path(name: str) -> bool:
    """Whether a model name means a local path rather than a Hugging Face Hub id
    (``name`` or ``org/name``), so a missing one can fail at once instead of being looked up
    on the Hub: it starts with '.', '/' or '~'; or it has more than one '/' (no Hub id does,
    e.g. ``<run>/checkpoints/step_000010/model``); or its first component is ``runs`` (where
    agentrl writes runs) or an existing local folder."""
    parts = name.replace(os.sep, "/").split("/")
    if name.startswith((".", "/", "~")) or len(parts) > 2:
        return True
    return len(parts) == 2 and (parts[0] == "runs" or Path(parts[0]).is_dir())


def import_modules(names: list[str], source: str = "run.imports") -> None:
    """Import the ``run.imports`` entries (or a CLI's ``--import`` values, ``source`` naming
    which in messages): dotted module names, or paths to ``.py`` files (loaded as a module
    named ``agentrl_user.<file stem>``). Each entry is imported once per process. Raises
    ConfigError naming the entry that failed and why."""
    import importlib
    import importlib.util
    import sys

    for name in names:
        try:
            if name.endswith(".py"):
                path = Path(name).expanduser().resolve()
                module_name = f"agentrl_user.{path.stem}"
                if module_name in sys.modules:
                    continue
                if not path.is_file():
                    raise FileNotFoundError(f"no such file {str(path)!r}")
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)  # type: ignore[union-attr]
                except BaseException:
                    del sys.modules[module_name]
                    raise
            else:
                importlib.import_module(name)
        except Exception as e:
            hint = (
                "Entries are dotted module names importable in every Ray worker (install the package) or paths to .py files visible to every worker"
                if source == "run.imports" else "Give a dotted module name (an installed package) or the path of a .py file"
            )
            raise ConfigError(f"{source}: could not import {name!r}: {type(e).__name__}: {e}. {hint}") from e
