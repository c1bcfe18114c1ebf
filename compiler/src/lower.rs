//! Lowering: a checked model to the IR. Applies width and depth scaling with timm's exact
//! rounding, expands repeats into blocks, and names every layer as timm's `state_dict` does.
//! Infallible: `check` has validated everything it relies on.

use crate::check::{
    ChannelRounding, DepthRounding, ModelDef, NormDef, ScheduleDef, ScheduleValue, Skip, StageKind,
};
use crate::ir::*;

/// timm's `make_divisible`: round to the nearest multiple of `divisor` (at least `min`), then
/// add one divisor if rounding lost more than `1 - limit` of the value.
pub fn make_divisible(v: f64, divisor: usize, min: Option<usize>, limit: f64) -> usize {
    let d = divisor.max(1) as f64;
    let min = min.unwrap_or(divisor) as f64;
    // `int(v + d / 2) // d * d`, as Python computes it for v >= 0.
    let mut new_v = (((v + d / 2.0).trunc() / d).floor() * d).max(min);
    if new_v < limit * v {
        new_v += d;
    }
    new_v as usize
}

/// timm's `round_channels`: channels scaled by the width multiplier, then made divisible.
pub fn round_channels(channels: usize, width: f64, r: &ChannelRounding) -> usize {
    make_divisible(channels as f64 * width, r.divisor, r.min, r.limit)
}

/// Python's `round()`: halves go to the even neighbour.
fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}

/// Repeats of one stage after depth scaling.
pub fn scale_repeats(repeats: usize, multiplier: f64, rounding: DepthRounding) -> usize {
    let v = repeats as f64 * multiplier;
    let scaled = match rounding {
        DepthRounding::Ceil => v.ceil(),
        DepthRounding::Round => round_half_even(v),
    };
    (scaled as usize).max(1)
}

/// A stage's repeats, one count per block string (`stage` and its `then` lines), scaled as timm's
/// `_scale_stage_depth` does: the stage's total is scaled, then shared out over its strings from
/// the last one back, each getting its share rounded (Python's `round`) and at least 1.
pub fn scale_stage_repeats(
    repeats: &[usize],
    multiplier: f64,
    rounding: DepthRounding,
) -> Vec<usize> {
    let total: usize = repeats.iter().sum();
    let mut left = total as f64;
    let mut left_scaled = scale_repeats(total, multiplier, rounding) as f64;
    let mut out: Vec<usize> = repeats
        .iter()
        .rev()
        .map(|&r| {
            let share = (round_half_even(r as f64 / left * left_scaled) as usize).max(1);
            left -= r as f64;
            left_scaled -= share as f64;
            share
        })
        .collect();
    out.reverse();
    out
}

fn conv(
    path: String,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
) -> Conv {
    Conv {
        path,
        in_channels,
        out_channels,
        kernel,
        stride,
        dilation: 1,
        groups,
        bias: false,
        mixed: Vec::new(),
        padding: None,
        blur_stride: 1,
        experts: 0,
    }
}

/// timm's `num_groups`: group size 0 is one group, N is `channels / N` groups (1: depthwise).
fn num_groups(group_size: usize, channels: usize) -> usize {
    channels.checked_div(group_size).map_or(1, |g| g.max(1))
}

