//! One 3D convolution (forward, backward-data or backward-filter) through cuDNN's backend
//! ("graph", v8) API: what PyTorch runs for `F.conv3d` since 1.13 (through cudnn-frontend). The
//! legacy API that `cudnn_conv3d.rs` otherwise calls (`cudnnConvolutionForward` and its v7
//! heuristics) only reaches the engines that map onto its eight algorithm numbers; on an H200 its
//! best fp16 algorithm by Find took 7.3 ms for a 32-channel 192³ convolution where PyTorch's
//! autocast took 2.7 ms, and 15.1 ms against 13.0 ms in fp32 (BENCHMARKS.md).
//!
//! The engine is chosen as PyTorch chooses it without `cudnn.benchmark`: the heuristics' configs
//! in their order (mode A, then the fallback list), without those that down-convert their
//! inputs, without tensor-core (TF32) engines for fp32 data (PyTorch's `allow_tf32 = False`, which
//! `scripts/gpu_check.py` compares against), and — unlike PyTorch's default — without
//! non-deterministic ones, so that a seeded training run repeats; the first that builds is kept
//! for the shape. Where none builds, the caller falls back to the legacy API.
//!
//! With `CLOPA_CUDNN_BENCHMARK=1` as well, the first few usable plans of each shape are timed on
//! its first call and the fastest kept — PyTorch's `cudnn.benchmark` in this API; written after
//! the GPU runs described next, not yet run on a GPU.
//!
//! Opt-in (`CLOPA_CUDNN_API=graph`): measured on an H200 (BENCHMARKS.md, 2026-11-28) it agrees
//! with the CPU as the legacy API does and builds a plan for every shape of the network, but it is
//! not faster where it counts: convolution alone 14.8 against 15.6 ms (fp32) and 7.0 against 8.3
//! ms (fp16), the network's forward the same (0.182 s), and the 192³ training step 1.69 s against
//! 0.96 s — the first deterministic engine of the heuristics for the backward-data convolutions is
//! a poor one. Hence the timed plans above; allowing non-deterministic engines, or heuristics mode
//! B (the neural-network one TensorFlow uses), are the other things a next GPU run could try.
//!
//! Built only with the `cuda` feature and exercised on a lent GPU by `examples/gpu_check`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;

use candle_core::cuda_backend::cudarc::cudnn::{result, sys};
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{DType, Result};

use super::conv3d::ConvGeom;
use super::invalid;

use sys::cudnnBackendAttributeName_t as Attr;
use sys::cudnnBackendAttributeType_t as Ty;
use sys::cudnnBackendDescriptorType_t as Kind;

/// Which of the three computations a convolution op (and a plan) runs; the tensors are numbered
/// alike in all three: 1 has the input's dims (x or dx), 2 the kernel's (w or dw), 3 the output's
/// (y or dy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    /// (x, w) → y
    Forward,
    /// (dy, w) → dx
    BackwardData,
    /// (x, dy) → dw
    BackwardFilter,
}

/// A backend descriptor, destroyed on drop.
struct Desc(sys::cudnnBackendDescriptor_t);

impl Desc {
    fn new(kind: Kind) -> Result<Desc> {
        let mut d = std::ptr::null_mut();
        // SAFETY: cuDNN writes one descriptor handle into `d`.
        unsafe { sys::cudnnBackendCreateDescriptor(kind, &mut d) }.result()?;
        Ok(Desc(d))
    }

    /// Sets attribute `name` to `values`, of cuDNN type `ty` (which must describe `V`).
    fn set<V>(&self, name: Attr, ty: Ty, values: &[V]) -> Result<&Self> {
        // SAFETY: `values` is a live array of `values.len()` elements of the type `ty` names;
        // cuDNN copies them.
        unsafe {
            sys::cudnnBackendSetAttribute(
                self.0,
                name,
                ty,
                values.len() as i64,
                values.as_ptr().cast::<c_void>(),
            )
        }
        .result()?;
        Ok(self)
    }

