"""Training throughput of agentrl next to TRL's GRPOTrainer: same tiny model, batch and prompts.

Both frameworks run GRPO train_steps on the same tiny Qwen2 model (created like ``agentrl model
init`` does: a byte-level BPE trained on the env's expert transcripts, saved in HF format), the
same P prompts (the first observation of P tasks of ``--env``, rendered with the ChatML
template, no tool schemas: what agentrl's rollout sends as the first turn), G samples per
prompt, the same ``max_new_tokens``, sampling settings, reward function, loss and optimizer:

    GRPO advantages (group mean and std), PPO clip eps 0.2 with token-mean aggregation (TRL
    ``loss_type="dapo"``), no KL (beta 0, no reference model), one optimizer step per batch
    (``ppo_epochs=1``, ``num_iterations=1``: no extra no-grad logprob pass in either), micro-batches
    of ``--micro-batch`` sequences with gradient accumulation, AdamW, grad clip 1.0, constant LR,
    float32, ``torch.set_num_threads(--threads)`` (default 1) in both.

What is timed (wall and CPU process time). Both run in one process, their train_steps
interleaved (TRL's step k, then agentrl's step k, from a TRL callback; agentrl first in every
other run), so load from other jobs on a shared machine hits both alike; ``--repeats`` fresh
processes, ``--warmup`` untimed steps each:

- agentrl. The single-turn form of its loop, calling the same components ``agentrl/train.py``
  calls: rollout = ``HFEngine.agenerate_many`` (the engine call episodes make, through its
  request batcher, max batch = B) + decoding + reward; learner = ``collate`` + ``Learner.update``.
  The multi-turn ``AgentLoop`` and env are not used: TRL's GRPOTrainer has no env to step, so the
  comparison is on what both do (sample, score, train), with prompts an env produced. The
  engine shares the learner's module, as in ``backend: local``, sync mode.
- TRL. ``trainer.train()``; a train_step is the span from ``on_step_begin`` to ``on_step_end``
  (generation, scoring, forward/backward of every micro-batch, clip, optimizer step; the prompt
  fetch and logging between steps are left out); rollout = ``GRPOTrainer._generate``
  (tokenization, ``model.generate``, decoding; wrapped with a timer) + the reward function;
  learner = step - rollout, also split into scoring, forward/backward and the rest.

Token counts, the same definition for both:

- rollout tokens = sampled completion tokens (up to and including the end-of-turn token);
- learner tokens = non-padding tokens of the trained batch, prompt + completion per sequence
  (agentrl's ``throughput/learner_tokens_per_s`` in ``agentrl/train.py``). Padded sizes are
  stored too (agentrl right-pads whole sequences; TRL left-pads prompts and right-pads
  completions, so its width is max prompt + max completion).

Ratios are agentrl / TRL on tokens per second (> 1: agentrl faster) and TRL / agentrl on wall
time per train_step. Each is computed from CPU time (less disturbed by other processes on a
shared machine; ``--threads 1`` keeps it equal to the work done) and from wall time. Goal:
learner at least as fast as TRL per token.

    python benchmarks/train_throughput.py                   # default sizes, a few minutes on 2 cores
    python benchmarks/train_throughput.py --quick           # tiny sizes, for the smoke test
    python benchmarks/train_throughput.py --prompts 8 --group 8 --max-new-tokens 64 --steps 4

Needs TRL: ``pip install -e '.[bench]'``. Writes JSON to --out (default
benchmarks/results/train_throughput.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEED = 0


# ----------------------------------------------------------------------------- shared pieces
def reward_fn(completions: list[Any], **_: Any) -> list[float]:
    """Cheap and identical for both: distinct whitespace-separated words in the completion, / 8,
    capped at 1 (varies within a group for a random model, so advantages are not all zero)."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]
        out.append(min(len(set(text.split())), 8) / 8.0)
    return out


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()



