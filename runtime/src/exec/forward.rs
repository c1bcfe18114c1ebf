//! The forward walk: the one place a network's forward pass is written, for every plan that
//! runs one (eval-mode inference on the fused CPU kernels, eval or train mode on candle's
//! ops). A backend ([`ForwardOps`]) implements the layer operations on its own activation
//! maps; the walk decides their order, the residuals, the masks and what is returned.

use candle_core::{Result, Tensor};
use rand_chacha::ChaCha8Rng;

use super::shared::keep_mask;
use crate::nn::{Block, Classifier, ConvBnAct, NetworkParts, SqueezeExcite};

/// The layer operations of a forward pass, on a backend's activation maps.
pub(crate) trait ForwardOps {
    /// An activation map (the backend's layout and dtype).
    type Map;

    /// An `[N, C, H, W]` input as a map.
    fn input(&mut self, x: &Tensor) -> Result<Self::Map>;
    /// conv, BatchNorm, activation, then `+ residual` when given; `squeeze` asks the backend
    /// to keep what a following squeeze-excitation needs (the per-channel means).
    fn conv_bn_act(
        &mut self,
        l: &ConvBnAct,
        x: &Self::Map,
        residual: Option<&Self::Map>,
        squeeze: bool,
    ) -> Result<Self::Map>;
    /// Whether [`ForwardOps::conv_bn_act`] can add a residual after `l`'s activation.
    fn fuses_residual(&self, l: &ConvBnAct) -> bool;
    /// The excitation of `x` by its squeeze.
    fn squeeze_excite(&mut self, se: &SqueezeExcite, x: Self::Map) -> Result<Self::Map>;
    /// `y * keep + x`, `keep` one factor per image (drop-path), or `y + x`.
    fn add_residual(
        &mut self,
        y: Self::Map,
        x: &Self::Map,
        keep: Option<Vec<f32>>,
    ) -> Result<Self::Map>;
    /// The map's batch size.
    fn batch(&self, x: &Self::Map) -> Result<usize>;
    /// The map as an `[N, C, H, W]` tensor of the input's dtype (stage features).
    fn output(&mut self, x: &Self::Map) -> Result<Tensor>;
    /// Global average pooling: `[N, C]`.
    fn pool(&mut self, x: Self::Map) -> Result<Tensor>;
    /// The classifier on pooled features.
    fn classify(&mut self, c: &Classifier, pooled: &Tensor) -> Result<Tensor>;
    /// CondConv: a block's routing weights `[N, experts]` from its input `x`, the sigmoid of
    /// `routing_fn` on the global average. Only the candle plan implements CondConv; the
    /// plan's facts keep such networks off the others, which refuse here.
    fn routing(&mut self, r: &Classifier, x: &Self::Map) -> Result<Tensor> {
        let _ = x;
        candle_core::bail!(
            "`{}`: this execution plan has no CondConv kernels (the candle plan runs them)",
            r.spec.path
        )
    }
    /// CondConv: conv with each sample's kernel mixed from the experts by its `routing`
    /// weights, BatchNorm, activation.
    fn cond_conv_bn_act(
        &mut self,
        l: &ConvBnAct,
        x: &Self::Map,
        routing: &Tensor,
    ) -> Result<Self::Map> {
        let _ = (x, routing);
        candle_core::bail!(
            "`{}`: this execution plan has no CondConv kernels (the candle plan runs them)",
            l.conv.spec.path
        )
    }
}

/// Train mode's masks come from `rng`; eval mode draws none.
pub(crate) type Masks<'r> = Option<&'r mut ChaCha8Rng>;

