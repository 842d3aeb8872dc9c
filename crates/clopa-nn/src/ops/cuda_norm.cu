// Instance norm (+ residual + LeakyReLU) on CUDA, forward and backward, as a handful of fused
// kernels: what `portable::norm_act` computes with ~8 candle kernels and full-size temporaries
// per call (7x slower than PyTorch's one ATen kernel on an H200, BENCHMARKS.md). Compiled to PTX
// by build.rs with the `cuda` feature; launched by cuda_norm.rs.
//
// Layout: P = B*C contiguous planes of n floats. Every kernel that walks a plane runs on a grid
// (ceil(n / CHUNK), P): block (k, p) owns elements [k*CHUNK, (k+1)*CHUNK) of plane p, each thread
// CHUNK / THREADS of them at a stride of THREADS (coalesced). Plane sums are taken in two
// stages, in f64: one partial per block, then one block per plane adds its partials — so a 192^3
// plane keeps thousands of blocks busy, and the sums lose nothing to f32 rounding.

// (cuda_norm.rs launches with the same THREADS and CHUNK: keep them equal)
#define THREADS 256
#define PER_THREAD 16
#define CHUNK (THREADS * PER_THREAD)

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_reduce.cuh"

// The data types' conversions to and from the f32 the kernels compute in (round to nearest).
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// The sums of plane blockIdx.x's K partials (x and y apart), in thread 0: the second stage of
// every plane sum. One block per plane.
__device__ __forceinline__ double2 plane_total(const double2* part, int K) {
    __shared__ double s1[THREADS / 32], s2[THREADS / 32];
    long long p = blockIdx.x;
    double a = 0.0, b = 0.0;
    for (int k = threadIdx.x; k < K; k += THREADS) {
        double2 v = part[p * K + k];
        a += v.x;
        b += v.y;
    }
    a = block_sum(a, s1);
    b = block_sum(b, s2);
    return make_double2(a, b);
}

// LeakyReLU's derivative read off the activation's output y (y > 0 iff its input > 0 for a slope
// >= 0; at 0 it is the slope, as PyTorch's). Without an activation, 1.
template <typename T>
__device__ __forceinline__ float act_grad(const T* y, long long i, float dy, int has_slope,
                                          float slope) {
    return (has_slope && !(to_f(y[i]) > 0.0f)) ? dy * slope : dy;
}

// part[p * K + k] = (sum, sum of squares) of block (k, p)'s elements of x.
template <typename T>
__device__ void norm_stats_partial(const T* x, double2* part, long long n) {
    __shared__ double s1[THREADS / 32], s2[THREADS / 32];
    long long p = blockIdx.y, k = blockIdx.x, base = p * n;
    double a = 0.0, b = 0.0;
    for (long long j = k * CHUNK + threadIdx.x; j < min((k + 1) * CHUNK, n); j += THREADS) {
        double v = to_f(x[base + j]);
        a += v;
        b += v * v;
    }
    a = block_sum(a, s1);
    b = block_sum(b, s2);
    if (threadIdx.x == 0) part[p * gridDim.x + k] = make_double2(a, b);
}

// stats[p] = (mean, 1 / sqrt(biased variance + eps)) from plane p's K partials. One block per
// plane. (The same for every data type: it reads only the partials.)
extern "C" __global__ void clopa_norm_stats_final(const double2* part, float2* stats, int K,
                                                  long long n, double eps) {
    double2 t = plane_total(part, K);
    if (threadIdx.x == 0) {
        double mean = t.x / (double)n;
        double var = fmax(t.y / (double)n - mean * mean, 0.0);
        stats[blockIdx.x] = make_float2((float)mean, (float)(1.0 / sqrt(var + eps)));
    }
}

// y = act(((x - mean) * rstd) * gamma[c] + beta[c] (+ r)), c = p % C.
template <typename T>
__device__ void norm_apply(const T* x, const float2* stats, const float* gamma, const float* beta,
                           const T* r, T* y, long long n, int C, int has_slope, float slope) {
    long long p = blockIdx.y, k = blockIdx.x, base = p * n;
    float2 st = stats[p];
    float g = gamma[p % C], b = beta[p % C];
    for (long long j = k * CHUNK + threadIdx.x; j < min((k + 1) * CHUNK, n); j += THREADS) {
        long long i = base + j;
        float v = ((to_f(x[i]) - st.x) * st.y) * g + b;
        if (r) v += to_f(r[i]);
        if (has_slope && !(v > 0.0f)) v *= slope;
        y[i] = from_f<T>(v);
    }
}

