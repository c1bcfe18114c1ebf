//! Lowering: a checked model to the IR. Applies width and depth scaling with timm's exact
//! rounding, expands repeats into blocks, and names every layer as timm's `state_dict` does.
//! Infallible: `check` has validated everything it relies on.

use crate::check::{
    ChannelRounding, DepthRounding, ModelDef, ScheduleDef, ScheduleValue, Skip, StageKind,
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

/// Lower one checked model, with the schedules written for it.
pub fn lower(model: &ModelDef, schedules: &[&ScheduleDef]) -> Network {
    let bn = |path: String, channels: usize| BatchNorm {
        path,
        channels,
        eps: model.bn_eps,
        momentum: model.bn_momentum,
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

    let mut in_ch = stem_channels;
    let mut block_counter = 0usize;
    let mut dilator = Dilator::new(model.output_stride, model.stem.stride);
    let mut stages = Vec::new();
    for (si, range) in groups.iter().enumerate() {
        let mut blocks = Vec::new();
        let mut bi = 0usize;
        for di in range.clone() {
            let s = &model.stages[di];
            let n = repeats[di];
            let out_ch = round_channels(s.channels, model.width, rc);
            let act = s.activation.unwrap_or(model.activation);
            for k in 0..n {
                let (stride, dilation) = dilator.next(if k == 0 { s.stride } else { 1 });
                let path = format!("blocks.{si}.{bi}");
                let p = |name: &str| format!("{path}.{name}");
                // Mid channels always use timm's default rounding (divisor 8, limit 0.9), whatever
                // the model's stage rounding is.
                // `fc N` (EdgeTPU) expands N width-scaled channels instead of the input's.
                let expanded = s
                    .force_in
                    .map_or(in_ch, |f| round_channels(f, model.width, rc));
                let mid = make_divisible(expanded as f64 * s.expansion, 8, None, 0.9);
                // The SE gates the mid channels, except in a depthwise-separable block, which has
                // no expansion: its SE sits on the depthwise output, the block's input channels
                // (timm's `DepthwiseSeparableConv`), whatever rounding would make of them.
                let ds = matches!(s.kind, StageKind::Ds | StageKind::Dsa);
                let se_on = if ds { in_ch } else { mid };
                // The kxk convolution's groups: depthwise by default in ds and ir blocks, one
                // group in the others (timm's per-block `group_size` defaults).
                let gs = |channels: usize, default: usize| {
                    num_groups(s.group_size.unwrap_or(default), channels)
                };
                // timm builds SE with ratio `se / expansion` on those channels, rounding with
                // Python's round().
                let se_ch = s
                    .se
                    .map(|r| (round_half_even(se_on as f64 * (r / s.expansion)) as usize).max(1));
                let se = se_ch.map(|reduced| SqueezeExcite {
                    path: p("se"),
                    channels: se_on,
                    reduced,
                    conv_reduce: Conv {
                        bias: true,
                        ..conv(p("se.conv_reduce"), se_on, reduced, 1, 1, 1)
                    },
                    conv_expand: Conv {
                        bias: true,
                        ..conv(p("se.conv_expand"), reduced, se_on, 1, 1, 1)
                    },
                });
                let same_shape = stride == 1 && in_ch == out_ch;
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
                            conv_dw: mixed_conv(
                                p("conv_dw"),
                                in_ch,
                                in_ch,
                                &s.kernels,
                                stride,
                                dilation,
                                gs(in_ch, 1),
                            ),
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
                                conv_dw: cond(mixed_conv(
                                    p("conv_dw"),
                                    mid,
                                    mid,
                                    &s.kernels,
                                    stride,
                                    dilation,
                                    gs(mid, 1),
                                )),
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
                                routing: (experts > 0).then(|| Linear {
                                    path: p("routing_fn"),
                                    in_features: in_ch,
                                    out_features: experts,
                                }),
                            },
                            mid,
                            same_shape && s.skip != Skip::Off,
                        )
                    }
                };
                let se_channels = match &layers {
                    BlockLayers::Conv { .. } => None,
                    _ => se_ch,
                };
                blocks.push(Block {
                    path,
                    stage: si,
                    index: bi,
                    kind,
                    in_channels: in_ch,
                    mid_channels,
                    out_channels: out_ch,
                    kernel: s.kernel,
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
                in_ch = out_ch;
            }
        }
        stages.push(Stage {
            index: si,
            docs: model.stages[range.start].docs.clone(),
            stride: model.stages[range.start].stride,
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
            conv: conv("conv_head".into(), in_ch, ch, h.kernel, 1, 1),
            bn: bn("bn2".into(), ch),
        }
    });
    let features = head.as_ref().map_or(in_ch, |h| h.conv.out_channels);

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
