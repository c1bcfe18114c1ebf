// effnet's CUDA kernels for the inference plan's layer operations, on NHWC f32 maps.
//
// One source, two compilers: on a GPU machine NVRTC compiles it at run time (so the PTX always
// matches the driver: PTX from a newer toolkit than the driver's is refused with
// CUDA_ERROR_UNSUPPORTED_PTX_VERSION), and in `cargo test` the crate `effnet-cuda-emu`
// compiles it for the CPU under a header that runs the grid as loops, to compare every kernel
// with the CPU kernels (`runtime/src/ops/cpu`). That check sees the arithmetic and the
// indexing; it cannot see races, memory ordering or speed, which only a GPU run shows.
//
// No #include: NVRTC then needs no toolkit headers. Every kernel is one thread per output
// element (or per (image, channel) for reductions), a 1-D grid, `long` indices (a V2-S
// activation at batch 32 and 384 px has 2^30 elements).
//
// Activation codes follow `crate::ops::Act`: 0 identity, 1 SiLU, 2 ReLU, 3 ReLU6, 4 hard-swish.

__device__ __forceinline__ float effnet_act(float v, int act) {
    switch (act) {
    case 1: return v / (1.0f + expf(-v));
    case 2: return fmaxf(v, 0.0f);
    case 3: return fminf(fmaxf(v, 0.0f), 6.0f);
    case 4: return v * fminf(fmaxf(v + 3.0f, 0.0f), 6.0f) / 6.0f;
    default: return v;
    }
}

__device__ __forceinline__ long effnet_index() {
    return (long)blockIdx.x * (long)blockDim.x + (long)threadIdx.x;
}

// Depthwise convolution, `y[b, oy, ox, ch] = act(scale[ch] * sum_k x * w + shift[ch])`, with
// the eval-mode BatchNorm (and any convolution bias) folded into `scale` / `shift`. `w` is
// timm's `[C, 1, k, k]`; the padding may be asymmetric (TensorFlow "same" pads the extra row
// and column after), given by its top and left sides; the taps are `dil` pixels apart (the
// dilation an `output_stride` brings; 1 otherwise).
extern "C" __global__ void effnet_depthwise_nhwc(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ scale,
    const float* __restrict__ shift, float* __restrict__ y, int n, int h, int wd, int c,
    int k, int stride, int dil, int pad_top, int pad_left, int oh, int ow, int act) {
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
            acc += x[(((long)b * h + iy) * wd + ix) * c + ch] * w[((long)ch * k + ky) * k + kx];
        }
    }
    y[i] = effnet_act(acc * scale[ch] + shift[ch], act);
}

// The epilogue of a convolution run as a GEMM: `y = act(z * scale[ch] + shift[ch])`, then
// `+ residual` when one is given (a block's skip connection), over `total` elements of `c`
// channels. `y` may be `z`.
extern "C" __global__ void effnet_affine_act_nhwc(
    const float* z, const float* __restrict__ scale, const float* __restrict__ shift,
    const float* residual, float* y, long total, int c, int act) {
    long i = effnet_index();
    if (i >= total) return;
    int ch = (int)(i % c);
    float v = effnet_act(z[i] * scale[ch] + shift[ch], act);
    if (residual) v += residual[i];
    y[i] = v;
}

// Per-(image, channel) means of an `[n, p, c]` map: the squeeze of a squeeze-excitation and
// the global average pooling before the classifier. Summed in pixel order, like the CPU kernel.
extern "C" __global__ void effnet_channel_means_nhwc(
    const float* __restrict__ x, float* __restrict__ means, int n, long p, int c) {
    long i = effnet_index();
    if (i >= (long)n * c) return;
    int ch = (int)(i % c);
    long b = i / c;
    const float* row = x + b * p * c + ch;
    float acc = 0.0f;
    for (long q = 0; q < p; q++) acc += row[q * c];
    means[i] = acc / (float)p;
}

// The excitation: `y[b, q, ch] = x[b, q, ch] * gate[b, ch]`; `y` may be `x`.
extern "C" __global__ void effnet_gate_channels_nhwc(
    const float* x, const float* __restrict__ gate, float* y, int n, long p, int c) {
    long i = effnet_index();
    if (i >= (long)n * p * c) return;
    int ch = (int)(i % c);
    long b = i / (p * c);
    y[i] = x[i] * gate[b * c + ch];
}
