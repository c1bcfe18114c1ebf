//! Exact analyses of a network at a given resolution: output shapes, parameters,
//! multiply-adds and an activation-memory estimate, per block, per stage and in total.

use serde::Serialize;

use crate::ir::{Block, Conv, FeatureLevel, Network, PaddingMode};

/// One block's (or the stem's, or the head's) figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerStats {
    pub path: String,
    /// `[channels, height, width]` of the output.
    pub output: [usize; 3],
    pub params: usize,
    pub macs: u64,
    /// Elements of every intermediate tensor the block produces (conv and BN outputs,
    /// activations), a proxy for training memory.
    pub activations: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageStats {
    pub index: usize,
    pub kind: &'static str,
    pub kernel: usize,
    /// The kernels of a mixed kxk convolution (MixNet's `k3.5.7`), one per part; empty for a
    /// plain one (`kernel` is then its size, and for a mixed one the largest).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<usize>,
    pub expansion: f64,
    pub stride: usize,
    /// The largest dilation of the stage's kxk convolutions (its last block's): above 1 where
    /// the network's `output_stride` turned strides into dilation.
    pub dilation: usize,
    pub repeats: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub se_channels: Option<usize>,
    pub resolution: usize,
    pub params: usize,
    pub macs: u64,
    pub blocks: Vec<LayerStats>,
    /// A stage of several block strings (`then` lines: SPNASNet, FBNet, MixNet): its runs of
    /// blocks of one kind, kernel and expansion, in order; empty when the stage is one run
    /// (the fields above then describe all its blocks, else the first run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<BlockRun>,
}

/// Consecutive blocks of a stage with the same kind, kernel and expansion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockRun {
    pub kind: &'static str,
    pub kernel: usize,
    pub expansion: f64,
    pub repeats: usize,
}

/// A block's expansion as the summary shows it: mid over input channels.
fn expansion(b: &Block) -> f64 {
    b.mid_channels as f64 / b.in_channels.max(1) as f64
}

/// The runs of `blocks` (see [`StageStats::runs`]); expansions within 1% are one run (mid
/// widths are rounded to multiples of 8).
fn block_runs(blocks: &[Block]) -> Vec<BlockRun> {
    let mut runs: Vec<BlockRun> = Vec::new();
    for b in blocks {
        let (kind, kernel, e) = (b.timm_kind(), b.kernel, expansion(b));
        match runs.last_mut() {
            Some(r)
                if r.kind == kind
                    && r.kernel == kernel
                    && (r.expansion - e).abs() <= 0.01 * e.max(1.0) =>
            {
                r.repeats += 1
            }
            _ => runs.push(BlockRun {
                kind,
                kernel,
                expansion: e,
                repeats: 1,
            }),
        }
    }
    runs
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub model: String,
    pub resolution: usize,
    pub params: usize,
    pub macs: u64,
    /// Activation memory for one image in f32, in bytes (sum of intermediate tensors).
    pub activation_bytes: u64,
    pub stem: LayerStats,
    pub stages: Vec<StageStats>,
    pub head: Option<LayerStats>,
    pub classifier: LayerStats,
    /// The feature maps the network provides (timm's `features_only` levels).
    pub features: Vec<FeatureMap>,
}

/// One feature-pyramid level at the summary's resolution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureMap {
    #[serde(flatten)]
    pub level: FeatureLevel,
    /// `[channels, height, width]` of the map.
    pub output: [usize; 3],
}

