// effnet's CUDA kernels for the layer operations of the cuda plans (inference and the training
// step), on NHWC f32 maps.
//
// One source, two compilers: on a GPU machine NVRTC compiles it at run time (so the PTX always
// matches the driver: PTX from a newer toolkit than the driver's is refused with
// CUDA_ERROR_UNSUPPORTED_PTX_VERSION), and in `cargo test` the crate `effnet-cuda-emu`
// compiles it for the CPU under a header that runs the grid as loops, to compare every kernel,
// and the plans' walks over them, with the CPU kernels (`runtime/src/ops/cpu`). That check
// sees the arithmetic and the indexing; it cannot see races, memory ordering or speed, which
// only a GPU run shows.
//
// No #include: NVRTC then needs no toolkit headers. Every kernel is one thread per output
// element (per (image, channel) for the squeeze's reductions, per (chunk of rows, column) for
// the batch reductions), a 1-D grid, `long` indices (a V2-S activation at batch 32 and 384 px
// has 2^30 elements), and no shared memory or atomics: the batch reductions write one partial
// sum per chunk of rows in f64 and a second kernel adds the chunks in order, so every run
// sums in the same order (reproducible) and the emulator runs them as they are.
//
// Calling convention (what `ops.rs`'s one launcher passes): the inputs, then the output, then
// the scalars. Per-channel parameters travel packed as one `[rows, c]` array. The inference
// kernels that read or write maps have a `_bf16` twin on bf16 maps (the `--dtype bf16`
// cuda-fused plan and the `--precision bf16` cuda-step plan), and those of inference an
// `_f16` twin on f16 maps (`--dtype f16`). Each entry point is written out,
// not made by a macro: the entries' declarations are what `effnet-cuda-emu`'s build script
// and `runtime/tests/cuda_launches.rs` read to check every launch's arguments.
//
// Activation codes follow `crate::ops::Act`: 0 identity, 1 SiLU, 2 ReLU, 3 ReLU6, 4 hard-swish,
// 5 GELU (the exact, erf form).

__device__ __forceinline__ float effnet_act(float v, int act) {
    switch (act) {
    case 1: return v / (1.0f + expf(-v));
    case 2: return fmaxf(v, 0.0f);
    case 3: return fminf(fmaxf(v, 0.0f), 6.0f);
    case 4: return v * fminf(fmaxf(v + 3.0f, 0.0f), 6.0f) / 6.0f;
    case 5: return 0.5f * v * (1.0f + erff(v * 0.70710678f));
    default: return v;
    }
}

// The activation's derivative at `v`, as the CPU step takes it (ReLU's is 0 at 0, hard-swish's
// the left one at -3 and the right one at 3).
__device__ __forceinline__ float effnet_act_grad(float v, int act) {
    switch (act) {
    case 1: {
        float s = 1.0f / (1.0f + expf(-v));
        return s * (1.0f + v * (1.0f - s));
    }
    case 2: return v > 0.0f ? 1.0f : 0.0f;
    case 3: return (v > 0.0f && v < 6.0f) ? 1.0f : 0.0f;
    case 4:
        if (v <= -3.0f) return 0.0f;
        if (v >= 3.0f) return 1.0f;
        return (2.0f * v + 3.0f) * (1.0f / 6.0f);
    case 5: return 0.5f * (1.0f + erff(v * 0.70710678f)) + v * 0.39894228f * expf(-0.5f * v * v);
    default: return 1.0f;
    }
}

__device__ __forceinline__ long effnet_index() {
    return (long)blockIdx.x * (long)blockDim.x + (long)threadIdx.x;
}

// Maps are f32 or bf16 (`effnet_bf16`, the upper half of an f32's bits: no header needed);
// arithmetic is always f32, parameters always f32. Loads widen exactly; stores round to
// nearest even (as `half::bf16::from_f32` and CUDA's __float2bfloat16 do), NaN staying NaN.
typedef unsigned short effnet_bf16;

__device__ __forceinline__ float effnet_load(const float* p, long i) { return p[i]; }

__device__ __forceinline__ float effnet_load(const effnet_bf16* p, long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}

__device__ __forceinline__ void effnet_store(float* p, long i, float v) { p[i] = v; }

__device__ __forceinline__ void effnet_store(effnet_bf16* p, long i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        p[i] = (effnet_bf16)((u >> 16) | 0x40u);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (effnet_bf16)(u >> 16);
}

// f16 maps (`--dtype f16` inference): IEEE half precision, converted by hand (no header).
// A struct, not a typedef of `unsigned short`, so its loads and stores are overloads of their
// own. Loads are exact (subnormals, infinities and NaN included); stores round to nearest
// even, overflow to infinity at 65520 as `half::f16::from_f32` and CUDA's __float2half_rn do.
struct effnet_f16 {
    unsigned short bits;
};