    /// Sets attribute `name` to the descriptors `ds`.
    fn set_descs(&self, name: Attr, ds: &[&Desc]) -> Result<&Self> {
        let raw: Vec<sys::cudnnBackendDescriptor_t> = ds.iter().map(|d| d.0).collect();
        self.set(name, Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw)
    }

    fn finalize(&self) -> Result<()> {
        // SAFETY: a live descriptor.
        unsafe { sys::cudnnBackendFinalize(self.0) }.result()?;
        Ok(())
    }

    /// Reads up to `out.len()` elements of attribute `name` (of cuDNN type `ty`, which must
    /// describe `V`) into `out`; returns how many there are (with an empty `out`: how many
    /// there are to read).
    fn get<V>(&self, name: Attr, ty: Ty, out: &mut [V]) -> Result<usize> {
        let mut n = 0i64;
        // (a count query passes a null array, as cudnn-frontend does: an empty slice's dangling
        // pointer is not null, and with one cuDNN counts what it wrote, i.e. 0)
        let array = if out.is_empty() {
            std::ptr::null_mut()
        } else {
            out.as_mut_ptr().cast::<c_void>()
        };
        // SAFETY: cuDNN writes at most `out.len()` elements of the type `ty` names (for
        // descriptors: into the descriptors `out` holds, created by the caller).
        unsafe { sys::cudnnBackendGetAttribute(self.0, name, ty, out.len() as i64, &mut n, array) }
            .result()?;
        Ok(n.max(0) as usize)
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created once by Desc::new, destroyed once.
        let _ = unsafe { sys::cudnnBackendDestroyDescriptor(self.0) };
    }
}

/// A built execution plan and the descriptors it was built from (kept alive with it: its engine
/// config, and the graph and tensors it shares with the shape's other candidates).
pub(crate) struct Plan {
    plan: Desc,
    _cfg: Desc,
    _graph: Rc<Vec<Desc>>,
    /// workspace bytes the plan needs
    pub workspace: usize,
}

/// The largest power of two, at most 16, that divides the address: the alignment a plan is
/// built for (part of the cache key, as a view may start at any element).
pub(crate) fn alignment(ptr: u64) -> i64 {
    1i64 << ptr.trailing_zeros().min(4)
}

/// The cache key: geometry, computation, data type and the three tensors' alignments.
type Key = (ConvGeom, Op, DType, [i64; 3]);

thread_local! {
    // a plan (or None: no engine builds; the legacy API then) per shape, as PyTorch caches them
    static PLANS: RefCell<HashMap<Key, Option<Rc<Plan>>>> = RefCell::new(HashMap::new());
    // cuDNN handles on candle's stream, one per thread and device (handles are not Send)
    static HANDLES: RefCell<HashMap<DeviceId, Handle>> = RefCell::new(HashMap::new());
}

/// A raw cuDNN handle; never destroyed (one per thread and device, as candle keeps its own).
#[derive(Clone, Copy)]
struct Handle(sys::cudnnHandle_t);

fn handle(dev: &CudaDevice) -> Result<sys::cudnnHandle_t> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.0);
        }
        let stream = dev.cuda_stream();
        // cudnnCreate needs the device's context current on this thread
        stream.context().bind_to_thread()?;
        let raw = result::create_handle()?;
        // SAFETY: a live handle and candle's live stream of this device.
        unsafe { result::set_stream(raw, stream.cu_stream() as sys::cudaStream_t) }?;
        h.borrow_mut().insert(dev.id(), Handle(raw));
        Ok(raw)
    })
}

/// Seconds a plan takes on the caller's tensors (`Err`: it cannot run).
pub(crate) type Timer<'a> = dyn Fn(&Plan) -> Result<f64> + 'a;