/// timm's `create_conv2d`: a plain convolution for one kernel; for several, a `MixedConv2d`
/// whose parts are depthwise when `groups` is the input's channel count, dense over their
/// slices otherwise (`check` allows nothing else).
#[allow(clippy::too_many_arguments)]
fn mixed_conv(
    path: String,
    in_channels: usize,
    out_channels: usize,
    kernels: &[usize],
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Conv {
    let kernel = kernels.iter().copied().max().unwrap_or(1);
    if kernels.len() <= 1 {
        return spatial_conv(
            path,
            in_channels,
            out_channels,
            kernel,
            stride,
            dilation,
            groups,
        );
    }
    let depthwise = groups == in_channels && in_channels == out_channels;
    let ins = split_channels(in_channels, kernels.len());
    let outs = split_channels(out_channels, kernels.len());
    Conv {
        dilation,
        mixed: kernels
            .iter()
            .zip(ins.iter().zip(&outs))
            .map(|(&kernel, (&i, &o))| ConvPart {
                kernel,
                in_channels: i,
                out_channels: o,
            })
            .collect(),
        ..conv(
            path,
            in_channels,
            out_channels,
            kernel,
            stride,
            if depthwise { in_channels } else { 1 },
        )
    }
}

/// The blocks each stage line (`stage` or `then`) expands to after depth scaling, in order.
pub fn line_repeats(model: &ModelDef) -> Vec<usize> {
    let mut repeats = vec![0usize; model.stages.len()];
    for (g, range) in model.stage_groups().iter().enumerate() {
        let m = model.depth
            * model.stages[range.start].depth
            * model
                .stage_depths
                .as_ref()
                .and_then(|d| d.get(g))
                .copied()
                .unwrap_or(1.0);
        let lines: Vec<usize> = model.stages[range.clone()]
            .iter()
            .map(|s| s.repeats)
            .collect();
        repeats[range.clone()].copy_from_slice(&scale_stage_repeats(&lines, m, model.round_depth));
    }
    repeats
}

/// A block's kxk convolution: the one that strides, and dilates once the output stride is
/// reached.
#[allow(clippy::too_many_arguments)]
fn spatial_conv(
    path: String,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Conv {
    Conv {
        dilation,
        ..conv(path, in_channels, out_channels, kernel, stride, groups)
    }
}

/// timm's `EfficientNetBuilder` strides and dilations (its `output_stride`): walking the blocks
/// in order, a stride that would take the network's total stride past `output_stride` becomes
/// 1 and multiplies the dilation instead. The block where that happens still convolves with
/// the dilation before it; the blocks after it get the new one.
#[derive(Debug, Clone, Copy)]
struct Dilator {
    output_stride: usize,
    total: usize,
    dilation: usize,
}

impl Dilator {
    /// After a stem of stride `stem_stride`.
    fn new(output_stride: usize, stem_stride: usize) -> Self {
        Dilator {
            output_stride,
            total: stem_stride,
            dilation: 1,
        }
    }

    /// The `(stride, dilation)` of the next block, written with `stride`.
    fn next(&mut self, stride: usize) -> (usize, usize) {
        let dilation = self.dilation;
        if stride <= 1 {
            return (stride, dilation);
        }
        let total = self.total.saturating_mul(stride);
        if total > self.output_stride {
            self.dilation = dilation.saturating_mul(stride);
            (1, dilation)
        } else {
            self.total = total;
            (stride, dilation)
        }
    }
}

/// Where a block stands in timm's space-to-depth region (EfficientNet-X, `s2d`): the block
/// written with `s2d` opens it with a 2x2 stride-2 convolution to four times its input's
/// channels, and every block from there works on four times its width, until the next block
/// written with stride 2 closes it: that block keeps the resolution (the opening took its
/// stride) and expands a quarter as much, since its input is four times wider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpaceToDepth {
    Off,
    Opening,
    Inside,
}

impl SpaceToDepth {
    /// For the next block, written with `stride` and `expansion` on a line with `s2d` or not:
    /// its stride and expansion as built, and its place in the region.
    fn next(&mut self, s2d: bool, stride: usize, expansion: f64) -> (usize, f64, SpaceToDepth) {
        match *self {
            SpaceToDepth::Off if s2d => {
                *self = SpaceToDepth::Inside;
                (stride, expansion, SpaceToDepth::Opening)
            }
            SpaceToDepth::Inside if stride == 2 => {
                *self = SpaceToDepth::Off;
                (1, expansion / 4.0, SpaceToDepth::Off)
            }
            region => (stride, expansion, region),
        }
    }
}

/// Lower one checked model, with the schedules written for it.
pub fn lower(model: &ModelDef, schedules: &[&ScheduleDef]) -> Network {
    let bn = |path: String, channels: usize| Norm {
        path,
        channels,
        eps: model.norm.eps(),
        kind: match model.norm {
            NormDef::Batch { momentum, .. } => NormKind::Batch { momentum },
            // timm's GroupNormAct: `channels / group_size` groups (the checker made sure it
            // divides).
            NormDef::Group { size, .. } => NormKind::Group {
                groups: (channels / size.max(1)).max(1),
            },
        },
    };
    let rc = &model.round_channels;
    let stem_channels = if model.stem.fixed {
        model.stem.channels
    } else {
        round_channels(model.stem.channels, model.width, rc)
    };
    let stem = ConvBnAct {
        conv: conv(
            "conv_stem".into(),
            model.input_channels,
            stem_channels,
            model.stem.kernel,
            model.stem.stride,
            1,
        ),
        bn: bn("bn1".into(), stem_channels),
    };

    // Repeats per stage line first: drop-path rates are counted over all blocks of the network.
    let groups = model.stage_groups();
    let repeats = line_repeats(model);
    let total_blocks: usize = repeats.iter().sum();

    // The next block's input width; and as the unpruned network has it, which decides SE
    // widths and residuals as in timm (it prunes a built network's convolutions).
    let mut carried = stem_channels;
    let mut carried_full = stem_channels;
    let mut block_counter = 0usize;
    let mut dilator = Dilator::new(model.output_stride, model.stem.stride);
    let mut region = SpaceToDepth::Off;
    let mut stages = Vec::new();
    for (si, range) in groups.iter().enumerate() {
        let mut blocks = Vec::new();
        let mut bi = 0usize;
        // The stride the stage's first block was written with after space-to-depth took its
        // share: the stride that ends a region starts no feature level (timm's builder).
        let mut first_stride = None;
        for di in range.clone() {
            let s = &model.stages[di];
            let n = repeats[di];
            let out_ch = round_channels(s.channels, model.width, rc);
            let act = s.activation.unwrap_or(model.activation);
            for k in 0..n {
                let written = if k == 0 { s.stride } else { 1 };
                let (written, expansion, s2d) = region.next(s.space_to_depth, written, s.expansion);
                if s2d == SpaceToDepth::Opening {
                    // The space-to-depth convolution halves the resolution ahead of the
                    // strides: it counts towards the output stride as a stride would.
                    dilator.total = dilator.total.saturating_mul(2);
                }
                if bi == 0 {
                    first_stride = Some(written);
                }
                let (stride, dilation) = dilator.next(written);
                let path = format!("blocks.{si}.{bi}");
                let p = |name: &str| format!("{path}.{name}");
                // Inside a space-to-depth region every block works on four times its channels
                // (timm multiplies the rounded width by 4), the opening block from after its
                // 2x2 convolution on.
                let out_full = if s2d == SpaceToDepth::Off {
                    out_ch
                } else {
                    out_ch * 4
                };
                let pruned = s.prune.as_ref();
                let out_ch = pruned.and_then(|p| p.out).unwrap_or(out_full);
                let s2d_layer = (s2d == SpaceToDepth::Opening).then(|| ConvBnAct {
                    conv: Conv {
                        padding: Some(PaddingMode::Same),
                        ..conv(p("conv_s2d"), carried, carried * 4, 2, 2, 1)
                    },
                    bn: bn(p("bn_s2d"), carried * 4),
                });
                let block_in = carried;
                // The width the block's convolutions start from.
                let in_ch = if s2d_layer.is_some() {
                    carried * 4
                } else {
                    carried
                };
                let in_full = if s2d_layer.is_some() {
                    carried_full * 4
                } else {
                    carried_full
                };
                // After it the depthwise kernel halves, `(k + 1) / 2`; a 2x2 one pads `same`.
                let (kernels, dw_padding) = if s2d_layer.is_some() {
                    let k = s.kernel.div_ceil(2);
                    (vec![k], (k == 2).then_some(PaddingMode::Same))
                } else {
                    (s.kernels.clone(), None)
                };
                // timm divides the SE ratio by 4 in the opening block (its input is 4x wider).
                let se_ratio = s.se.map(|r| if s2d_layer.is_some() { r / 4.0 } else { r });
                // Mid channels always use timm's default rounding (divisor 8, limit 0.9), whatever
                // the model's stage rounding is.
                // `fc N` (EdgeTPU) expands N width-scaled channels instead of the input's.
                let expanded = s
                    .force_in
                    .map_or(in_full, |f| round_channels(f, model.width, rc));
                let mid_full = make_divisible(expanded as f64 * expansion, 8, None, 0.9);
                let mid = pruned
                    .and_then(|p| p.mid.get(k).copied())
                    .unwrap_or(mid_full);
                // The SE gates the mid channels, except in a depthwise-separable block, which has
                // no expansion: its SE sits on the depthwise output, the block's input channels
                // (timm's `DepthwiseSeparableConv`), whatever rounding would make of them.
                let ds = matches!(s.kind, StageKind::Ds | StageKind::Dsa);
                let se_on = if ds { in_ch } else { mid };
                let se_on_full = if ds { in_full } else { mid_full };
                // The kxk convolution's groups: the line's `gs`, else the model's `group_size`
                // (timm's `decode_arch_def(group_size=...)` sets it on every block string that
                // has none), else depthwise in ds and ir blocks and one group in the others
                // (timm's per-block `group_size` defaults).
                let gs = |channels: usize, default: usize| {
                    let size = s
                        .group_size
                        .or(model.group_size.map(|(g, _)| g))
                        .unwrap_or(default);
                    num_groups(size, channels)
                };
                // timm builds SE with ratio `se / expansion` on those channels, rounding with
                // Python's round().
                let se_ch = se_ratio.map(|r| {
                    pruned
                        .and_then(|p| p.se.get(k).copied())
                        .unwrap_or_else(|| {
                            let v = se_on_full as f64 * (r / expansion);
                            // timm's GlobalContext rounds half up (`make_divisible(v, 1,
                            // round_limit=0)`), its SqueezeExcite half to even (`round`).
                            let v = if model.global_context {
                                (v + 0.5).floor()
                            } else {
                                round_half_even(v)
                            };
                            (v as usize).max(1)
                        })
                });
                let (reduce_name, expand_name) = if model.global_context {
                    ("se.mlp_scale.fc1", "se.mlp_scale.fc2")
                } else {
                    ("se.conv_reduce", "se.conv_expand")
                };
                let se = se_ch.map(|reduced| SqueezeExcite {
                    path: p("se"),
                    channels: se_on,
                    reduced,
                    conv_reduce: Conv {
                        bias: true,
                        ..conv(p(reduce_name), se_on, reduced, 1, 1, 1)
                    },
                    conv_expand: Conv {
                        bias: true,
                        ..conv(p(expand_name), reduced, se_on, 1, 1, 1)
                    },
                    global_context: model.global_context.then(|| GlobalContext {
                        conv_attn: Conv {
                            bias: true,
                            ..conv(p("se.conv_attn"), se_on, 1, 1, 1, 1)
                        },
                        // timm's LayerNorm2d, eps 1e-6.
                        norm: Norm {
                            path: p("se.mlp_scale.norm"),
                            channels: reduced,
                            eps: 1e-6,
                            kind: NormKind::Group { groups: 1 },
                        },
                    }),
                });
                // timm decides the residual on the unpruned block's input before
                // space-to-depth.
                let same_shape = stride == 1 && carried_full == out_full;
                let (kind, layers, mid_channels, residual) = match s.kind {
                    StageKind::Conv => (
                        BlockKind::Conv,
                        BlockLayers::Conv {
                            conv: spatial_conv(
                                p("conv"),
                                in_ch,
                                out_ch,
                                s.kernel,
                                stride,
                                dilation,
                                gs(in_ch, 0),
                            ),
                            bn1: bn(p("bn1"), out_ch),
                        },
                        out_ch,
                        same_shape && s.skip == Skip::On,
                    ),
                    // A Fused-MBConv with expansion 1 is a single conv-bn-act (paper, automl).
                    StageKind::Fused if s.expansion == 1.0 => (
                        BlockKind::Conv,
                        BlockLayers::Conv {
                            conv: spatial_conv(
                                p("conv"),
                                in_ch,
                                out_ch,
                                s.kernel,
                                stride,
                                dilation,
                                gs(in_ch, 0),
                            ),
                            bn1: bn(p("bn1"), out_ch),
                        },
                        out_ch,
                        same_shape && s.skip != Skip::Off,
                    ),
                    StageKind::Ds | StageKind::Dsa => (
                        BlockKind::DepthwiseSeparable,
                        BlockLayers::DepthwiseSeparable {
                            s2d: s2d_layer,
                            conv_dw: Conv {
                                padding: dw_padding,
                                ..mixed_conv(
                                    p("conv_dw"),
                                    in_ch,
                                    in_ch,
                                    &kernels,
                                    stride,
                                    dilation,
                                    gs(in_ch, 1),
                                )
                            },
                            bn1: bn(p("bn1"), in_ch),
                            se,
                            conv_pw: mixed_conv(
                                p("conv_pw"),
                                in_ch,
                                out_ch,
                                &s.proj_kernels,
                                1,
                                1,
                                1,
                            ),
                            bn2: bn(p("bn2"), out_ch),
                            pw_act: s.kind == StageKind::Dsa,
                        },
                        in_ch,
                        // timm's `dsa` never has a residual.
                        same_shape && s.skip != Skip::Off && s.kind == StageKind::Ds,
                    ),
                    StageKind::Fused | StageKind::Edge => (
                        BlockKind::Edge,
                        BlockLayers::Edge {
                            // timm's EdgeResidual counts its groups on the expanded channels.
                            conv_exp: mixed_conv(
                                p("conv_exp"),
                                in_ch,
                                mid,
                                &s.kernels,
                                stride,
                                dilation,
                                gs(mid, 0),
                            ),
                            bn1: bn(p("bn1"), mid),
                            se,
                            conv_pwl: mixed_conv(
                                p("conv_pwl"),
                                mid,
                                out_ch,
                                &s.proj_kernels,
                                1,
                                1,
                                1,
                            ),
                            bn2: bn(p("bn2"), out_ch),
                        },
                        mid,
                        same_shape && s.skip != Skip::Off,
                    ),
                    StageKind::MbConv => {
                        // CondConv (timm's `CondConvResidual`): the stage's experts times the
                        // model's multiplier, on all three convolutions; the SE stays plain.
                        let experts = s.experts.map_or(0, |e| e * model.experts);
                        let cond = |c: Conv| Conv { experts, ..c };
                        (
                            BlockKind::MbConv,
                            BlockLayers::MbConv {
                                s2d: s2d_layer,
                                conv_pw: cond(mixed_conv(
                                    p("conv_pw"),
                                    in_ch,
                                    mid,
                                    &s.exp_kernels,
                                    1,
                                    1,
                                    1,
                                )),
                                bn1: bn(p("bn1"), mid),
                                conv_dw: cond(Conv {
                                    padding: dw_padding,
                                    ..mixed_conv(
                                        p("conv_dw"),
                                        mid,
                                        mid,
                                        &kernels,
                                        stride,
                                        dilation,
                                        gs(mid, 1),
                                    )
                                }),
                                bn2: bn(p("bn2"), mid),
                                se,
                                conv_pwl: cond(mixed_conv(
                                    p("conv_pwl"),
                                    mid,
                                    out_ch,
                                    &s.proj_kernels,
                                    1,
                                    1,
                                    1,
                                )),
                                bn3: bn(p("bn3"), out_ch),
                                // The routing function reads the block's input.
                                routing: (experts > 0).then(|| Linear {
                                    path: p("routing_fn"),
                                    in_features: block_in,
                                    out_features: experts,
                                }),
                            },
                            mid,
                            same_shape && s.skip != Skip::Off,
                        )
                    }
                };
                // `antialias blur`: the strided convolution runs at stride 1 and blur-pools
                // after its norm and activation (timm's blocks with `aa_layer`, stride > 1).
                let mut layers = layers;
                if model.blur_pool && stride > 1 {
                    let c = layers.kxk_mut();
                    c.blur_stride = c.stride;
                    c.stride = 1;
                }
                let se_channels = match &layers {
                    BlockLayers::Conv { .. } => None,
                    _ => se_ch,
                };
                blocks.push(Block {
                    path,
                    stage: si,
                    index: bi,
                    kind,
                    in_channels: block_in,
                    mid_channels,
                    out_channels: out_ch,
                    kernel: kernels.iter().copied().max().unwrap_or(s.kernel),
                    stride,
                    dilation,
                    se_channels,
                    residual,
                    drop_path: model.drop_path * block_counter as f64 / total_blocks.max(1) as f64,
                    activation: act,
                    layers,
                });
                block_counter += 1;
                bi += 1;
                carried = out_ch;
                carried_full = out_full;
            }
        }
        stages.push(Stage {
            index: si,
            docs: model.stages[range.start].docs.clone(),
            stride: first_stride.unwrap_or(model.stages[range.start].stride),
            blocks,
        });
    }

    let head = model.head.as_ref().map(|h| {
        let ch = if h.fixed {
            h.channels
        } else {
            round_channels(h.channels, model.width, rc)
        };
        ConvBnAct {
            conv: conv("conv_head".into(), carried, ch, h.kernel, 1, 1),
            bn: bn("bn2".into(), ch),
        }
    });
    let features = head.as_ref().map_or(carried, |h| h.conv.out_channels);

    Network {
        name: model.name.clone(),
        docs: model.docs.clone(),
        input_channels: model.input_channels,
        resolution: model.resolution,
        train_resolution: model.train_resolution,
        num_classes: model.classes,
        activation: model.activation,
        padding: model.padding,
        output_stride: model.output_stride,
        dropout: model.dropout,
        drop_path: model.drop_path,
        normalize: model.normalize.as_ref().map(|(m, s)| Normalize {
            mean: m.clone(),
            std: s.clone(),
        }),
        stem,
        stages,
        head,
        classifier: Linear {
            path: "classifier".into(),
            in_features: features,
            out_features: model.classes,
        },
        schedules: schedules.iter().map(|s| lower_schedule(s, model)).collect(),
    }
}

/// Per-stage values of a progressive-learning schedule.
pub fn lower_schedule(s: &ScheduleDef, model: &ModelDef) -> Schedule {
    let m = s.stages.max(1);
    let linear = |v0: f64, v1: f64, i: usize| {
        if m == 1 {
            v1
        } else {
            v0 + (v1 - v0) * i as f64 / (m - 1) as f64
        }
    };
    let value = |v: &ScheduleValue, i: usize| match v {
        ScheduleValue::Fixed(x) => *x,
        ScheduleValue::Range(a, b) => linear(*a, *b, i),
        ScheduleValue::PerStage(vals) => vals.get(i).copied().unwrap_or(0.0),
    };
    let image = |i: usize| -> usize {
        match (&s.image, s.interpolation) {
            // automl: int(base + (size - base) * (i + 1) / M).
            (ScheduleValue::Range(a, b), Interpolation::Automl) => {
                (a + (b - a) * (i + 1) as f64 / m as f64) as usize
            }
            (v, _) => value(v, i) as usize,
        }
    };
    let all_tables = [Some(&s.image), Some(&s.randaug), Some(&s.mixup)]
        .iter()
        .all(|v| matches!(v, Some(ScheduleValue::PerStage(_))));
    let stages = (0..m)
        .map(|i| ScheduleStage {
            index: i,
            epochs: (i * s.epochs / m, (i + 1) * s.epochs / m),
            image_size: image(i),
            randaug: value(&s.randaug, i),
            mixup: value(&s.mixup, i),
            cutmix: value(&s.cutmix, i),
            dropout: s.dropout.as_ref().map_or(model.dropout, |v| value(v, i)),
            drop_path: s.drop_path.as_ref().map(|v| value(v, i)),
            batch_size: s.batch.as_ref().map(|v| value(v, i) as usize),
        })
        .collect();
    Schedule {
        name: s.name.clone(),
        docs: s.docs.clone(),
        epochs: s.epochs,
        interpolation: if all_tables {
            Interpolation::Table
        } else {
            s.interpolation
        },
        stages,
        optimizer: s.optimizer.clone(),
        lr: s.lr.clone(),
        label_smoothing: s.label_smoothing,
        ema: s.ema,
        grad_clip: s.grad_clip,
        freeze: s.freeze.clone(),
        lr_scale: s.lr_scale.clone(),
    }
}
