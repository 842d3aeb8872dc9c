#!/usr/bin/env bash
# The GPU check, run on a GPU machine from the repository root with target/cuda-check (from
# scripts/build-cuda.sh) beside it: clopa on the GPU against clopa on the CPU, and the same work
# in PyTorch on the same GPU. No Rust, no network needed there; PyTorch cu130 must be installed.
#
#   scripts/gpu-check.sh [SIZE] [PATCH] [STEPS] [REPS]     (defaults 192 96 2 3)
#
# PATCH is where clopa's GPU training steps are compared with its CPU's (the CPU side sets the
# time: a 96³ step took 4.4 s on the H200 machine's 16 cores); both sides also train at the
# paper's 192³ on the GPU alone (clopa: `train-device-only`; PyTorch: its second `torch-train`
# line).
#
# With the device tool:  run(command="bash scripts/gpu-check.sh", carry=["target/cuda-check"])
# Writes $OUT (default /tmp/gpu-check): gpu.txt, clopa-smoke.jsonl (64³), clopa.jsonl (cuDNN's
# legacy API; with GPU_CHECK_FIND=1 also its graph API and Find), torch.jsonl (fp32 with TF32 off,
# autocast fp16 as nnInteractive, autocast bf16, TF32 as PyTorch's default, fp32 with cudnn.benchmark) and the peak
# of nvidia-smi's memory.used during each (mem.txt), and prints them all.
#
# Both GPU checks in one call of the device tool (~3–5 min on an H200; 7 files back), the tools
# first:
#   run(command="bash scripts/gpu-tools-check.sh; bash scripts/gpu-check.sh", carry=["target/cuda-check"])
set -uo pipefail

size=${1:-192} patch=${2:-96} steps=${3:-2} reps=${4:-3}
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
dist=target/cuda-check
. scripts/gpu-env.sh

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$out/gpu.txt"

# clopa first (the unknown side): a smoke test that fails fast, then the check; then PyTorch.
# The device tool stops a command at 600 s and the timeouts below add up to 560 s (1100 s with
# GPU_CHECK_FIND=1); on an H200 the script took ~150 s without the experiments (2026-11-28; with
# the tools check before it ~220 s). Starting a fresh machine costs device time too: 30 s to 6 min
# (the fourteenth session lost its last 366 s to one start). Every line is written as it is
# printed, so a run cut short still leaves what it measured.
bin=/tmp/gpu-check-bin/gpu_check
unpack "$dist/gpu_check.xz" "$bin" || exit 1
export RUST_BACKTRACE=1
# (the check itself only when the smoke test passed: a broken build would spend its 300 s on nothing)
if peak clopa-smoke timeout -k 5 60 "$bin" cuda 64 64 1 1 --no-paper-size |
  tee "$out/clopa-smoke.jsonl"; then
  peak clopa timeout -k 5 200 "$bin" cuda "$size" "$patch" "$steps" "$reps" | tee "$out/clopa.jsonl"
  smoke=ok
else
  echo "gpu-check: the smoke test failed; clopa's check skipped" >&2
  smoke=failed
fi
# (one file for all: the device tool sends back 8 files at most, gpu-tools-check.sh's too)
# (GPU_CHECK_TORCH=0 leaves PyTorch out: a rerun of clopa's side on the card of an earlier run;
# GPU_CHECK_TORCH_MODES picks modes, e.g. "autocast-bf16:--autocast,--bf16")
modes=${GPU_CHECK_TORCH_MODES:-'fp32: autocast:--autocast autocast-bf16:--autocast,--bf16 tf32:--tf32 benchmark:--benchmark'}
[ "${GPU_CHECK_TORCH:-1}" = 0 ] && modes=""
for mode in $modes; do
  name=torch-${mode%%:*}
  flags=${mode#*:}
  peak "$name" timeout -k 5 60 "$py" -u scripts/gpu_check.py "$size" "$patch,192" "$steps" "$reps" ${flags//,/ } |
    tee -a "$out/torch.jsonl"
done
# With GPU_CHECK_FIND=1, last: clopa again through cuDNN's graph API (cudnn_graph.rs) with its first
# few plans per shape timed on first use (CLOPA_CUDNN_API=graph CLOPA_CUDNN_BENCHMARK=1: PyTorch's
# cudnn.benchmark in that API; measured 2026-11-28, fourteenth session: forward 3-9 % faster, the
# training step 10 % slower, 36 s of timing on the first step), the graph API by its heuristics alone
# (measured 2026-11-28: the training step 1.77x slower) and the legacy API by its Find (no faster),
# PyTorch's cudnn.benchmark counterpart being the torch `benchmark` line above. The same lines after
# a `config` line saying which. (Opt-in: each costs 1-2 min of device time and none has paid off.)
if [ "$smoke" = ok ] && [ "${GPU_CHECK_FIND:-0}" = 1 ]; then
  CLOPA_CUDNN_API=graph CLOPA_CUDNN_BENCHMARK=1 peak clopa-graph-timed timeout -k 5 240 "$bin" cuda "$size" "$patch" "$steps" "$reps" |
    tee -a "$out/clopa.jsonl"
  CLOPA_CUDNN_API=graph peak clopa-graph timeout -k 5 150 "$bin" cuda "$size" "$patch" "$steps" "$reps" |
    tee -a "$out/clopa.jsonl"
  CLOPA_CUDNN_BENCHMARK=1 peak clopa-find timeout -k 5 150 "$bin" cuda "$size" "$patch" "$steps" "$reps" |
    tee -a "$out/clopa.jsonl"
fi