// part[p * K + k] = (sum of g, sum of g * xhat) of block (k, p), g = act'(y) * dy,
// xhat = (x - mean) * rstd.
template <typename T>
__device__ void norm_bwd_partial(const T* x, const T* y, const T* dy, const float2* stats,
                                 double2* part, long long n, int has_slope, float slope) {
    __shared__ double s1[THREADS / 32], s2[THREADS / 32];
    long long p = blockIdx.y, k = blockIdx.x, base = p * n;
    float2 st = stats[p];
    double a = 0.0, b = 0.0;
    for (long long j = k * CHUNK + threadIdx.x; j < min((k + 1) * CHUNK, n); j += THREADS) {
        long long i = base + j;
        float g = act_grad(y, i, to_f(dy[i]), has_slope, slope);
        a += g;
        b += (double)g * (double)((to_f(x[i]) - st.x) * st.y);
    }
    a = block_sum(a, s1);
    b = block_sum(b, s2);
    if (threadIdx.x == 0) part[p * gridDim.x + k] = make_double2(a, b);
}

// sums[p] = (sum of g, sum of g * xhat) over plane p, from its K partials. One block per plane.
extern "C" __global__ void clopa_norm_bwd_final(const double2* part, float2* sums, int K) {
    double2 t = plane_total(part, K);
    if (threadIdx.x == 0) sums[blockIdx.x] = make_float2((float)t.x, (float)t.y);
}

// dx = gamma[c] * rstd * (g - mean(g) - xhat * mean(g * xhat)).
template <typename T>
__device__ void norm_bwd_dx(const T* x, const T* y, const T* dy, const float2* stats,
                            const float2* sums, const float* gamma, T* dx, long long n, int C,
                            int has_slope, float slope) {
    long long p = blockIdx.y, k = blockIdx.x, base = p * n;
    float2 st = stats[p], su = sums[p];
    float inv_n = (float)(1.0 / (double)n);
    float mg = su.x * inv_n, mgx = su.y * inv_n, scale = gamma[p % C] * st.y;
    for (long long j = k * CHUNK + threadIdx.x; j < min((k + 1) * CHUNK, n); j += THREADS) {
        long long i = base + j;
        float g = act_grad(y, i, to_f(dy[i]), has_slope, slope);
        dx[i] = from_f<T>(scale * (g - mg - ((to_f(x[i]) - st.x) * st.y) * mgx));
    }
}

// g = act'(y) * dy over len elements (the residual's gradient).
template <typename T>
__device__ void leaky_grad(const T* y, const T* dy, T* g, long long len, float slope) {
    for (long long i = (long long)blockIdx.x * THREADS + threadIdx.x; i < len;
         i += (long long)gridDim.x * THREADS) {
        float d = to_f(dy[i]);
        g[i] = from_f<T>(to_f(y[i]) > 0.0f ? d : d * slope);
    }
}

// The kernels cuda_norm.rs launches, for data of type T, named NAME_SUFFIX.
#define INSTANTIATE(T, SUFFIX)                                                                     \
    extern "C" __global__ void clopa_norm_stats_partial_##SUFFIX(const T* x, double2* part,        \
                                                                 long long n) {                    \
        norm_stats_partial(x, part, n);                                                            \
    }                                                                                              \
    extern "C" __global__ void clopa_norm_apply_##SUFFIX(                                          \
        const T* x, const float2* stats, const float* gamma, const float* beta, const T* r, T* y,  \
        long long n, int C, int has_slope, float slope) {                                          \
        norm_apply(x, stats, gamma, beta, r, y, n, C, has_slope, slope);                           \
    }                                                                                              \
    extern "C" __global__ void clopa_norm_bwd_partial_##SUFFIX(                                    \
        const T* x, const T* y, const T* dy, const float2* stats, double2* part, long long n,       \
        int has_slope, float slope) {                                                              \
        norm_bwd_partial(x, y, dy, stats, part, n, has_slope, slope);                              \
    }                                                                                              \
    extern "C" __global__ void clopa_norm_bwd_dx_##SUFFIX(                                         \
        const T* x, const T* y, const T* dy, const float2* stats, const float2* sums,              \
        const float* gamma, T* dx, long long n, int C, int has_slope, float slope) {               \
        norm_bwd_dx(x, y, dy, stats, sums, gamma, dx, n, C, has_slope, slope);                     \
    }                                                                                              \
    extern "C" __global__ void clopa_leaky_grad_##SUFFIX(const T* y, const T* dy, T* g,            \
                                                         long long len, float slope) {             \
        leaky_grad(y, dy, g, len, slope);                                                          \
    }

INSTANTIATE(float, f32)
INSTANTIATE(__half, f16)
INSTANTIATE(__nv_bfloat16, bf16)
