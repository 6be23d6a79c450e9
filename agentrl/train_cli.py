"""``agentrl train``, ``agentrl model init``, ``agentrl sft``."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_train(args: argparse.Namespace) -> int:
    from agentrl.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, overrides=args.overrides)
        from agentrl.train import check_config, check_resume, train

        check_config(cfg)
        check_resume(cfg, force_resume=args.force_resume)  # a changed config stops here, before any work
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from agentrl.rollout.expert import ExpertFailures

    try:
        summary = train(cfg, force_resume=args.force_resume)
    except ExpertFailures as e:  # the env is broken, not the run: say so in one line
        print(f"error: {e.stage}: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:  # a setting found wrong once the env is up (a per-turn cap too small for the task)
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"agentrl train: {summary.get('run')} ({summary.get('train_steps')} train_steps)")
    table.add_column("held-out evaluation")
    table.add_column("success")
    table.add_column("mean return")
    table.add_column("episodes")
    comparable = summary.get("before_rl_comparable", True)
    for label in ("before_rl", "after_rl"):
        ev = summary.get(label) or {}
        key = f"eval/{label}"
        if ev:
            name = label.replace("_", " ") + ("" if comparable or label == "after_rl" else " (earlier settings)")
            table.add_row(name, f"{ev[key + '/success']:.3f}", f"{ev[key + '/reward_mean']:.3f}", f"{int(ev[key + '/episodes'])}")
    console.print(table)
    if not comparable:
        forced = [c for c in summary.get("config_changes", []) if c.get("forced")]
        console.print(f"before rl was measured under the settings in force before the forced config change(s) at train_step "
                      f"{', '.join(str(c['train_step']) for c in forced)} ({', '.join(dict.fromkeys(d['key'] for c in forced for d in c['changes']))}): "
                      "it is not comparable with after rl; see config_changes.jsonl in the run folder", soft_wrap=True)
    out = summary.get("output_dir")
    written = run_folder_contents(out) if out else []
    console.print(f"run folder: {out}" + (f"  ({', '.join(written)})" if written else ""), soft_wrap=True)
    for p in summary.get("plots", []):
        console.print(f"plot: {p}", soft_wrap=True)


RUN_OUTPUTS = ("metrics.jsonl", "summary.json", "checkpoints/", "samples.jsonl", "tensorboard/")
"""What a run folder may hold, in the order the end-of-run line lists them."""


def run_folder_contents(out: str) -> list[str]:
    """The entries of :data:`RUN_OUTPUTS` that this run folder actually holds (no samples.jsonl
    with logging.log_trajectories 0, no tensorboard/ without the tensorboard package)."""
    from pathlib import Path

    root = Path(out)
    return [name for name in RUN_OUTPUTS if ((root / name).is_dir() if name.endswith("/") else (root / name).is_file())]


def cmd_model_init(args: argparse.Namespace) -> int:
    from agentrl.models.tiny import create_tiny_model, env_corpus

    envs_ = args.env or ["agentrl/ShellQuest-v0"]
    kwargs = json.loads(args.env_kwargs) if args.env_kwargs else {}
    texts = env_corpus(envs_, episodes=args.episodes, template=args.template, env_kwargs={e: kwargs for e in envs_}, seed=args.seed)
    path = create_tiny_model(
        args.out, texts, template=args.template, arch=args.arch, vocab_size=args.vocab_size, seed=args.seed,
        hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
        initializer_range=args.initializer_range,
    )
    print(f"saved {args.arch} model + tokenizer ({args.template} template) to {path}")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from agentrl.learner.policy import load_model, load_tokenizer
    from agentrl.learner.sft import sft
    from agentrl.models.chat import ChatFormat
    from agentrl.rollout.expert import expert_trajectories

    tok = load_tokenizer(args.model)
    model = load_model(args.model)
    kwargs = json.loads(args.env_kwargs) if args.env_kwargs else {}
    data = []
    for env_id in args.env:
        data += expert_trajectories(env_id, ChatFormat(tok), episodes=args.episodes, env_kwargs=kwargs, seed=args.seed)
    losses = sft(model, data, pad_token_id=tok.pad_token_id, epochs=args.epochs, steps=args.steps, warmup_steps=args.warmup_steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(f"SFT on {len(data)} expert episodes: loss by tenth of training {[round(x, 4) for x in losses]}; saved to {args.out}")
    return 0


class _IntermixedParser(argparse.ArgumentParser):
    """Options anywhere among the positionals: ``agentrl train C.yaml --force-resume k=v`` (plain
    argparse gives the overrides after the option no positional and reports them as unrecognized)."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._mixing:  # parse_known_intermixed_args calls back here for its two passes
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train an agent: agentrl train CONFIG.yaml [section.key=value ...]")
    p.__class__ = _IntermixedParser
    p.add_argument("config")
    # default=[]: argparse otherwise lists a nargs="*" positional as required when config is missing
    p.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. trainer.total_steps=5")
    p.add_argument("--force-resume", action="store_true",
                   help="resume the run in run.output_dir although its saved config.yaml differs from this config in more than a "
                        "larger trainer.total_steps; the change is recorded in config_changes.jsonl (docs/evaluation.md)")
    p.set_defaults(func=cmd_train)

    m = subparsers.add_parser("model", help="create models")
    msub = m.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    from agentrl.config import ModelInitConfig

    d = ModelInitConfig()  # the defaults of model.init in a config
    mi = msub.add_parser("init", help="a tiny Qwen2/Llama model with a tokenizer trained on env transcripts",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mi.add_argument("--out", required=True, help="folder to write the model and tokenizer to (HF format)")
    mi.add_argument("--arch", default=d.arch, choices=["qwen2", "llama"], help="architecture (HF config class)")
    mi.add_argument("--template", default=d.template, choices=["chatml", "llama3", "qwen3"], help="chat template")
    mi.add_argument("--env", action="append", help="env id(s) whose expert transcripts train the tokenizer (repeatable; None: agentrl/ShellQuest-v0)")
    mi.add_argument("--env-kwargs", default=None, help="JSON options for the env(s), e.g. '{\"vocab\": \"small\"}'")
    mi.add_argument("--episodes", type=int, default=d.corpus_episodes, help="expert episodes per env in the tokenizer corpus")
    mi.add_argument("--vocab-size", type=int, default=d.vocab_size, help="BPE vocabulary size (bytes + merges + special tokens)")
    mi.add_argument("--hidden-size", type=int, default=d.hidden_size, help="model width")
    mi.add_argument("--num-layers", type=int, default=d.num_layers, help="transformer blocks")
    mi.add_argument("--num-heads", type=int, default=d.num_heads, help="attention heads")
    mi.add_argument("--num-kv-heads", type=int, default=d.num_kv_heads, help="key/value heads (grouped-query attention)")
    mi.add_argument("--initializer-range", type=float, default=d.initializer_range,
                    help="std of the weight init (HF's default); about 1/sqrt(hidden-size), e.g. 0.1 at 128, makes tiny "
                         "models learn to copy from tool output much sooner (configs/quickstart.yaml, docs/results.md)")
    mi.add_argument("--seed", type=int, default=0, help="seed of the corpus episodes and the weight init")
    mi.set_defaults(func=cmd_model_init)

    s = subparsers.add_parser("sft", help="supervised warm start on expert trajectories")
    s.add_argument("--model", required=True)
    s.add_argument("--env", action="append", required=True)
    s.add_argument("--env-kwargs", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--episodes", type=int, default=400)
    s.add_argument("--epochs", type=int, default=3)
    s.add_argument("--steps", type=int, default=0, help="optimizer steps (overrides --epochs when > 0)")
    s.add_argument("--warmup-steps", type=int, default=0)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_sft)
