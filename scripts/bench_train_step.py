#!/usr/bin/env python3
"""PyTorch side of the training-step benchmark (the Rust side:
crates/clopa-adapt/examples/train_step.rs `bench`).

One CLoPA gradient step as the authors' trainer runs it, minus the click simulation: batch 2,
an initialisation pass and 5 edit passes, each forward + (1 - soft Dice + CE) / 6 + backward with
only the instance-norm affine parameters trainable (group `in`), prev_seg = argmax fed back, then
one Adam step (lr 1e-3, weight decay 1e-5). float32, CPU, 2 threads, no autocast. Prints one JSON
line: seconds of each step, the mean after the first, and the peak RSS (MB).

    /tmp/venv-torch/bin/python scripts/bench_train_step.py tiny|v1 PATCH [STEPS]
"""
import json
import resource
import sys
import time

import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet


def build(arch):
    if arch == "v1":
        feats, blocks = [32, 64, 128, 256, 320, 320], [1, 3, 4, 6, 6, 6]
    else:
        feats, blocks = [8, 16, 32, 64], [1, 2, 2, 2]
    n = len(feats)
    return ResidualEncoderUNet(
        input_channels=8, n_stages=n, features_per_stage=feats, conv_op=torch.nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n, strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_blocks_per_stage=blocks, num_classes=2, n_conv_per_stage_decoder=[1] * (n - 1),
        conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None, dropout_op_kwargs=None, nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=False)


def pass_loss(logits, y):
    p = torch.softmax(logits, 1)[:, 1]
    g = (y == 1).float()
    dims = tuple(range(1, g.dim()))
    dice = (2 * (p * g).sum(dims) + 1e-5) / (p.sum(dims) + g.sum(dims) + 1e-5)
    ce = torch.nn.functional.cross_entropy(logits, y.long(), reduction="none").mean(dims)
    return (1 - dice + ce).mean()


def main():
    arch = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 48
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = build(arch)
    for name, p in net.named_parameters():
        p.requires_grad = ".norm." in name
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-5)
    img = torch.randn(2, 1, size, size, size)
    y = (torch.rand(2, size, size, size) > 0.7).long()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        prompts = torch.zeros(2, 6, size, size, size)
        prev = torch.zeros(2, 1, size, size, size)
        for _ in range(6):
            x = torch.cat([img, prev, prompts], 1)
            logits = net(x)
            (pass_loss(logits, y) / 6).backward()
            prev = logits.detach().argmax(1, keepdim=True).float()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    rest = times[1:] or times
    print(json.dumps({"arch": arch, "patch": size, "batch": 2, "passes": 6,
                      "steps_s": [round(t, 3) for t in times], "mean_s": sum(rest) / len(rest),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