__device__ __forceinline__ float effnet_load(const effnet_f16* p, long i) {
    unsigned int h = p[i].bits;
    unsigned int sign = (h & 0x8000u) << 16;
    unsigned int exp = (h >> 10) & 0x1fu;
    unsigned int man = h & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (man << 13));
    if (exp != 0u) return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
    // Zero or subnormal: man * 2^-24, exact in f32.
    float v = (float)man * 5.9604644775390625e-8f;
    return sign ? -v : v;
}

__device__ __forceinline__ void effnet_store(effnet_f16* p, long i, float v) {
    unsigned int u = __float_as_uint(v);
    unsigned int sign = (u >> 16) & 0x8000u;
    unsigned int a = u & 0x7fffffffu;
    unsigned int h;
    if (a > 0x7f800000u) {
        h = 0x7e00u | ((a >> 13) & 0x3ffu);  // NaN stays NaN (quiet)
    } else if (a >= 0x477ff000u) {
        h = 0x7c00u;  // 65520 and above (infinity included) round to infinity
    } else if (a >= 0x38800000u) {
        // A normal f16: rebias the exponent (127 -> 15), round the 13 dropped bits to even.
        unsigned int r = a - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        h = r >> 13;
    } else {
        // Below 2^-14: a multiple of 2^-24; the scaling is exact, rintf rounds to even.
        h = (unsigned int)rintf(__uint_as_float(a) * 16777216.0f);
    }
    p[i].bits = (unsigned short)(sign | h);
}

// ---------------------------------------------------------------------------------------------
// Convolutions. A window is (k, stride, dil, pad_top, pad_left, oh, ow): the padding may be
// asymmetric (TensorFlow "same" pads the extra row and column after), given by its top and
// left sides; the taps are `dil` pixels apart (the dilation an `output_stride` brings).

// Depthwise convolution, `y[b, oy, ox, ch] = act(scale[ch] * sum_k x * w + shift[ch])` with
// `affine = (scale, shift)` (the eval-mode BatchNorm and any convolution bias folded in; ones
// and the bias in the training step, whose BatchNorm follows). `w` is timm's `[C, 1, k, k]`.
template <typename T>
__device__ __forceinline__ void effnet_depthwise(
    const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ affine,
    T* __restrict__ y, int n, int h, int wd, int c, int k, int stride, int dil, int pad_top,
    int pad_left, int oh, int ow, int act) {
    long i = effnet_index();
    long total = (long)n * oh * ow * c;
    if (i >= total) return;
    int ch = (int)(i % c);
    long p = i / c;
    int ox = (int)(p % ow);
    p /= ow;
    int oy = (int)(p % oh);
    int b = (int)(p / oh);
    float acc = 0.0f;
    for (int ky = 0; ky < k; ky++) {
        int iy = oy * stride - pad_top + ky * dil;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < k; kx++) {
            int ix = ox * stride - pad_left + kx * dil;
            if (ix < 0 || ix >= wd) continue;
            acc += effnet_load(x, (((long)b * h + iy) * wd + ix) * c + ch) *
                   w[((long)ch * k + ky) * k + kx];
        }
    }
    effnet_store(y, i, effnet_act(acc * affine[ch] + affine[c + ch], act));
}

extern "C" __global__ void effnet_depthwise_nhwc(
    const float* x, const float* w, const float* affine, float* y, int n, int h, int wd, int c,
    int k, int stride, int dil, int pad_top, int pad_left, int oh, int ow, int act) {
    effnet_depthwise(x, w, affine, y, n, h, wd, c, k, stride, dil, pad_top, pad_left, oh, ow,
                     act);
}

extern "C" __global__ void effnet_depthwise_nhwc_bf16(
    const effnet_bf16* x, const float* w, const float* affine, effnet_bf16* y, int n, int h,
    int wd, int c, int k, int stride, int dil, int pad_top, int pad_left, int oh, int ow,
    int act) {
    effnet_depthwise(x, w, affine, y, n, h, wd, c, k, stride, dil, pad_top, pad_left, oh, ow,
                     act);
}

extern "C" __global__ void effnet_depthwise_nhwc_f16(
    const effnet_f16* x, const float* w, const float* affine, effnet_f16* y, int n, int h,
    int wd, int c, int k, int stride, int dil, int pad_top, int pad_left, int oh, int ow,
    int act) {
    effnet_depthwise(x, w, affine, y, n, h, wd, c, k, stride, dil, pad_top, pad_left, oh, ow,
                     act);
}

