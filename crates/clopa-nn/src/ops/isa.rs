//! Which SIMD instruction set the hand-written kernels run: detected once per process, and capped
//! by the environment variable `CLOPA_MAX_ISA` (`baseline`, `avx2` or `avx512`).
//!
//! The crate is compiled for baseline x86-64, so the kernels that matter (the direct convolution,
//! the instance-norm sums) carry bodies compiled for AVX-512F and for AVX2 + FMA and pick one at
//! run time. The cap exists so that one machine can measure what a CPU without AVX-512 (most
//! laptops) gets — the same idea as oneDNN's `ONEDNN_MAX_CPU_ISA` — and so that tests can compare
//! the variants bit for bit; it never raises the level above what the CPU has.

use std::sync::OnceLock;

/// A SIMD level of the hand-written kernels, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No hand-written SIMD: the gemm paths and auto-vectorised baseline code (any CPU).
    Baseline,
    /// x86-64 with AVX2 and FMA (8 f32 lanes, 16 vector registers).
    Avx2,
    /// x86-64 with AVX-512F (16 f32 lanes, 32 vector registers).
    Avx512,
}

impl Isa {
    /// The highest level this CPU supports.
    pub fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
        }
        Self::Baseline
    }

    /// The name `CLOPA_MAX_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    /// Parses a `CLOPA_MAX_ISA` value (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Baseline, Self::Avx2, Self::Avx512]
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The levels this CPU can run, lowest first (what the tests compare).
    #[cfg(test)]
    pub(crate) fn all_supported() -> Vec<Self> {
        let top = Self::detected();
        [Self::Baseline, Self::Avx2, Self::Avx512]
            .into_iter()
            .filter(|&i| i <= top)
            .collect()
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The level the kernels run at: [`Isa::detected`], lowered to `CLOPA_MAX_ISA` when that is set.
/// An unknown `CLOPA_MAX_ISA` value is reported once on stderr and ignored.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let top = Isa::detected();
        match std::env::var("CLOPA_MAX_ISA") {
            Ok(v) => match Isa::parse(&v) {
                Some(cap) => cap.min(top),
                None => {
                    eprintln!(
                        "warning: CLOPA_MAX_ISA={v:?} is not one of baseline, avx2, avx512; \
                         using {top}"
                    );
                    top
                }
            },
            Err(_) => top,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order() {
        for i in [Isa::Baseline, Isa::Avx2, Isa::Avx512] {
            assert_eq!(Isa::parse(i.name()), Some(i));
            assert_eq!(Isa::parse(&i.name().to_uppercase()), Some(i));
        }
        assert_eq!(Isa::parse("sse4"), None);
        assert!(Isa::Baseline < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(isa() <= Isa::detected());
        assert_eq!(Isa::all_supported().first(), Some(&Isa::Baseline));
    }
}
