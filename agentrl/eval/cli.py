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
            max_total_tokens=args.max_total_tokens, tools_in_prompt=args.tools_in_prompt, num_envs=args.num_envs,
            context={k: v for k, v in (("policy", args.context), ("window", args.context_window)) if v is not None} or None, seed=args.seed, imports=args.imports or [],
        )
        episodes_dir = None
        if args.save_episodes:
            if not args.json or args.json == "-":
                raise ValueError(f"--save-episodes {args.save_episodes} writes next to the --json file, got --json {args.json!r}; "
                                 "pass --json PATH (the episodes go to <PATH without .json>_episodes/samples.jsonl)")
            episodes_dir = episodes_folder(args.json)
        result = evaluate_policy(settings, progress=args.progress, save_episodes=args.save_episodes, episodes_dir=episodes_dir)
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
    if args.save_episodes:
        print(f"wrote the first {args.save_episodes} episodes of each env to {result['episodes_file']}")
    return 0


def episodes_folder(json_path: str) -> str:
    """Where ``--save-episodes`` writes samples.jsonl for ``--json json_path``:
    ``eval.json`` -> ``eval_episodes/``."""
    from pathlib import Path

    p = Path(json_path)
    return str(p.with_name((p.stem if p.suffix == ".json" else p.name) + "_episodes"))


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agentrl.config import ConfigError

    from .compare import compare

    try:
        if len(args.study) > 1 or Path(args.study[0]).is_dir():
            return _compare_folders(args)
        only = {"--target-success": args.target_success, "--final-window": args.final_window, "--smooth": args.smooth}
        given = [k for k, v in only.items() if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to run folders; {args.study[0]!r} is a study file: set target_success, final_window, smooth in it")
        args.study = args.study[0]
        if args.report_only:
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


def _compare_folders(args: argparse.Namespace) -> int:
    """``agentrl compare RUN_A RUN_B ...``: the report from finished run folders; trains nothing."""
    from pathlib import Path

    from agentrl.config import ConfigError

    from .compare import compare_runs

    studies = [s for s in args.study if Path(s).is_file() and s.endswith((".yaml", ".yml"))]
    if studies:
        raise ConfigError(f"got a study file ({studies[0]!r}) among run folders {args.study}; pass either one study .yaml file or run folders only")
    if args.smoke or args.jobs != 1:
        raise ConfigError("--smoke and --jobs apply to a study file; with run folders nothing trains (the report is built from the finished runs)")
    result = compare_runs(args.study, out=args.out, target_success=0.5 if args.target_success is None else args.target_success,
                          final_window=1 if args.final_window is None else args.final_window, smooth=1 if args.smooth is None else args.smooth)
    print(f"report: {result['report']}  (and report.html, runs.csv, metrics_long.csv, plots/ next to it)")
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
    e.add_argument("--context", default=None, metavar="POLICY", help="context policy: full, window, summary or a registered one (default: the run's rollout.context, else full)")
    e.add_argument("--context-window", type=int, default=None, metavar="K", help="turns each prompt shows under a window or summary policy (default: the run's, else the policy's)")
    e.add_argument("--num-envs", type=int, default=None, help="concurrent episodes (default 16, or the run's env.num_envs)")
    e.add_argument("--seed", type=int, default=0, help="selects the held-out tasks and sampling seeds (same as training's eval for the run's seed)")
    e.add_argument("--import", dest="imports", action="append", help="module or .py file that registers envs")
    e.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON ('-' for stdout)")
    e.add_argument("--save-episodes", type=int, default=0, metavar="N",
                   help="also write the first N episodes of each env (transcripts, rewards, success; the format of a training run's samples.jsonl) "
                        "to <--json PATH without .json>_episodes/samples.jsonl (needs --json PATH)")
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar on stderr: episodes done / total, successes so far (default on; redrawn every 30 s when stderr is not a terminal)")
    e.set_defaults(func=cmd_eval)

    c = subparsers.add_parser("compare", help="run a study (methods x seeds x env variants), resumable, and write a report; or report on finished run folders")
    c.add_argument("study", nargs="+", metavar="STUDY_OR_RUNS",
                   help="a study file, e.g. configs/studies/long_horizon_entropy.yaml; or finished run folders of `agentrl train` "
                        "(RUN_A RUN_B ...: the same report from those runs, labelled by run.name, into --out, default runs/compare/<A>_vs_<B>)")
    c.add_argument("--smoke", action="store_true", help="the study's small smoke: variant (CI)")
    c.add_argument("--out", default=None, help="results folder (default runs/studies/<study>[-smoke])")
    c.add_argument("--jobs", type=int, default=1, help="runs trained at once in worker processes (each uses run.num_threads threads)")
    c.add_argument("--report-only", action="store_true", help="rebuild the report from the runs already finished; train nothing")
    c.add_argument("--target-success", type=float, default=None, help="run folders only: success for 'train_steps to target' (default 0.5)")
    c.add_argument("--final-window", type=int, default=None, help="run folders only: final entropy / clip fraction over the last N train_steps (default 1)")
    c.add_argument("--smooth", type=int, default=None, help="run folders only: moving-average window of the plotted curves (default 1)")
    c.set_defaults(func=cmd_compare)