// The input gradient of a depthwise convolution: `dx[b, iy, ix, ch] = sum over the outputs
// whose window covers (iy, ix) of dy * w`, gathered per input element (no atomics).
template <typename T>
__device__ __forceinline__ void effnet_depthwise_input_grad_nhwc_body(
    const T* __restrict__ dy, const float* __restrict__ w, T* __restrict__ dx, int n, int h,
    int wd, int c, int k, int stride, int dil, int pad_top, int pad_left, int oh, int ow) {
    long i = effnet_index();
    long total = (long)n * h * wd * c;
    if (i >= total) return;
    int ch = (int)(i % c);
    long p = i / c;
    int ix = (int)(p % wd);
    p /= wd;
    int iy = (int)(p % h);
    int b = (int)(p / h);
    float acc = 0.0f;
    for (int ky = 0; ky < k; ky++) {
        int ty = iy + pad_top - ky * dil;
        if (ty < 0 || ty % stride != 0) continue;
        int oy = ty / stride;
        if (oy >= oh) continue;
        for (int kx = 0; kx < k; kx++) {
            int tx = ix + pad_left - kx * dil;
            if (tx < 0 || tx % stride != 0) continue;
            int ox = tx / stride;
            if (ox >= ow) continue;
            acc += effnet_load(dy, (((long)b * oh + oy) * ow + ox) * c + ch) *
                   w[((long)ch * k + ky) * k + kx];
        }
    }
    effnet_store(dx, i, acc);
}

extern "C" __global__ void effnet_depthwise_input_grad_nhwc(
    const float* dy, const float* w, float* dx, int n, int h, int wd, int c, int k, int stride,
    int dil, int pad_top, int pad_left, int oh, int ow) {
    effnet_depthwise_input_grad_nhwc_body(dy, w, dx, n, h, wd, c, k, stride, dil, pad_top,
                                          pad_left, oh, ow);
}

extern "C" __global__ void effnet_depthwise_input_grad_nhwc_bf16(
    const effnet_bf16* dy, const float* w, effnet_bf16* dx, int n, int h, int wd, int c, int k,
    int stride, int dil, int pad_top, int pad_left, int oh, int ow) {
    effnet_depthwise_input_grad_nhwc_body(dy, w, dx, n, h, wd, c, k, stride, dil, pad_top,
                                          pad_left, oh, ow);
}

// The weight gradient of a depthwise convolution, one partial sum per chunk of output pixels:
// `partial[chunk, tap, ch] = sum over the chunk's pixels of dy * x at the tap` (f64), for
// `effnet_sum_chunks` to add up.
template <typename T>
__device__ __forceinline__ void effnet_depthwise_weight_grad_partial_nhwc_body(
    const T* __restrict__ x, const T* __restrict__ dy, double* __restrict__ partial, int n, int h,
    int wd, int c, int k, int stride, int dil, int pad_top, int pad_left, int oh, int ow,
    long rows_per_chunk, int chunks) {
    long i = effnet_index();
    long taps = (long)k * k;
    if (i >= (long)chunks * taps * c) return;
    int ch = (int)(i % c);
    long p = i / c;
    int tap = (int)(p % taps);
    long chunk = p / taps;
    int ky = tap / k, kx = tap % k;
    long rows = (long)n * oh * ow;
    long first = chunk * rows_per_chunk;
    long last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
    double acc = 0.0;
    for (long m = first; m < last; m++) {
        int ox = (int)(m % ow);
        long q = m / ow;
        int oy = (int)(q % oh);
        int b = (int)(q / oh);
        int iy = oy * stride - pad_top + ky * dil;
        int ix = ox * stride - pad_left + kx * dil;
        if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
        acc += (double)(effnet_load(dy, m * c + ch) *
                        effnet_load(x, (((long)b * h + iy) * wd + ix) * c + ch));
    }
    partial[i] = acc;
}

extern "C" __global__ void effnet_depthwise_weight_grad_partial_nhwc(
    const float* x, const float* dy, double* partial, int n, int h, int wd, int c, int k,
    int stride, int dil, int pad_top, int pad_left, int oh, int ow, long rows_per_chunk,
    int chunks) {
    effnet_depthwise_weight_grad_partial_nhwc_body(x, dy, partial, n, h, wd, c, k, stride, dil,
                                                   pad_top, pad_left, oh, ow, rows_per_chunk,
                                                   chunks);
}

extern "C" __global__ void effnet_depthwise_weight_grad_partial_nhwc_bf16(
    const effnet_bf16* x, const effnet_bf16* dy, double* partial, int n, int h, int wd, int c,
    int k, int stride, int dil, int pad_top, int pad_left, int oh, int ow, long rows_per_chunk,
    int chunks) {
    effnet_depthwise_weight_grad_partial_nhwc_body(x, dy, partial, n, h, wd, c, k, stride, dil,
                                                   pad_top, pad_left, oh, ow, rows_per_chunk,
                                                   chunks);
}

