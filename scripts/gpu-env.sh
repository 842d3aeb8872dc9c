# Sourced by scripts/gpu-check.sh and scripts/gpu-tools-check.sh on the GPU machine, from the
# repository root: the CUDA libraries clopa's binaries load, the PyTorch reference's network package,
# and two helpers. Expects $dist (the carried target/cuda-check) and $out (where results go).

py=${PYTHON:-python3}

# clopa links the CUDA 13 runtime, cuBLAS, cuRAND and cuDNN 9: PyTorch cu130 ships them
# (a Python without PyTorch leaves LD_LIBRARY_PATH as it is: a dry run on a machine without a GPU)
site=$("$py" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null) ||
  site=/nonexistent
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

# Unpacks a carried xz-compressed binary SRC to DST (python3's lzma, in case the machine has no
# xz) and says which of its libraries are missing.
unpack() {
  mkdir -p "$(dirname "$2")"
  "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$1" "$2" || return 1
  chmod +x "$2"
  ! ldd "$2" | grep 'not found' >&2 || echo "gpu-env: libraries of $2 missing (above)" >&2
}

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