/// One block: its layers with the squeeze-excitation after `se_after`, then the residual
/// (added in the last layer's epilogue where the backend can and no drop-path applies).
pub(crate) fn block<O: ForwardOps>(
    ops: &mut O,
    b: &Block,
    x: &O::Map,
    drop_path_scale: f64,
    masks: &mut Masks,
) -> Result<O::Map> {
    let last = b.layers.len().saturating_sub(1);
    let rate = b.spec.drop_path * drop_path_scale;
    let draws = masks.is_some() && rate > 0.0;
    // A CondConv block's routing weights come from its input, once for all its convolutions.
    let routing = b.routing.as_ref().map(|r| ops.routing(r, x)).transpose()?;
    let fuse_residual = b.spec.residual
        && !draws
        && routing.is_none()
        && !b.se_on_last_layer()
        && b.layers.last().is_some_and(|l| ops.fuses_residual(l));
    let mut cur: Option<O::Map> = None;
    for (i, l) in b.layers.iter().enumerate() {
        let input = cur.as_ref().unwrap_or(x);
        let se_here = i == b.se_after && b.se.is_some();
        let residual = (fuse_residual && i == last).then_some(x);
        let mut y = match &routing {
            Some(r) if l.conv.spec.is_conditional() => ops.cond_conv_bn_act(l, input, r)?,
            _ => ops.conv_bn_act(l, input, residual, se_here)?,
        };
        if se_here && let Some(se) = &b.se {
            y = ops.squeeze_excite(se, y)?;
        }
        cur = Some(y);
    }
    let Some(y) = cur else {
        candle_core::bail!("block `{}` has no layers", b.spec.path);
    };
    if !b.spec.residual || fuse_residual {
        return Ok(y);
    }
    let keep = match masks {
        Some(rng) if rate > 0.0 => Some(keep_mask(ops.batch(x)?, 1.0 - rate, rng)),
        _ => None,
    };
    ops.add_residual(y, x, keep)
}

/// The intermediate outputs a walk keeps: the stem's and those of some stages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Taps {
    pub stem: bool,
    /// Positions in [`NetworkParts::stages`], ascending.
    pub stages: Vec<usize>,
}

impl Taps {
    /// Every stage's output.
    pub fn every_stage(n: usize) -> Taps {
        Taps {
            stem: false,
            stages: (0..n).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        !self.stem && self.stages.is_empty()
    }
}

/// Stem and blocks, keeping the outputs `taps` names (in walk order). With taps, the walk ends
/// after the last of them: what follows would be computed for nothing.
fn body<O: ForwardOps>(
    ops: &mut O,
    net: &NetworkParts,
    x: &Tensor,
    masks: &mut Masks,
    taps: &Taps,
) -> Result<(O::Map, Vec<Tensor>)> {
    let input = ops.input(x)?;
    let mut y = ops.conv_bn_act(net.stem, &input, None, false)?;
    drop(input);
    let mut outs = Vec::new();
    if taps.stem {
        outs.push(ops.output(&y)?);
    }
    // No taps: the whole body, which the logits need. Only the stem: no stage at all.
    let end = match taps.stages.last() {
        Some(&last) => last + 1,
        None if taps.is_empty() => net.stages.len(),
        None => 0,
    };
    for (i, stage) in net.stages.iter().enumerate().take(end) {
        for b in *stage {
            y = block(ops, b, &y, net.drop_path_scale, masks)?;
        }
        if taps.stages.contains(&i) {
            outs.push(ops.output(&y)?);
        }
    }
    Ok((y, outs))
}

/// The logits: body, head, pooling, dropout in train mode, classifier.
pub(crate) fn logits<O: ForwardOps>(
    ops: &mut O,
    net: &NetworkParts,
    x: &Tensor,
    mut masks: Masks,
) -> Result<Tensor> {
    let (mut y, _) = body(ops, net, x, &mut masks, &Taps::default())?;
    if let Some(h) = net.head {
        y = ops.conv_bn_act(h, &y, None, false)?;
    }
    let pooled = ops.pool(y)?;
    let pooled = match masks {
        Some(rng) if net.dropout > 0.0 => {
            let keep = keep_mask(pooled.elem_count(), 1.0 - net.dropout, rng);
            let mask = Tensor::from_vec(keep, pooled.shape(), pooled.device())?
                .to_dtype(pooled.dtype())?;
            (pooled * mask)?
        }
        _ => pooled,
    };
    ops.classify(net.classifier, &pooled)
}

/// The outputs `taps` names, in walk order (stem first, then by stage); the head and the
/// classifier do not run.
pub(crate) fn tapped<O: ForwardOps>(
    ops: &mut O,
    net: &NetworkParts,
    x: &Tensor,
    mut masks: Masks,
    taps: &Taps,
) -> Result<Vec<Tensor>> {
    body(ops, net, x, &mut masks, taps).map(|(_, outs)| outs)
}

/// A run of blocks on an `[N, C, H, W]` tensor (what a generated stage struct runs).
pub(crate) fn blocks<O: ForwardOps>(
    ops: &mut O,
    blocks: &[Block],
    x: &Tensor,
    drop_path_scale: f64,
    mut masks: Masks,
) -> Result<Tensor> {
    let mut y = ops.input(x)?;
    for b in blocks {
        y = block(ops, b, &y, drop_path_scale, &mut masks)?;
    }
    ops.output(&y)
}