def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Create (or reuse) the tiny model and render the prompts; returns the worker spec."""
    import agentrl.envs as envs
    from agentrl.learner.policy import load_tokenizer
    from agentrl.models.chat import ChatFormat

    env_kwargs = json.loads(args.env_kwargs)
    model_dir = Path(args.model) if args.model else work / "model"
    if not (model_dir / "config.json").exists():
        from agentrl.models.tiny import create_tiny_model, env_corpus

        print(f"creating a tiny qwen2 model in {model_dir} (tokenizer trained on {args.corpus_episodes} expert episodes of {args.env})", flush=True)
        texts = env_corpus([args.env], episodes=args.corpus_episodes, template="chatml", env_kwargs={args.env: env_kwargs}, seed=SEED, tools_in_prompt=False)
        create_tiny_model(model_dir, texts, template="chatml", arch="qwen2", vocab_size=args.vocab_size, seed=SEED,
                          hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads, num_kv_heads=args.num_kv_heads)
    tok = load_tokenizer(str(model_dir))
    chat = ChatFormat(tok)
    env = envs.make(args.env, **env_kwargs)
    core = env.unwrapped
    n = core.num_tasks("train")
    texts, ids = [], []
    for i in range(args.prompts):
        obs, _ = core.reset(seed=SEED + i, options={"task_index": i % n, "split": "train"})
        text = chat.render(list(obs), None, add_generation_prompt=True)
        texts.append(text)
        ids.append(chat.encode(text))
        if tok(text)["input_ids"] != ids[-1]:  # TRL tokenizes the text itself: both must see the same ids
            raise RuntimeError("the tokenizer adds special tokens to plain text; TRL and agentrl would see different prompt ids")
    env.close()
    meta = json.loads((model_dir / "agentrl_model.json").read_text()) if (model_dir / "agentrl_model.json").exists() else {}
    return {
        "model": str(model_dir), "model_meta": meta, "prompt_texts": texts, "prompt_ids": ids,
        "group": args.group, "max_new_tokens": args.max_new_tokens, "micro_batch": args.micro_batch,
        "warmup": args.warmup, "steps": args.steps, "threads": args.threads, "lr": args.lr,
        "stop_token_ids": list(chat.stop_token_ids),
    }


# ----------------------------------------------------------------------------- agentrl worker
def make_agentrl(spec: dict[str, Any]) -> Any:
    """agentrl's side: returns ``step(i) -> row``, one timed train_step."""
    import asyncio
    from dataclasses import replace

    from agentrl.algorithms import build_algorithm
    from agentrl.algorithms.config import AlgorithmConfig
    from agentrl.config import TrainerConfig
    from agentrl.learner.learner import Learner
    from agentrl.learner.policy import load_model, load_tokenizer
    from agentrl.rollout.engines import HFEngine, SamplingParams
    from agentrl.types import Trajectory, collate

    tok = load_tokenizer(spec["model"])
    model = load_model(spec["model"])
    G, prompts = spec["group"], spec["prompt_ids"]
    B = len(prompts) * G
    engine = HFEngine(model, pad_token_id=tok.pad_token_id, max_batch_size=B, seed=SEED)
    algo = build_algorithm(AlgorithmConfig.from_dict({
        "estimator": {"name": "grpo"}, "loss": {"name": "ppo", "eps_low": 0.2, "eps_high": 0.2},
        "aggregation": {"name": "token-mean"},
    }))
    cfg = TrainerConfig(total_steps=spec["warmup"] + spec["steps"], lr=spec["lr"], grad_clip=1.0, ppo_epochs=1, mini_batches=1,
                        micro_batch_size=spec["micro_batch"])
    learner = Learner(model, algo, cfg, temperature=1.0, seed=SEED)
    base = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=spec["max_new_tokens"], stop_token_ids=tuple(spec["stop_token_ids"]))

    def step_fn(step: int) -> dict[str, Any]:
        w0, c0 = _clock()
        flat = [p for p in prompts for _ in range(G)]
        params = [replace(base, seed=SEED * 1_000_003 + step * B + i) for i in range(B)]
        gens = asyncio.run(engine.agenerate_many(flat, params))
        texts = tok.batch_decode([g.ids for g in gens], skip_special_tokens=True)
        rewards = reward_fn(texts)
        trajs = []
        for i, (p, g, r) in enumerate(zip(flat, gens, rewards)):
            t = Trajectory(task_id=f"prompt{i // G}", sample_index=i % G, terminated=True)
            t.append(p, generated=False)
            t.append(g.ids, generated=True, turn=0, logprobs=g.logprobs, version=g.version)
            t.turn_rewards.append(r)
            trajs.append(t)
        w1, c1 = _clock()
        batch = collate(trajs, pad_token_id=tok.pad_token_id)
        collate_c = time.process_time()
        metrics = learner.update(batch)
        w2, c2 = _clock()
        engine.update_weights(None, step + 1)  # shared module: only the version moves (train.py's sync_weights)
        floor_c = learner_floor_cpu_s(model, batch, spec["micro_batch"])  # outside both frameworks' timed spans
        return {
            "learner_floor_cpu_s": floor_c,
            "step": step, "warmup": step < spec["warmup"],
            "rollout_wall_s": w1 - w0, "rollout_cpu_s": c1 - c0, "learner_wall_s": w2 - w1, "learner_cpu_s": c2 - c1,
            "step_wall_s": w2 - w0, "step_cpu_s": c2 - c0,
            "rollout_tokens": sum(len(g.ids) for g in gens), "learner_tokens": int(batch.attention_mask.sum()),
            "collate_cpu_s": collate_c - c1, "update_cpu_s": c2 - collate_c,
            "padded_tokens": int(batch.input_ids.numel()), "reward_mean": statistics.fmean(rewards),
            "loss": metrics.get("loss/policy", metrics.get("loss/total", float("nan"))),
        }

    return step_fn


