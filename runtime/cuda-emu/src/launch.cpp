// One C entry point per kernel: the launch of a 1-D grid over the kernel's arguments.
#include "cuda_on_cpu.h"
#include "kernels.cu"

extern "C" {

void emu_depthwise_nhwc(unsigned grid, unsigned block, const float* x, const float* w,
                        const float* scale, const float* shift, float* y, int n, int h, int wd,
                        int c, int k, int stride, int dil, int pad_top, int pad_left, int oh,
                        int ow, int act) {
    effnet_launch(grid, block, [&] {
        effnet_depthwise_nhwc(x, w, scale, shift, y, n, h, wd, c, k, stride, dil, pad_top,
                              pad_left, oh, ow, act);
    });
}

void emu_affine_act_nhwc(unsigned grid, unsigned block, const float* z, const float* scale,
                         const float* shift, const float* residual, float* y, long total, int c,
                         int act) {
    effnet_launch(grid, block,
                  [&] { effnet_affine_act_nhwc(z, scale, shift, residual, y, total, c, act); });
}

void emu_channel_means_nhwc(unsigned grid, unsigned block, const float* x, float* means, int n,
                            long p, int c) {
    effnet_launch(grid, block, [&] { effnet_channel_means_nhwc(x, means, n, p, c); });
}

void emu_gate_channels_nhwc(unsigned grid, unsigned block, const float* x, const float* gate,
                            float* y, int n, long p, int c) {
    effnet_launch(grid, block, [&] { effnet_gate_channels_nhwc(x, gate, y, n, p, c); });
}
}
