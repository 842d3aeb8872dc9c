//! 3D convolution on CUDA through cuDNN's N-d convolution (what PyTorch's `F.conv3d` runs on a
//! GPU), as three candle custom ops: forward, and the backward-data and backward-filter ops its
//! `bwd` is built from. candle only wires cuDNN's 2D case; cudarc exposes the N-d descriptors.
//!
//! In fp32 with `CUDNN_FMA_MATH`: no TF32 tensor cores, so results agree with the CPU to fp32
//! rounding (PyTorch allows TF32 for convolutions by default; `scripts/gpu_check.py` turns it off
//! to compare like with like). With [`super::ConvPrecision::F16`] or `Bf16` (PyTorch's autocast,
//! which nnInteractive's inference uses) the inputs are cast down (the previous layer's result
//! already is), cuDNN runs on tensor cores accumulating in fp32, and the result stays in the half
//! type for the norms that follow, which compute in fp32 (`cuda_norm.cu`).
//!
//! Built only with the `cuda` feature; no CI machine has a GPU, so this file is exercised by
//! `examples/gpu_check` on a lent GPU (see BENCHMARKS.md), against the CPU kernels.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::CudnnDataType;
use candle_core::cuda_backend::cudarc::cudnn::result;
use candle_core::cuda_backend::cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvForward, Cudnn, sys,
};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType,
};

use super::conv3d::ConvGeom;
use super::cudnn_graph as graph;
// (the three computations, as the graph API numbers their tensors)
use super::cudnn_graph::Op as Kind;
use super::{cuda_view, grad_if, invalid};

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device, as candle keeps its own.
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
}

/// What cuDNN's heuristics chose for one geometry and data type: the algorithm and its
/// workspace bytes. Asked once per shape, as PyTorch caches its choice; the U-Net repeats a
/// handful of shapes thousands of times.
type Choices<A> = RefCell<HashMap<(ConvGeom, DType), (A, usize)>>;

thread_local! {
    static FWD: Choices<sys::cudnnConvolutionFwdAlgo_t> = RefCell::new(HashMap::new());
    static BWD_DATA: Choices<sys::cudnnConvolutionBwdDataAlgo_t> = RefCell::new(HashMap::new());
    static BWD_FILTER: Choices<sys::cudnnConvolutionBwdFilterAlgo_t> = RefCell::new(HashMap::new());
}

/// The cached choice for `key`, or `pick()`'s, remembered.
fn choice<A: Copy + 'static>(
    cache: &'static std::thread::LocalKey<Choices<A>>,
    key: (ConvGeom, DType),
    pick: impl FnOnce() -> Result<(A, usize)>,
) -> Result<(A, usize)> {
    if let Some(c) = cache.with(|c| c.borrow().get(&key).copied()) {
        return Ok(c);
    }
    let c = pick()?;
    cache.with(|m| m.borrow_mut().insert(key, c));
    Ok(c)
}

/// What cuDNN's legacy API chose on this thread so far, one line per (direction, geometry, data
/// type), sorted: `"bwd_data b2 32->32 k3 s1 192x192x192 BF16: CUDNN_CONVOLUTION_BWD_DATA_ALGO_1
/// (0 B)"`. For `examples/gpu_check`, to tell a slow kernel from a slow algorithm choice.
pub fn choices() -> Vec<String> {
    fn lines<A: std::fmt::Debug>(
        dir: &str,
        cache: &'static std::thread::LocalKey<Choices<A>>,
        out: &mut Vec<String>,
    ) {
        cache.with(|c| {
            for ((g, dt), (a, bytes)) in c.borrow().iter() {
                out.push(format!(
                    "{dir} b{} {}->{} k{} s{} {}x{}x{} {dt:?}: {a:?} ({bytes} B)",
                    g.b, g.cin, g.cout, g.k, g.s, g.d, g.h, g.w
                ));
            }
        });
    }
    let mut out = Vec::new();
    lines("fwd", &FWD, &mut out);
    lines("bwd_data", &BWD_DATA, &mut out);
    lines("bwd_filter", &BWD_FILTER, &mut out);
    out.sort();
    out
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream())?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// Whether to pick each shape's algorithms by cuDNN's Find — every algorithm run once, the fastest
/// taken, like PyTorch's `cudnn.benchmark = True`, which nnU-Net's training sets — instead of the
/// first choice of cuDNN's heuristics: `CLOPA_CUDNN_BENCHMARK=1`. Off by default: on an H200 it
/// was no faster, and its first step took 7 s (BENCHMARKS.md, 2026-11-28). With the graph API
/// ([`graph_api`]) it times that API's plans instead.
fn benchmark() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("CLOPA_CUDNN_BENCHMARK").is_ok_and(|v| v == "1"))
}