// A dense convolution's input patches as GEMM rows: `cols[m, (ky * k + kx) * c + ch]` is the
// input under tap (ky, kx) of output pixel m (zero in the padding), so that the convolution is
// `cols x w^T` with the weight in `[O, k, k, C]` order.
template <typename T>
__device__ __forceinline__ void effnet_im2col(
    const T* __restrict__ x, T* __restrict__ cols, int n, int h, int wd, int c, int k,
    int stride, int dil, int pad_top, int pad_left, int oh, int ow) {
    long i = effnet_index();
    long taps = (long)k * k;
    long total = (long)n * oh * ow * taps * c;
    if (i >= total) return;
    int ch = (int)(i % c);
    long p = i / c;
    int tap = (int)(p % taps);
    long m = p / taps;
    int ky = tap / k, kx = tap % k;
    int ox = (int)(m % ow);
    long q = m / ow;
    int oy = (int)(q % oh);
    int b = (int)(q / oh);
    int iy = oy * stride - pad_top + ky * dil;
    int ix = ox * stride - pad_left + kx * dil;
    effnet_store(cols, i,
                 (iy < 0 || iy >= h || ix < 0 || ix >= wd)
                     ? 0.0f
                     : effnet_load(x, (((long)b * h + iy) * wd + ix) * c + ch));
}

extern "C" __global__ void effnet_im2col_nhwc(
    const float* x, float* cols, int n, int h, int wd, int c, int k, int stride, int dil,
    int pad_top, int pad_left, int oh, int ow) {
    effnet_im2col(x, cols, n, h, wd, c, k, stride, dil, pad_top, pad_left, oh, ow);
}

extern "C" __global__ void effnet_im2col_nhwc_bf16(
    const effnet_bf16* x, effnet_bf16* cols, int n, int h, int wd, int c, int k, int stride,
    int dil, int pad_top, int pad_left, int oh, int ow) {
    effnet_im2col(x, cols, n, h, wd, c, k, stride, dil, pad_top, pad_left, oh, ow);
}

extern "C" __global__ void effnet_im2col_nhwc_f16(
    const effnet_f16* x, effnet_f16* cols, int n, int h, int wd, int c, int k, int stride,
    int dil, int pad_top, int pad_left, int oh, int ow) {
    effnet_im2col(x, cols, n, h, wd, c, k, stride, dil, pad_top, pad_left, oh, ow);
}

// The adjoint of `effnet_im2col_nhwc`: `dx[b, iy, ix, ch]` is the sum of the patch entries
// that read (iy, ix, ch), gathered per input element.
template <typename T>
__device__ __forceinline__ void effnet_col2im_nhwc_body(
    const T* __restrict__ cols, T* __restrict__ dx, int n, int h, int wd, int c, int k,
    int stride, int dil, int pad_top, int pad_left, int oh, int ow) {
    long i = effnet_index();
    long total = (long)n * h * wd * c;
    if (i >= total) return;
    int ch = (int)(i % c);
    long p = i / c;
    int ix = (int)(p % wd);
    p /= wd;
    int iy = (int)(p % h);
    int b = (int)(p / h);
    long taps = (long)k * k;
    float acc = 0.0f;
    for (int ky = 0; ky < k; ky++) {
        int ty = iy + pad_top - ky * dil;
        if (ty < 0 || ty % stride != 0) continue;
        int oy = ty / stride;
        if (oy >= oh) continue;
        for (int kx = 0; kx < k; kx++) {
            int tx = ix + pad_left - kx * dil;
            if (tx < 0 || tx % stride != 0) continue;
            int ox = tx / stride;
            if (ox >= ow) continue;
            long m = ((long)b * oh + oy) * ow + ox;
            acc += effnet_load(cols, (m * taps + (long)ky * k + kx) * c + ch);
        }
    }
    effnet_store(dx, i, acc);
}

extern "C" __global__ void effnet_col2im_nhwc(
    const float* cols, float* dx, int n, int h, int wd, int c, int k, int stride, int dil,
    int pad_top, int pad_left, int oh, int ow) {
    effnet_col2im_nhwc_body(cols, dx, n, h, wd, c, k, stride, dil, pad_top, pad_left, oh, ow);
}

extern "C" __global__ void effnet_col2im_nhwc_bf16(
    const effnet_bf16* cols, effnet_bf16* dx, int n, int h, int wd, int c, int k, int stride,
    int dil, int pad_top, int pad_left, int oh, int ow) {
    effnet_col2im_nhwc_body(cols, dx, n, h, wd, c, k, stride, dil, pad_top, pad_left, oh, ow);
}

// ---------------------------------------------------------------------------------------------
// BatchNorm and activation.

