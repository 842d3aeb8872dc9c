#!/usr/bin/env python3
"""PyTorch (CPU) counterpart of `cargo run --release -p clopa-nn --example bench_ops`.

Same cases, same harness: best of 5 after one warm-up; "fwd+bwd" = forward + (y*r).sum() +
backward() with gradients for the input and every parameter. Each case runs in its own child
process so the peak RSS (ru_maxrss, includes the ~600 MB libtorch runtime) belongs to that case.

    /tmp/venv-torch/bin/python scripts/bench_ops.py            # all cases, 2 threads
    /tmp/venv-torch/bin/python scripts/bench_ops.py CASE       # one case
"""
import resource
import subprocess
import sys
import time

CASES = []
for c, size in [(32, 64), (64, 48)]:
    for k, s in [(3, 1), (3, 2), (1, 1)]:
        CASES.append((f"conv3d_k{k}s{s}_{c}x{size}", ("conv", c, size, c, k, s)))
# The other stride-1 3^3 shapes of nnInteractive v1.0 at a 96^3 input (bench_ops.rs has the same).
for c, size, cout in [(32, 96, 32), (128, 24, 128), (256, 12, 256), (320, 6, 320),
                      (64, 96, 32), (512, 12, 256), (640, 6, 320)]:
    to = "" if cout == c else f"to{cout}"
    CASES.append((f"conv3d_k3s1_{c}x{size}{to}", ("conv", c, size, cout, 3, 1)))
CASES.append(("convT_s2_64x32to32", ("convT", 64, 32, 32, 2, 2)))
CASES.append(("convT_s2_320x8to320", ("convT", 320, 8, 320, 2, 2)))
for c, size in [(32, 64), (64, 48)]:
    CASES.append((f"inorm_lrelu_{c}x{size}", ("norm", c, size, c, 0, 0)))
CASES.append(("leaky_relu_32x64", ("lrelu", 32, 64, 32, 0, 0)))
CASES.append(("add_leaky_relu_32x64", ("addlrelu", 32, 64, 32, 0, 0)))


def best(f, iters=5):
    f()
    t = float("inf")
    for _ in range(iters):
        s = time.perf_counter()
        f()
        t = min(t, time.perf_counter() - s)
    return t


def run(name, spec):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    kind, c, size, cout, k, s = spec
    x = torch.randn(1, c, size, size, size, requires_grad=True)
    flops = 0.0
    if kind == "conv":
        w = (torch.randn(cout, c, k, k, k) * 0.05).requires_grad_()
        b = (torch.randn(cout) * 0.1).requires_grad_()
        f = lambda: F.conv3d(x, w, b, stride=s, padding=(k - 1) // 2)
        y = f()
        flops = 2.0 * c * cout * k**3 * y[0, 0].numel()
    elif kind == "convT":
        w = (torch.randn(c, cout, 2, 2, 2) * 0.05).requires_grad_()
        b = (torch.randn(cout) * 0.1).requires_grad_()
        f = lambda: F.conv_transpose3d(x, w, b, stride=2)
        flops = 2.0 * c * cout * 8 * size**3
    elif kind == "norm":
        g = (1 + 0.2 * torch.randn(c)).requires_grad_()
        be = (0.1 * torch.randn(c)).requires_grad_()
        f = lambda: F.leaky_relu(F.instance_norm(x, weight=g, bias=be, eps=1e-5), 0.01)
    elif kind == "lrelu":
        f = lambda: F.leaky_relu(x, 0.01)
    else:
        a = torch.randn_like(x).requires_grad_()
        f = lambda: F.leaky_relu(x + a, 0.01)
    r = torch.randn_like(f())

    def fwd():
        with torch.no_grad():
            f()

    def fb():
        (f() * r).sum().backward()

    tf, tb = best(fwd), best(fb)
    gf = lambda t, m: f"{m * flops / t / 1e9:.1f}" if flops else "-"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{name} {tf:.4f} {gf(tf, 1)} {tb:.4f} {gf(tb, 3)} {rss:.0f}", flush=True)


def main():
    cases = dict(CASES)
    if len(sys.argv) > 1:
        run(sys.argv[1], cases[sys.argv[1]])
        return
    print("case fwd_s fwd_gflops fwdbwd_s fwdbwd_gflops peak_rss_mb", flush=True)
    for name, _ in CASES:
        subprocess.run([sys.executable, __file__, name], check=True)


if __name__ == "__main__":
    main()