/// Whether convolutions run through cuDNN's graph API (`cudnn_graph.rs`, `CLOPA_CUDNN_API=graph`)
/// instead of its legacy API (the default). Opt-in, as measured on an H200 (BENCHMARKS.md): its
/// heuristics' first deterministic engine gave the same forward but made the 192³ training step
/// 1.77× slower (the backward-data convolutions). In [`benchmark`] mode it times its first few
/// plans per shape instead (not yet run on a GPU), as the legacy API runs its Find.
fn graph_api() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("CLOPA_CUDNN_API").is_ok_and(|v| v == "graph"))
}

/// A Find's choice in [`benchmark`] mode, or `None` to take the heuristics' — also when Find
/// failed (it allocates its own buffers with cudaMalloc beside candle's pool, and may run out of
/// memory where the launch would not); the failure is said on stderr, as this mode is an
/// experiment.
fn found<A>(g: ConvGeom, find: impl FnOnce() -> Result<Option<A>>) -> Option<A> {
    if !benchmark() {
        return None;
    }
    find().unwrap_or_else(|e| {
        eprintln!("clopa: cuDNN's Find failed for {g:?} ({e}); taking its heuristics' choice");
        None
    })
}

/// Raw cuDNN descriptors of one convolution and a handle on the device's stream, for the Find
/// calls (cudarc's safe descriptors keep their raw handles private); destroyed on drop.
struct Raw {
    h: sys::cudnnHandle_t,
    x: sys::cudnnTensorDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
    /// fp32 data: FMA math only, so an algorithm that needs tensor cores (TF32) is not taken
    fp32: bool,
}

impl Raw {
    /// The descriptors [`CudnnConv3d::launch`] builds with cudarc's safe API, built raw.
    fn new<T: CudnnDataType + WithDType>(g: ConvGeom, stream: &CudaStream) -> Result<Raw> {
        // cudnnCreate needs the device's context current on this thread (cudarc's Cudnn::new
        // binds it too)
        stream.context().bind_to_thread()?;
        let mut raw = Raw {
            h: result::create_handle()?,
            x: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            conv: std::ptr::null_mut(),
            fp32: T::DTYPE == DType::F32,
        };
        // (each field is set before the next call can fail, so drop frees what exists)
        let (xd, xs) = dims(g.in_dims());
        let (yd, ys) = dims(g.out_dims());
        let wd = g.w_dims().map(|v| v as i32);
        let (p, st) = ([g.p as i32; 3], [g.s as i32; 3]);
        // SAFETY: every descriptor is created just before it is set, and the arrays outlive the
        // calls (cuDNN copies them).
        unsafe {
            result::set_stream(raw.h, stream.cu_stream() as sys::cudaStream_t)?;
            raw.x = result::create_tensor_descriptor()?;
            result::set_tensornd_descriptor(raw.x, T::DATA_TYPE, 5, xd.as_ptr(), xs.as_ptr())?;
            raw.y = result::create_tensor_descriptor()?;
            result::set_tensornd_descriptor(raw.y, T::DATA_TYPE, 5, yd.as_ptr(), ys.as_ptr())?;
            raw.w = result::create_filter_descriptor()?;
            result::set_filternd_descriptor(
                raw.w,
                T::DATA_TYPE,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                5,
                wd.as_ptr(),
            )?;
            raw.conv = result::create_convolution_descriptor()?;
            result::set_convolutionnd_descriptor(
                raw.conv,
                3,
                p.as_ptr(),
                st.as_ptr(),
                [1i32; 3].as_ptr(),
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                <f32 as CudnnDataType>::DATA_TYPE,
            )?;
            result::set_convolution_math_type(
                raw.conv,
                if raw.fp32 {
                    sys::cudnnMathType_t::CUDNN_FMA_MATH
                } else {
                    sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
                },
            )?;
        }
        Ok(raw)
    }

    /// Whether a Find result can be taken: it ran, with the math the launch sets — in fp32 no
    /// tensor cores (no TF32), in fp16/bf16 tensor cores (so what was timed is what runs).
    fn usable(&self, status: sys::cudnnStatus_t, math: sys::cudnnMathType_t) -> bool {
        use sys::cudnnMathType_t::{CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION};
        let tensor_cores = matches!(
            math,
            CUDNN_TENSOR_OP_MATH | CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
        );
        status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
            && if self.fp32 {
                !tensor_cores
            } else {
                math == CUDNN_TENSOR_OP_MATH
            }
    }