// The epilogue of a convolution run as a GEMM: `y = act(z * scale[ch] + shift[ch])` with
// `affine = (scale, shift)`, over `total` elements of `c` channels, then `+ residual` (a
// block's skip connection) in the same pass when one is given.
template <typename T>
__device__ __forceinline__ void effnet_affine_act(
    const T* __restrict__ z, const float* __restrict__ affine, const T* __restrict__ residual,
    T* __restrict__ y, long total, int c, int act) {
    long i = effnet_index();
    if (i >= total) return;
    int ch = (int)(i % c);
    float v = effnet_act(effnet_load(z, i) * affine[ch] + affine[c + ch], act);
    if (residual) v += effnet_load(residual, i);
    effnet_store(y, i, v);
}

extern "C" __global__ void effnet_affine_act_nhwc(
    const float* z, const float* affine, float* y, long total, int c, int act) {
    effnet_affine_act(z, affine, (const float*)0, y, total, c, act);
}

extern "C" __global__ void effnet_affine_act_nhwc_bf16(
    const effnet_bf16* z, const float* affine, effnet_bf16* y, long total, int c, int act) {
    effnet_affine_act(z, affine, (const effnet_bf16*)0, y, total, c, act);
}

extern "C" __global__ void effnet_affine_act_nhwc_f16(
    const effnet_f16* z, const float* affine, effnet_f16* y, long total, int c, int act) {
    effnet_affine_act(z, affine, (const effnet_f16*)0, y, total, c, act);
}

extern "C" __global__ void effnet_affine_act_residual_nhwc(
    const float* z, const float* affine, const float* residual, float* y, long total, int c,
    int act) {
    effnet_affine_act(z, affine, residual, y, total, c, act);
}

extern "C" __global__ void effnet_affine_act_residual_nhwc_bf16(
    const effnet_bf16* z, const float* affine, const effnet_bf16* residual, effnet_bf16* y,
    long total, int c, int act) {
    effnet_affine_act(z, affine, residual, y, total, c, act);
}

extern "C" __global__ void effnet_affine_act_residual_nhwc_f16(
    const effnet_f16* z, const float* affine, const effnet_f16* residual, effnet_f16* y,
    long total, int c, int act) {
    effnet_affine_act(z, affine, residual, y, total, c, act);
}

// Per-column sums of an `[rows, c]` matrix and of its squares, one partial per chunk of
// `rows_per_chunk` rows: `partial[chunk, 0, ch]` and `partial[chunk, 1, ch]` (f64).
template <typename T>
__device__ __forceinline__ void effnet_column_moments_partial_body(
    const T* __restrict__ z, double* __restrict__ partial, long rows, int c, long rows_per_chunk,
    int chunks) {
    long i = effnet_index();
    if (i >= (long)chunks * c) return;
    int ch = (int)(i % c);
    long chunk = i / c;
    long first = chunk * rows_per_chunk;
    long last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
    double s = 0.0, ss = 0.0;
    for (long m = first; m < last; m++) {
        double v = (double)effnet_load(z, m * c + ch);
        s += v;
        ss += v * v;
    }
    partial[(chunk * 2) * c + ch] = s;
    partial[(chunk * 2 + 1) * c + ch] = ss;
}

extern "C" __global__ void effnet_column_moments_partial(
    const float* z, double* partial, long rows, int c, long rows_per_chunk, int chunks) {
    effnet_column_moments_partial_body(z, partial, rows, c, rows_per_chunk, chunks);
}

extern "C" __global__ void effnet_column_moments_partial_bf16(
    const effnet_bf16* z, double* partial, long rows, int c, long rows_per_chunk, int chunks) {
    effnet_column_moments_partial_body(z, partial, rows, c, rows_per_chunk, chunks);
}

// A train-mode BatchNorm's statistics from the moments' partials of `count` rows:
// `out = (mean, 1 / sqrt(var + eps), unbiased var)`, each `[c]`, the variance the biased one
// (what normalizes), the unbiased one what updates the running variance (PyTorch's rule).
extern "C" __global__ void effnet_batch_stats(
    const double* __restrict__ partial, float* __restrict__ out, int chunks, int c, long count,
    double eps) {
    long i = effnet_index();
    if (i >= c) return;
    double s = 0.0, ss = 0.0;
    for (int chunk = 0; chunk < chunks; chunk++) {
        s += partial[((long)chunk * 2) * c + i];
        ss += partial[((long)chunk * 2 + 1) * c + i];
    }
    double m = (double)count;
    double mean = s / m;
    double var = ss / m - mean * mean;
    if (var < 0.0) var = 0.0;
    out[i] = (float)mean;
    out[c + i] = (float)(1.0 / sqrt(var + eps));
    out[2 * c + i] = (float)(count > 1 ? var * m / (m - 1.0) : var);
}

