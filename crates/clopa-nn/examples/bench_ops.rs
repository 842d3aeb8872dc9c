//! Benchmark of the 3D ops (forward and forward+backward) on the feasibility-study shapes.
//!
//! `cargo run --release -p clopa-nn --example bench_ops` runs every case, each in its own child
//! process so that the reported peak RSS belongs to that case alone; `-- CASE` runs one case
//! (`-- --list` lists them). Threads: `RAYON_NUM_THREADS` (default: physical cores). Output: one
//! line per case, `case fwd_s fwd_gflops fwdbwd_s fwdbwd_gflops peak_rss_mb`, times the best of
//! several iterations after a warm-up; "fwd+bwd" = forward + `(y·r).sum()` + `backward()`, with
//! gradients for every input and parameter, like `scripts/bench_ops.py` does for PyTorch.
//! The `dw_*` cases time the kernel gradient alone: their second time is `backward()` of a kept
//! graph whose input is frozen (the weight's gradient and the small `(y·r).sum()` backward), and
//! their GFLOP/s count the kernel gradient's FLOPs once.

use candle_core::{Device, Result, Tensor, Var};
use clopa_nn::ops;
use std::time::Instant;

#[derive(Clone, Copy)]
enum Kind {
    Conv {
        k: usize,
        s: usize,
    },
    ConvT,
    /// The kernel gradient alone of a convolution (k, s) / of a 2×2×2 transposed convolution.
    Dw {
        k: usize,
        s: usize,
    },
    DwT,
    Norm,
    LeakyRelu,
    AddLeakyRelu,
}

struct Case {
    name: String,
    b: usize,
    c: usize,
    size: usize,
    cout: usize,
    kind: Kind,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (c, size) in [(32, 64), (64, 48)] {
        for (k, s) in [(3, 1), (3, 2), (1, 1)] {
            let name = format!("conv3d_k{k}s{s}_{c}x{size}");
            v.push(Case {
                name,
                b: 1,
                c,
                size,
                cout: c,
                kind: Kind::Conv { k, s },
            });
        }
    }
    // The other stride-1 3³ shapes of nnInteractive v1.0 at a 96³ input (encoder stages and the
    // decoder's convolutions after the skip concatenation, Cin = 2·Cout).
    for (c, size, cout) in [
        (32, 96, 32),
        (128, 24, 128),
        (256, 12, 256),
        (320, 6, 320),
        (64, 96, 32),
        (512, 12, 256),
        (640, 6, 320),
    ] {
        let to = if cout == c {
            String::new()
        } else {
            format!("to{cout}")
        };
        v.push(Case {
            name: format!("conv3d_k3s1_{c}x{size}{to}"),
            b: 1,
            c,
            size,
            cout,
            kind: Kind::Conv { k: 3, s: 1 },
        });
    }
    v.push(Case {
        name: "convT_s2_64x32to32".into(),
        b: 1,
        c: 64,
        size: 32,
        cout: 32,
        kind: Kind::ConvT,
    });
    v.push(Case {
        name: "convT_s2_320x8to320".into(),
        b: 1,
        c: 320,
        size: 8,
        cout: 320,
        kind: Kind::ConvT,
    });
    // Kernel gradients of the geometries the direct kernel does not take (stride 2, 1×1, the
    // transposed convolutions); `to2` is a segmentation head.
    for (c, size, cout, k, s) in [
        (32, 64, 32, 3, 2),
        (64, 48, 64, 3, 2),
        (32, 64, 32, 1, 1),
        (64, 48, 64, 1, 1),
        (32, 64, 2, 1, 1),
    ] {
        let to = if cout == c {
            String::new()
        } else {
            format!("to{cout}")
        };
        v.push(Case {
            name: format!("dw_k{k}s{s}_{c}x{size}{to}"),
            b: 1,
            c,
            size,
            cout,
            kind: Kind::Dw { k, s },
        });
    }
    for (c, size, cout) in [(64, 32, 32), (320, 8, 320)] {
        v.push(Case {
            name: format!("dw_convT_s2_{c}x{size}to{cout}"),
            b: 1,
            c,
            size,
            cout,
            kind: Kind::DwT,
        });
    }
    for (c, size) in [(32, 64), (64, 48)] {
        v.push(Case {
            name: format!("inorm_lrelu_{c}x{size}"),
            b: 1,
            c,
            size,
            cout: c,
            kind: Kind::Norm,
        });
    }
    v.push(Case {
        name: "leaky_relu_32x64".into(),
        b: 1,
        c: 32,
        size: 64,
        cout: 32,
        kind: Kind::LeakyRelu,
    });
    v.push(Case {
        name: "add_leaky_relu_32x64".into(),
        b: 1,
        c: 32,
        size: 64,
        cout: 32,
        kind: Kind::AddLeakyRelu,
    });
    v
}

