#!/usr/bin/env python3
"""PyTorch side of the network benchmark (the Rust side: crates/clopa-nn/examples/bench_network.rs).

Builds dynamic-network-architectures' ResidualEncoderUNet with the fixture widths (2..12) or
nnInteractive v1.0's (32..320), batch 1, 8 input channels, and prints one JSON line with the best
of REPS timings after one warm-up: forward (no_grad) and forward + (logits * r).sum() + backward
with GROUP trainable (all / cn / in; the rest requires_grad=False; `fwd`: the forward only).
Two threads, CPU, float32. `*_cpu_s`: process CPU time (time.process_time) of the fastest run,
which a busy machine inflates far less than the wall time.

    /tmp/venv-torch/bin/python scripts/bench_network.py ARCH SIZE [GROUP] [REPS]
"""
import json
import sys
import time

import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet


def build(arch):
    feats = [2, 4, 6, 10, 12, 12] if arch == "fixture" else [32, 64, 128, 256, 320, 320]
    return ResidualEncoderUNet(
        input_channels=8, n_stages=6, features_per_stage=feats, conv_op=torch.nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * 6, strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
        n_blocks_per_stage=[1, 3, 4, 6, 6, 6], num_classes=2, n_conv_per_stage_decoder=[1] * 5,
        conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None, dropout_op_kwargs=None, nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=False)


def main():
    arch = sys.argv[1] if len(sys.argv) > 1 else "fixture"
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    group = sys.argv[3] if len(sys.argv) > 3 else "all"
    reps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = build(arch)
    n_params = sum(p.numel() for p in net.parameters())
    x = torch.randn(1, 8, size, size, size)
    r = torch.randn(1, 2, size, size, size)

    fwd = fwd_cpu = float("inf")
    with torch.no_grad():
        for i in range(reps + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            y = net(x)
            float(y.sum())
            if i > 0:
                fwd = min(fwd, time.perf_counter() - t0)
                fwd_cpu = min(fwd_cpu, time.process_time() - c0)
    if group == "fwd":
        print(json.dumps({"impl": "pytorch", "arch": arch, "size": size, "reps": reps,
                          "fwd_s": round(fwd, 4), "fwd_cpu_s": round(fwd_cpu, 3),
                          "threads": torch.get_num_threads(), "torch": torch.__version__}))
        return

    for name, p in net.named_parameters():
        if group == "all":
            p.requires_grad_(True)
        elif group == "in":
            p.requires_grad_(".norm." in name)
        elif group == "cn":
            p.requires_grad_(".norm." in name or name.startswith("encoder.stem.convs.0.conv.")
                             or name.startswith("decoder.seg_layers.4."))
        else:
            raise SystemExit(f"unknown group {group}")
    fwdbwd = fwdbwd_cpu = float("inf")
    for i in range(reps + 1):
        net.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        y = net(x)
        (y * r).sum().backward()
        if i > 0:
            fwdbwd = min(fwdbwd, time.perf_counter() - t0)
            fwdbwd_cpu = min(fwdbwd_cpu, time.process_time() - c0)
    print(json.dumps({"impl": "pytorch", "arch": arch, "size": size, "group": group, "params": n_params,
                      "reps": reps, "fwd_s": round(fwd, 4), "fwd_cpu_s": round(fwd_cpu, 3),
                      "fwdbwd_s": round(fwdbwd, 4), "fwdbwd_cpu_s": round(fwdbwd_cpu, 3),
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
