#!/usr/bin/env bash
# GPU smoke check of agentrl's GPU paths (docs/distributed.md), as ONE command from the repo root:
#
#     OUT=/tmp/gpu_smoke timeout 600 bash benchmarks/gpu_smoke.sh
#
# (about 70 s of steps on an H200 without vllm and ray; each step has its own timeout)
#
# Steps (each under its own timeout; a step whose packages are missing is skipped and says so):
#   setup             venv (--system-site-packages: the machine's CUDA torch is reused), then
#                     `pip install -e .[vllm]` + pytest plugins; on a machine without a package
#                     index, the project alone (--no-deps) plus any wheels carried in ./.whl
#   env               torch / CUDA / GPUs / package versions -> $OUT/env.json
#   hf_cuda_conformance  tests/rollout/test_conformance.py with AGENTRL_TEST_DEVICE=cuda: the HF engine
#                     with the model on the GPU, 6-turn episodes per chat template: trained ids ==
#                     sampled ids, behavior logprobs == the learner's recomputation within 1e-5
#                     -> $OUT/conformance_cuda.json
#   vllm_conformance  benchmarks/gpu_tests/test_vllm_gpu.py on the GPU: vLLM's sampled ids re-scored
#                     by the learner's HF forward give vLLM's logprobs, before and after a weight
#                     sync -> $OUT/vllm_conformance.json
#   train_local_cuda  the smoke config (tiny model, GuessNumber) with run.device=cuda, local backend
#   train_ray_vllm    the same with run.backend=ray and rollout.engine=vllm (GenerationWorker on
#                     the GPU, one learner rank on the GPU; with one GPU they share it)
#   fsdp_one_rank     one FSDP2 rank over NCCL (no Ray): a sharded float32 update equals the unsharded
#                     one; bf16 mixed precision (fp32 masters) against fp32 -> $OUT/fsdp_one_rank_cuda.json
#   fsdp              2 FSDP2 learner ranks == one process (tests/distributed/test_fsdp.py): NCCL on
#                     2 GPUs when there are 2+, else the gloo/CPU version of the same test
# Results: $OUT/summary.json (status, seconds and note per step, rewritten after every step;
# "could_not_check" lists the skipped steps and why), $OUT/gpu_smoke.log (all output),
# plus the JSON/metrics files named above (at most 8 files in all). Exit status 0 when no step
# failed (skipped steps do not fail it).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_smoke_out}
mkdir -p "$OUT"
VENV=${AGENTRL_GPU_VENV:-/tmp/agentrl-gpu-venv}
WORK=$(mktemp -d /tmp/agentrl-gpu-smoke.XXXXXX)
STEPS=$WORK/steps.tsv
: >"$STEPS"
exec > >(tee -a "$OUT/gpu_smoke.log") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 RAY_DEDUP_LOGS=0

# summary.json is rewritten after every step, so an outer timeout shorter than the steps' sum
# still leaves the steps that finished (and "complete": false)
write_summary() {  # [final]
    python3 - "$STEPS" "$OUT/summary.json" "${1:-}" <<'EOF'
import json, sys
steps = [dict(zip(("step", "status", "seconds", "note"), line.rstrip("\n").split("\t"))) for line in open(sys.argv[1]) if line.strip()]
final = sys.argv[3] == "final"
summary = {
    "complete": final,
    "steps": steps,
    "failed": [s["step"] for s in steps if s["status"] == "failed"],
    # what this run could not check, and why (a skipped step's note says what was missing)
    "could_not_check": [f"{s['step']}: {s['note']}" for s in steps if s["status"] == "skipped"],
}
json.dump(summary, open(sys.argv[2], "w"), indent=2)
if final:
    for s in steps:
        print(f"{s['step']:20s} {s['status']:8s} {s['seconds']:>5s}s  {s['note']}")
    for line in summary["could_not_check"]:
        print("could not check:", line)
EOF
}

record() {  # name status seconds note
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STEPS"
    echo "=== $1: $2 ($3 s) $4"
    write_summary
}

run_step() {  # name timeout_s command... ; $NOTE, if set, is added to the step's note
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    local t0=$SECONDS rc
    timeout "$limit" "$@"
    rc=$?
    if [ $rc -eq 0 ]; then
        record "$name" passed $((SECONDS - t0)) "${NOTE:-}"
    elif [ $rc -eq 124 ]; then
        record "$name" failed $((SECONDS - t0)) "timed out after ${limit}s ${NOTE:-}"
    else
        record "$name" failed $((SECONDS - t0)) "exit status $rc ${NOTE:-}"
    fi
}

