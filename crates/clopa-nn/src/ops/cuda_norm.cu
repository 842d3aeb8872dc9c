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

#include "cuda_reduce.cuh"

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
__device__ __forceinline__ float act_grad(const float* y, long long i, float dy, int has_slope,
                                          float slope) {
    return (has_slope && !(y[i] > 0.0f)) ? dy * slope : dy;
}

// part[p * K + k] = (sum, sum of squares) of block (k, p)'s elements of x.
extern "C" __global__ void clopa_norm_stats_partial(const float* x, double2* part, long long n) {
    __shared__ double s1[THREADS / 32], s2[THREADS / 32];
    long long p = blockIdx.y, k = blockIdx.x, base = p * n;
    double a = 0.0, b = 0.0;
    for (long long j = k * CHUNK + threadIdx.x; j < min((k + 1) * CHUNK, n); j += THREADS) {
        double v = x[base + j];
        a += v;
        b += v * v;
    }
    a = block_sum(a, s1);
    b = block_sum(b, s2);
    if (threadIdx.x == 0) part[p * gridDim.x + k] = make_double2(a, b);
}

// stats[p] = (mean, 1 / sqrt(biased variance + eps)) from plane p's K partials. One block per
// plane.
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
extern "C" __global__ void clopa_norm_apply(const float* x, const float2* stats,
                                            const float* gamma, const float* beta, const float* r,
                                            float* y, long long n, int C, int has_slope,
                                            float slope) {
    long long p = blockIdx.y, k = blockIdx.x, base = p * n;
    float2 st = stats[p];
    float g = gamma[p % C], b = beta[p % C];
    for (long long j = k * CHUNK + threadIdx.x; j < min((k + 1) * CHUNK, n); j += THREADS) {
        long long i = base + j;
        float v = ((x[i] - st.x) * st.y) * g + b;
        if (r) v += r[i];
        if (has_slope && !(v > 0.0f)) v *= slope;
        y[i] = v;
    }
}

// part[p * K + k] = (sum of g, sum of g * xhat) of block (k, p), g = act'(y) * dy,
// xhat = (x - mean) * rstd.
extern "C" __global__ void clopa_norm_bwd_partial(const float* x, const float* y, const float* dy,
                                                  const float2* stats, double2* part, long long n,
                                                  int has_slope, float slope) {
    __shared__ double s1[THREADS / 32], s2[THREADS / 32];
    long long p = blockIdx.y, k = blockIdx.x, base = p * n;
    float2 st = stats[p];
    double a = 0.0, b = 0.0;
    for (long long j = k * CHUNK + threadIdx.x; j < min((k + 1) * CHUNK, n); j += THREADS) {
        long long i = base + j;
        float g = act_grad(y, i, dy[i], has_slope, slope);
        a += g;
        b += (double)g * (double)((x[i] - st.x) * st.y);
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
extern "C" __global__ void clopa_norm_bwd_dx(const float* x, const float* y, const float* dy,
                                             const float2* stats, const float2* sums,
                                             const float* gamma, float* dx, long long n, int C,
                                             int has_slope, float slope) {
    long long p = blockIdx.y, k = blockIdx.x, base = p * n;
    float2 st = stats[p], su = sums[p];
    float inv_n = (float)(1.0 / (double)n);
    float mg = su.x * inv_n, mgx = su.y * inv_n, scale = gamma[p % C] * st.y;
    for (long long j = k * CHUNK + threadIdx.x; j < min((k + 1) * CHUNK, n); j += THREADS) {
        long long i = base + j;
        float g = act_grad(y, i, dy[i], has_slope, slope);
        dx[i] = scale * (g - mg - ((x[i] - st.x) * st.y) * mgx);
    }
}

// g = act'(y) * dy over len elements (the residual's gradient).
extern "C" __global__ void clopa_leaky_grad(const float* y, const float* dy, float* g,
                                            long long len, float slope) {
    for (long long i = (long long)blockIdx.x * THREADS + threadIdx.x; i < len;
         i += (long long)gridDim.x * THREADS) {
        g[i] = y[i] > 0.0f ? dy[i] : dy[i] * slope;
    }
}