def learner_floor_cpu_s(model: Any, batch: Any, micro: int) -> float:
    """CPU seconds of the model's own training compute on ``batch``: forward and backward of the
    decoder on each micro-batch of ``micro`` rows (rows taken longest first, each micro-batch cut
    to its longest row: no padding beyond that), the LM head and log-softmax only at the trained
    (completion) tokens, no optimizer step, no loss bookkeeping. Neither framework can train the
    batch exactly in less; gradients are cleared after."""
    import torch

    lengths = batch.attention_mask.sum(1).tolist()
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    c0 = time.process_time()
    for s in range(0, len(order), micro):
        rows = torch.tensor(order[s:s + micro])
        width = int(max(lengths[r] for r in rows.tolist()))
        ids, keep = batch.input_ids[rows, :width], batch.loss_mask[rows, :width][:, 1:]
        hidden = model.model(input_ids=ids).last_hidden_state[:, :-1][keep]
        logits = model.lm_head(hidden).float()
        torch.log_softmax(logits, -1).gather(-1, ids[:, 1:][keep].unsqueeze(-1)).sum().backward()
    floor = time.process_time() - c0
    model.zero_grad(set_to_none=True)
    return floor


# ----------------------------------------------------------------------------- TRL worker
def run_pair(spec: dict[str, Any], work: Path, agentrl_first: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """TRL's ``trainer.train()`` with one agentrl train_step run from a callback next to each
    TRL train_step (before it when ``agentrl_first``, else after), outside TRL's timed span."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agentrl.learner.policy import load_model, load_tokenizer

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(SEED)
    agentrl_step = make_agentrl(spec)
    rows_a: list[dict[str, Any]] = []
    tok = load_tokenizer(spec["model"])
    model = load_model(spec["model"])
    G, P = spec["group"], len(spec["prompt_texts"])
    B = P * G
    mb = spec["micro_batch"]
    if B % mb:
        raise ValueError(f"batch {B} does not divide into micro-batches of {mb}")
    steps = spec["warmup"] + spec["steps"]
    args = GRPOConfig(
        # gradient_checkpointing: TRL's default is True, agentrl's (model.gradient_checkpointing) False
        output_dir=str(work / "trl"), report_to="none", save_strategy="no", disable_tqdm=True, gradient_checkpointing=False,
        use_cpu=True, bf16=False, fp16=False, seed=SEED, data_seed=SEED, dataloader_num_workers=0,
        max_steps=steps, per_device_train_batch_size=mb, gradient_accumulation_steps=B // mb,
        num_generations=G, max_completion_length=spec["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group", num_iterations=1,
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, optim="adamw_torch",
    )
    rec: dict[str, list] = {"gen": [], "reward": [], "begins": [], "ends": [], "score": [], "train_calls": []}

    def timed_reward(completions: list[Any], **kw: Any) -> list[float]:
        w0, c0 = _clock()
        out = reward_fn(completions)
        w1, c1 = _clock()
        rec["reward"].append((w1 - w0, c1 - c0))
        return out

    timed_reward.__name__ = "reward_fn"

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if agentrl_first:
                rows_a.append(agentrl_step(len(rows_a)))
            rec["begins"].append(_clock())

        def on_step_end(self, args, state, control, **kw):
            rec["ends"].append(_clock())
            if not agentrl_first:
                rows_a.append(agentrl_step(len(rows_a)))

    trainer = GRPOTrainer(model=model, reward_funcs=[timed_reward], args=args,
                          train_dataset=Dataset.from_dict({"prompt": spec["prompt_texts"]}), processing_class=tok, callbacks=[StepClock()])
    orig = trainer._generate

    def timed_generate(prompts: list[Any]) -> Any:
        w0, c0 = _clock()
        out = orig(prompts)
        w1, c1 = _clock()
        prompt_ids, completion_ids = out[0], out[1]
        p_max, c_max = max(len(p) for p in prompt_ids), max(len(c) for c in completion_ids)
        rec["gen"].append({"wall": w1 - w0, "cpu": c1 - c0, "rollout_tokens": sum(len(c) for c in completion_ids),
                           "learner_tokens": sum(len(p) for p in prompt_ids) + sum(len(c) for c in completion_ids),
                           "padded_tokens": len(prompt_ids) * (p_max + c_max), "n": len(prompt_ids)})
        return out

    def timer(name: str, fn: Any) -> Any:
        def wrapped(*a: Any, **kw: Any) -> Any:
            w0, c0 = _clock()
            out = fn(*a, **kw)
            w1, c1 = _clock()
            rec[name].append((w1 - w0, c1 - c0))
            return out
        return wrapped

    trainer._generate = timed_generate
    trainer._generate_and_score_completions = timer("score", trainer._generate_and_score_completions)
    trainer.training_step = timer("train_calls", trainer.training_step)
    trainer.train()
    if not (len(rec["gen"]) == len(rec["reward"]) == len(rec["begins"]) == len(rec["ends"]) == len(rows_a) == steps):
        raise RuntimeError(f"expected one generation per train_step: {len(rec['gen'])} generations, {len(rec['ends'])} steps")
    rows = []
    for step in range(steps):
        g, (rw, rc) = rec["gen"][step], rec["reward"][step]
        if g["n"] != B:
            raise RuntimeError(f"TRL generated {g['n']} completions in a step, expected {B}")
        (w0, c0), (w1, c1) = rec["begins"][step], rec["ends"][step]
        roll_w, roll_c = g["wall"] + rw, g["cpu"] + rc
        micro = B // mb
        score_c = rec["score"][step][1]
        fwd_bwd_c = sum(c for _, c in rec["train_calls"][step * micro : (step + 1) * micro]) - score_c
        rows.append({
            # learner CPU split: scoring = rewards + advantages + padding (generate_and_score minus
            # generate and reward); forward/backward = training_step calls minus that; rest =
            # clip, optimizer step, data loading, callbacks
            "trl_scoring_cpu_s": score_c - roll_c, "trl_forward_backward_cpu_s": fwd_bwd_c,
            "trl_other_cpu_s": (c1 - c0) - score_c - fwd_bwd_c,
            "step": step, "agentrl_first": agentrl_first, "warmup": step < spec["warmup"],
            "rollout_wall_s": roll_w, "rollout_cpu_s": roll_c, "learner_wall_s": (w1 - w0) - roll_w, "learner_cpu_s": (c1 - c0) - roll_c,
            "step_wall_s": w1 - w0, "step_cpu_s": c1 - c0,
            "rollout_tokens": g["rollout_tokens"], "learner_tokens": g["learner_tokens"], "padded_tokens": g["padded_tokens"],
        })
    for r in rows_a:
        r["agentrl_first"] = agentrl_first
    return rows_a, rows


# ----------------------------------------------------------------------------- driver
def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Tokens/s = measured tokens / measured seconds over all timed steps (all repeats)."""
    timed = [r for r in rows if not r["warmup"]]
    n = len(timed)
    s = {k: sum(r[k] for r in timed) for k in ("rollout_wall_s", "rollout_cpu_s", "learner_wall_s", "learner_cpu_s", "step_wall_s",
                                               "step_cpu_s", "rollout_tokens", "learner_tokens", "padded_tokens")}
    parts = {f"{k[:-2]}_mean_s": sum(r[k] for r in timed) / n for k in ("collate_cpu_s", "update_cpu_s", "trl_scoring_cpu_s",
                                                                        "trl_forward_backward_cpu_s", "trl_other_cpu_s",
                                                                        "learner_floor_cpu_s") if k in timed[0]}
    return {
        **parts,
        "timed_steps": n,
        "rollout_tokens_per_step": s["rollout_tokens"] / n, "learner_tokens_per_step": s["learner_tokens"] / n,
        "padded_tokens_per_step": s["padded_tokens"] / n,
        "rollout_tokens_per_s_cpu": s["rollout_tokens"] / s["rollout_cpu_s"], "rollout_tokens_per_s_wall": s["rollout_tokens"] / s["rollout_wall_s"],
        "learner_tokens_per_s_cpu": s["learner_tokens"] / s["learner_cpu_s"], "learner_tokens_per_s_wall": s["learner_tokens"] / s["learner_wall_s"],
        "step_cpu_s_mean": s["step_cpu_s"] / n, "step_wall_s_mean": s["step_wall_s"] / n,
        "step_wall_s_median": statistics.median(r["step_wall_s"] for r in timed),
        "rollout_wall_s_mean": s["rollout_wall_s"] / n, "learner_wall_s_mean": s["learner_wall_s"] / n,
        "rollout_cpu_s_mean": s["rollout_cpu_s"] / n, "learner_cpu_s_mean": s["learner_cpu_s"] / n,
    }


def paired_ratios(rows_a: list[dict[str, Any]], rows_t: list[dict[str, Any]]) -> dict[str, float]:
    """Median over timed steps of the per-step ratio, agentrl's step k against TRL's step k of
    the same run (adjacent in time): robust to load that changes between steps."""
    pairs = [(a, t) for a, t in zip(rows_a, rows_t) if not a["warmup"]]
    for a, t in pairs:
        if (a["run"], a["step"]) != (t["run"], t["step"]):
            raise RuntimeError("agentrl and TRL steps are not paired")
    out = {}
    for kind in ("rollout", "learner"):
        for clock in ("cpu", "wall"):
            out[f"{kind}_tokens_per_s_{clock}_paired_median"] = statistics.median(
                (a[f"{kind}_tokens"] / a[f"{kind}_{clock}_s"]) / (t[f"{kind}_tokens"] / t[f"{kind}_{clock}_s"]) for a, t in pairs)
    out["step_wall_s_paired_median"] = statistics.median(t["step_wall_s"] / a["step_wall_s"] for a, t in pairs)
    return out


def _worker_main(order: str, spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    rows_a, rows_t = run_pair(spec, spec_path.parent, agentrl_first=order == "agentrl-first")
    print("RESULT " + json.dumps({"agentrl": rows_a, "trl": rows_t}), flush=True)
    return 0


def _run_worker(which: str, spec_path: Path) -> dict[str, list[dict[str, Any]]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(json.loads(spec_path.read_text())["threads"]), TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", which, "--spec", str(spec_path)],
                         capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{which} worker failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def print_table(result: dict[str, Any]) -> None:
    c, a, t, r = result["config"], result["agentrl"], result["trl"], result["ratios"]
    print(f"\nGRPO train_steps, tiny {c['model_meta'].get('arch', '?')} ({c['model_meta'].get('parameters', 0) / 1e6:.2f}M params) on CPU, "
          f"{c['threads']} thread(s); batch {c['batch']} = {c['prompts']} prompts x G {c['group']}, max_new_tokens {c['max_new_tokens']}, "
          f"micro-batch {c['micro_batch']}; {a['timed_steps']} timed steps each ({c['repeats']} runs x {c['steps']} interleaved, "
          f"after {c['warmup']} warm-up); load avg {result['machine']['loadavg_before'][0]:.1f} -> {result['machine']['loadavg_after'][0]:.1f} "
          f"on {result['machine']['cpus']} CPUs")
    print(f"{'':<28} {'agentrl':>11} {'TRL':>11} {'ratio':>7}")
    rows = [
        ("rollout tokens/s (cpu)", "rollout_tokens_per_s_cpu", "rollout_tokens_per_s_cpu", ".1f"),
        ("rollout tokens/s (wall)", "rollout_tokens_per_s_wall", "rollout_tokens_per_s_wall", ".1f"),
        ("learner tokens/s (cpu)", "learner_tokens_per_s_cpu", "learner_tokens_per_s_cpu", ".1f"),
        ("learner tokens/s (wall)", "learner_tokens_per_s_wall", "learner_tokens_per_s_wall", ".1f"),
        ("train_step wall s (mean)", "step_wall_s_mean", "step_wall_s_mean", ".2f"),
        ("train_step cpu s (mean)", "step_cpu_s_mean", "step_cpu_s_mean", ".2f"),
        ("  rollout wall s", "rollout_wall_s_mean", "rollout_wall_s_mean", ".2f"),
        ("  learner wall s", "learner_wall_s_mean", "learner_wall_s_mean", ".2f"),
        ("rollout tokens / step", "rollout_tokens_per_step", "rollout_tokens_per_step", ".0f"),
        ("learner tokens / step", "learner_tokens_per_step", "learner_tokens_per_step", ".0f"),
        ("padded tokens / step", "padded_tokens_per_step", "padded_tokens_per_step", ".0f"),
    ]
    for label, ka, kt, fmt in rows:
        ratio = r.get(ka, "")
        rs = f"{ratio:7.2f}" if isinstance(ratio, float) else ""
        print(f"{label:<28} {format(a[ka], fmt):>11} {format(t[kt], fmt):>11} {rs}")
    print(f"learner CPU s per step: agentrl collate {a['collate_cpu_mean_s']:.2f} + Learner.update {a['update_cpu_mean_s']:.2f}; "
          f"TRL scoring {t['trl_scoring_cpu_mean_s']:.2f} + forward/backward {t['trl_forward_backward_cpu_mean_s']:.2f} "
          f"+ optimizer/other {t['trl_other_cpu_mean_s']:.2f}")
    print(f"median of per-step paired ratios: rollout tokens/s {r['rollout_tokens_per_s_cpu_paired_median']:.2f} (cpu) "
          f"{r['rollout_tokens_per_s_wall_paired_median']:.2f} (wall), learner tokens/s {r['learner_tokens_per_s_cpu_paired_median']:.2f} (cpu) "
          f"{r['learner_tokens_per_s_wall_paired_median']:.2f} (wall), train_step wall {r['step_wall_s_paired_median']:.2f}")
    print(f"learner floor (the model's forward+backward on the trained batch, no padding beyond each micro-batch's longest row, "
          f"LM head on completion tokens): {a['learner_floor_cpu_mean_s']:.2f} CPU s per step; agentrl at "
          f"{r['agentrl_learner_over_floor_cpu']:.2f}x it, TRL at {r['trl_learner_over_floor_cpu']:.2f}x; an exact learner can be at "
          f"most {r['max_learner_speedup_vs_trl_at_floor']:.2f}x TRL here")
    goal = "met" if r["learner_tokens_per_s_cpu"] >= 1.0 else "NOT met"
    print(f"ratio = agentrl / TRL for tokens/s, TRL / agentrl for seconds (> 1: agentrl faster). "
          f"Goal (learner tokens/s >= TRL's, on CPU time): {goal}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="agentrl/SQL-v0", help="env whose first observations are the prompts (default SQL-v0: a distinct schema and question per task)")
    p.add_argument("--env-kwargs", default="{}", help="JSON kwargs for the env")
    p.add_argument("--prompts", type=int, default=8, help="P distinct prompts (tasks) per train_step")
    p.add_argument("--group", type=int, default=8, help="G samples per prompt; the batch is P x G")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--micro-batch", type=int, default=16, help="sequences per forward/backward (both)")
    p.add_argument("--steps", type=int, default=4, help="timed train_steps per run (and framework)")
    p.add_argument("--warmup", type=int, default=1, help="untimed train_steps at the start of each run")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes, each running both frameworks' steps interleaved")
    p.add_argument("--threads", type=int, default=1, help="torch threads in both (default 1)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--model", default=None, help="an existing HF model folder (default: create a tiny one in the work dir)")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--corpus-episodes", type=int, default=100, help="expert episodes the tokenizer is trained on")
    p.add_argument("--work-dir", default=None, help="where the model and TRL's output dir go (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: 2 prompts x G 2, 8 new tokens, 1 step, hidden 32, 1 layer")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    p.add_argument("--worker", choices=("agentrl-first", "trl-first"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker_main(args.worker, Path(args.spec))
    if args.quick:
        args.prompts, args.group, args.max_new_tokens, args.micro_batch = 2, 2, 8, 2
        args.steps, args.warmup, args.repeats = 1, 1, 1
        args.hidden_size, args.num_layers, args.num_heads, args.num_kv_heads = 32, 1, 2, 1
        args.vocab_size, args.corpus_episodes = 320, 10
    if (args.prompts * args.group) % args.micro_batch:
        p.error(f"--micro-batch {args.micro_batch} must divide the batch {args.prompts} x {args.group}")
    try:
        import trl  # noqa: F401
    except ImportError:
        p.error("TRL is not installed: pip install -e '.[bench]'")

    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="agentrl-throughput-")
        work = Path(tmp.name)
    load_before = list(os.getloadavg())
    t_start = time.perf_counter()
    spec = prepare(args, work)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    plens = [len(x) for x in spec["prompt_ids"]]
    print(f"{len(plens)} prompts of {min(plens)}-{max(plens)} tokens from {args.env}; batch {len(plens) * args.group}", flush=True)
    rows: dict[str, list] = {"agentrl": [], "trl": []}
    for rep in range(args.repeats):
        order = "trl-first" if rep % 2 == 0 else "agentrl-first"
        w0 = time.perf_counter()
        got = _run_worker(order, spec_path)
        for which in ("agentrl", "trl"):
            for r in got[which]:
                r["run"] = rep
            rows[which] += got[which]
        print(f"  run {rep + 1}/{args.repeats} ({order}, steps interleaved) {time.perf_counter() - w0:6.1f} s  "
              f"(load avg {os.getloadavg()[0]:.1f})", flush=True)
    a, t = summarize(rows["agentrl"]), summarize(rows["trl"])
    ratios = {k: a[k] / t[k] for k in ("rollout_tokens_per_s_cpu", "rollout_tokens_per_s_wall", "learner_tokens_per_s_cpu", "learner_tokens_per_s_wall")}
    ratios.update({k: t[k] / a[k] for k in ("step_wall_s_mean", "step_cpu_s_mean", "rollout_wall_s_mean", "learner_wall_s_mean")})
    ratios.update(paired_ratios(rows["agentrl"], rows["trl"]))
    # the floor: the model's own forward+backward on agentrl's trained batch (same tokens as TRL's)
    floor = a["learner_floor_cpu_mean_s"]
    ratios.update({"agentrl_learner_over_floor_cpu": a["learner_cpu_s_mean"] / floor,
                   "trl_learner_over_floor_cpu": t["learner_cpu_s_mean"] / floor,
                   "max_learner_speedup_vs_trl_at_floor": t["learner_cpu_s_mean"] / floor})
    from agentrl.train import environment_info

    env = environment_info(("torch", "transformers", "trl", "accelerate"))
    result = {
        "config": {**{k: v for k, v in vars(args).items() if k not in ("out", "worker", "spec", "work_dir", "model")},
                   "batch": args.prompts * args.group, "prompt_tokens": plens, "model_meta": spec["model_meta"]},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
                    "note": "load average = runnable processes on the whole machine (other jobs included); 1-minute, 5, 15"},
        "versions": env["versions"], "git_commit": env["git_commit"], "total_wall_s": time.perf_counter() - t_start,
        "token_counts": "rollout = sampled completion tokens; learner = non-padding prompt + completion tokens of the trained batch; same for both",
        "agentrl": a, "trl": t, "ratios": ratios, "steps": rows,
    }
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
