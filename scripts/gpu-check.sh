#!/usr/bin/env bash
# The GPU check, run on a GPU machine from the repository root with target/cuda-check (from
# scripts/build-cuda.sh) beside it: clopa on the GPU against clopa on the CPU, and the same work
# in PyTorch on the same GPU. No Rust, no network needed there; PyTorch cu130 must be installed.
#
#   scripts/gpu-check.sh [SIZE] [PATCH] [STEPS] [REPS]     (defaults 192 96 2 3)
#
# PATCH is where clopa's GPU training steps are compared with its CPU's (the CPU side sets the
# time: a 96³ step is ~20 s on 16 cores); both sides also train at the paper's 192³ on the GPU
# alone (clopa: `train-device-only`; PyTorch: its second `torch-train` line).
#
# With the device tool:  run(command="bash scripts/gpu-check.sh", carry=["target/cuda-check"])
# Writes $OUT (default /tmp/gpu-check): gpu.txt, clopa-smoke.jsonl (64³), clopa.jsonl, torch-fp32.jsonl,
# torch-autocast.jsonl (fp16, as nnInteractive), torch-tf32.jsonl (PyTorch's default) and
# the peak of nvidia-smi's memory.used during each (mem.txt), and prints them all.
set -uo pipefail

size=${1:-192} patch=${2:-96} steps=${3:-2} reps=${4:-3}
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
dist=target/cuda-check
py=${PYTHON:-python3}

# clopa links the CUDA 13 runtime, cuBLAS, cuRAND and cuDNN 9: PyTorch cu130 ships them
site=$("$py" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
export LD_LIBRARY_PATH=$site/nvidia/cu13/lib:$site/nvidia/cudnn/lib:${LD_LIBRARY_PATH:-}
# (wherever this PyTorch keeps them, if not there)
for lib in libcudart.so.13 libcublas.so.13 libcurand.so.10 libcudnn.so.9; do
  d=$(find "$site/nvidia" -name "$lib*" -printf '%h\n' 2>/dev/null | head -1)
  [ -n "$d" ] && LD_LIBRARY_PATH=$d:$LD_LIBRARY_PATH
done
# dynamic-network-architectures (pure Python) from the carried wheel when it is not installed
if ! "$py" -c 'import dynamic_network_architectures' 2>/dev/null; then
  # (under /tmp: whatever is under $OUT is sent back)
  "$py" -m pip install --quiet --no-deps --no-index --target /tmp/gpu-check-pylib "$dist"/wheels/*.whl
  export PYTHONPATH=/tmp/gpu-check-pylib:${PYTHONPATH:-}
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$out/gpu.txt"

# Runs "$@" with nvidia-smi sampling memory.used every 50 ms; appends the peak (MiB) to $out/mem.txt
# (the device tool sends back 8 files at most).
peak() {
  local name=$1
  shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "/tmp/gpu-check-mem-$name" &
  local smi=$!
  "$@"
  local rc=$?
  kill "$smi" 2>/dev/null
  wait "$smi" 2>/dev/null
  sort -n "/tmp/gpu-check-mem-$name" | tail -1 | sed "s/^/$name peak memory.used MiB: /" | tee -a "$out/mem.txt" >&2
  return $rc
}

# clopa first (the unknown side): a smoke test that fails fast, then the check; then PyTorch.
# The device tool stops a command at 600 s and the timeouts below add up to 540 s; every line is
# written as it is printed, so a run cut short still leaves what it measured.
# (carried xz-compressed; python3's lzma, in case the machine has no xz)
bin=/tmp/gpu-check-bin/gpu_check
mkdir -p "${bin%/*}"
"$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
  "$dist/gpu_check.xz" "$bin" || exit 1
chmod +x "$bin"
ldd "$bin" | grep 'not found' >&2 && echo "gpu-check: libraries missing (above)" >&2
export RUST_BACKTRACE=1
# (the check itself only when the smoke test passed: a broken build would spend its 300 s on nothing)
if peak clopa-smoke timeout -k 5 60 "$bin" cuda 64 64 1 1 --no-paper-size |
  tee "$out/clopa-smoke.jsonl"; then
  peak clopa timeout -k 5 300 "$bin" cuda "$size" "$patch" "$steps" "$reps" | tee "$out/clopa.jsonl"
else
  echo "gpu-check: the smoke test failed; clopa's check skipped" >&2
fi
for mode in fp32:"" autocast:--autocast tf32:--tf32; do
  name=torch-${mode%%:*}
  peak "$name" timeout -k 5 60 "$py" -u scripts/gpu_check.py "$size" "$patch,192" "$steps" "$reps" ${mode#*:} |
    tee "$out/$name.jsonl"
done
