//! Which SIMD instruction set the hand-written kernels run: the highest the CPU has, unless a
//! tool lowers it with [`set_max_isa`] (the tools do for the environment variable
//! `CLOPA_MAX_ISA` = `baseline`, `avx2` or `avx512`, through [`cap_isa`]).
//!
//! The crate is compiled for baseline x86-64, so the kernels that matter (the direct convolution,
//! the instance-norm sums) carry bodies compiled for AVX-512F and for AVX2 + FMA and pick one at
//! run time. The cap exists so that one machine can measure what a CPU without AVX-512 (most
//! laptops) gets — the same idea as oneDNN's `ONEDNN_MAX_CPU_ISA` — and so that tests can compare
//! the variants bit for bit; it never raises the level above what the CPU has.

use std::sync::atomic::{AtomicU8, Ordering};

/// A SIMD level of the hand-written kernels, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Isa {
    /// No hand-written SIMD: the gemm paths and auto-vectorised baseline code (any CPU).
    Baseline = 0,
    /// x86-64 with AVX2 and FMA (8 f32 lanes, 16 vector registers).
    Avx2 = 1,
    /// x86-64 with AVX-512F (16 f32 lanes, 32 vector registers).
    Avx512 = 2,
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

/// The level the kernels run at now: [`Isa::detected`], or lower after [`set_max_isa`].
pub fn isa() -> Isa {
    match LEVEL.load(Ordering::Relaxed) {
        UNSET => {
            let top = Isa::detected();
            LEVEL.store(top as u8, Ordering::Relaxed);
            top
        }
        v => Isa::from_u8(v),
    }
}

/// Caps the level of every kernel that starts after this call at `cap` (never above the CPU's).
pub fn set_max_isa(cap: Isa) {
    LEVEL.store(cap.min(Isa::detected()) as u8, Ordering::Relaxed);
}

/// Applies a `CLOPA_MAX_ISA` value as the tools read it from the environment (`None`: not set,
/// nothing changes); an unknown value is an error that says what is accepted.
pub fn cap_isa(value: Option<&str>) -> Result<(), String> {
    let Some(v) = value else { return Ok(()) };
    let cap = Isa::parse(v)
        .ok_or_else(|| format!("CLOPA_MAX_ISA={v:?} is not one of baseline, avx2, avx512"))?;
    set_max_isa(cap);
    Ok(())
}

/// The kernel set of level `isa` among a module's hand-written ones: `avx512()` or `avx2()` where
/// this CPU runs that level, `None` at the baseline (no hand-written kernels) and above the CPU's
/// level — so that holding a kernel set means its instructions can run.
#[cfg(target_arch = "x86_64")]
pub(crate) fn select<T>(
    isa: Isa,
    avx512: impl FnOnce() -> T,
    avx2: impl FnOnce() -> T,
) -> Option<T> {
    if isa > Isa::detected() {
        return None;
    }
    match isa {
        Isa::Avx512 => Some(avx512()),
        Isa::Avx2 => Some(avx2()),
        Isa::Baseline => None,
    }
}

/// The current level as a byte; `UNSET` until first asked.
static LEVEL: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = u8::MAX;

impl Isa {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Baseline,
            1 => Self::Avx2,
            _ => Self::Avx512,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
        for i in Isa::all_supported() {
            assert_eq!(Isa::from_u8(i as u8), i);
        }
        assert!(cap_isa(Some("sse4")).unwrap_err().contains("sse4"));
        assert_eq!(cap_isa(None), Ok(()));
    }
}
