#!/usr/bin/env python3
"""PyTorch side of crates/clopa-nn/examples/bench_loss.rs: the trainer's per-pass loss
(bench_train_step.pass_loss: 1 - soft Dice + CE per patch, their mean), forward + backward, of
logits (2, 2, SIZE^3) on the CPU with 2 threads; the best of 10 after a warm-up.

    python scripts/bench_loss.py [SIZE...]      (default 32 48 64)
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step import pass_loss  # noqa: E402


def main():
    torch.set_num_threads(2)
    sizes = [int(a) for a in sys.argv[1:]] or [32, 48, 64]
    for s in sizes:
        n = s ** 3
        i = torch.arange(4 * n, dtype=torch.float32)
        logits = torch.sin(i * 0.37).reshape(2, 2, s, s, s)
        y = (torch.arange(2 * n) % 7 < 3).long().reshape(2, s, s, s)
        best = float("inf")
        for k in range(11):
            lv = logits.clone().requires_grad_(True)
            t = time.perf_counter()
            pass_loss(lv, y).backward()
            if k > 0:
                best = min(best, time.perf_counter() - t)
        print(f"{s} torch {best:.5f}")


if __name__ == "__main__":
    main()
