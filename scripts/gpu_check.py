#!/usr/bin/env python3
"""PyTorch side of the GPU check (the clopa side: crates/clopa-adapt/examples/gpu_check.rs).

The same work on the same GPU: nnInteractive v1.0's ResidualEncoderUNet (dynamic-network-
architectures) forward at SIZE^3 (batch 1, 8 channels), and STEPS training steps of batch 2 at
PATCH^3 (PATCH may be a comma-separated list: the steps at each), each forward + (1 - soft Dice + CE) + backward + Adam (lr 1e-3, weight decay 1e-5) with
only the instance-norm affines trainable (group `in`). fp32 with TF32 off (clopa's cuDNN
convolutions use FMA math), cudnn.benchmark off (PyTorch's default). Prints JSON lines with the
best of REPS forward timings after one warm-up, the per-op timings at the widest stage (32 channels
at SIZE^3: conv, instance norm + LeakyReLU, conv -> norm -> LeakyReLU forward + backward), the mean
step time after the first, and torch.cuda.max_memory_allocated for each.

    python scripts/gpu_check.py [SIZE] [PATCH] [STEPS] [REPS] [--tf32] [--autocast [--bf16]] [--benchmark]

--autocast runs both under torch.autocast(fp16), as nnInteractive's GPU inference does (clopa's
counterpart: gpu_check's fp16 forward); with --bf16 under torch.autocast(bf16) (clopa's
counterpart: the bf16 training step, `clopa-train-episode --precision bf16`). --benchmark sets torch.backends.cudnn.benchmark (clopa's
counterpart: CLOPA_CUDNN_BENCHMARK=1).
"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step import build, pass_loss  # noqa: E402


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    tf32 = "--tf32" in sys.argv
    autocast = "--autocast" in sys.argv
    half = torch.bfloat16 if "--bf16" in sys.argv else torch.float16
    # cuDNN's algorithms by benchmark (nnU-Net's training sets it) instead of its heuristics
    torch.backends.cudnn.benchmark = "--benchmark" in sys.argv
    size, patches, steps, reps = (args + ["192", "128", "3", "3"][len(args):])[:4]
    size, steps, reps = int(size), int(steps), int(reps)
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    # GPU_CHECK_DEVICE=cpu runs the script itself where there is no GPU (to check it, not to time)
    dev = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cuda"))
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak_mib = (lambda: torch.cuda.max_memory_allocated() / 2**20) if cuda else (lambda: None)
    reset = torch.cuda.reset_peak_memory_stats if cuda else (lambda: None)
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    torch.manual_seed(0)
    net = build("v1").to(dev)

    x = torch.rand(1, 8, size, size, size, device=dev) * 2 - 1
    reset()
    best = float("inf")
    amp = torch.autocast(dev.type, dtype=half, enabled=autocast)
    with torch.no_grad(), amp:
        for i in range(reps + 1):
            sync()
            t = time.perf_counter()
            net(x)
            sync()
            if i > 0:  # the first is the warm-up
                best = min(best, time.perf_counter() - t)
    print(json.dumps({"check": "torch-forward", "device": gpu, "size": size,
                      "tf32": tf32, "autocast_fp16": autocast and half == torch.float16,
                      "autocast_bf16": autocast and half == torch.bfloat16, "cudnn_benchmark": torch.backends.cudnn.benchmark, "device_s": best,
                      "peak_allocated_mib": peak_mib()}))
    del x

    # per op at the widest stage, as gpu_check's `ops` line: conv, norm + LeakyReLU, and
    # conv -> norm -> LeakyReLU forward + backward with respect to the input
    F = torch.nn.functional
    xo = torch.rand(1, 32, size, size, size, device=dev) * 2 - 1
    w = (torch.rand(32, 32, 3, 3, 3, device=dev) * 2 - 1) * 0.06
    g, b = torch.ones(32, device=dev), torch.zeros(32, device=dev)

    def best_of(f):
        t_best = float("inf")
        for i in range(reps + 1):
            sync()
            t = time.perf_counter()
            with amp:
                f()
            sync()
            if i > 0:
                t_best = min(t_best, time.perf_counter() - t)
        return t_best

    def fwd_bwd():
        xv = xo.detach().requires_grad_(True)
        y = F.leaky_relu(F.instance_norm(F.conv3d(xv, w, padding=1), weight=g, bias=b, eps=1e-5), 0.01,
                         inplace=True)
        y.float().sum().backward()

    # the backward's parts, as gpu_check's `ops` line: the conv alone (input gradient; and with
    # the kernel's), the norm + LeakyReLU alone, the loss of 2 two-class logits at SIZE^3
    def conv_fb(dw):
        xv = xo.detach().requires_grad_(True)
        wv = w.detach().requires_grad_(dw)
        F.conv3d(xv, wv, padding=1).float().sum().backward()

    def norm_fb():
        xv = xo.detach().requires_grad_(True)
        y = F.leaky_relu(F.instance_norm(xv, weight=g, bias=b, eps=1e-5), 0.01, inplace=True)
        y.float().sum().backward()

    logits = torch.rand(2, 2, size, size, size, device=dev) * 2 - 1
    labels = (torch.rand(2, size, size, size, device=dev) > 0.5).long()

    def loss_fb():
        lv = logits.detach().requires_grad_(True)
        pass_loss(lv, labels).backward()

    with torch.no_grad():
        conv_s = best_of(lambda: F.conv3d(xo, w, padding=1))
        norm_s = best_of(lambda: F.leaky_relu(F.instance_norm(xo, weight=g, bias=b, eps=1e-5), 0.01, inplace=True))
    print(json.dumps({"check": "torch-ops", "device": gpu, "shape": [1, 32, size, size, size],
                      "tf32": tf32, "autocast_fp16": autocast and half == torch.float16,
                      "autocast_bf16": autocast and half == torch.bfloat16, "cudnn_benchmark": torch.backends.cudnn.benchmark, "conv3d_s": conv_s,
                      "instance_norm_lrelu_s": norm_s, "conv_norm_lrelu_fwd_bwd_s": best_of(fwd_bwd),
                      "conv_fwd_bwd_s": best_of(lambda: conv_fb(False)),
                      "conv_fwd_bwd_dw_s": best_of(lambda: conv_fb(True)),
                      "norm_lrelu_fwd_bwd_s": best_of(norm_fb), "loss_fwd_bwd_s": best_of(loss_fb)}))
    del xo, logits, labels

    for name, p in net.named_parameters():
        p.requires_grad = ".norm." in name
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-5)
    for patch in (int(p) for p in patches.split(",")):
        xb = torch.rand(2, 8, patch, patch, patch, device=dev) * 2 - 1
        c = torch.arange(patch, device=dev, dtype=torch.float32) - patch / 2
        r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
        y = (r2 < (patch / 4) ** 2).long().expand(2, -1, -1, -1)
        reset()
        times, losses, phases = [], [], []
        for _ in range(steps):
            # by phase, synchronised between (forward + loss, backward, Adam), as gpu_check's
            sync()
            t = time.perf_counter()
            with amp:
                loss = pass_loss(net(xb).float(), y)
            sync()
            t1 = time.perf_counter()
            loss.backward()
            sync()
            t2 = time.perf_counter()
            opt.step()
            opt.zero_grad()
            sync()
            t3 = time.perf_counter()
            times.append(t3 - t)
            phases = [t1 - t, t2 - t1, t3 - t2]
            losses.append(loss.item())
        rest = times[1:] or times
        print(json.dumps({"check": "torch-train", "device": gpu, "patch": patch,
                          "batch": 2, "group": "in", "steps": steps, "tf32": tf32,
                          "autocast_fp16": autocast and half == torch.float16,
                      "autocast_bf16": autocast and half == torch.bfloat16, "cudnn_benchmark": torch.backends.cudnn.benchmark, "loss": losses,
                          "device_s_per_step": sum(rest) / len(rest),
                          "last_step_phases_s": dict(zip(["forward_loss", "backward", "adam"], phases)),
                          "peak_allocated_mib": peak_mib()}))


if __name__ == "__main__":
    main()