/// Output spatial size of a convolution on a square input.
pub fn conv_output(
    padding: PaddingMode,
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> usize {
    padding.resolve(input, kernel, stride, dilation).2
}

fn conv_macs(c: &Conv, out_hw: usize) -> u64 {
    ((out_hw * out_hw) as u64).saturating_mul(c.macs_per_pixel() as u64)
}

fn conv_params(c: &Conv) -> usize {
    c.param_count()
}

/// Runs one conv, and its blur pool if it has one: (macs, params, output size, output
/// elements).
fn step(c: &Conv, padding: PaddingMode, hw: usize) -> (u64, usize, usize, u64) {
    let out = conv_output(c.padding_in(padding), hw, c.kernel, c.stride, c.dilation);
    let mut macs = conv_macs(c, out);
    let out = if c.blur_stride > 1 {
        // A fixed 3x3 depthwise filter over zero padding 1 at the blur stride.
        let pooled = conv_output(PaddingMode::Symmetric, out, 3, c.blur_stride, 1);
        macs += (c.out_channels * 9 * pooled * pooled) as u64;
        pooled
    } else {
        out
    };
    (
        macs,
        conv_params(c),
        out,
        (c.out_channels * out * out) as u64,
    )
}

fn block_stats(b: &Block, padding: PaddingMode, hw: usize) -> (LayerStats, usize) {
    let mut macs = 0u64;
    let mut params = 0usize;
    let mut acts = 0u64;
    let mut hw = hw;
    let convs: Vec<&Conv> = b.layers.conv_bns().iter().map(|l| l.conv).collect();
    let se_after = b.layers.se_after();
    for (i, c) in convs.iter().enumerate() {
        let (m, p, out, e) = step(c, padding, hw);
        macs += m;
        params += p;
        // conv output, BN output, activation output
        acts += 3 * e;
        hw = out;
        if i == se_after
            && let Some(se) = b.se()
        {
            // Two 1x1 convs on the pooled vector.
            macs += conv_macs(&se.conv_reduce, 1) + conv_macs(&se.conv_expand, 1);
            params += conv_params(&se.conv_reduce) + conv_params(&se.conv_expand);
            if let Some(gc) = &se.global_context {
                // The attention logits over the map, and the weighted pooling.
                macs += conv_macs(&gc.conv_attn, hw) + (se.channels * hw * hw) as u64;
                params += conv_params(&gc.conv_attn) + 2 * gc.norm.channels;
            }
            acts += (se.channels * hw * hw) as u64;
        }
    }
    // Normalization weights and biases (BatchNorm or GroupNorm): two per channel of each.
    params += b
        .tensors()
        .iter()
        .filter(|t| t.trainable && t.name.contains(".bn"))
        .map(|t| t.shape.iter().product::<usize>())
        .sum::<usize>();
    // CondConv: the routing linear on the pooled input, and each sample's kernels mixed from
    // the experts (`routing @ experts`: experts multiply-adds per kernel weight); the
    // convolutions themselves cost what a plain one does.
    if let Some(r) = b.layers.routing() {
        params += r.in_features * r.out_features + r.out_features;
        macs += (r.in_features * r.out_features) as u64;
        macs += convs
            .iter()
            .filter(|c| c.is_conditional())
            .map(|c| (c.experts * c.weight_shape().iter().product::<usize>()) as u64)
            .sum::<u64>();
    }
    if b.residual {
        acts += (b.out_channels * hw * hw) as u64;
    }
    (
        LayerStats {
            path: b.path.clone(),
            output: [b.out_channels, hw, hw],
            params,
            macs,
            activations: acts,
        },
        hw,
    )
}

/// Analyse a network at `resolution` (square input).
pub fn summarize(net: &Network, resolution: usize) -> Summary {
    let pad = net.padding;
    let (m, p, hw, e) = step(&net.stem.conv, pad, resolution);
    let stem = LayerStats {
        path: "conv_stem".into(),
        output: [net.stem.conv.out_channels, hw, hw],
        params: p + 2 * net.stem.bn.channels,
        macs: m,
        activations: 3 * e,
    };
    let mut hw = hw;
    let mut stages = Vec::new();
    for s in &net.stages {
        let mut blocks = Vec::new();
        for b in &s.blocks {
            let (st, out) = block_stats(b, pad, hw);
            hw = out;
            blocks.push(st);
        }
        let Some(first) = s.blocks.first() else {
            continue;
        };
        stages.push(StageStats {
            index: s.index,
            kind: first.timm_kind(),
            kernel: first.kernel,
            kernels: first
                .layers
                .conv_bns()
                .iter()
                .find(|r| r.conv.kernel == first.kernel && r.conv.mixed.len() > 1)
                .map(|r| r.conv.mixed.iter().map(|p| p.kernel).collect())
                .unwrap_or_default(),
            expansion: expansion(first),
            stride: first.stride,
            dilation: s.blocks.iter().map(|b| b.dilation).max().unwrap_or(1),
            repeats: s.blocks.len(),
            in_channels: first.in_channels,
            out_channels: first.out_channels,
            se_channels: first.se_channels,
            resolution: hw,
            params: blocks.iter().map(|b| b.params).sum(),
            macs: blocks.iter().map(|b| b.macs).sum(),
            blocks,
            runs: Some(block_runs(&s.blocks))
                .filter(|r| r.len() > 1)
                .unwrap_or_default(),
        });
    }
    let head = net.head.as_ref().map(|h| {
        let (m, p, out, e) = step(&h.conv, pad, hw);
        hw = out;
        LayerStats {
            path: "conv_head".into(),
            output: [h.conv.out_channels, out, out],
            params: p + 2 * h.bn.channels,
            macs: m,
            activations: 3 * e,
        }
    });
    let c = &net.classifier;
    let classifier = LayerStats {
        path: c.path.clone(),
        output: [c.out_features, 1, 1],
        params: c.in_features * c.out_features + c.out_features,
        macs: (c.in_features * c.out_features) as u64,
        activations: c.out_features as u64,
    };
    let all = std::iter::once(&stem)
        .chain(stages.iter().flat_map(|s| s.blocks.iter()))
        .chain(head.iter())
        .chain(std::iter::once(&classifier));
    let (mut params, mut macs, mut acts) = (0usize, 0u64, 0u64);
    for l in all {
        params += l.params;
        macs += l.macs;
        acts += l.activations;
    }
    let features = net
        .feature_info()
        .into_iter()
        .map(|level| {
            let output = match level.stage {
                None => stem.output,
                Some(i) => stages
                    .iter()
                    .find(|s| s.index == i)
                    .and_then(|s| s.blocks.last())
                    .map_or(stem.output, |b| b.output),
            };
            FeatureMap { level, output }
        })
        .collect();
    Summary {
        model: net.name.clone(),
        resolution,
        params,
        macs,
        activation_bytes: acts * 4,
        stem,
        stages,
        head,
        classifier,
        features,
    }
}