    /// The algorithm of the first (fastest) of Find's `n` results that [`Self::usable`] takes.
    fn fastest<P, A>(
        &self,
        perf: &[P],
        n: i32,
        fields: impl Fn(&P) -> (sys::cudnnStatus_t, sys::cudnnMathType_t, A),
    ) -> Option<A> {
        perf[..(n.max(0) as usize).min(perf.len())]
            .iter()
            .map(fields)
            .find(|&(status, math, _)| self.usable(status, math))
            .map(|(_, _, algo)| algo)
    }

    /// Runs one of cuDNN's Find calls — `call(capacity, &mut n, results)` — and returns the
    /// algorithm of the fastest usable result (results come fastest first), if any.
    fn find<P, A>(
        &self,
        call: impl FnOnce(i32, &mut i32, *mut P) -> sys::cudnnStatus_t,
        fields: impl Fn(&P) -> (sys::cudnnStatus_t, sys::cudnnMathType_t, A),
    ) -> Result<Option<A>> {
        let mut n = 0;
        // SAFETY: zeroed perf structs are plain data; cuDNN writes the first `n` (at most 8:
        // more than any direction has algorithms).
        let mut perf: Vec<P> = (0..8).map(|_| unsafe { std::mem::zeroed() }).collect();
        call(perf.len() as i32, &mut n, perf.as_mut_ptr()).result()?;
        Ok(self.fastest(&perf, n, fields))
    }

    /// The fastest usable forward algorithm by Find, if any.
    fn find_fwd(&self) -> Result<Option<sys::cudnnConvolutionFwdAlgo_t>> {
        // SAFETY (of each Find call): the descriptors and handle are live; cuDNN allocates and
        // frees its own buffers and writes at most `cap` results.
        self.find(
            |cap, n, perf| unsafe {
                sys::cudnnFindConvolutionForwardAlgorithm(
                    self.h, self.x, self.w, self.conv, self.y, cap, n, perf,
                )
            },
            |r: &sys::cudnnConvolutionFwdAlgoPerf_t| (r.status, r.mathType, r.algo),
        )
    }

    /// [`Self::find_fwd`] for the input gradient.
    fn find_bwd_data(&self) -> Result<Option<sys::cudnnConvolutionBwdDataAlgo_t>> {
        self.find(
            |cap, n, perf| unsafe {
                sys::cudnnFindConvolutionBackwardDataAlgorithm(
                    self.h, self.w, self.y, self.conv, self.x, cap, n, perf,
                )
            },
            |r: &sys::cudnnConvolutionBwdDataAlgoPerf_t| (r.status, r.mathType, r.algo),
        )
    }

    /// [`Self::find_fwd`] for the kernel gradient.
    fn find_bwd_filter(&self) -> Result<Option<sys::cudnnConvolutionBwdFilterAlgo_t>> {
        self.find(
            |cap, n, perf| unsafe {
                sys::cudnnFindConvolutionBackwardFilterAlgorithm(
                    self.h, self.x, self.y, self.conv, self.w, cap, n, perf,
                )
            },
            |r: &sys::cudnnConvolutionBwdFilterAlgoPerf_t| (r.status, r.mathType, r.algo),
        )
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: each was created once by Raw::new (null where it was not) and is freed once.
        unsafe {
            if !self.conv.is_null() {
                let _ = result::destroy_convolution_descriptor(self.conv);
            }
            if !self.w.is_null() {
                let _ = result::destroy_filter_descriptor(self.w);
            }
            for d in [self.x, self.y] {
                if !d.is_null() {
                    let _ = result::destroy_tensor_descriptor(d);
                }
            }
            let _ = result::destroy_handle(self.h);
        }
    }
}

#[derive(Clone, Debug)]
struct CudnnConv3d {
    g: ConvGeom,
    kind: Kind,
}

/// The dims of a contiguous 5-D tensor and its strides, as cuDNN takes them.
pub(super) fn dims(v: [usize; 5]) -> ([i32; 5], [i32; 5]) {
    let d = v.map(|x| x as i32);
    let strides = [
        d[1] * d[2] * d[3] * d[4],
        d[2] * d[3] * d[4],
        d[3] * d[4],
        d[4],
        1,
    ];
    (d, strides)
}