has() { python -c "import $1" >/dev/null 2>&1; }

# ----------------------------------------------------------------------------- setup
t0=$SECONDS
if [ "$VENV" = current ]; then  # AGENTRL_GPU_VENV=current: the active environment as it is
    setup_note="the active environment, nothing installed"
else
    # the packages of the python3 that makes the venv (when that python3 is itself a venv, as on
    # images that keep CUDA torch in one, --system-site-packages alone would not see them)
    parent_site=$(python3 -c "import site; print('\n'.join(site.getsitepackages()))")
    python3 -m venv --system-site-packages "$VENV" && . "$VENV/bin/activate" || { record setup failed 0 "no venv"; exit 1; }
    printf '%s\n' "$parent_site" >"$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_agentrl_parent_site.pth"
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # wheels carried for an offline machine
        python -m pip install -q --no-index --no-deps --no-compile .whl/*.whl || echo "carried wheels did not all install"
    fi
    if timeout 30 python -m pip index versions pip >/dev/null 2>&1; then
        timeout 900 python -m pip install -q -e ".[vllm]" pytest pytest-timeout pytest-asyncio \
            && setup_note="online install with the vllm extra" \
            || setup_note="online install failed; continuing with what is importable"
    else
        python -m pip install -q --no-deps --no-build-isolation -e . || true
        setup_note="no package index: the project installed without dependencies (carry missing wheels in .whl)"
    fi
fi
missing=$(python - <<'EOF'
import importlib.util
names = ["torch", "transformers", "gymnasium", "yaml", "httpx", "ray", "vllm", "pytest", "pytest_timeout", "pytest_asyncio"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
EOF
)
has agentrl.train && record setup passed $((SECONDS - t0)) "$setup_note; missing: ${missing:-none}" \
    || record setup failed $((SECONDS - t0)) "$setup_note; agentrl does not import; missing: ${missing:-none}"

# ----------------------------------------------------------------------------- env
python - "$OUT/env.json" <<'EOF'
import importlib.metadata as md, json, sys, torch
info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
for pkg in ("vllm", "ray", "transformers", "gymnasium", "agentrl"):
    try:
        info[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
        info[pkg] = None
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info))
EOF
NGPU=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
PYTEST_OK=0
has pytest && has pytest_timeout && has pytest_asyncio && PYTEST_OK=1

# ----------------------------------------------------------------------------- GPU pytest files
gpu_pytest_step() {  # name timeout_s test_file [python module it needs]; the tests put models on cuda
    local name=$1 limit=$2 file=$3 needs=${4:-}
    if [ "$NGPU" -lt 1 ]; then
        record "$name" skipped 0 "no CUDA device"
    elif [ -n "$needs" ] && ! has "$needs"; then
        record "$name" skipped 0 "$needs is not installed"
    elif [ $PYTEST_OK -ne 1 ]; then
        record "$name" skipped 0 "pytest plugins missing"
    else
        AGENTRL_RESULTS_DIR=$OUT AGENTRL_TEST_DEVICE=cuda run_step "$name" "$limit" python -m pytest -q -p no:cacheprovider "$file" -rs
    fi
}
gpu_pytest_step hf_cuda_conformance 300 tests/rollout/test_conformance.py
gpu_pytest_step vllm_conformance 420 benchmarks/gpu_tests/test_vllm_gpu.py vllm

# ----------------------------------------------------------------------------- training runs
python - "$WORK" <<'EOF'
import re, sys
from pathlib import Path
work = Path(sys.argv[1])
code = re.search(r"```python\n(.*?)```", Path("docs/add_env.md").read_text(), re.DOTALL).group(1)
(work / "guess_number.py").write_text(code)
# head_dim 64 (256 / 4): supported by every vLLM attention backend
(work / "smoke.yaml").write_text(f"""# the smoke config of tests/train, sized for vLLM's kernels
run: {{name: gpu_smoke, output_dir: {work}/run, seed: 0, imports: [{work}/guess_number.py]}}
model:
  path: {work}/model
  init: {{arch: qwen2, template: chatml, vocab_size: 400, hidden_size: 256, num_layers: 2, num_heads: 4, num_kv_heads: 2, corpus_episodes: 10}}
env: {{id: agentrl/GuessNumber-v0, kwargs: {{high: 8, max_turns: 4}}, num_envs: 4}}
rollout: {{group_size: 2, tasks_per_step: 2, max_new_tokens: 24, max_total_tokens: 1024}}
sft: {{enabled: true, episodes: 8, epochs: 1, batch_size: 4}}
trainer: {{total_steps: 2, lr: 1e-3, micro_batch_size: 2, checkpoint_every: 1, eval_episodes: 4}}
logging: {{progress: false, tensorboard: false}}
algorithm: {{estimator: grpo, loss: {{name: ppo}}, aggregation: token-mean}}
""")
# a run passes only if it trained every step and no episode failed (engine errors end as failed
# episodes, not as a crash, so the exit status alone would not show them)
(work / "check_run.py").write_text("""import json, sys
rows = [json.loads(line) for line in open(sys.argv[1] + "/metrics.jsonl")]
steps = sorted({r["train_step"] for r in rows if "loss/total" in r})
failed = {k: v for r in rows for k, v in r.items() if k.endswith("failed_frac") and v > 0}
print("train_steps with a loss:", steps, "| failed episode fractions > 0:", failed or "none")
sys.exit(0 if steps == [1, 2] and not failed else 1)
""")
EOF

if [ "$NGPU" -lt 1 ]; then
    record train_local_cuda skipped 0 "no CUDA device"
else
    run_step train_local_cuda 300 bash -c "python -m agentrl.cli train $WORK/smoke.yaml run.device=cuda run.output_dir=$WORK/run_local \
        && python $WORK/check_run.py $WORK/run_local"
    cp "$WORK/run_local/metrics.jsonl" "$OUT/train_local_cuda_metrics.jsonl" 2>/dev/null || true
fi

if [ "$NGPU" -lt 1 ] || ! has vllm || ! has ray; then
    record train_ray_vllm skipped 0 "needs a CUDA device, vllm and ray (have: ${NGPU} GPUs; missing: ${missing:-none})"
else
    if [ "$NGPU" -ge 2 ]; then GPUS=1; else GPUS=0.45; fi  # one GPU: the generation worker and the learner rank share it
    run_step train_ray_vllm 420 bash -c "python -m agentrl.cli train $WORK/smoke.yaml run.device=cuda run.backend=ray \
        run.output_dir=$WORK/run_ray rollout.engine=vllm ray.num_cpus=8 \
        ray.gpus_per_generation_worker=$GPUS ray.gpus_per_learner_rank=$GPUS \
        'rollout.vllm={gpu_memory_utilization: 0.2, max_model_len: 2048, enforce_eager: true, dtype: float32}' \
        && python $WORK/check_run.py $WORK/run_ray"
    cp "$WORK/run_ray/metrics.jsonl" "$OUT/train_ray_vllm_metrics.jsonl" 2>/dev/null || true
fi

# ----------------------------------------------------------------------------- FSDP2
# one rank over NCCL in one process (no Ray): sharded fp32 update == unsharded, bf16 mixed
# precision vs fp32 -> $OUT/fsdp_one_rank_cuda.json
if [ "$NGPU" -lt 1 ]; then
    record fsdp_one_rank skipped 0 "no CUDA device"
elif [ $PYTEST_OK -ne 1 ]; then
    record fsdp_one_rank skipped 0 "pytest plugins missing"
else
    AGENTRL_RESULTS_DIR=$OUT AGENTRL_TEST_DEVICE=cuda run_step fsdp_one_rank 300 \
        python -m pytest -q -p no:cacheprovider tests/distributed/test_fsdp.py -k one_rank -rs
fi
if ! has ray || [ $PYTEST_OK -ne 1 ]; then
    record fsdp skipped 0 "needs ray and the pytest plugins"
elif [ "$NGPU" -ge 2 ]; then
    AGENTRL_TEST_DEVICE=cuda run_step fsdp 300 python -m pytest -q -p no:cacheprovider tests/distributed/test_fsdp.py
else
    NOTE="fewer than 2 GPUs: the 2 ranks ran on CPU with gloo (on 1 GPU, train_ray_vllm trains with 1 GPU rank)" \
        run_step fsdp 300 python -m pytest -q -p no:cacheprovider tests/distributed/test_fsdp.py
fi

# ----------------------------------------------------------------------------- summary
write_summary final
status=0
grep -q $'\tfailed\t' "$STEPS" && status=1
rm -rf "$WORK"
exit $status
