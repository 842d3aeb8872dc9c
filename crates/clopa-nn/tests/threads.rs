//! A seeded run must repeat bit for bit on another machine, so nothing the network computes on the
//! CPU may depend on how many threads compute it, nor (in clopa's own kernels) on whether the CPU
//! has AVX-512 or only AVX2: the logits, the loss and every gradient of a training step are
//! compared bit for bit between pools of 1, 2 and 5 threads and the two SIMD levels. (One test in
//! this binary: the SIMD level is a process-wide setting.)

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use clopa_nn::loss::dc_and_ce_loss;
use clopa_nn::{Architecture, ParamGroup, ParamStore, ResidualEncoderUNet, UNetSpec};

type R<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A small xorshift, so that the test needs no RNG crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn spec() -> R<UNetSpec> {
    // Four stages, so that the step has wide shallow layers (many tiles, summed in parts by the
    // kernel gradients) and narrow deep ones (few tiles, output channels split across threads).
    let arch = Architecture::resenc(&[8, 16, 32, 32], &[1, 1, 1, 1]);
    Ok(UNetSpec::from_architecture(&arch, 8, 2)?)
}

/// Logits, loss and the gradient of every parameter, as bits, from one step in a pool of
/// `threads` threads.
fn step(spec: &UNetSpec, threads: usize) -> R<BTreeMap<String, Vec<u32>>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| -> R<_> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut tensors = BTreeMap::new();
        for (name, shape) in spec.parameter_shapes() {
            let n: usize = shape.iter().product();
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let v = rng.vec(n, (3.0 / fan_in as f32).sqrt());
            tensors.insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
        }
        let mut store = ParamStore::new(tensors);
        store.make_trainable(ParamGroup::All.names(spec))?;
        let net = ResidualEncoderUNet::new(spec, &store.var_builder(&Device::Cpu))?;
        let dims = [2usize, 8, 40, 40, 40];
        let x = Tensor::from_vec(rng.vec(dims.iter().product(), 1.0), &dims[..], &Device::Cpu)?;
        let t: Vec<f32> = rng
            .vec(2 * 40 * 40 * 40, 1.0)
            .into_iter()
            .map(|v| f32::from(v > 0.3))
            .collect();
        let y = Tensor::from_vec(t, (2, 1, 40, 40, 40), &Device::Cpu)?;
        let logits = net.forward(&x)?;
        let loss = dc_and_ce_loss(&logits, &y)?;
        let grads = loss.total.backward()?;
        let bits = |t: &Tensor| -> R<Vec<u32>> {
            let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok(v.iter().map(|x| x.to_bits()).collect())
        };
        let mut out = BTreeMap::new();
        out.insert("logits".to_string(), bits(&logits)?);
        out.insert("loss".to_string(), bits(&loss.total)?);
        for (name, var) in store.vars() {
            if let Some(g) = grads.get(var.as_tensor()) {
                out.insert(name.clone(), bits(g)?);
            }
        }
        Ok(out)
    })
}

/// Asserts that `other` holds the same tensors as `one`, bit for bit, naming those that differ.
fn assert_same_bits(
    one: &BTreeMap<String, Vec<u32>>,
    other: &BTreeMap<String, Vec<u32>>,
    what: &str,
) {
    assert_eq!(
        one.keys().collect::<Vec<_>>(),
        other.keys().collect::<Vec<_>>()
    );
    let differ: Vec<&String> = one.keys().filter(|k| one[*k] != other[*k]).collect();
    assert!(
        differ.is_empty(),
        "{what} differs in {} of {}: {differ:?}",
        differ.len(),
        one.len()
    );
}

#[test]
fn a_training_step_is_bit_identical_on_1_2_and_5_threads_and_avx2() -> R<()> {
    let spec = spec()?;
    let one = step(&spec, 1)?;
    assert!(one.len() > 2, "no gradients");
    for threads in [2, 5] {
        let other = step(&spec, threads)?;
        assert_same_bits(&one, &other, &format!("{threads} threads against 1"));
    }
    // clopa's AVX2 kernels, where the CPU has AVX-512 (on an AVX2-only CPU both runs are AVX2).
    // Every kernel gradient is clopa's own; the forward and input gradient of the stride-2 and
    // 1×1 convolutions go through the gemm crate, which picks its own SIMD level and so runs the
    // same code both times: this does not compare those across CPU kinds (BENCHMARKS.md: a build
    // with gemm's AVX2 kernels gave the same bits in every tensor of this step).
    let top = clopa_nn::ops::isa();
    clopa_nn::ops::set_max_isa(clopa_nn::ops::Isa::Avx2);
    let avx2 = step(&spec, 2);
    clopa_nn::ops::set_max_isa(top);
    assert_same_bits(&one, &avx2?, &format!("AVX2 against {top}"));
    Ok(())
}
