// One C entry point per kernel: the launch of a 1-D grid over the kernel's arguments, in the
// kernel's own order (inputs, output, scalars).
#include "cuda_on_cpu.h"
#include "kernels.cu"

#define EMU_WINDOW_PARAMS                                                                      \
    int n, int h, int wd, int c, int k, int stride, int dil, int pad_top, int pad_left, int oh, \
        int ow
#define EMU_WINDOW_ARGS n, h, wd, c, k, stride, dil, pad_top, pad_left, oh, ow

extern "C" {

void emu_depthwise_nhwc(unsigned grid, unsigned block, const float* x, const float* w,
                        const float* affine, float* y, EMU_WINDOW_PARAMS, int act) {
    effnet_launch(grid, block,
                  [&] { effnet_depthwise_nhwc(x, w, affine, y, EMU_WINDOW_ARGS, act); });
}

void emu_depthwise_nhwc_bf16(unsigned grid, unsigned block, const effnet_bf16* x,
                             const float* w, const float* affine, effnet_bf16* y,
                             EMU_WINDOW_PARAMS, int act) {
    effnet_launch(grid, block,
                  [&] { effnet_depthwise_nhwc_bf16(x, w, affine, y, EMU_WINDOW_ARGS, act); });
}

void emu_depthwise_input_grad_nhwc(unsigned grid, unsigned block, const float* dy,
                                   const float* w, float* dx, EMU_WINDOW_PARAMS) {
    effnet_launch(grid, block,
                  [&] { effnet_depthwise_input_grad_nhwc(dy, w, dx, EMU_WINDOW_ARGS); });
}

void emu_depthwise_input_grad_nhwc_bf16(unsigned grid, unsigned block, const effnet_bf16* dy,
                                   const float* w, effnet_bf16* dx, EMU_WINDOW_PARAMS) {
    effnet_launch(grid, block,
                  [&] { effnet_depthwise_input_grad_nhwc_bf16(dy, w, dx, EMU_WINDOW_ARGS); });
}

void emu_depthwise_weight_grad_partial_nhwc(unsigned grid, unsigned block, const float* x,
                                            const float* dy, double* partial, EMU_WINDOW_PARAMS,
                                            long rows_per_chunk, int chunks) {
    effnet_launch(grid, block, [&] {
        effnet_depthwise_weight_grad_partial_nhwc(x, dy, partial, EMU_WINDOW_ARGS,
                                                  rows_per_chunk, chunks);
    });
}

void emu_depthwise_weight_grad_partial_nhwc_bf16(unsigned grid, unsigned block, const effnet_bf16* x,
                                            const effnet_bf16* dy, double* partial, EMU_WINDOW_PARAMS,
                                            long rows_per_chunk, int chunks) {
    effnet_launch(grid, block, [&] {
        effnet_depthwise_weight_grad_partial_nhwc_bf16(x, dy, partial, EMU_WINDOW_ARGS,
                                                  rows_per_chunk, chunks);
    });
}

void emu_im2col_nhwc(unsigned grid, unsigned block, const float* x, float* cols,
                     EMU_WINDOW_PARAMS) {
    effnet_launch(grid, block, [&] { effnet_im2col_nhwc(x, cols, EMU_WINDOW_ARGS); });
}

void emu_im2col_nhwc_bf16(unsigned grid, unsigned block, const effnet_bf16* x,
                          effnet_bf16* cols, EMU_WINDOW_PARAMS) {
    effnet_launch(grid, block, [&] { effnet_im2col_nhwc_bf16(x, cols, EMU_WINDOW_ARGS); });
}

void emu_col2im_nhwc(unsigned grid, unsigned block, const float* cols, float* dx,
                     EMU_WINDOW_PARAMS) {
    effnet_launch(grid, block, [&] { effnet_col2im_nhwc(cols, dx, EMU_WINDOW_ARGS); });
}

void emu_col2im_nhwc_bf16(unsigned grid, unsigned block, const effnet_bf16* cols, effnet_bf16* dx,
                     EMU_WINDOW_PARAMS) {
    effnet_launch(grid, block, [&] { effnet_col2im_nhwc_bf16(cols, dx, EMU_WINDOW_ARGS); });
}

void emu_affine_act_nhwc(unsigned grid, unsigned block, const float* z, const float* affine,
                         float* y, long total, int c, int act) {
    effnet_launch(grid, block, [&] { effnet_affine_act_nhwc(z, affine, y, total, c, act); });
}

void emu_affine_act_nhwc_bf16(unsigned grid, unsigned block, const effnet_bf16* z,
                              const float* affine, effnet_bf16* y, long total, int c, int act) {
    effnet_launch(grid, block,
                  [&] { effnet_affine_act_nhwc_bf16(z, affine, y, total, c, act); });
}

void emu_affine_act_residual_nhwc_bf16(unsigned grid, unsigned block, const effnet_bf16* z,
                                       const float* affine, const effnet_bf16* residual,
                                       effnet_bf16* y, long total, int c, int act) {
    effnet_launch(grid, block, [&] {
        effnet_affine_act_residual_nhwc_bf16(z, affine, residual, y, total, c, act);
    });
}

void emu_affine_act_residual_nhwc(unsigned grid, unsigned block, const float* z,
                                  const float* affine, const float* residual, float* y,
                                  long total, int c, int act) {
    effnet_launch(grid, block, [&] {
        effnet_affine_act_residual_nhwc(z, affine, residual, y, total, c, act);
    });
}

void emu_column_moments_partial(unsigned grid, unsigned block, const float* z, double* partial,
                                long rows, int c, long rows_per_chunk, int chunks) {
    effnet_launch(grid, block, [&] {
        effnet_column_moments_partial(z, partial, rows, c, rows_per_chunk, chunks);
    });
}

void emu_column_moments_partial_bf16(unsigned grid, unsigned block, const effnet_bf16* z, double* partial,
                                long rows, int c, long rows_per_chunk, int chunks) {
    effnet_launch(grid, block, [&] {
        effnet_column_moments_partial_bf16(z, partial, rows, c, rows_per_chunk, chunks);
    });
}

void emu_batch_stats(unsigned grid, unsigned block, const double* partial, float* out,
                     int chunks, int c, long count, double eps) {
    effnet_launch(grid, block, [&] { effnet_batch_stats(partial, out, chunks, c, count, eps); });
}

void emu_bn_act_grad_partial(unsigned grid, unsigned block, const float* d, const float* z,
                             const float* bn, double* partial, long rows, int c,
                             long rows_per_chunk, int chunks, int act) {
    effnet_launch(grid, block, [&] {
        effnet_bn_act_grad_partial(d, z, bn, partial, rows, c, rows_per_chunk, chunks, act);
    });
}

void emu_bn_act_grad_partial_bf16(unsigned grid, unsigned block, const effnet_bf16* d, const effnet_bf16* z,
                             const float* bn, double* partial, long rows, int c,
                             long rows_per_chunk, int chunks, int act) {
    effnet_launch(grid, block, [&] {
        effnet_bn_act_grad_partial_bf16(d, z, bn, partial, rows, c, rows_per_chunk, chunks, act);
    });
}

void emu_bn_act_input_grad(unsigned grid, unsigned block, const float* d, const float* z,
                           const float* bn, float* dz, long total, int c, int act, int eval) {
    effnet_launch(grid, block,
                  [&] { effnet_bn_act_input_grad(d, z, bn, dz, total, c, act, eval); });
}

void emu_bn_act_input_grad_bf16(unsigned grid, unsigned block, const effnet_bf16* d, const effnet_bf16* z,
                           const float* bn, effnet_bf16* dz, long total, int c, int act, int eval) {
    effnet_launch(grid, block,
                  [&] { effnet_bn_act_input_grad_bf16(d, z, bn, dz, total, c, act, eval); });
}

void emu_sum_chunks(unsigned grid, unsigned block, const double* partial, float* out,
                    int chunks, long width) {
    effnet_launch(grid, block, [&] { effnet_sum_chunks(partial, out, chunks, width); });
}

void emu_channel_means_nhwc(unsigned grid, unsigned block, const float* x, float* means, int n,
                            long p, int c) {
    effnet_launch(grid, block, [&] { effnet_channel_means_nhwc(x, means, n, p, c); });
}

void emu_channel_means_nhwc_bf16(unsigned grid, unsigned block, const effnet_bf16* x,
                                 float* means, int n, long p, int c) {
    effnet_launch(grid, block, [&] { effnet_channel_means_nhwc_bf16(x, means, n, p, c); });
}

void emu_channel_dots_nhwc(unsigned grid, unsigned block, const float* x, const float* y,
                           float* dots, int n, long p, int c) {
    effnet_launch(grid, block, [&] { effnet_channel_dots_nhwc(x, y, dots, n, p, c); });
}

void emu_channel_dots_nhwc_bf16(unsigned grid, unsigned block, const effnet_bf16* x, const effnet_bf16* y,
                           float* dots, int n, long p, int c) {
    effnet_launch(grid, block, [&] { effnet_channel_dots_nhwc_bf16(x, y, dots, n, p, c); });
}

void emu_gate_channels_nhwc(unsigned grid, unsigned block, const float* x, const float* gate,
                            float* y, int n, long p, int c) {
    effnet_launch(grid, block, [&] { effnet_gate_channels_nhwc(x, gate, y, n, p, c); });
}

void emu_gate_channels_nhwc_bf16(unsigned grid, unsigned block, const effnet_bf16* x,
                                 const float* gate, effnet_bf16* y, int n, long p, int c) {
    effnet_launch(grid, block, [&] { effnet_gate_channels_nhwc_bf16(x, gate, y, n, p, c); });
}

void emu_gate_add_nhwc(unsigned grid, unsigned block, const float* x, const float* gate,
                       const float* add, float* y, int n, long p, int c) {
    effnet_launch(grid, block, [&] { effnet_gate_add_nhwc(x, gate, add, y, n, p, c); });
}

void emu_gate_add_nhwc_bf16(unsigned grid, unsigned block, const effnet_bf16* x, const float* gate,
                       const float* add, effnet_bf16* y, int n, long p, int c) {
    effnet_launch(grid, block, [&] { effnet_gate_add_nhwc_bf16(x, gate, add, y, n, p, c); });
}
}
