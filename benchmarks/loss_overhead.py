"""Cost of the entropy-control methods next to plain PPO, and of chunked logprobs/entropy.

Part 1 (losses): for a batch of B x T tokens (default 64 x 4096, multi-turn layout), times each
method's phase-2 loss (forward + backward, with its token mask, shaping and controllers) and its
phase-1 advantage computation, relative to plain PPO (phase 2) and GRPO (phase 1) in the same run.
Goal: no method above 3x plain PPO.

Part 2 (LM head): from N hidden states (default 16384 x 896) through an LM head, times and
measures the peak extra memory of chunked logprobs+entropy (forward + backward) at V = 32k and
152k next to the naive full-logits computation at V = 32k. Each case runs in a fresh process;
peak memory is the growth of peak RSS over the RSS after inputs are allocated (CPU) or
``torch.cuda.max_memory_allocated`` (CUDA). Goal: chunked peak under a quarter of one
[N, V] float32 logits tensor.

    python benchmarks/loss_overhead.py                      # full sizes (minutes on 2 cores)
    python benchmarks/loss_overhead.py --quick              # small sizes, seconds
    python benchmarks/loss_overhead.py --batch 8 --tokens 512 --hidden-tokens 2048 --vocab 4096 8192

Writes JSON to --out (default benchmarks/results/loss_overhead.json) and prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# name -> algorithm section (each run with everything its components need)
METHODS: dict[str, dict] = {
    "ppo": {"loss": {"name": "ppo"}},
    "dapo": {"loss": {"name": "ppo", "eps_high": 0.28, "clip_ratio_c": 10.0},
             "dynamic_sampling": {"enabled": True, "metric": "acc"},
             "overlong": {"enabled": True, "max_response_tokens": 4096, "buffer_tokens": 1024}},
    "cispo": {"loss": {"name": "cispo"}},
    "clip_cov": {"loss": {"name": "clip_cov"}},
    "kl_cov": {"loss": {"name": "kl_cov"}},
    "archer": {"loss": {"name": "archer"}},
    "forking_tokens": {"loss": {"name": "ppo", "eps_high": 0.28}, "token_mask": {"name": "forking_tokens"}},
    "entropy_advantage": {"shaping": [{"name": "entropy_advantage"}]},
    "empg": {"shaping": [{"name": "empg"}]},
    "bapo": {"controllers": [{"name": "bapo"}]},
    "entropic": {"controllers": [{"name": "entropic"}]},
    "skywork": {"controllers": [{"name": "skywork", "coef_init": 1e-3}]},
    "prorl": {"loss": {"name": "ppo", "eps_high": 0.4}, "kl": {"coef": 1e-4},
              "controllers": [{"name": "prorl", "reset_interval_steps": 50}]},
    "w_reinforce": {"estimator": {"name": "w_reinforce"}, "entropy_coef": 0.001},
    "gigpo": {"estimator": {"name": "gigpo"}, "credit": {"gamma": 0.95}},
    "gigpo_empg": {"estimator": {"name": "gigpo"}, "shaping": [{"name": "empg"}]},
    "rloo": {"estimator": {"name": "rloo"}},
    "reinforce_pp": {"estimator": {"name": "reinforce_pp"}},
}


def make_batch(b: int, t: int, turns: int, group: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Multi-turn layout: T split into `turns` segments, each 3/4 policy tokens then tool output."""
    g = torch.Generator().manual_seed(seed)
    seg = max(t // turns, 2)
    pos = torch.arange(t)
    turn = (pos // seg).clamp(max=turns - 1)
    policy = (pos % seg) < max(1, (3 * seg) // 4)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    loss_mask = policy.unsqueeze(0) & (pos.unsqueeze(0) < lengths.unsqueeze(1))
    turn_ids = torch.where(loss_mask, turn.unsqueeze(0).expand(b, t), torch.tensor(-1))
    logp = -torch.rand(b, t, generator=g) * 3
    rewards = torch.randint(0, 2, (b,), generator=g).float()
    turn_rewards = torch.zeros(b, turns)
    turn_rewards[:, -1] = rewards
    return {
        "rewards": rewards, "group_ids": torch.arange(b) // group, "loss_mask": loss_mask, "turn_ids": turn_ids,
        "turn_rewards": turn_rewards, "anchor_ids": torch.randint(0, 4, (b, turns), generator=g),
        "correct": rewards > 0.5, "response_lengths": lengths, "proximal_logprobs": logp,
        "behavior_logprobs": logp, "entropy": torch.rand(b, t, generator=g) * 2,
        "ref_logprobs": logp + 0.1 * torch.randn(b, t, generator=g),
        "logprobs": logp + 0.2 * torch.randn(b, t, generator=g),
    }


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def bench_losses(args) -> list[dict]:
    """Interleaved timing: every repetition runs every method once, so load drift on a shared
    machine hits all methods alike. Ratios use the minimum CPU time (``time.process_time``) over
    the repetitions: the least-disturbed run, far less sensitive to other processes than wall
    time or a median on a loaded machine. Medians are stored too."""
    from agentrl.algorithms import MicroBatch, RolloutBatch, build_algorithm

    torch.set_num_threads(args.threads)
    d = make_batch(args.batch, args.tokens, args.turns, args.group)
    rb_keys = ("rewards", "group_ids", "loss_mask", "turn_ids", "turn_rewards", "anchor_ids", "correct",
               "response_lengths", "proximal_logprobs", "behavior_logprobs", "entropy")
    rb = RolloutBatch(**{k: d[k] for k in rb_keys})
    jobs = {}
    for name, cfg in METHODS.items():
        algo = build_algorithm(cfg)
        adv = algo.compute_advantages(rb)
        req = algo.requirements()

        def phase2(algo=algo, adv=adv, req=req):
            lp = d["logprobs"].clone().requires_grad_(True)
            ent = d["entropy"].clone().requires_grad_(req["entropy_grad"])
            mb = MicroBatch(logprobs=lp, proximal_logprobs=d["proximal_logprobs"], advantages=adv.advantages,
                            loss_mask=adv.loss_mask, entropy=ent if req["entropy"] else None,
                            ref_logprobs=d["ref_logprobs"] if req["ref_logprobs"] else None, token_mask=adv.token_mask)
            loss, _ = algo.loss(mb, num_tokens=adv.loss_mask.sum())
            loss.backward()

        jobs[name] = (lambda algo=algo: algo.compute_advantages(rb), phase2)
    samples = {name: {"loss_wall": [], "loss_cpu": [], "adv_wall": [], "adv_cpu": []} for name in jobs}
    for rep in range(args.repeat + 1):  # repetition 0 is the warm-up
        for name, (phase1, phase2) in jobs.items():
            for key, fn in (("adv", phase1), ("loss", phase2)):
                w0, c0 = _clock()
                fn()
                w1, c1 = _clock()
                if rep:
                    samples[name][f"{key}_wall"].append((w1 - w0) * 1e3)
                    samples[name][f"{key}_cpu"].append((c1 - c0) * 1e3)
        print(f"  repetition {rep}/{args.repeat} done", flush=True)
    rows = []
    for name, smp in samples.items():
        rows.append({"method": name, **{f"{k}_ms": min(v) for k, v in smp.items()},
                     **{f"{k}_median_ms": statistics.median(v) for k, v in smp.items()}})
    base = rows[0]
    for r in rows:
        r["loss_vs_ppo"] = r["loss_cpu_ms"] / base["loss_cpu_ms"]
        r["advantages_vs_grpo"] = r["adv_cpu_ms"] / base["adv_cpu_ms"]
        r["total_vs_ppo"] = (r["loss_cpu_ms"] + r["adv_cpu_ms"]) / (base["loss_cpu_ms"] + base["adv_cpu_ms"])
    return rows


_CHILD = r"""
import json, resource, sys, time, torch
from agentrl.algorithms.logits import logprobs_and_entropy_from_hidden
mode, n, d, v, device, backward, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6] == "1", int(sys.argv[7])
chunk = int(sys.argv[8]) or None
torch.set_num_threads(threads)
g = torch.Generator(device=device).manual_seed(0)
h = (torch.randn(n, d, generator=g, device=device) * 0.5).requires_grad_(backward)
w = (torch.randn(v, d, generator=g, device=device) * 0.05).requires_grad_(backward)
tgt = torch.randint(0, v, (n,), generator=g, device=device)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
def run():
    if mode == "chunked":
        lp, ent = logprobs_and_entropy_from_hidden(h, w, tgt, chunk_size=chunk)
    else:
        logp_all = torch.log_softmax((h @ w.t()).float(), dim=-1)
        lp = logp_all.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        ent = -(logp_all.exp() * logp_all).sum(-1)
    if backward:
        (lp.sum() + ent.sum()).backward()
    return lp, ent
# warm-up on tiny tensors so one-time allocations (thread pools, autograd engine) are excluded
_h = torch.randn(64, d, device=device, requires_grad=backward)
_w = torch.randn(256, d, device=device, requires_grad=backward)
_l, _e = logprobs_and_entropy_from_hidden(_h, _w, torch.zeros(64, dtype=torch.long, device=device))
if backward:
    (_l.sum() + _e.sum()).backward()
_z = torch.log_softmax(_h @ _w.t(), -1)
if backward:
    _z.sum().backward()
del _h, _w, _l, _e, _z
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = rss()
t0, c0 = time.perf_counter(), time.process_time(); run()
if device == "cuda":
    torch.cuda.synchronize()
dt, dc = time.perf_counter() - t0, time.process_time() - c0
peak = (torch.cuda.max_memory_allocated() - base) if device == "cuda" else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
print(json.dumps({"seconds": dt, "cpu_seconds": dc, "peak_extra_bytes": max(int(peak), 0)}))
"""


def bench_head(args, head_threads: int) -> list[dict]:
    cases = [("chunked", v) for v in args.vocab] + [("naive", v) for v in args.naive_vocab]
    rows = []
    for mode, v in cases:
        cmd = [sys.executable, "-c", _CHILD, mode, str(args.hidden_tokens), str(args.hidden_size), str(v), args.device,
               "0" if args.no_backward else "1", str(head_threads), str(args.chunk_size or 0)]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            rows.append({"mode": mode, "vocab": v, "error": out.stderr.strip().splitlines()[-1:]})
            print(f"  {mode:<8} V={v:<7} FAILED: {out.stderr.strip()[-300:]}", flush=True)
            continue
        res = json.loads(out.stdout.strip().splitlines()[-1])
        full = args.hidden_tokens * v * 4
        row = {"mode": mode, "vocab": v, "seconds": res["seconds"], "cpu_seconds": res["cpu_seconds"],
               "peak_extra_mib": res["peak_extra_bytes"] / 2**20,
               "full_logits_fp32_mib": full / 2**20, "peak_vs_full_logits": res["peak_extra_bytes"] / full}
        rows.append(row)
        print(f"  {mode:<8} V={v:<7} {row['seconds']:8.2f} s wall {row['cpu_seconds']:8.2f} s cpu  peak +{row['peak_extra_mib']:9.1f} MiB "
              f"({row['peak_vs_full_logits']:.3f} x one [N,V] fp32 = {row['full_logits_fp32_mib']:.0f} MiB)", flush=True)
    return rows


def print_tables(result: dict) -> None:
    cfg = result["config"]
    print(f"\nLosses, B x T = {cfg['batch']} x {cfg['tokens']} on {cfg['device']} ({cfg['threads']} thread(s)): CPU ms "
          f"(process time), min of {cfg['repeat']} interleaved runs; 'loss' = phase 2 fwd+bwd with the method's "
          f"mask/shaping/controllers, 'adv' = phase 1; ratios vs plain PPO (loss) and GRPO (adv)")
    print(f"{'method':<18} {'loss ms':>9} {'x PPO':>6} {'adv ms':>9} {'x GRPO':>7} {'total x':>8} {'wall med':>9}  goal <= 3x")
    for r in result["losses"]:
        ok = "ok" if r["loss_vs_ppo"] <= 3.0 and r["total_vs_ppo"] <= 3.0 else "OVER"
        print(f"{r['method']:<18} {r['loss_cpu_ms']:9.1f} {r['loss_vs_ppo']:6.2f} {r['adv_cpu_ms']:9.1f} "
              f"{r['advantages_vs_grpo']:7.2f} {r['total_vs_ppo']:8.2f} {r['loss_wall_median_ms'] + r['adv_wall_median_ms']:9.1f}  {ok}")
    if result.get("lm_head"):
        print(f"\nLM head, N = {cfg['hidden_tokens']} hidden states of size {cfg['hidden_size']}, {cfg['head_threads']} threads, "
              f"{'forward only' if cfg['no_backward'] else 'forward + backward'}")
        print(f"{'mode':<8} {'V':>7} {'wall s':>9} {'cpu s':>9} {'peak MiB':>10} {'[N,V] MiB':>10} {'ratio':>7}  goal < 0.25 (chunked)")
        for r in result["lm_head"]:
            if "error" in r:
                print(f"{r['mode']:<8} {r['vocab']:>7}  failed: {r['error']}")
                continue
            goal = ("ok" if r["peak_vs_full_logits"] < 0.25 else "OVER") if r["mode"] == "chunked" else ""
            print(f"{r['mode']:<8} {r['vocab']:>7} {r['seconds']:9.2f} {r['cpu_seconds']:9.2f} {r['peak_extra_mib']:10.1f} "
                  f"{r['full_logits_fp32_mib']:10.0f} {r['peak_vs_full_logits']:7.3f}  {goal}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="B sequences (default 64)")
    p.add_argument("--tokens", type=int, default=4096, help="T tokens per sequence (default 4096)")
    p.add_argument("--turns", type=int, default=8, help="assistant turns per sequence")
    p.add_argument("--group", type=int, default=8, help="group size G")
    p.add_argument("--repeat", type=int, default=10, help="timed repetitions (minimum CPU time is reported)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the losses part (default 1: CPU time is then not inflated by "
                        "OpenMP threads spinning on a shared machine); the LM head part uses all cores")
    p.add_argument("--hidden-tokens", type=int, default=16384, help="N hidden states for the LM head part")
    p.add_argument("--hidden-size", type=int, default=896)
    p.add_argument("--vocab", type=int, nargs="+", default=[32768, 151936], help="vocab sizes for the chunked path")
    p.add_argument("--naive-vocab", type=int, nargs="*", default=[32768], help="vocab sizes for the naive path")
    p.add_argument("--no-backward", action="store_true", help="LM head part: forward only")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="tokens per chunk (default: auto, one float32 chunk of logits is about 32 MiB)")
    p.add_argument("--skip-head", action="store_true", help="skip the LM head part")
    p.add_argument("--skip-losses", action="store_true", help="skip the losses part")
    p.add_argument("--quick", action="store_true", help="small sizes: 8 x 512 tokens, N 2048, V 4096/8192")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loss_overhead.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.tokens, args.hidden_tokens, args.hidden_size = 8, 512, 2048, 128
        args.vocab, args.naive_vocab, args.repeat = [4096, 8192], [4096], 3
        args.chunk_size = args.chunk_size or 128  # the auto size would cover all 2048 tokens at once
    head_threads = torch.get_num_threads()
    result: dict = {"config": {**{k: v for k, v in vars(args).items() if k != "out"},
                               "head_threads": head_threads, "torch": torch.__version__,
                               "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}}
    if not args.skip_losses:
        print(f"losses: B x T = {args.batch} x {args.tokens}", flush=True)
        result["losses"] = bench_losses(args)
    else:
        result["losses"] = []
    if not args.skip_head:
        torch.set_num_threads(head_threads)
        print(f"LM head: N = {args.hidden_tokens}, D = {args.hidden_size}", flush=True)
        result["lm_head"] = bench_head(args, head_threads)
    print_tables(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
