// CLoPA's per-pass loss (loss.rs: clopa_pass_loss_per_sample) on CUDA, forward and backward, as
// three fused kernels: per patch b, L_b = 1 - mean_{k>=1} (2 I_k + s) / (P_k + T_k + s) + CE_b,
// I_k = sum p_k t_k, P_k = sum p_k, T_k = sum t_k, CE_b = mean -log p_y. Composed of candle's ops
// the loss and its gradient ran ~60 kernels (f64 copies of every per-voxel term, reductions over
// the class axis) and took 48 ms for 2 x 2 x 192^3 logits on an H200, against PyTorch's 1.7 ms
// (BENCHMARKS.md). Compiled to PTX by build.rs with the `cuda` feature; launched by pass_loss.rs,
// whose CPU side computes the same terms over the same blocks (not to the bit: expf/logf, fused
// multiply-adds and the in-block summation order differ).
//
// Layout: logits (B, C, N) f32 contiguous, labels (B, N) f32 (a voxel whose label is not one of
// 0..C-1 has no class hot, as the composition's one-hot gives it). Per-voxel terms in f32, every
// sum over voxels in f64, as the composition's; the sums in two fixed-order stages (one partial
// per block, then one block per patch), so a run repeats to the bit.

// (pass_loss.rs launches with the same THREADS, CHUNK and MAX_C: keep them equal)
#define THREADS 256
#define PER_THREAD 16
#define CHUNK (THREADS * PER_THREAD)
#define MAX_C 8
// sums per patch: the CE sum, then I_k, P_k, T_k for each foreground class k = 1..C-1
#define SUMS(C) (1 + 3 * ((C) - 1))
#define MAX_SUMS SUMS(MAX_C)

#include "cuda_reduce.cuh"

// log-softmax over the C classes of voxel v of patch b, as candle_nn's log_softmax: (l - max) -
// log(sum exp(l - max)); returns the label's class (or -1).
__device__ __forceinline__ int voxel(const float* logits, const float* labels, long long b,
                                     long long v, long long n, int C, float* logp) {
    const float* l = logits + b * C * n + v;
    float m = l[0];
    for (int k = 1; k < C; k++) m = fmaxf(m, l[k * n]);
    float s = 0.0f;
    for (int k = 0; k < C; k++) {
        logp[k] = l[k * n] - m;
        s += expf(logp[k]);
    }
    float ls = logf(s);
    for (int k = 0; k < C; k++) logp[k] -= ls;
    float y = labels[b * n + v];
    int cls = -1;
    for (int k = 0; k < C; k++)
        if (y == (float)k) cls = k;
    return cls;
}

// part[(b * K + k) * S + j] = sum j of block (k, b)'s voxels: j = 0 the CE sum (-log p_label),
// then for each foreground class c (1..C-1) I_c, P_c, T_c.
extern "C" __global__ void clopa_loss_partial(const float* logits, const float* labels,
                                              double* part, long long n, int C) {
    __shared__ double sh[THREADS / 32];
    long long b = blockIdx.y, k = blockIdx.x;
    const int S = SUMS(C);
    double acc[MAX_SUMS];
    for (int j = 0; j < S; j++) acc[j] = 0.0;
    float logp[MAX_C];
    for (long long v = k * CHUNK + threadIdx.x; v < min((k + 1) * CHUNK, n); v += THREADS) {
        int cls = voxel(logits, labels, b, v, n, C, logp);
        if (cls >= 0) acc[0] += (double)(-logp[cls]);
        for (int c = 1; c < C; c++) {
            float p = expf(logp[c]);
            float t = cls == c ? 1.0f : 0.0f;
            acc[1 + 3 * (c - 1)] += (double)(p * t);
            acc[2 + 3 * (c - 1)] += (double)p;
            acc[3 + 3 * (c - 1)] += (double)t;
        }
    }
    for (int j = 0; j < S; j++) {
        double v = block_sum(acc[j], sh);
        if (threadIdx.x == 0) part[(b * gridDim.x + k) * S + j] = v;
    }
}

// out[b * (1 + S) + 0] = L_b, out[b * (1 + S) + 1 + j] = sum j of patch b, from its K partials.
// One block per patch.
extern "C" __global__ void clopa_loss_final(const double* part, double* out, int K, long long n,
                                            int C, double smooth) {
    __shared__ double sh[THREADS / 32];
    __shared__ double tot[MAX_SUMS];
    long long b = blockIdx.x;
    const int S = SUMS(C);
    for (int j = 0; j < S; j++) {
        double v = 0.0;
        for (int k = threadIdx.x; k < K; k += THREADS) v += part[(b * K + k) * S + j];
        v = block_sum(v, sh);
        if (threadIdx.x == 0) tot[j] = v;
    }
    if (threadIdx.x == 0) {
        double dice = 0.0;
        for (int c = 1; c < C; c++) {
            double i = tot[1 + 3 * (c - 1)], p = tot[2 + 3 * (c - 1)], t = tot[3 + 3 * (c - 1)];
            dice += (i * 2.0 + smooth) / ((p + t) + smooth);
        }
        dice /= (double)(C - 1);
        double* o = out + b * (1 + S);
        o[0] = (-dice + 1.0) + tot[0] / (double)n;
        for (int j = 0; j < S; j++) o[1 + j] = tot[j];
    }
}

// dlogits of L_b times the upstream gradient g[b * (1 + S)] (its other columns, the sums, carry
// none), with res = the forward's out:
// dL/dlogp_k = g * ([k >= 1] (dL/dp_k) p_k - [k = label] / n),
// dL/dp_k = -(2 t_k / D_k - (2 I_k + s) / D_k^2) / (C - 1), D_k = P_k + T_k + s,
// dlogit_j = dlogp_j - p_j sum_k dlogp_k.
extern "C" __global__ void clopa_loss_bwd(const float* logits, const float* labels,
                                          const double* res, const double* grad, float* dl,
                                          long long n, int C, double smooth) {
    long long b = blockIdx.y, k = blockIdx.x;
    const int S = SUMS(C);
    const double* r = res + b * (1 + S);
    double g = grad[b * (1 + S)];
    // per foreground class: the coefficients of t_k and of 1 in dL/dp_k, times g
    float a[MAX_C], c0[MAX_C];
    for (int c = 1; c < C; c++) {
        double i = r[1 + 1 + 3 * (c - 1)], p = r[1 + 2 + 3 * (c - 1)], t = r[1 + 3 + 3 * (c - 1)];
        double d = (p + t) + smooth;
        a[c] = (float)(-g * (2.0 / d) / (double)(C - 1));
        c0[c] = (float)(g * ((i * 2.0 + smooth) / (d * d)) / (double)(C - 1));
    }
    float ce = (float)(-g / (double)n);
    float logp[MAX_C], dlogp[MAX_C];
    for (long long v = k * CHUNK + threadIdx.x; v < min((k + 1) * CHUNK, n); v += THREADS) {
        int cls = voxel(logits, labels, b, v, n, C, logp);
        float sum = 0.0f;
        for (int c = 0; c < C; c++) {
            float d = 0.0f;
            if (c >= 1) d = (cls == c ? a[c] + c0[c] : c0[c]) * expf(logp[c]);
            if (c == cls) d += ce;
            dlogp[c] = d;
            sum += d;
        }
        for (int c = 0; c < C; c++) dl[(b * C + c) * n + v] = dlogp[c] - expf(logp[c]) * sum;
    }
}