impl CustomOp2 for CudnnConv3d {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Forward => "conv3d-cudnn",
            Kind::BackwardData => "conv3d-cudnn-dx",
            Kind::BackwardFilter => "conv3d-cudnn-dw",
        }
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(invalid(self.name(), "runs on CUDA tensors only"))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match (s1.dtype(), s2.dtype()) {
            (DType::F32, DType::F32) => self.launch::<f32>(s1, l1, s2, l2),
            (DType::F16, DType::F16) => self.launch::<half::f16>(s1, l1, s2, l2),
            (DType::BF16, DType::BF16) => self.launch::<half::bf16>(s1, l1, s2, l2),
            (a, b) => Err(invalid(
                self.name(),
                format!("arguments must be both f32, f16 or bf16, got {a:?} and {b:?}"),
            )),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let op = |kind| CudnnConv3d { g: self.g, kind };
        let dx = grad_if(x, || dy.apply_op2_no_bwd(w, &op(Kind::BackwardData)))?;
        let dw = grad_if(w, || x.apply_op2_no_bwd(&dy, &op(Kind::BackwardFilter)))?;
        Ok((dx, dw))
    }
}

impl CudnnConv3d {
    /// The op on data of type `T` (f32, or f16/bf16 with fp32 accumulation on tensor cores).
    fn launch<T>(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)>
    where
        T: CudnnDataType + CudaDType + DeviceRepr + WithDType,
    {
        let g = self.g;
        let dev = s1.device().clone();
        let a = cuda_view::<T>("conv3d-cudnn", "first argument", s1, l1)?;
        let b = cuda_view::<T>("conv3d-cudnn", "second argument", s2, l2)?;
        let stream = dev.cuda_stream();
        let shape = match self.kind {
            Kind::Forward => g.out_dims(),
            Kind::BackwardData => g.in_dims(),
            Kind::BackwardFilter => g.w_dims(),
        };
        // SAFETY: every launch below writes every output element (beta = 0) before anything
        // reads it.
        let mut out = unsafe { stream.alloc::<T>(shape.iter().product()) }?;
        // SAFETY (of the uninitialised workspace): cuDNN only uses it as scratch.
        let workspace = |bytes: usize| -> Result<Option<CudaSlice<u8>>> {
            Ok(if bytes == 0 {
                None
            } else {
                Some(unsafe { stream.alloc::<u8>(bytes) }?)
            })
        };
        if graph_api() {
            let ran = {
                let (pa, _ga) = a.device_ptr(&stream);
                let (pb, _gb) = b.device_ptr(&stream);
                let (po, _go) = out.device_ptr_mut(&stream);
                // tensors 1, 2, 3 = the input's dims, the kernel's, the output's (graph::Op)
                let ptrs = match self.kind {
                    Kind::Forward => [pa, pb, po],
                    Kind::BackwardData => [po, pb, pa],
                    Kind::BackwardFilter => [pa, po, pb],
                };
                let key = (g, self.kind, T::DTYPE, ptrs.map(graph::alignment));
                // benchmark mode: a plan's time on these tensors (each run writes only the
                // output, which the chosen plan then writes again), one warm-up, mean of two
                let time = |p: &graph::Plan| -> Result<f64> {
                    let mut ws = workspace(p.workspace)?;
                    let (pw, _gw) = ws.as_mut().map(|w| w.device_ptr_mut(&stream)).unzip();
                    let pw = pw.unwrap_or(0);
                    graph::execute(&dev, p, ptrs, pw)?;
                    stream.synchronize()?;
                    let t = std::time::Instant::now();
                    for _ in 0..2 {
                        graph::execute(&dev, p, ptrs, pw)?;
                    }
                    stream.synchronize()?;
                    Ok(t.elapsed().as_secs_f64() / 2.0)
                };
                let time: Option<&graph::Timer<'_>> = benchmark().then_some(&time);
                match graph::plan(&dev, key, time)? {
                    Some(plan) => {
                        let mut ws = workspace(plan.workspace)?;
                        let (pw, _gw) = ws.as_mut().map(|w| w.device_ptr_mut(&stream)).unzip();
                        graph::execute(&dev, &plan, ptrs, pw.unwrap_or(0))?;
                        true
                    }
                    None => false,
                }
            };
            if ran {
                return Ok((
                    CudaStorage::wrap_cuda_slice(out, dev),
                    Shape::from(shape.to_vec()),
                ));
            }
        }
        let cudnn = handle(&dev)?;
        let (xd, xs) = dims(g.in_dims());
        let (yd, ys) = dims(g.out_dims());
        let wd = g.w_dims().map(|v| v as i32);
        let x_desc = cudnn.create_nd_tensor::<T>(&xd, &xs)?;
        let y_desc = cudnn.create_nd_tensor::<T>(&yd, &ys)?;
        let w_desc =
            cudnn.create_nd_filter::<T>(sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, &wd)?;
        let (p, s) = (g.p as i32, g.s as i32);
        let mut conv = cudnn.create_convnd::<f32>(
            &[p; 3],
            &[s; 3],
            &[1; 3],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )?;
        // the compute type is fp32 for every data type; tensor cores only for the half types
        conv.set_math_type(if T::DTYPE == DType::F32 {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
        })?;
        let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
        let key = (g, T::DTYPE);
        match self.kind {
            Kind::Forward => {
                let op = ConvForward {
                    conv: &conv,
                    x: &x_desc,
                    w: &w_desc,
                    y: &y_desc,
                };
                let (algo, bytes) = choice(&FWD, key, || {
                    let a = found(g, || Raw::new::<T>(g, &stream)?.find_fwd())
                        .map_or_else(|| op.pick_algorithm(), Ok)?;
                    Ok((a, op.get_workspace_size(a)?))
                })?;
                let mut ws = workspace(bytes)?;
                // SAFETY: the views hold the contiguous data the descriptors describe.
                unsafe { op.launch(algo, ws.as_mut(), (one, zero), &a, &b, &mut out) }?;
            }
            Kind::BackwardData => {
                let op = ConvBackwardData {
                    conv: &conv,
                    dx: &x_desc,
                    w: &w_desc,
                    dy: &y_desc,
                };
                let (algo, bytes) = choice(&BWD_DATA, key, || {
                    let a = found(g, || Raw::new::<T>(g, &stream)?.find_bwd_data())
                        .map_or_else(|| op.pick_algorithm(), Ok)?;
                    Ok((a, op.get_workspace_size(a)?))
                })?;
                let mut ws = workspace(bytes)?;
                // SAFETY: a = dy, b = w, contiguous data as described.
                unsafe { op.launch(algo, ws.as_mut(), (one, zero), &mut out, &b, &a) }?;
            }
            Kind::BackwardFilter => {
                let op = ConvBackwardFilter {
                    conv: &conv,
                    x: &x_desc,
                    dw: &w_desc,
                    dy: &y_desc,
                };
                let (algo, bytes) = choice(&BWD_FILTER, key, || {
                    let a = found(g, || Raw::new::<T>(g, &stream)?.find_bwd_filter())
                        .map_or_else(|| op.pick_algorithm(), Ok)?;
                    Ok((a, op.get_workspace_size(a)?))
                })?;
                let mut ws = workspace(bytes)?;
                // SAFETY: a = x, b = dy, contiguous data as described.
                unsafe { op.launch(algo, ws.as_mut(), (one, zero), &a, &mut out, &b) }?;
            }
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from(shape.to_vec()),
        ))
    }
}