/// How many of the heuristics' usable plans [`plan`] times when asked to (PyTorch's
/// `cudnn.benchmark` times every one; the heuristics' order puts the good ones first).
const TIMED: usize = 6;

/// The plan for `key`, built once; `None` when no engine could be built for it (said once on
/// stderr: the legacy API then runs it). With `time` (seconds one plan takes on the caller's
/// tensors; `Err` = it cannot run) the fastest of the first [`TIMED`] usable plans, else the
/// first.
pub(crate) fn plan(
    dev: &CudaDevice,
    key: Key,
    time: Option<&Timer<'_>>,
) -> Result<Option<Rc<Plan>>> {
    if let Some(p) = PLANS.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(p);
    }
    let h = handle(dev)?;
    let mut tried = String::new();
    let max = if time.is_some() { TIMED } else { 1 };
    let fastest = |plans: Vec<Plan>| -> Option<Plan> {
        let Some(time) = time else {
            return plans.into_iter().next();
        };
        // (a plan that fails to run is passed over, as PyTorch's benchmark does)
        plans
            .into_iter()
            .filter_map(|p| time(&p).ok().map(|t| (t, p)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, p)| p)
    };
    let p = match build(h, key, &mut tried, max).map(fastest) {
        Ok(Some(p)) => Some(Rc::new(p)),
        Ok(None) => {
            eprintln!(
                "clopa: no cuDNN engine builds for {:?} {:?} {:?} ({tried}); using the legacy API",
                key.1, key.2, key.0
            );
            None
        }
        Err(e) => {
            eprintln!(
                "clopa: cuDNN's graph API failed for {:?} {:?} {:?} ({e};{tried}); using the legacy API",
                key.1, key.2, key.0
            );
            None
        }
    };
    PLANS.with(|c| c.borrow_mut().insert(key, p.clone()));
    Ok(p)
}

/// Plans with a larger workspace are passed over (PyTorch tries to allocate and moves on when it
/// cannot; a bound keeps the 192³ training step inside an 80 GB card).
const MAX_WORKSPACE: usize = 2 << 30;

fn data_type(dt: DType) -> Result<sys::cudnnDataType_t> {
    Ok(match dt {
        DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        d => {
            return Err(invalid(
                "conv3d-cudnn",
                format!("no cuDNN data type for {d:?}"),
            ));
        }
    })
}