// The gradient at the activation's input of a BatchNorm + activation, `g = d * act'(xhat *
// gamma + beta)` with `xhat = (z - mean) * inv_std`, `bn = (mean, inv_std, gamma, beta)`.
template <typename T>
__device__ __forceinline__ float effnet_bn_act_grad(const T* d, const T* z, const float* bn,
                                                    long i, int c, int act, float* xhat) {
    int ch = (int)(i % c);
    float xh = (effnet_load(z, i) - bn[ch]) * bn[c + ch];
    *xhat = xh;
    return effnet_load(d, i) * effnet_act_grad(xh * bn[2 * c + ch] + bn[3 * c + ch], act);
}

// The BatchNorm parameters' gradients, one partial per chunk of rows: `partial[chunk, 0, ch]
// = sum g` (beta's) and `partial[chunk, 1, ch] = sum g * xhat` (gamma's), f64.
template <typename T>
__device__ __forceinline__ void effnet_bn_act_grad_partial_body(
    const T* __restrict__ d, const T* __restrict__ z, const float* __restrict__ bn,
    double* __restrict__ partial, long rows, int c, long rows_per_chunk, int chunks, int act) {
    long i = effnet_index();
    if (i >= (long)chunks * c) return;
    int ch = (int)(i % c);
    long chunk = i / c;
    long first = chunk * rows_per_chunk;
    long last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
    double db = 0.0, dw = 0.0;
    for (long m = first; m < last; m++) {
        float xhat;
        float g = effnet_bn_act_grad(d, z, bn, m * c + ch, c, act, &xhat);
        db += (double)g;
        dw += (double)(g * xhat);
    }
    partial[(chunk * 2) * c + ch] = db;
    partial[(chunk * 2 + 1) * c + ch] = dw;
}

extern "C" __global__ void effnet_bn_act_grad_partial(
    const float* d, const float* z, const float* bn, double* partial, long rows, int c,
    long rows_per_chunk, int chunks, int act) {
    effnet_bn_act_grad_partial_body(d, z, bn, partial, rows, c, rows_per_chunk, chunks, act);
}

extern "C" __global__ void effnet_bn_act_grad_partial_bf16(
    const effnet_bf16* d, const effnet_bf16* z, const float* bn, double* partial, long rows,
    int c, long rows_per_chunk, int chunks, int act) {
    effnet_bn_act_grad_partial_body(d, z, bn, partial, rows, c, rows_per_chunk, chunks, act);
}

// The gradient at the BatchNorm's input: with batch statistics (`eval` 0) `k * (m * g - db -
// xhat * dw)`, `k = gamma * inv_std / m` over the `m = count` rows the statistics and the
// sums `db`, `dw` cover (this map's `total / c`, or with SyncBatchNorm every rank's); with
// running ones (`eval` 1, a frozen BatchNorm) the fixed affine map's `g * gamma * inv_std`.
// `bn = (mean, inv_std, gamma, beta, db, dw)`.
template <typename T>
__device__ __forceinline__ void effnet_bn_act_input_grad_body(
    const T* __restrict__ d, const T* __restrict__ z, const float* __restrict__ bn,
    T* __restrict__ dz, long total, int c, int act, int eval, long count) {
    long i = effnet_index();
    if (i >= total) return;
    int ch = (int)(i % c);
    float xhat;
    float g = effnet_bn_act_grad(d, z, bn, i, c, act, &xhat);
    float gamma_inv = bn[2 * c + ch] * bn[c + ch];
    if (eval) {
        effnet_store(dz, i, g * gamma_inv);
        return;
    }
    float m = (float)count;
    effnet_store(dz, i, gamma_inv / m * (m * g - bn[4 * c + ch] - xhat * bn[5 * c + ch]));
}

extern "C" __global__ void effnet_bn_act_input_grad(
    const float* d, const float* z, const float* bn, float* dz, long total, int c, int act,
    int eval, long count) {
    effnet_bn_act_input_grad_body(d, z, bn, dz, total, c, act, eval, count);
}

extern "C" __global__ void effnet_bn_act_input_grad_bf16(
    const effnet_bf16* d, const effnet_bf16* z, const float* bn, effnet_bf16* dz, long total,
    int c, int act, int eval, long count) {
    effnet_bn_act_input_grad_body(d, z, bn, dz, total, c, act, eval, count);
}

// The sum over chunks of `partial[chunk, j]` (f64), for each of `width` columns, in chunk
// order.
extern "C" __global__ void effnet_sum_chunks(
    const double* __restrict__ partial, float* __restrict__ out, int chunks, long width) {
    long j = effnet_index();
    if (j >= width) return;
    double acc = 0.0;
    for (int chunk = 0; chunk < chunks; chunk++) acc += partial[(long)chunk * width + j];
    out[j] = (float)acc;
}

