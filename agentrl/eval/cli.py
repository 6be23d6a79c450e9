"""``agentrl eval`` and ``agentrl compare``."""

from __future__ import annotations

import argparse
import json
import sys


def _env_options(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--env-option {item!r} must look like key=value (e.g. horizon=10)")
        key, raw = item.split("=", 1)
        out[key] = yaml.safe_load(raw) if raw else ""
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalSettings, evaluate_policy, print_tables

    try:
        settings = EvalSettings(
            policy=args.policy, envs=args.env or [], episodes=args.episodes, samples=args.samples, ks=args.k, split=args.split,
            temperature=args.temperature, engine=args.engine, base_url=args.base_url, tokenizer=args.tokenizer, chat_template=args.chat_template,
            env_options=_env_options(args.env_option) if args.env_option else None, max_new_tokens=args.max_new_tokens,
            max_total_tokens=args.max_total_tokens, tools_in_prompt=args.tools_in_prompt, num_envs=args.num_envs, seed=args.seed, imports=args.imports or [],
        )
        result = evaluate_policy(settings)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_tables(result)
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
            print(f"wrote {args.json}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from agentrl.config import ConfigError

    from .compare import compare

    try:
        if args.report_only:
            from pathlib import Path

            from .compare import default_out
            from .report import write_report
            from .study import expand_runs, load_study

            study = load_study(args.study, smoke=args.smoke)
            out = Path(args.out) if args.out else default_out(study)
            print(f"report: {write_report(study, expand_runs(study, out), out)}")
            return 0
        result = compare(args.study, smoke=args.smoke, out=args.out, jobs=args.jobs)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {result['report']}  (and report.html, runs.csv, metrics_long.csv, plots/ next to it)")
    if result["failed"]:
        print(f"{len(result['failed'])} run(s) failed: " + "; ".join(f"{k}: {v}" for k, v in result["failed"].items()), file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser("eval", help="evaluate a policy on held-out tasks: success, return, turns, tool errors, pass@k")
    e.add_argument("--policy", required=True, help="HF model folder, a run folder of `agentrl train` (its latest checkpoint and settings), or a served model name (--engine openai)")
    e.add_argument("--env", action="append", help="env id (repeat for several; default: the run's env)")
    e.add_argument("--episodes", type=int, default=32, help="held-out tasks per env (each played --samples times)")
    e.add_argument("--samples", type=int, default=None, help="episodes per task (default: the largest --k)")
    e.add_argument("--k", type=int, nargs="+", default=[1], help="pass@k values to report (default 1)")
    e.add_argument("--split", default=None, help="task split (default test)")
    e.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1.0, or the run's eval_temperature)")
    e.add_argument("--engine", default="hf", choices=["hf", "vllm", "openai"])
    e.add_argument("--base-url", default=None, help="OpenAI-compatible server for --engine openai, e.g. http://localhost:8000/v1")
    e.add_argument("--tokenizer", default=None, help="tokenizer folder or name (default: the policy's)")
    e.add_argument("--chat-template", default=None, choices=["chatml", "llama3", "qwen3"], help="override the tokenizer's chat template")
    e.add_argument("--env-option", action="append", metavar="KEY=VALUE", help="env constructor option (repeatable), e.g. horizon=10")
    e.add_argument("--max-new-tokens", type=int, default=None, help="tokens per turn (default 128, or the run's)")
    e.add_argument("--max-total-tokens", type=int, default=None, help="episode token budget (default 4096, or the run's)")
    e.add_argument("--tools-in-prompt", action=argparse.BooleanOptionalAction, default=None, help="render tool schemas into the prompt (default yes, or the run's)")
    e.add_argument("--num-envs", type=int, default=16, help="concurrent episodes")
    e.add_argument("--seed", type=int, default=0, help="selects the held-out tasks and sampling seeds (same as training's eval for the run's seed)")
    e.add_argument("--import", dest="imports", action="append", help="module or .py file that registers envs")
    e.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON ('-' for stdout)")
    e.set_defaults(func=cmd_eval)

    c = subparsers.add_parser("compare", help="run a study (methods x seeds x env variants), resumable, and write a report")
    c.add_argument("study", help="study file, e.g. configs/studies/long_horizon_entropy.yaml")
    c.add_argument("--smoke", action="store_true", help="the study's small smoke: variant (CI)")
    c.add_argument("--out", default=None, help="results folder (default runs/studies/<study>[-smoke])")
    c.add_argument("--jobs", type=int, default=1, help="runs trained at once in worker processes (each uses run.num_threads threads)")
    c.add_argument("--report-only", action="store_true", help="rebuild the report from the runs already finished; train nothing")
    c.set_defaults(func=cmd_compare)
