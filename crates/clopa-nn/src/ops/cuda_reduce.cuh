// The block reduction of the fused kernels (cuda_norm.cu, cuda_loss.cu), which include it after
// defining THREADS (threads per block: a multiple of 32, at most 1024).
#pragma once

// The sum of v over the block, in thread 0 (the others get garbage).
__device__ __forceinline__ double block_sum(double v, double* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // (shared may still be read from an earlier call)
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = 0.0;
    if (warp == 0) {
        if (lane < THREADS / 32) v = shared[lane];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
    }
    return v;
}
