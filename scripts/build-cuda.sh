#!/usr/bin/env bash
# Builds clopa's CUDA binaries on a machine without a GPU or a CUDA toolkit, from PyPI wheels.
#
#   scripts/build-cuda.sh         # clopa-simulate, clopa-train-episode, clopa-model -> target/cuda/release/
#                                 # and the GPU checks' payload -> target/cuda-check/ (scripts/gpu-check.sh,
#                                 # scripts/gpu-tools-check.sh)
#   scripts/build-cuda.sh --all   # every tool (clopa-reproduce and the polars ones too), for
#                                 # `target/cuda/release/clopa-reproduce --profile pipelines/paper.toml`
#
# The binaries are for an NVIDIA driver >= 580 (CUDA 13.0) and compute capability
# $CUDA_COMPUTE_CAP (default 90: H100/H200). They link the CUDA 13 runtime, cuBLAS, cuRAND and
# cuDNN 9 dynamically: at run time put a CUDA 13 install's libraries on LD_LIBRARY_PATH (PyTorch
# cu130's site-packages/nvidia/{cu13,cudnn}/lib do; scripts/gpu-check.sh shows how).
#
# Why each step (see also ../shared/reference/rust-feasibility.md §5 of the project notes):
# * candle-kernels compiles its .cu files with nvcc at build time; nvcc must be 13.0 exactly,
#   because a newer one writes PTX a 580 driver cannot load (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
# * cudarc links libcuda.so, which only a driver ships: a stub with the same symbols links the
#   binary, and the driver's libcuda.so.1 is what runs.
# * the wheels ship libX.so.N only; the linker wants libX.so.
# * target/cuda-check holds what a GPU machine without Rust needs for the check, stripped and
#   compressed: it must fit the device tool's 64 MiB carry limit, so polars stays out of it.
#
# Environment: CLOPA_CUDA_TOOLCHAIN (where the wheels go; default target/cuda-toolchain),
# CARGO_TARGET_DIR (default target/cuda, apart from the CPU build), CUDA_COMPUTE_CAP, PYTHON.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tc=${CLOPA_CUDA_TOOLCHAIN:-$root/target/cuda-toolchain}
cap=${CUDA_COMPUTE_CAP:-90}
python=${PYTHON:-python3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}
check=$root/target/cuda-check
all=false
case "${1:-}" in
  --all) all=true ;;
  "") ;;
  *) echo "usage: scripts/build-cuda.sh [--all]" >&2; exit 2 ;;
esac

wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14 nvidia-cudnn-cu13==9.13.1.26
)

# 1. the wheels, in a venv of their own (about 1 GB to download, 1.6 GB installed)
if [ ! -f "$tc/.wheels-installed" ] || [ "$(cat "$tc/.wheels-installed")" != "${wheels[*]}" ]; then
  echo "build-cuda: installing the CUDA 13.0 wheels into $tc/venv" >&2
  "$python" -m venv "$tc/venv"
  "$tc/venv/bin/pip" install --quiet --no-deps "${wheels[@]}"
  echo "${wheels[*]}" > "$tc/.wheels-installed"
fi
site=$("$tc/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cu=$site/nvidia/cu13
[ -x "$cu/bin/nvcc" ] || { echo "build-cuda: no nvcc in $cu/bin" >&2; exit 1; }

# 2. the layout nvcc.profile expects: $(TOP)/targets/x86_64-linux/{include,lib}
mkdir -p "$cu/targets/x86_64-linux"
ln -sfn ../../include "$cu/targets/x86_64-linux/include"
ln -sfn ../../lib "$cu/targets/x86_64-linux/lib"

# 3. a CUDA root for cudarc and candle-kernels: include, bin, lib64 with libX.so links
cuda_root=$tc/cuda13
mkdir -p "$cuda_root/lib64/stubs"
ln -sfn "$cu/include" "$cuda_root/include"
ln -sfn "$cu/bin" "$cuda_root/bin"
for lib in "$cu"/lib/lib*.so.* "$site"/nvidia/cudnn/lib/lib*.so.*; do
  name=$(basename "$lib")
  ln -sfn "$lib" "$cuda_root/lib64/${name%%.so.*}.so"
done

# 4. the link-time stub of the driver library: every cu* function cudarc declares
stub=$cuda_root/lib64/stubs/libcuda.so
if [ ! -f "$stub" ]; then
  cargo fetch --locked --manifest-path "$root/Cargo.toml" >/dev/null
  sys=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*/cudarc-0.19.*/src/driver/sys/mod.rs' | sort | tail -1)
  [ -n "$sys" ] || { echo "build-cuda: cudarc's driver bindings not found" >&2; exit 1; }
  grep -o '^\s*fn cu[A-Za-z0-9_]*(' "$sys" | sed 's/^\s*fn //; s/($//' | sort -u |
    awk '{ print "int " $0 "(void) { return 999; }" }' > "$tc/libcuda-stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$tc/libcuda-stub.c"
fi
ln -sfn libcuda.so "$cuda_root/lib64/stubs/libcuda.so.1"  # for a start-up check on this machine

# 5. the build (candle-kernels' nvcc runs take most of a first build: ~8 min on 2 cores)
export PATH=$cu/bin:$PATH CUDA_ROOT=$cuda_root CUDA_COMPUTE_CAP=$cap
export CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
cd "$root"
# One cargo invocation: two would resolve features differently and build candle-kernels twice.
features=clopa-simulate/cuda,clopa-train-episode/cuda,clopa-model/cuda,clopa-adapt/cuda
if $all; then
  cargo build --release --locked --workspace --bins --features "$features" --example gpu_check
else
  cargo build --release --locked -p clopa-simulate -p clopa-train-episode -p clopa-model \
    -p clopa-synth -p clopa-split -p clopa-adapt --features "$features" --bins --example gpu_check
fi

# 6. the check's payload: the stripped check binary, xz-compressed (50 MB stripped, 6 MB
#    compressed: the device tool carries 64 MiB with the working tree's ~26), and the PyTorch
#    reference's network package (pure Python) for a GPU machine without network access
mkdir -p "$check/wheels"
rm -f "$check/gpu_check"  # (earlier builds left it uncompressed here)
"$tc/venv/bin/pip" download --quiet --no-deps -d "$check/wheels" dynamic-network-architectures==0.4.4
stripped=$CARGO_TARGET_DIR/gpu_check-stripped
strip -o "$stripped" "$CARGO_TARGET_DIR/release/examples/gpu_check"
xz -6 -T0 -c "$stripped" > "$check/gpu_check.xz.part"
mv "$check/gpu_check.xz.part" "$check/gpu_check.xz"
# the tools for scripts/gpu-tools-check.sh (synth and split need no GPU; ~23 MB compressed)
mkdir -p "$check/tools"
for t in clopa-synth clopa-split clopa-simulate clopa-train-episode; do
  strip -o "$CARGO_TARGET_DIR/$t-stripped" "$CARGO_TARGET_DIR/release/$t"
  xz -6 -T0 -c "$CARGO_TARGET_DIR/$t-stripped" > "$check/tools/$t.xz.part"
  mv "$check/tools/$t.xz.part" "$check/tools/$t.xz"
done
du -sh "$check" "$CARGO_TARGET_DIR"/release/clopa-* 2>/dev/null | grep -v '\.d$' >&2
echo "build-cuda: to run here (no GPU: fails at cuInit, which shows every library resolves):" >&2
echo "  LD_LIBRARY_PATH=$cuda_root/lib64/stubs:$cu/lib:$site/nvidia/cudnn/lib $stripped" >&2