/// A contiguous 5-D tensor descriptor of `dims`, with its unique id and byte alignment.
fn tensor(dt: sys::cudnnDataType_t, dims: [usize; 5], uid: i64, align: i64) -> Result<Desc> {
    // (the legacy API's i32 dims and strides, which hold every tensor that API takes too)
    let (d, strides) = super::cudnn_conv3d::dims(dims);
    let (d, strides) = (d.map(i64::from), strides.map(i64::from));
    let t = Desc::new(Kind::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
    t.set(
        Attr::CUDNN_ATTR_TENSOR_DATA_TYPE,
        Ty::CUDNN_TYPE_DATA_TYPE,
        &[dt],
    )?
    .set(Attr::CUDNN_ATTR_TENSOR_DIMENSIONS, Ty::CUDNN_TYPE_INT64, &d)?
    .set(
        Attr::CUDNN_ATTR_TENSOR_STRIDES,
        Ty::CUDNN_TYPE_INT64,
        &strides,
    )?
    .set(
        Attr::CUDNN_ATTR_TENSOR_UNIQUE_ID,
        Ty::CUDNN_TYPE_INT64,
        &[uid],
    )?
    .set(
        Attr::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT,
        Ty::CUDNN_TYPE_INT64,
        &[align],
    )?
    .finalize()?;
    Ok(t)
}

/// Builds the operation graph of `key` and the first `max` plans the heuristics' configs allow;
/// says in `tried` what became of the configs.
fn build(
    h: sys::cudnnHandle_t,
    (g, op, dt, align): Key,
    tried: &mut String,
    max: usize,
) -> Result<Vec<Plan>> {
    let data = data_type(dt)?;
    let t1 = tensor(data, g.in_dims(), 1, align[0])?;
    let t2 = tensor(data, g.w_dims(), 2, align[1])?;
    let t3 = tensor(data, g.out_dims(), 3, align[2])?;

    let conv = Desc::new(Kind::CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR)?;
    let (p, s) = ([g.p as i64; 3], [g.s as i64; 3]);
    conv.set(
        Attr::CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS,
        Ty::CUDNN_TYPE_INT64,
        &[3i64],
    )?
    .set(
        Attr::CUDNN_ATTR_CONVOLUTION_COMP_TYPE,
        Ty::CUDNN_TYPE_DATA_TYPE,
        &[sys::cudnnDataType_t::CUDNN_DATA_FLOAT],
    )?
    .set(
        Attr::CUDNN_ATTR_CONVOLUTION_CONV_MODE,
        Ty::CUDNN_TYPE_CONVOLUTION_MODE,
        &[sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION],
    )?
    .set(
        Attr::CUDNN_ATTR_CONVOLUTION_DILATIONS,
        Ty::CUDNN_TYPE_INT64,
        &[1i64; 3],
    )?
    .set(
        Attr::CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES,
        Ty::CUDNN_TYPE_INT64,
        &s,
    )?
    .set(
        Attr::CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS,
        Ty::CUDNN_TYPE_INT64,
        &p,
    )?
    .set(
        Attr::CUDNN_ATTR_CONVOLUTION_POST_PADDINGS,
        Ty::CUDNN_TYPE_INT64,
        &p,
    )?
    .finalize()?;

    // (alpha, beta) are floats: the compute type is fp32 for every data type
    let (kind, a, b, c, t1n, t2n, t3n) = match op {
        Op::Forward => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
        ),
        Op::BackwardData => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
        ),
        Op::BackwardFilter => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
        ),
    };
    let operation = Desc::new(kind)?;
    operation
        .set(a, Ty::CUDNN_TYPE_FLOAT, &[1f32])?
        .set(b, Ty::CUDNN_TYPE_FLOAT, &[0f32])?
        .set_descs(c, &[&conv])?
        .set_descs(t1n, &[&t1])?
        .set_descs(t2n, &[&t2])?
        .set_descs(t3n, &[&t3])?
        .finalize()?;

    let graph = Desc::new(Kind::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
    graph
        .set(
            Attr::CUDNN_ATTR_OPERATIONGRAPH_HANDLE,
            Ty::CUDNN_TYPE_HANDLE,
            &[h],
        )?
        .set_descs(Attr::CUDNN_ATTR_OPERATIONGRAPH_OPS, &[&operation])?
        .finalize()?;

    let mut built: Vec<(Desc, Desc, usize)> = Vec::new();
    'modes: for mode in [
        sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A,
        sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK,
    ] {
        let cfgs = configs(&graph, mode)?;
        tried.push_str(&format!(" {mode:?}: {} configs", cfgs.len()));
        for cfg in cfgs {
            if !allowed(&cfg, dt)? {
                tried.push_str(", one not allowed");
                continue;
            }
            let plan = Desc::new(Kind::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
            plan.set(
                Attr::CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
                Ty::CUDNN_TYPE_HANDLE,
                &[h],
            )?
            .set_descs(Attr::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[&cfg])?;
            // (an engine the heuristics list may still not support this shape: the next one)
            if let Err(e) = plan.finalize() {
                tried.push_str(&format!(", one did not build ({e})"));
                continue;
            }
            let mut ws = [0i64];
            plan.get(
                Attr::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                Ty::CUDNN_TYPE_INT64,
                &mut ws,
            )?;
            let workspace = ws[0].max(0) as usize;
            if workspace > MAX_WORKSPACE {
                tried.push_str(&format!(", one needs {workspace} bytes"));
                continue;
            }
            built.push((plan, cfg, workspace));
            if built.len() == max {
                break 'modes;
            }
        }
    }
    let shared = Rc::new(vec![t1, t2, t3, conv, operation, graph]);
    Ok(built
        .into_iter()
        .map(|(plan, cfg, workspace)| Plan {
            plan,
            _cfg: cfg,
            _graph: shared.clone(),
            workspace,
        })
        .collect())
}

