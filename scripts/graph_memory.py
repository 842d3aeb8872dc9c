#!/usr/bin/env python3
"""PyTorch side of clopa-adapt's `examples/graph_memory`: the resident memory of one training
step of nnInteractive v1.0 (batch 2, PATCH^3, only the instance-norm affines trainable) on the
CPU: what autograd holds after the forward, and the step's peak, both above the memory before
the forward; the second of two steps (the first warms oneDNN's caches).

    MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 python scripts/graph_memory.py [PATCH]
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step import build, pass_loss  # noqa: E402


def mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def main():
    patch = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = build("v1")
    for name, p in net.named_parameters():
        p.requires_grad = ".norm." in name
    x = torch.rand(2, 8, patch, patch, patch) * 2 - 1
    c = torch.arange(patch, dtype=torch.float32) - patch / 2
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    y = (r2 < (patch / 4) ** 2).long().expand(2, -1, -1, -1)
    for _ in range(2):
        before = mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM
        loss = pass_loss(net(x), y)
        retained = mib("VmRSS") - before
        loss.backward()
        peak = mib("VmHWM") - before
        net.zero_grad(set_to_none=True)
        del loss
    scale = (192 / patch) ** 3
    print(json.dumps({
        "mode": "torch", "patch": patch, "batch": 2, "group": "in",
        "retained_after_forward_mib": round(retained), "step_peak_mib": round(peak),
        "retained_at_192_gib": round(retained * scale / 1024, 1),
        "step_peak_at_192_gib": round(peak * scale / 1024, 1),
    }))


if __name__ == "__main__":
    main()
