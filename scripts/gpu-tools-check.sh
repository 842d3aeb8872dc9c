#!/usr/bin/env bash
# The tools end to end on a GPU machine, against themselves on its CPU: a small synthetic task
# (clopa-synth, clopa-split), then clopa-simulate of models/clopa-tiny on the holdout and one
# clopa-train-episode (group `in`, episode 1), each with --device cpu and --device cuda, plus the
# GPU's fp16 inference and bf16 training; scripts/gpu_tools_compare.py compares the Dice of every
# step and the trained tensors. The quick profile's settings (pipelines/quick.toml).
#
#   scripts/build-cuda.sh                        # here: target/cuda-check/tools/*.xz
#   run(command="bash scripts/gpu-tools-check.sh", carry=["target/cuda-check"])   # with the device tool
#
# Writes $OUT (default /tmp/gpu-tools-check): tools.txt (each step's exit status and wall time, then
# the comparison), tools.log (the tools' output), mem.txt (nvidia-smi's peak during each).
# GPU_TOOLS_DEVICE=cpu runs the GPU side on the CPU as well, to check the script itself where there
# is no GPU.
set -uo pipefail

out=${OUT:-/tmp/gpu-tools-check}
mkdir -p "$out"
dist=target/cuda-check
. scripts/gpu-env.sh
gpu=${GPU_TOOLS_DEVICE:-cuda}

w=/tmp/gpu-tools-check-work
rm -rf "$w"
b=$w/bin
for t in clopa-synth clopa-split clopa-simulate clopa-train-episode; do
  unpack "$dist/tools/$t.xz" "$b/$t" || exit 1
done
m=data-manifests/synth-organ.toml
p=pipelines/quick.toml
export CLOPA_DATA=$w/data RUST_BACKTRACE=1
log=$out/tools.log
: > "$log"

# step NAME CMD...: runs CMD (at most 150 s) with its output in tools.log; its status and wall time
# to tools.txt
step() {
  local name=$1
  shift
  echo "== $name: $*" >> "$log"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout -k 5 150 "$@" >> "$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  awk -v n="$name" -v rc="$rc" -v a="$t0" -v b="$t1" 'BEGIN { printf "%s: rc %d, %.2f s\n", n, rc, b - a }' |
    tee -a "$out/tools.txt"
  return $rc
}

step synth "$b/clopa-synth" --task organ --cases 40 --seed 0 --size 64,64,64 -o "$CLOPA_DATA/synth/organ" ||
  exit 1
step split "$b/clopa-split" "$m" --profile "$p" -o "$w/split.parquet" -q || exit 1
sim() {
  local name=$1
  shift
  peak "$name" step "$name" "$b/clopa-simulate" --model models/clopa-tiny --manifest "$m" \
    --split "$w/split.parquet" --profile "$p" -o "$w/$name.parquet" -q "$@"
}
train() {
  local name=$1
  shift
  peak "$name" step "$name" "$b/clopa-train-episode" --model models/clopa-tiny --manifest "$m" \
    --split "$w/split.parquet" --run 0 --episode 1 --group in --profile "$p" \
    -o "$w/$name.safetensors" "$@"
}
sim sim-cpu --device cpu
sim sim-gpu --device "$gpu"
# (again: the first CUDA run on a machine also JIT-compiles candle's PTX kernels for the card, which
# the driver then caches in ~/.nv/ComputeCache; this one shows the time without that)
sim sim-gpu-again --device "$gpu"
sim sim-gpu-fp16 --device "$gpu" --precision fp16
train train-cpu --device cpu
train train-gpu --device "$gpu"
train train-gpu-bf16 --device "$gpu" --precision bf16
"$py" scripts/gpu_tools_compare.py "$w" models/clopa-tiny/model.safetensors | tee -a "$out/tools.txt"