// ---------------------------------------------------------------------------------------------
// Squeeze-excitation and pooling, on `[n, p, c]` maps (p pixels per image).

// Per-(image, channel) means: the squeeze of a squeeze-excitation and the global average
// pooling before the classifier, f32 whatever the map's type. Summed in pixel order, like
// the CPU kernel.
template <typename T>
__device__ __forceinline__ void effnet_channel_means(
    const T* __restrict__ x, float* __restrict__ means, int n, long p, int c) {
    long i = effnet_index();
    if (i >= (long)n * c) return;
    int ch = (int)(i % c);
    long b = i / c;
    long at = b * p * c + ch;
    float acc = 0.0f;
    for (long q = 0; q < p; q++) acc += effnet_load(x, at + q * c);
    means[i] = acc / (float)p;
}

extern "C" __global__ void effnet_channel_means_nhwc(
    const float* x, float* means, int n, long p, int c) {
    effnet_channel_means(x, means, n, p, c);
}

extern "C" __global__ void effnet_channel_means_nhwc_bf16(
    const effnet_bf16* x, float* means, int n, long p, int c) {
    effnet_channel_means(x, means, n, p, c);
}

extern "C" __global__ void effnet_channel_means_nhwc_f16(
    const effnet_f16* x, float* means, int n, long p, int c) {
    effnet_channel_means(x, means, n, p, c);
}

// Per-(image, channel) dot products `sum_q x * y`: the gradient of a squeeze-excitation's gate
// (`x` the gradient at the gated map, `y` the map it gated).
template <typename T>
__device__ __forceinline__ void effnet_channel_dots_nhwc_body(
    const T* __restrict__ x, const T* __restrict__ y, float* __restrict__ dots, int n, long p,
    int c) {
    long i = effnet_index();
    if (i >= (long)n * c) return;
    int ch = (int)(i % c);
    long b = i / c;
    long at = b * p * c + ch;
    float acc = 0.0f;
    for (long q = 0; q < p; q++) acc += effnet_load(x, at + q * c) * effnet_load(y, at + q * c);
    dots[i] = acc;
}

extern "C" __global__ void effnet_channel_dots_nhwc(
    const float* x, const float* y, float* dots, int n, long p, int c) {
    effnet_channel_dots_nhwc_body(x, y, dots, n, p, c);
}

extern "C" __global__ void effnet_channel_dots_nhwc_bf16(
    const effnet_bf16* x, const effnet_bf16* y, float* dots, int n, long p, int c) {
    effnet_channel_dots_nhwc_body(x, y, dots, n, p, c);
}

// The excitation: `y[b, q, ch] = x[b, q, ch] * gate[b, ch]` (f32 gates).
template <typename T>
__device__ __forceinline__ void effnet_gate_channels(
    const T* __restrict__ x, const float* __restrict__ gate, T* __restrict__ y, int n, long p,
    int c) {
    long i = effnet_index();
    if (i >= (long)n * p * c) return;
    int ch = (int)(i % c);
    long b = i / (p * c);
    effnet_store(y, i, effnet_load(x, i) * gate[b * c + ch]);
}

extern "C" __global__ void effnet_gate_channels_nhwc(
    const float* x, const float* gate, float* y, int n, long p, int c) {
    effnet_gate_channels(x, gate, y, n, p, c);
}

extern "C" __global__ void effnet_gate_channels_nhwc_bf16(
    const effnet_bf16* x, const float* gate, effnet_bf16* y, int n, long p, int c) {
    effnet_gate_channels(x, gate, y, n, p, c);
}

extern "C" __global__ void effnet_gate_channels_nhwc_f16(
    const effnet_f16* x, const float* gate, effnet_f16* y, int n, long p, int c) {
    effnet_gate_channels(x, gate, y, n, p, c);
}

// The gradient at a squeeze-excitation's input: `y[b, q, ch] = x * gate[b, ch] + add[b, ch]`
// (the gated path, and the squeeze's gradient spread evenly over the pixels).
template <typename T>
__device__ __forceinline__ void effnet_gate_add_nhwc_body(
    const T* __restrict__ x, const float* __restrict__ gate, const float* __restrict__ add,
    T* __restrict__ y, int n, long p, int c) {
    long i = effnet_index();
    if (i >= (long)n * p * c) return;
    int ch = (int)(i % c);
    long b = i / (p * c);
    effnet_store(y, i, effnet_load(x, i) * gate[b * c + ch] + add[b * c + ch]);
}

extern "C" __global__ void effnet_gate_add_nhwc(
    const float* x, const float* gate, const float* add, float* y, int n, long p, int c) {
    effnet_gate_add_nhwc_body(x, gate, add, y, n, p, c);
}

