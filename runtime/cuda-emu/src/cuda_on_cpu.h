// Just enough of CUDA C for effnet's kernels to compile as C++ and run on the CPU: the
// qualifiers vanish, the built-in thread coordinates are globals the launcher sets, and
// `effnet_launch` runs every thread of a 1-D grid in order, one after another. What this cannot
// show: races between threads, memory ordering, shared memory, warp-level behaviour and speed.
#pragma once
// expf, fmaxf, fminf in the global namespace, as CUDA has them.
#include <math.h>
#include <string.h>

struct effnet_dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// Per host thread: tests launch kernels from several threads at once.
static thread_local effnet_dim3 blockIdx, threadIdx, blockDim, gridDim;

// CUDA's bit casts between float and unsigned int.
static inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, sizeof u);
    return u;
}

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__

// Runs `kernel()` once per thread of a `grid x block` 1-D launch.
template <class Kernel>
static void effnet_launch(unsigned grid, unsigned block, Kernel kernel) {
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; b++) {
        blockIdx.x = b;
        for (unsigned t = 0; t < block; t++) {
            threadIdx.x = t;
            kernel();
        }
    }
}
