#!/usr/bin/env python3
"""Compares what scripts/gpu-tools-check.sh wrote: the GPU's tables and checkpoints against the CPU's.

    python scripts/gpu_tools_compare.py WORK_DIR BASE_MODEL_SAFETENSORS

* steps tables (sim-cpu, sim-gpu, sim-gpu-again, sim-gpu-fp16 .parquet): per (case, inference run, step) the Dice
  on both sides; how many are equal, the largest difference, and the mean Dice at the first and the
  last step. The simulated user clicks where the prediction is wrong, so one voxel segmented
  otherwise can move a click and the runs drift apart after it: the first step (the
  initialisation, one click from the same ground truth) is the like-for-like comparison.
* checkpoints (train-cpu, train-gpu, train-gpu-bf16 .safetensors): every tensor's largest
  difference from the CPU's, relative to the CPU tensor's largest value, and how far the CPU's moved
  from the base model (the training's own scale).

Needs pyarrow and numpy (both on the GPU machine); reads safetensors by its format (8-byte header
length, JSON header, raw little-endian data) so it needs no safetensors package.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "U8": np.uint8}


def read_safetensors(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=DTYPES[h["dtype"]]).reshape(h["shape"])
    return out


def steps(path):
    t = pq.read_table(path, columns=["case_id", "infer_run", "step", "dice"]).to_pydict()
    return {(c, r, s): d for c, r, s, d in zip(t["case_id"], t["infer_run"], t["step"], t["dice"])}


def compare_steps(work, ref, other):
    a, b = steps(work / f"{ref}.parquet"), steps(work / f"{other}.parquet")
    if a.keys() != b.keys():
        print(f"{other}: other rows than {ref} ({len(b)} against {len(a)})")
        return
    first, last = min(k[2] for k in a), max(k[2] for k in a)
    diffs = [abs(a[k] - b[k]) for k in a]
    d0 = [abs(a[k] - b[k]) for k in a if k[2] == first]
    mean = lambda t, s: np.mean([v for k, v in t.items() if k[2] == s])  # noqa: E731
    print(f"{other} vs {ref}: {len(a)} steps, {sum(d == 0 for d in diffs)} with equal Dice, "
          f"max |dDice| {max(diffs):.2e} (at the first step {max(d0):.2e}); "
          f"mean Dice first step {mean(a, first):.4f} / {mean(b, first):.4f}, "
          f"last step {mean(a, last):.4f} / {mean(b, last):.4f}")


def compare_checkpoints(work, base_path, ref, other):
    a = read_safetensors(work / f"{ref}.safetensors")
    b = read_safetensors(work / f"{other}.safetensors")
    base = read_safetensors(base_path)
    if a.keys() != b.keys():
        print(f"{other}: other tensors than {ref}")
        return
    worst, moved = 0.0, 0.0
    for k in a:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        scale = max(np.abs(x).max(), np.finfo(np.float64).tiny)
        worst = max(worst, np.abs(x - y).max() / scale)
        if k in base:
            moved = max(moved, np.abs(x - base[k].astype(np.float64)).max() / scale)
    print(f"{other} vs {ref}: {len(a)} tensors, max |d| / max |{ref}| {worst:.2e} "
          f"({ref} moved from the base by {moved:.2e} of its scale)")


def main():
    work, base = Path(sys.argv[1]), sys.argv[2]
    for other in ["sim-gpu", "sim-gpu-again", "sim-gpu-fp16"]:
        if (work / f"{other}.parquet").exists() and (work / "sim-cpu.parquet").exists():
            compare_steps(work, "sim-cpu", other)
        else:
            print(f"{other}: missing (see tools.txt and tools.log)")
    for other in ["train-gpu", "train-gpu-bf16"]:
        if (work / f"{other}.safetensors").exists() and (work / "train-cpu.safetensors").exists():
            compare_checkpoints(work, base, "train-cpu", other)
        else:
            print(f"{other}: missing (see tools.txt and tools.log)")


if __name__ == "__main__":
    main()