extern "C" __global__ void effnet_gate_add_nhwc_bf16(
    const effnet_bf16* x, const float* gate, const float* add, effnet_bf16* y, int n, long p,
    int c) {
    effnet_gate_add_nhwc_body(x, gate, add, y, n, p, c);
}

// The optimizers' updates and the EMA, one launch a tensor (candle's ops take about ten, each a
// pass over the tensor and an allocation): the weight `w`, its gradient `g` and its state
// `[slots, n]` in, `[1 + slots, n]` out = (the new weight, the new state). The formulas and
// their order of operations are `crate::train::optim`'s, in f32 with every scalar rounded to
// f32 first, as candle's tensor-scalar ops do, so both paths agree to rounding. The scalars
// come as doubles; a weight decay of 0 is the caller's way to exempt a tensor, a `grad_scale`
// of 1 leaves the gradient as it is (otherwise it is gradient clipping's factor).

__device__ __forceinline__ float effnet_scaled_grad(const float* g, long i, double grad_scale) {
    float v = g[i];
    if (grad_scale != 1.0) v = v * (float)grad_scale;
    return v;
}

// RMSProp in TensorFlow's form: `ms += (1 - decay) * (g^2 - ms)`, `step = lr * g / sqrt(ms +
// eps)`, with momentum `mom = momentum * mom + step`, `w -= mom`; the state is (ms) or (ms,
// mom).
extern "C" __global__ void effnet_rmsprop_tf_step(
    const float* w, const float* g, const float* state, float* out, long n, int with_momentum,
    double lr, double decay, double momentum, double eps, double weight_decay,
    double grad_scale) {
    long i = effnet_index();
    if (i >= n) return;
    float wi = w[i];
    float gi = effnet_scaled_grad(g, i, grad_scale);
    if (weight_decay != 0.0) gi = gi + wi * (float)weight_decay;
    float ms = state[i];
    ms = ms + (gi * gi - ms) * (float)(1.0 - decay);
    float step = (gi / sqrtf(ms + (float)eps)) * (float)lr;
    out[n + i] = ms;
    if (with_momentum) {
        float mom = state[n + i] * (float)momentum + step;
        out[2 * n + i] = mom;
        out[i] = wi - mom;
    } else {
        out[i] = wi - step;
    }
}

// AdamW (PyTorch's): decoupled decay `w *= 1 - lr * wd`, moments `m += (1 - b1) * (g - m)`,
// `v = b2 * v + (1 - b2) * g^2`, `w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)` with the
// bias corrections `bc = 1 - b^t` of this tensor's step; the state is (m, v).
extern "C" __global__ void effnet_adamw_step(
    const float* w, const float* g, const float* state, float* out, long n, double lr,
    double beta1, double beta2, double eps, double weight_decay, double bias_correction1,
    double bias_correction2, double grad_scale) {
    long i = effnet_index();
    if (i >= n) return;
    float wi = w[i];
    float gi = effnet_scaled_grad(g, i, grad_scale);
    if (weight_decay != 0.0) wi = wi * (float)(1.0 - lr * weight_decay);
    float m = state[i];
    float v = state[n + i];
    m = m + (gi - m) * (float)(1.0 - beta1);
    v = v * (float)beta2 + (gi * gi) * (float)(1.0 - beta2);
    float denom = sqrtf(v) * (float)(1.0 / sqrt(bias_correction2)) + (float)eps;
    out[i] = wi - (m / denom) * (float)(lr / bias_correction1);
    out[n + i] = m;
    out[2 * n + i] = v;
}

// SGD (PyTorch's, no dampening): with momentum `buf = momentum * buf + g` and the step `buf`,
// or Nesterov's `g + momentum * buf`; `w -= lr * step`. The state is (buf), or nothing: then
// `state` is not read (the caller passes the gradient there).
extern "C" __global__ void effnet_sgd_step(
    const float* w, const float* g, const float* state, float* out, long n, int with_momentum,
    int nesterov, double lr, double momentum, double weight_decay, double grad_scale) {
    long i = effnet_index();
    if (i >= n) return;
    float wi = w[i];
    float gi = effnet_scaled_grad(g, i, grad_scale);
    if (weight_decay != 0.0) gi = gi + wi * (float)weight_decay;
    float d = gi;
    if (with_momentum) {
        float buf = state[i] * (float)momentum + gi;
        out[n + i] = buf;
        d = nesterov ? gi + buf * (float)momentum : buf;
    }
    out[i] = wi - d * (float)lr;
}

// The exponential moving average of a tensor: `ema * d + current * (1 - d)`.
extern "C" __global__ void effnet_ema_step(
    const float* ema, const float* current, float* out, long n, double d) {
    long i = effnet_index();
    if (i >= n) return;
    out[i] = ema[i] * (float)d + current[i] * (float)(1.0 - d);
}