/// The input gradient of [`conv3d`] without a bias: cuDNN's backward-data of `dy` (the forward's
/// result, in its type) with the kernel cast to that type, as the forward's backward runs it.
pub(crate) fn input_grad(dy: &Tensor, w: &Tensor, g: ConvGeom) -> Result<Tensor> {
    let w = w.to_dtype(dy.dtype())?.contiguous()?;
    let op = CudnnConv3d {
        g,
        kind: Kind::BackwardData,
    };
    dy.contiguous()?.apply_op2_no_bwd(&w, &op)
}

/// [`super::conv3d`] of CUDA tensors, arguments already checked, at the [`super::conv_precision`].
///
/// In half precision, as under PyTorch's autocast: the input and kernel are cast to it (a no-op
/// for an input that a half-precision layer made), cuDNN accumulates in fp32 on tensor cores, and
/// the result stays half (bias added in half, its gradient summed in f32), so the activations between convolutions are half —
/// half the memory traffic and no cast back and forth around every convolution (the norms read
/// and write half, computing in f32; `portable::norm_act`). The network casts its logits to f32
/// (`unet.rs`). The casts are graph nodes: the weights' gradients come back in f32.
pub(crate) fn conv3d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: ConvGeom) -> Result<Tensor> {
    let op = CudnnConv3d {
        g,
        kind: Kind::Forward,
    };
    let dt = super::conv_precision().dtype();
    let (x, w) = (x.to_dtype(dt)?.contiguous()?, w.to_dtype(dt)?.contiguous()?);
    let y = x.apply_op2(&w, op)?;
    match b {
        Some(b) if dt == DType::F32 => y.broadcast_add(&b.reshape((1, g.cout, 1, 1, 1))?),
        // (in half: its gradient summed in f32)
        Some(b) => super::portable::bias_add(&y, b),
        None => Ok(y),
    }
}