/// The engine configs cuDNN's heuristics (in `mode`) list for `graph`, best first.
fn configs(graph: &Desc, mode: sys::cudnnBackendHeurMode_t) -> Result<Vec<Desc>> {
    let heur = Desc::new(Kind::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
    heur.set_descs(Attr::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[graph])?
        .set(
            Attr::CUDNN_ATTR_ENGINEHEUR_MODE,
            Ty::CUDNN_TYPE_HEUR_MODE,
            &[mode],
        )?
        .finalize()?;
    let n = heur.get::<sys::cudnnBackendDescriptor_t>(
        Attr::CUDNN_ATTR_ENGINEHEUR_RESULTS,
        Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &mut [],
    )?;
    let cfgs = (0..n)
        .map(|_| Desc::new(Kind::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR))
        .collect::<Result<Vec<_>>>()?;
    let mut raw: Vec<sys::cudnnBackendDescriptor_t> = cfgs.iter().map(|d| d.0).collect();
    let got = heur.get(
        Attr::CUDNN_ATTR_ENGINEHEUR_RESULTS,
        Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &mut raw,
    )?;
    Ok(cfgs.into_iter().take(got).collect())
}

/// Whether an engine config may run: not down-converting its inputs, not non-deterministic,
/// and for fp32 data no tensor cores (that would be TF32).
fn allowed(cfg: &Desc, dt: DType) -> Result<bool> {
    use sys::cudnnBackendNumericalNote_t as N;
    let engine = Desc::new(Kind::CUDNN_BACKEND_ENGINE_DESCRIPTOR)?;
    let mut raw = [engine.0];
    cfg.get(
        Attr::CUDNN_ATTR_ENGINECFG_ENGINE,
        Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &mut raw,
    )?;
    // (read as plain integers: a newer cuDNN may return notes this enum does not name)
    let mut notes = [u32::MAX; 32];
    let n = engine
        .get(
            Attr::CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
            Ty::CUDNN_TYPE_NUMERICAL_NOTE,
            &mut notes,
        )?
        .min(notes.len());
    let has = |note: N| notes[..n].contains(&(note as u32));
    let tf32 = dt == DType::F32 && has(N::CUDNN_NUMERICAL_NOTE_TENSOR_CORE);
    Ok(!(has(N::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS)
        || has(N::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC)
        || tf32))
}

/// Runs `plan` on the device pointers of tensors 1, 2 and 3 (see [`Op`]) with a workspace of
/// at least `plan.workspace` bytes (0: none).
pub(crate) fn execute(dev: &CudaDevice, plan: &Plan, ptrs: [u64; 3], workspace: u64) -> Result<()> {
    let h = handle(dev)?;
    let pack = Desc::new(Kind::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
    let data: [*mut c_void; 3] = ptrs.map(|p| p as *mut c_void);
    pack.set(
        Attr::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
        Ty::CUDNN_TYPE_INT64,
        &[1i64, 2, 3],
    )?
    .set(
        Attr::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
        Ty::CUDNN_TYPE_VOID_PTR,
        &data,
    )?
    .set(
        Attr::CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
        Ty::CUDNN_TYPE_VOID_PTR,
        &[workspace as *mut c_void],
    )?
    .finalize()?;
    // SAFETY: the plan was built on this device for the shapes and alignments of these pointers,
    // which the caller keeps alive until the stream has run it; the workspace is large enough.
    unsafe { sys::cudnnBackendExecute(h, plan.plan.0, pack.0) }.result()?;
    Ok(())
}