fn randn(dims: &[usize], std: f64) -> Result<Tensor> {
    Tensor::randn(0f32, std as f32, dims, &Device::Cpu)
}

/// Best wall time of `f` over `iters` runs after one warm-up.
fn best(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = f64::INFINITY;
    for _ in 0..iters {
        let s = Instant::now();
        f()?;
        t = t.min(s.elapsed().as_secs_f64());
    }
    Ok(t)
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn run_case(c: &Case) -> Result<()> {
    let (b, ci, n) = (c.b, c.c, c.size);
    let x = Var::from_tensor(&randn(&[b, ci, n, n, n], 1.0)?)?;
    let iters = 5;
    let (fwd, fb, flops) = match c.kind {
        Kind::Conv { k, s } => {
            let p = (k - 1) / 2;
            let w = Var::from_tensor(&randn(&[c.cout, ci, k, k, k], 0.05)?)?;
            let bias = Var::from_tensor(&randn(&[c.cout], 0.1)?)?;
            let y = ops::conv3d(x.as_tensor(), w.as_tensor(), Some(bias.as_tensor()), s, p)?;
            let r = randn(y.dims(), 1.0)?;
            let outv = y.elem_count() / c.cout;
            let flops = 2.0 * (ci * c.cout * k * k * k * outv) as f64;
            let f = || ops::conv3d(x.as_tensor(), w.as_tensor(), Some(bias.as_tensor()), s, p);
            let fwd = best(iters, || f().map(|_| ()))?;
            let fb = best(iters, || f()?.mul(&r)?.sum_all()?.backward().map(|_| ()))?;
            (fwd, fb, flops)
        }
        Kind::Dw { k, s } => {
            let p = (k - 1) / 2;
            let x = x.as_tensor().detach();
            let w = Var::from_tensor(&randn(&[c.cout, ci, k, k, k], 0.05)?)?;
            let f = || ops::conv3d(&x, w.as_tensor(), None, s, p);
            let y = f()?;
            let flops = 2.0 * (ci * c.cout * k * k * k * y.elem_count() / c.cout) as f64;
            let loss = y.mul(&randn(y.dims(), 1.0)?)?.sum_all()?;
            let fwd = best(iters, || f().map(|_| ()))?;
            let dw = best(iters, || loss.backward().map(|_| ()))?;
            (fwd, dw, flops)
        }
        Kind::DwT => {
            let x = x.as_tensor().detach();
            let w = Var::from_tensor(&randn(&[ci, c.cout, 2, 2, 2], 0.05)?)?;
            let f = || ops::conv_transpose3d(&x, w.as_tensor(), None, 2);
            let y = f()?;
            let flops = 2.0 * (ci * c.cout * 8 * b * n * n * n) as f64;
            let loss = y.mul(&randn(y.dims(), 1.0)?)?.sum_all()?;
            let fwd = best(iters, || f().map(|_| ()))?;
            let dw = best(iters, || loss.backward().map(|_| ()))?;
            (fwd, dw, flops)
        }
        Kind::ConvT => {
            let w = Var::from_tensor(&randn(&[ci, c.cout, 2, 2, 2], 0.05)?)?;
            let bias = Var::from_tensor(&randn(&[c.cout], 0.1)?)?;
            let f =
                || ops::conv_transpose3d(x.as_tensor(), w.as_tensor(), Some(bias.as_tensor()), 2);
            let r = randn(f()?.dims(), 1.0)?;
            let flops = 2.0 * (ci * c.cout * 8 * b * n * n * n) as f64;
            let fwd = best(iters, || f().map(|_| ()))?;
            let fb = best(iters, || f()?.mul(&r)?.sum_all()?.backward().map(|_| ()))?;
            (fwd, fb, flops)
        }
        Kind::Norm => {
            let g = Var::from_tensor(&(randn(&[ci], 0.2)? + 1.0)?)?;
            let be = Var::from_tensor(&randn(&[ci], 0.1)?)?;
            let f = || {
                ops::instance_norm3d(
                    x.as_tensor(),
                    g.as_tensor(),
                    be.as_tensor(),
                    1e-5,
                    Some(0.01),
                )
            };
            let r = randn(x.dims(), 1.0)?;
            let fwd = best(iters, || f().map(|_| ()))?;
            let fb = best(iters, || f()?.mul(&r)?.sum_all()?.backward().map(|_| ()))?;
            (fwd, fb, 0.0)
        }
        Kind::LeakyRelu => {
            let f = || ops::leaky_relu(x.as_tensor(), 0.01);
            let r = randn(x.dims(), 1.0)?;
            let fwd = best(iters, || f().map(|_| ()))?;
            let fb = best(iters, || f()?.mul(&r)?.sum_all()?.backward().map(|_| ()))?;
            (fwd, fb, 0.0)
        }
        Kind::AddLeakyRelu => {
            let a = Var::from_tensor(&randn(x.dims(), 1.0)?)?;
            let f = || ops::add_leaky_relu(x.as_tensor(), a.as_tensor(), 0.01);
            let r = randn(x.dims(), 1.0)?;
            let fwd = best(iters, || f().map(|_| ()))?;
            let fb = best(iters, || f()?.mul(&r)?.sum_all()?.backward().map(|_| ()))?;
            (fwd, fb, 0.0)
        }
    };
    let gf = |t: f64, m: f64| {
        if flops > 0.0 {
            format!("{:.1}", m * flops / t / 1e9)
        } else {
            "-".into()
        }
    };
    println!(
        "{} {:.4} {} {:.4} {} {:.0}",
        c.name,
        fwd,
        gf(fwd, 1.0),
        fb,
        gf(
            fb,
            if matches!(c.kind, Kind::Dw { .. } | Kind::DwT) {
                1.0
            } else {
                3.0
            }
        ),
        peak_rss_mb()
    );
    Ok(())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // `CLOPA_MAX_ISA=avx2` measures the AVX2 kernels on an AVX-512 machine (children inherit it).
    ops::cap_isa(std::env::var("CLOPA_MAX_ISA").ok().as_deref())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = cases();
    match args.first().map(String::as_str) {
        Some("--list") => all.iter().for_each(|c| println!("{}", c.name)),
        Some(name) => {
            let c = all
                .iter()
                .find(|c| c.name == name)
                .ok_or(format!("unknown case {name} (--list lists the cases)"))?;
            run_case(c)?;
        }
        None => {
            println!("case fwd_s fwd_gflops fwdbwd_s fwdbwd_gflops peak_rss_mb");
            let exe = std::env::current_exe()?;
            for c in &all {
                let out = std::process::Command::new(&exe).arg(&c.name).output()?;
                print!("{}", String::from_utf8_lossy(&out.stdout));
                if !out.status.success() {
                    eprintln!("{}: {}", c.name, String::from_utf8_lossy(&out.stderr));
                }
            }
        }
    }
    Ok(())
}
