"""Where a train_step's time goes at horizons 4, 10 and 50, next to the base code and the floors (issue 12).

    python benchmarks/step_time.py                          # h4, h10, h50 vs the base commit 696756f
    python benchmarks/step_time.py --settings h50 --steps 5 --force
    python benchmarks/step_time.py --no-base                # the current code only
    python benchmarks/step_time.py --quick                  # tiny smoke run (CI): h4, 1 step, no base

Settings (ShellQuest, small vocabulary, the quickstart's tiny Qwen2 and RL config,
``configs/quickstart.yaml``; 8 tasks x G = 8 = 64 episodes per train_step, ``env.num_envs`` 32):

- ``h4``: the quickstart as it is (``env.kwargs.horizon`` 4);
- ``h10``: ``env.kwargs.horizon=10``;
- ``h50``: ``env.kwargs.horizon=50``, ``rollout.max_total_tokens=2304`` (a 50-turn expert
  episode is about 2000 tokens; the quickstart's 1024 would truncate it at turn ~25).

Warm start (one SFT checkpoint per horizon, trained once by ``agentrl train ...
trainer.total_steps=0`` of the current code, cached under ``--work``/sft/<setting> and reused by
every later run and by both code versions, so base and new start from the same weights): h4 is
the quickstart's own SFT (a new tiny model, 600 expert episodes, 500 steps); h10 continues from
the h4 checkpoint with 150 SFT steps on 300 h10 expert episodes; h50 continues from the h10
checkpoint with 100 steps of batch 4 on 100 h50 expert episodes (``sft.max_tokens`` 4096, above
an h50 expert episode's ~2000 tokens). Budget: about 10 minutes of SFT on 2 cores in all (an estimate until run).
What the warm start gives (held-out success, turns and tokens per episode, its SFT time) is
measured by the checkpoint's own evaluation (32 episodes) and stored per setting under
``warm_start``; the quickstart's h4 warm start solves about 0.68 of held-out episodes
(docs/results.md); h10 and h50 figures are those of the JSON once the full run has been made.
The point is realistic episodes: a policy that follows the clue chain for many turns, as a
trained agent would, rather than a random one that ends at once or babbles to the token budget.

Per setting, each code version trains in its own subprocess (``<venv>/bin/agentrl train
configs/quickstart.yaml <overrides>``, cwd its own checkout) from the same checkpoint with the
same seed: 1 warm-up train_step (not counted) + ``--steps`` measured ones (default 3). Base and
new run one after the other, the order alternating across settings (h4: base first, h10: new
first, ...), so a drift in the machine's load does not always favour one side. Measured from
each run's metrics.jsonl:

- ``step_s``, ``rollout_s``, ``learner_s`` (``time/*``) and ``other_s`` = step - rollout -
  learner (collate, weight sync, metrics), means over the measured steps and per-step lists;
  the same under ``base``; ``speedup_vs_base`` = base step_s / new step_s;
- ``tokens_per_episode`` (``rollout/total_tokens_mean``), ``generated_tokens_per_episode``,
  ``turns_per_episode``, ``episodes_per_step``, ``success``;
- ``prefill_per_token``: prompt tokens the engine ran a forward over (prefill) per token of the
  batch's episodes. New code: ``rollout/prefill_tokens`` / (``rollout/total_tokens_mean`` x
  ``rollout/episodes``) when its engine logs ``rollout/prefill_tokens`` (source "engine");
  otherwise, and always for the base, analytically (source "analytic"): the base engine sends
  every turn's whole history (token-in/token-out: the episode's ids so far) as a new prompt, so
  an episode's prefill is the sum over its turns of the prompt length at that turn,
  ``P_t = P_0 + sum_{k<t} (g_k + d_k)`` with ``P_0`` the initial prompt, ``g_k`` turn k's
  generated tokens (its end-of-turn token included) and ``d_k`` the tool-result tokens appended
  after it. These are rebuilt from each run's samples.jsonl (every episode's chat transcript:
  ``logging.log_trajectories`` is set above the batch size) with the checkpoint's tokenizer and
  ``ChatFormat``: ``P_0`` = ``prompt_ids`` of the first messages, ``g_k`` = the re-encoded
  assistant text + 1, ``d_k`` = ``delta_ids`` of the messages that followed it (none after the
  last turn). Left padding of the batched prefill is not counted (real tokens only). The
  rebuilt total and generated tokens per episode are compared with metrics.jsonl's
  (``reconstruction`` holds both; re-encoding the sampled text can differ from the sampled ids
  by a token or so);
- floors, in this process on the same checkpoint, with the same ``run.num_threads`` (1) as the
  training: ``learner_floor_s`` = forward + backward (mean next-token log-prob over the
  sequence) of each episode of the measured batch as its own unpadded sequence, x
  ``trainer.ppo_epochs``, i.e. exactly the batch's real tokens and no padding;
  ``rollout_floor_s`` = HF ``model.generate`` (greedy, ``use_cache=True``, min_new_tokens =
  max_new_tokens, so every token is decoded) of ``round(generated tokens per episode)`` tokens
  for ``env.num_envs`` rows at once from an initial prompt of the batch's length, repeated
  ``ceil(episodes / num_envs)`` times: the batch's generated tokens decoded at the training's
  concurrency with a KV cache, without env steps or re-prefill. Episode lengths come from the
  measured steps' samples (rebuilt as above). Reported: ``learner_over_floor`` = learner_s /
  learner_floor_s and ``rollout_over_floor`` = rollout_s / rollout_floor_s (new code).

The base code runs from a ``git worktree`` of ``--base`` (default 696756f, main when issue 12
was filed) in ``--work``/base-<commit>, installed editable (``pip install --no-deps -e``) into
its own venv, ``--work``/base-venv, made with the interpreter .venv was made from and a .pth
line that puts .venv's site-packages (torch, transformers, ...) on its path; .pth files there
are not run, so the current checkout's editable finder is not, and ``agentrl``,
``agentrl.envs`` and ``agentrl.sandboxes`` map to the worktree's ``agentrl/``, ``envs/`` and
``sandboxes/``. Each side's ``agentrl.__file__``, the git commit its run_info.json recorded
(``environment_info()`` of the code that ran) and the expected commit are stored, and a
mismatch stops the benchmark.

Writes ``--out`` (default benchmarks/results/step_time.json; with ``--quick``
``--work``/step_time_quick.json) after each setting: a rerun skips the settings already in it
unless ``--force``. Top level: ``h4``/``h10``/``h50``, ``environment`` (environment_info, cpu
count), ``sides`` (venv, commit, agentrl.__file__), ``targets``; per run the exact command,
overrides and load average before/after. Prints a table with the issue's acceptance targets
(h50: speedup >= 5, prefill_per_token <= 1.1, learner_over_floor <= 1.5, rollout_over_floor <=
2.5; h4: speedup >= 2) marked hit/miss. Wall times depend on the machine's load, recorded
(``os.getloadavg``) but not controlled: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "step_time.json"
DEFAULT_WORK = ROOT / "benchmarks" / ".work" / "step_time"
DEFAULT_BASE = "696756f"
CONFIG = "configs/quickstart.yaml"
SETTINGS = ("h4", "h10", "h50")
HORIZON = {"h4": 4, "h10": 10, "h50": 50}

#: per setting: overrides of every run (RL and SFT) on top of configs/quickstart.yaml
SETTING_OVERRIDES = {
    "h4": [],
    "h10": ["env.kwargs.horizon=10"],
    "h50": ["env.kwargs.horizon=50", "rollout.max_total_tokens=2304"],
}
#: the warm start: (parent setting whose checkpoint it continues, or None for a new tiny model; SFT overrides)
SFT_PLAN = {
    "h4": (None, []),  # the quickstart's SFT as it is
    "h10": ("h4", ["sft.steps=150", "sft.warmup_steps=10", "sft.episodes=300"]),
    "h50": ("h10", ["sft.steps=100", "sft.warmup_steps=10", "sft.batch_size=4", "sft.episodes=100"]),
}
SFT_COMMON = ["sft.max_tokens=4096", "trainer.total_steps=0", "trainer.eval_episodes=32"]
#: measured runs: no SFT (the checkpoint is the warm start), a 1-episode evaluation (outside
#: the timed steps), every episode's transcript in samples.jsonl, no progress bar
RUN_COMMON = ["sft.enabled=false", "trainer.eval_episodes=1", "logging.log_trajectories=100000", "logging.progress=false",
              "trainer.checkpoint_every=100000"]
#: --quick: a tiny model and batch (horizon 4, 1 measured step)
QUICK_MODEL = ["model.init.hidden_size=32", "model.init.num_layers=1", "model.init.num_heads=2", "model.init.num_kv_heads=1",
               "model.init.corpus_episodes=16"]
QUICK_RUN = ["env.num_envs=4", "rollout.tasks_per_step=2", "rollout.group_size=2", "trainer.micro_batch_size=4", "rollout.max_new_tokens=24"]
QUICK_SFT = ["sft.episodes=16", "sft.steps=8", "sft.warmup_steps=2", "sft.batch_size=4", "sft.max_tokens=4096",
             "trainer.total_steps=0", "trainer.eval_episodes=2"]
#: the issue's acceptance targets: (setting, key, op, value)
TARGETS = [("h50", "speedup_vs_base", ">=", 5.0), ("h50", "prefill_per_token", "<=", 1.1),
           ("h50", "learner_over_floor", "<=", 1.5), ("h50", "rollout_over_floor", "<=", 2.5),
           ("h4", "speedup_vs_base", ">=", 2.0)]


# ----------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[step_time {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def clean_env() -> dict[str, str]:
    """The environment of a training subprocess: no PYTHONPATH/virtualenv leaking from this one."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train(agentrl_bin: Path, cwd: Path, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """``agentrl train configs/quickstart.yaml overrides`` in its own process; returns the command record."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = [str(agentrl_bin), "train", str(cwd / CONFIG), *overrides]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as out:
        rc = subprocess.run(cmd, cwd=cwd, env=clean_env(), stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = (run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:]
        raise RuntimeError(f"agentrl train exited {rc}: {' '.join(cmd)}\n{tail}")
    return {"cmd": cmd, "cwd": str(cwd), "overrides": overrides, "wall_s": wall, "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def mean(xs: list[float]) -> float:
    return float(statistics.fmean(xs)) if xs else float("nan")


# ----------------------------------------------------------------------------- the two code versions
def side_info(python: Path, cwd: Path) -> dict[str, Any]:
    """Which code ``python`` imports: agentrl, agentrl.envs, agentrl.sandboxes files (run from
    outside any checkout, like the console script, whose sys.path[0] is its bin folder)."""
    code = ("import json, agentrl, agentrl.envs, agentrl.sandboxes, torch; print(json.dumps({'agentrl': agentrl.__file__, "
            "'agentrl.envs': agentrl.envs.__file__, 'agentrl.sandboxes': agentrl.sandboxes.__file__, 'torch': torch.__version__}))")
    out = subprocess.run([str(python), "-c", code], cwd="/", env=clean_env(), capture_output=True, text=True, check=True).stdout
    files = json.loads(out.strip().splitlines()[-1])
    for key in ("agentrl", "agentrl.envs", "agentrl.sandboxes"):
        if not Path(files[key]).resolve().is_relative_to(cwd.resolve()):
            raise RuntimeError(f"{python} imports {key} from {files[key]}, not from {cwd}")
    return files


def new_side() -> dict[str, Any]:
    python = Path(sys.executable)
    agentrl_bin = python.parent / "agentrl"
    dirty = git("status", "--porcelain", "--", "agentrl", "envs", "sandboxes").splitlines()
    return {"name": "new", "python": str(python), "agentrl_bin": str(agentrl_bin), "cwd": str(ROOT), "commit": git("rev-parse", "HEAD"),
            "uncommitted_code_files": [line[3:] for line in dirty], "imports": side_info(python, ROOT)}


def base_side(commit: str, work: Path) -> dict[str, Any]:
    """A worktree of ``commit`` and a venv that imports it (see the module docstring)."""
    full = git("rev-parse", f"{commit}^{{commit}}")
    tree = work / f"base-{full[:10]}"
    git("worktree", "prune")
    if not (tree / ".git").exists():
        log(f"git worktree add {tree} {full[:10]}")
        git("worktree", "add", "--detach", str(tree), full)
    if git("rev-parse", "HEAD", cwd=tree) != full:
        git("checkout", "--detach", full, cwd=tree)
    venv = work / f"base-venv-{full[:10]}"
    python = venv / "bin" / "python"
    if not (venv / "bin" / "agentrl").exists():
        log(f"creating {venv} (editable install of {tree})")
        base_python = Path(getattr(sys, "_base_executable", "") or sys.executable)
        subprocess.run([str(base_python), "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
        # a path line, not a site dir: .venv's packages without its .pth files (its editable finder for /work/main)
        Path(purelib, "_agentrl_bench_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input", "-q", "-e", str(tree)],
                       cwd=work, env=clean_env(), check=True, capture_output=True)
    return {"name": "base", "python": str(python), "agentrl_bin": str(venv / "bin" / "agentrl"), "cwd": str(tree), "commit": full,
            "imports": side_info(python, tree)}


# ----------------------------------------------------------------------------- warm start
def ensure_sft(setting: str, work: Path, new: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The SFT checkpoint of ``setting`` (trained once, then read from the cache)."""
    folder = work / "sft" / (f"quick-{setting}" if quick else setting)
    parent, sft_over = (None, QUICK_SFT) if quick else (SFT_PLAN[setting][0], SFT_PLAN[setting][1] + SFT_COMMON)
    over = [*SETTING_OVERRIDES[setting], *(QUICK_MODEL + QUICK_RUN if quick else []), *sft_over,
            f"run.output_dir={folder / 'run'}", "logging.progress=false"]
    if parent is None:
        over.append(f"model.path={folder / 'init_model'}")
    else:
        over.append(f"model.path={ensure_sft(parent, work, new, quick)['model']}")
    record = folder / "warm_start.json"
    if record.exists():
        cached = json.loads(record.read_text())
        if cached.get("overrides") == over and Path(cached["model"], "config.json").exists():
            return cached
    log(f"SFT warm start for {setting} into {folder}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run = train(Path(new["agentrl_bin"]), ROOT, over, folder / "run")
    summary = json.loads((folder / "run" / "summary.json").read_text())
    ckpts = sorted((folder / "run" / "checkpoints").glob("step_*"))
    ev = summary["before_rl"]
    out = {"setting": setting, "model": str(ckpts[-1] / "model"), "from": parent, "overrides": over, "commit": new["commit"],
           "sft_time_s": summary.get("sft", {}).get("time_s"), "sft_episodes": summary.get("sft", {}).get("episodes"),
           "sft_final_loss": (summary.get("sft", {}).get("losses") or [None])[-1], "wall_s": run["wall_s"],
           "eval_success": ev.get("eval/before_rl/success"), "eval_turns_per_episode": ev.get("eval/before_rl/turns_mean"),
           "eval_tokens_per_episode": ev.get("eval/before_rl/total_tokens_mean"),
           "eval_generated_tokens_per_episode": ev.get("eval/before_rl/generated_tokens_mean"),
           "eval_truncated_frac": ev.get("eval/before_rl/truncated_frac"), "eval_episodes": ev.get("eval/before_rl/episodes")}
    record.write_text(json.dumps(out, indent=2))
    return out


# ----------------------------------------------------------------------------- episodes rebuilt from samples
class Rebuilder:
    """Token structure of each episode from its transcript (see the module docstring)."""

    def __init__(self, model_path: str) -> None:
        from agentrl.learner.policy import load_tokenizer
        from agentrl.models.chat import ChatFormat

        self.chat = ChatFormat(load_tokenizer(model_path, None))

    def episode(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))
        p0_ids = self.chat.prompt_ids(messages[:first], None)
        turns: list[tuple[int, int]] = []  # (generated g_k, appended after it d_k)
        i = first
        while i < len(messages):
            g = len(self.chat.encode(messages[i].get("content") or "")) + 1
            j = i + 1
            while j < len(messages) and messages[j].get("role") != "assistant":
                j += 1
            obs = messages[i + 1 : j]
            d = len(self.chat.delta_ids(obs)) if (obs and j < len(messages)) else 0
            turns.append((g, d))
            i = j
        return {"p0_ids": p0_ids, "p0": len(p0_ids), "turn_tokens": turns}

    def steps(self, run_dir: Path, rows: dict[int, dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
        """Episodes per train_step, their generated and appended token counts scaled so the
        step's totals equal metrics.jsonl's exact ones (``rollout/generated_tokens_mean`` and
        ``rollout/total_tokens_mean`` x ``rollout/episodes``): re-encoding a sampled text can
        give a few more or fewer tokens than were sampled (a tiny untrained model's byte salad
        most of all)."""
        by_step: dict[int, list[dict[str, Any]]] = {}
        for line in (run_dir / "samples.jsonl").read_text().splitlines():
            if line.strip():
                s = json.loads(line)
                by_step.setdefault(int(s["train_step"]), []).append(self.episode(s["messages"]))
        for step, eps in by_step.items():
            n, row = len(eps), rows.get(step, {})
            raw_g = sum(g for e in eps for g, _ in e["turn_tokens"])
            raw_d = sum(d for e in eps for _, d in e["turn_tokens"])
            p0 = sum(e["p0"] for e in eps)
            exact_g = row.get("rollout/generated_tokens_mean", raw_g / n) * n
            exact_t = row.get("rollout/total_tokens_mean", (p0 + raw_g + raw_d) / n) * n
            a = exact_g / raw_g if raw_g else 1.0
            b = (exact_t - p0 - exact_g) / raw_d if raw_d else 1.0
            for e in eps:
                length, prefill, raw_len, raw_prefill = e["p0"], 0.0, e["p0"], 0
                for g, d in e["turn_tokens"]:
                    prefill += length
                    raw_prefill += raw_len
                    length += a * g + b * d
                    raw_len += g + d
                e.update({"turns": len(e["turn_tokens"]), "generated": a * sum(g for g, _ in e["turn_tokens"]), "total": length,
                          "prefill": prefill, "raw_total": raw_len, "raw_generated": sum(g for g, _ in e["turn_tokens"]),
                          "raw_prefill": raw_prefill, "scale_generated": a, "scale_appended": b})
        return by_step


# ----------------------------------------------------------------------------- floors
def learner_floor(model: Any, episodes: list[dict[str, Any]], ppo_epochs: int, vocab: int) -> float:
    """Forward + backward of each episode as its own unpadded sequence (its real length)."""
    import torch

    model.train()
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, vocab, (1, max(2, round(e["total"]))), generator=gen) for e in episodes]
    t0 = time.perf_counter()
    for _ in range(ppo_epochs):
        for ids in seqs:
            logits = model(input_ids=ids).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])
            logp.mean().backward()
    dt = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return dt


def rollout_floor(model: Any, episodes: list[dict[str, Any]], num_envs: int, pad_id: int) -> tuple[float, int]:
    """Decode of the batch's generated tokens at ``num_envs`` rows with a KV cache (HF generate)."""
    import torch

    model.eval()
    rows = min(num_envs, len(episodes))
    rounds = math.ceil(len(episodes) / rows)
    n = max(1, round(mean([e["generated"] for e in episodes])))
    p0 = episodes[0]["p0_ids"]
    ids = torch.tensor([p0] * rows, dtype=torch.long)
    mask = torch.ones_like(ids)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(rounds):
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, use_cache=True, min_new_tokens=n,
                                 max_new_tokens=n, pad_token_id=pad_id)
            assert out.shape[1] - ids.shape[1] == n, (out.shape, n)
    return time.perf_counter() - t0, rounds * rows * n


# ----------------------------------------------------------------------------- one setting
def run_side(side: dict[str, Any], setting: str, ckpt: dict[str, Any], work: Path, steps: int, quick: bool) -> dict[str, Any]:
    run_dir = work / "runs" / setting / side["name"]
    over = [*SETTING_OVERRIDES[setting], *(QUICK_MODEL + QUICK_RUN if quick else []), *RUN_COMMON,
            f"model.path={ckpt['model']}", f"run.output_dir={run_dir}", f"trainer.total_steps={1 + steps}"]
    log(f"{setting} {side['name']} ({side['commit'][:10]}): {1 + steps} train_steps")
    rec = train(Path(side["agentrl_bin"]), Path(side["cwd"]), over, run_dir)
    ran = json.loads((run_dir / "run_info.json").read_text())["git_commit"]
    if ran != side["commit"]:
        raise RuntimeError(f"{side['name']}: run_info.json says commit {ran}, expected {side['commit']} (wrong code imported)")
    rows = {int(r["train_step"]): r for r in read_rows(run_dir) if "time/step_s" in r}
    measured = [rows[s] for s in sorted(rows) if s >= 2]
    if len(measured) != steps:
        raise RuntimeError(f"{side['name']} {setting}: {len(measured)} measured train_steps in {run_dir}/metrics.jsonl, expected {steps}")

    def col(key: str) -> list[float]:
        return [float(r[key]) for r in measured if key in r]

    step_s, rollout_s, learner_s = col("time/step_s"), col("time/rollout_s"), col("time/learner_s")
    other_s = [s - r - learner for s, r, learner in zip(step_s, rollout_s, learner_s)]
    out: dict[str, Any] = {
        "step_s": mean(step_s), "rollout_s": mean(rollout_s), "learner_s": mean(learner_s), "other_s": mean(other_s),
        "per_step": {"step_s": step_s, "rollout_s": rollout_s, "learner_s": learner_s, "other_s": other_s},
        "warmup_step_s": float(rows[1]["time/step_s"]) if 1 in rows else None,
        "tokens_per_episode": mean(col("rollout/total_tokens_mean")),
        "generated_tokens_per_episode": mean(col("rollout/generated_tokens_mean")),
        "turns_per_episode": mean(col("rollout/turns_mean")), "episodes_per_step": mean(col("rollout/episodes")),
        "success": mean(col("rollout/success")), "truncated_frac": mean(col("rollout/truncated_frac")),
        "engine_prefill_tokens": col("rollout/prefill_tokens") or None, "engine_cached_tokens": col("rollout/cached_tokens") or None,
        "commit": ran, "run": rec, "run_dir": str(run_dir),
    }
    return out


def add_analytic(res: dict[str, Any], by_step: dict[int, list[dict[str, Any]]]) -> None:
    """prefill_per_token (analytic) and the reconstruction check, from the measured steps' episodes."""
    eps = [e for s, es in by_step.items() if s >= 2 for e in es]
    prefill, total = sum(e["prefill"] for e in eps), sum(e["total"] for e in eps)
    res["prefill_per_token_analytic"] = prefill / total if total else float("nan")
    raw_total = sum(e["raw_total"] for e in eps)
    res["prefill_per_token_analytic_unscaled"] = sum(e["raw_prefill"] for e in eps) / raw_total if raw_total else float("nan")
    res["reconstruction"] = {"episodes": len(eps), "tokens_per_episode_unscaled": mean([e["raw_total"] for e in eps]),
                             "generated_tokens_per_episode_unscaled": mean([e["raw_generated"] for e in eps]),
                             "scale_generated": mean([e["scale_generated"] for e in eps]),
                             "scale_appended": mean([e["scale_appended"] for e in eps]),
                             "turns_per_episode": mean([e["turns"] for e in eps]),
                             "metrics_tokens_per_episode": res["tokens_per_episode"],
                             "metrics_generated_tokens_per_episode": res["generated_tokens_per_episode"]}
    eng = res.get("engine_prefill_tokens")
    if eng:
        denom = res["tokens_per_episode"] * res["episodes_per_step"]
        res["prefill_per_token"], res["prefill_source"] = mean(eng) / denom, "engine"
    else:
        res["prefill_per_token"], res["prefill_source"] = res["prefill_per_token_analytic"], "analytic"


def floors(ckpt: dict[str, Any], by_step: dict[int, list[dict[str, Any]]], num_envs: int, ppo_epochs: int, threads: int) -> dict[str, Any]:
    import torch

    from agentrl.learner.policy import load_model, load_tokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tok = load_tokenizer(ckpt["model"], None)
    model = load_model(ckpt["model"], dtype="float32", device="cpu", gradient_checkpointing=False)
    lf, rf, decoded = [], [], []
    for s in sorted(by_step):
        if s < 2:
            continue
        lf.append(learner_floor(model, by_step[s], ppo_epochs, model.config.vocab_size))
        t, n = rollout_floor(model, by_step[s], num_envs, tok.pad_token_id)
        rf.append(t)
        decoded.append(n)
    return {"learner_floor_s": mean(lf), "rollout_floor_s": mean(rf), "per_step": {"learner_floor_s": lf, "rollout_floor_s": rf, "decoded_tokens": decoded},
            "threads": threads, "ppo_epochs": ppo_epochs, "num_envs": num_envs}


def measure_setting(setting: str, index: int, sides: dict[str, dict[str, Any]], work: Path, steps: int, quick: bool) -> dict[str, Any]:
    from agentrl.config import load_config

    ckpt = ensure_sft(setting, work, sides["new"], quick)
    cfg = load_config(str(ROOT / CONFIG), overrides=[*SETTING_OVERRIDES[setting], *(QUICK_RUN if quick else [])])
    order = ["new"] if "base" not in sides else (["base", "new"] if index % 2 == 0 else ["new", "base"])
    runs = {name: run_side(sides[name], setting, ckpt, work, steps, quick) for name in order}
    reb = Rebuilder(ckpt["model"])
    episodes = {name: reb.steps(Path(r["run_dir"]), {int(x["train_step"]): x for x in read_rows(Path(r["run_dir"])) if "time/step_s" in x})
                for name, r in runs.items()}
    for name, r in runs.items():
        add_analytic(r, episodes[name])
    log(f"{setting}: floors on the new run's episodes")
    fl = floors(ckpt, episodes["new"], cfg.env.num_envs, cfg.trainer.ppo_epochs, cfg.run.num_threads)
    new = runs["new"]
    res: dict[str, Any] = {k: v for k, v in new.items()}
    res.update({"learner_floor_s": fl["learner_floor_s"], "rollout_floor_s": fl["rollout_floor_s"], "floors": fl,
                "learner_over_floor": new["learner_s"] / fl["learner_floor_s"], "rollout_over_floor": new["rollout_s"] / fl["rollout_floor_s"],
                "order": order, "steps": steps, "warm_start": ckpt, "horizon": HORIZON[setting],
                "config": CONFIG, "setting_overrides": SETTING_OVERRIDES[setting]})
    if "base" in runs:
        res["base"] = runs["base"]
        res["speedup_vs_base"] = runs["base"]["step_s"] / new["step_s"]
        res["prefill_per_token_base"] = runs["base"]["prefill_per_token"]
    return res


# ----------------------------------------------------------------------------- report
def fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(report: dict[str, Any], settings: list[str]) -> str:
    cols = [s for s in settings if s in report]
    rows: list[tuple[str, Any]] = [
        ("step_s (new)", lambda r: fmt(r["step_s"])), ("  rollout_s", lambda r: fmt(r["rollout_s"])),
        ("  learner_s", lambda r: fmt(r["learner_s"])), ("  other_s", lambda r: fmt(r["other_s"])),
        ("step_s (base)", lambda r: fmt(r.get("base", {}).get("step_s"))),
        ("  rollout_s", lambda r: fmt(r.get("base", {}).get("rollout_s"))),
        ("  learner_s", lambda r: fmt(r.get("base", {}).get("learner_s"))),
        ("  other_s", lambda r: fmt(r.get("base", {}).get("other_s"))),
        ("speedup_vs_base", "speedup_vs_base"),
        ("learner_floor_s", lambda r: fmt(r["learner_floor_s"], ".3f")), ("learner_over_floor", "learner_over_floor"),
        ("rollout_floor_s", lambda r: fmt(r["rollout_floor_s"], ".3f")), ("rollout_over_floor", "rollout_over_floor"),
        ("prefill_per_token (new)", "prefill_per_token"),
        ("  source", lambda r: r["prefill_source"]),
        ("prefill_per_token (base)", lambda r: fmt(r.get("prefill_per_token_base"))),
        ("tokens / episode", lambda r: fmt(r["tokens_per_episode"], ".0f")),
        ("generated / episode", lambda r: fmt(r["generated_tokens_per_episode"], ".0f")),
        ("turns / episode", lambda r: fmt(r["turns_per_episode"], ".1f")),
        ("episodes / step", lambda r: fmt(r["episodes_per_step"], ".0f")),
        ("success", lambda r: fmt(r["success"])),
    ]
    targets = {(s, k): (op, v) for s, k, op, v in TARGETS}

    def cell(setting: str, key: Any) -> str:
        r = report[setting]
        if callable(key):
            return key(r)
        val = r.get(key)
        text = fmt(val)
        if (setting, key) in targets and val is not None:
            op, v = targets[(setting, key)]
            hit = val >= v if op == ">=" else val <= v
            text += f" [{op}{v:g} {'hit' if hit else 'MISS'}]"
        elif (setting, key) in targets:
            text += f" [{targets[(setting, key)][0]}{targets[(setting, key)][1]:g} n/a]"
        return text

    width = 26
    lines = [f"{'':<{width}}" + "".join(f"{c:>22}" for c in cols)]
    for label, key in rows:
        lines.append(f"{label:<{width}}" + "".join(f"{cell(c, key):>22}" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from h4,h10,h50")
    ap.add_argument("--steps", type=int, default=None, help="measured train_steps per run, after 1 warm-up (default 3; --quick 1)")
    ap.add_argument("--base", default=None, help=f"base commit (default {DEFAULT_BASE}; with --quick: no base unless given)")
    ap.add_argument("--no-base", action="store_true", help="measure the current code only")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="SFT checkpoints, base worktree and venv, runs (git-ignored default)")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/step_time.json; --quick: WORK/step_time_quick.json)")
    ap.add_argument("--quick", action="store_true", help="tiny model and batch, h4 only, 1 measured step, no base unless --base: a smoke run")
    ap.add_argument("--force", action="store_true", help="measure settings already in the JSON again")
    args = ap.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if args.quick:
        settings = ["h4"]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        ap.error(f"unknown settings {bad}; choose from {','.join(SETTINGS)}")
    steps = args.steps if args.steps is not None else (1 if args.quick else 3)
    if steps < 1:
        ap.error("--steps must be >= 1")
    base = None if args.no_base or (args.quick and args.base is None) else (args.base or DEFAULT_BASE)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = (args.out or (work / "step_time_quick.json" if args.quick else DEFAULT_OUT)).resolve()

    sys.path.insert(0, str(ROOT))
    from agentrl.train import environment_info

    report: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    sides = {"new": new_side()}
    if base is not None:
        sides["base"] = base_side(base, work)
    report.update({"benchmark": "step_time", "quick": args.quick, "config": CONFIG, "run_overrides": RUN_COMMON,
                   "quick_overrides": QUICK_MODEL + QUICK_RUN if args.quick else None, "sft_plan": {k: list(v) for k, v in SFT_PLAN.items()},
                   "sft_common_overrides": SFT_COMMON, "setting_overrides": SETTING_OVERRIDES,
                   "targets": [{"setting": s, "key": k, "op": op, "value": v} for s, k, op, v in TARGETS],
                   "work": str(work)})
    report.setdefault("environment", {})
    report["environment"].update({**environment_info(), "cpus": os.cpu_count()})
    report.setdefault("sides", {}).update(sides)
    for i, setting in enumerate(settings):
        have = report.get(setting)
        if have and not args.force and (base is None or "base" in have) and have.get("steps") == steps:
            log(f"{setting}: already in {out}, skipped (--force to measure again)")
            continue
        t0 = time.perf_counter()
        load0 = os.getloadavg()
        res = measure_setting(setting, i, sides, work, steps, args.quick)
        res["wall_s"] = time.perf_counter() - t0
        res["loadavg_before"], res["loadavg_after"] = load0, os.getloadavg()
        report[setting] = res
        report["environment"].setdefault("loadavg", {})[setting] = {"before": load0, "after": res["loadavg_after"]}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        log(f"{setting} done in {res['wall_s']:.0f} s; wrote {out}")
    print(table(report, settings))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
