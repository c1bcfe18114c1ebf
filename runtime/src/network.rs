//! The interpreter: builds a network from the IR and runs it, in eval or train mode.
//! Generated (macro) code calls the same blocks, so both share one implementation.

use std::sync::Mutex;

use candle_core::{ModuleT, Tensor};

// `Network` implements `ModuleT` only: candle's blanket `ModuleT for M: Module` would drop the
// train flag.
use candle_nn::VarBuilder;
use effnet_compiler::ir::{self, Activation, PaddingMode};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::layers::*;
use crate::model::NetworkParts;

/// conv, BatchNorm, activation: the stem, the head, and timm's `cn` block body.
#[derive(Debug, Clone)]
pub struct ConvBnAct {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    pub activation: Option<Activation>,
}

impl ConvBnAct {
    pub fn load(
        conv: &ir::Conv,
        bn: &ir::BatchNorm,
        padding: PaddingMode,
        activation: Option<Activation>,
        vb: &VarBuilder,
    ) -> CResult<Self> {
        Ok(ConvBnAct {
            conv: Conv2d::load(conv, padding, vb)?,
            bn: BatchNorm::load(bn, vb)?,
            activation,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        if !train && let Some(y) = self.forward_fused(x)? {
            return Ok(y);
        }
        let y = self.bn.forward_t(&self.conv.forward(x)?, train)?;
        match self.activation {
            Some(a) => activate(&y, a),
            None => Ok(y),
        }
    }

    /// Eval mode on the fused CPU kernels, `None` when they cannot run it.
    fn forward_fused(&self, x: &Tensor) -> CResult<Option<Tensor>> {
        if !self.fusable() {
            return Ok(None);
        }
        let Some(m) = FusedMap::from_nchw(x)? else {
            return Ok(None);
        };
        match self.fused(&m, None, false)? {
            Some(y) => y.to_nchw().map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn fusable(&self) -> bool {
        fusable_layer(&self.conv, &self.bn, self.activation)
    }

    pub(crate) fn fused(
        &self,
        x: &FusedMap,
        residual: Option<&[f32]>,
        want_means: bool,
    ) -> CResult<Option<FusedMap>> {
        fused_conv_bn_act(
            &self.conv,
            &self.bn,
            self.activation,
            x,
            residual,
            want_means,
        )
    }

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        self.conv.named(out);
        self.bn.named(out);
    }
}

/// One block of any kind: its layers in order, with the SE after the first `se_after` of them.
#[derive(Debug, Clone)]
pub struct Block {
    pub spec: ir::Block,
    /// The convolutions in timm's order, each with its BatchNorm and (maybe) activation.
    pub layers: Vec<ConvBnAct>,
    pub se: Option<SqueezeExcite>,
    /// The SE gates the output of `layers[se_after]`.
    pub se_after: usize,
}

impl Block {
    pub fn load(spec: &ir::Block, padding: PaddingMode, vb: &VarBuilder) -> CResult<Self> {
        let layers = spec
            .layers
            .conv_bns()
            .into_iter()
            .map(|l| {
                let act = l.activated.then_some(spec.activation);
                ConvBnAct::load(l.conv, l.bn, padding, act, vb)
            })
            .collect::<CResult<Vec<_>>>()?;
        let se = spec.layers.se();
        let se_after = spec.layers.se_after();
        let se = se
            .map(|s| SqueezeExcite::load(s, spec.activation, vb))
            .transpose()?;
        Ok(Block {
            spec: spec.clone(),
            layers,
            se,
            se_after,
        })
    }

    /// `drop_path_scale` multiplies the block's IR drop-path rate (progressive learning may
    /// change the network's rate during training).
    pub fn forward_t(
        &self,
        x: &Tensor,
        train: bool,
        drop_path_scale: f64,
        rng: &NetRng,
    ) -> CResult<Tensor> {
        if !train && let Some(y) = self.forward_fused(x)? {
            return Ok(y);
        }
        let mut y = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            y = l.forward_t(&y, train)?;
            if i == self.se_after
                && let Some(se) = &self.se
            {
                y = se.forward(&y)?;
            }
        }
        if !self.spec.residual {
            return Ok(y);
        }
        let rate = self.spec.drop_path * drop_path_scale;
        if train && rate > 0.0 {
            let mask = rng.sample_mask(y.dim(0)?, 1.0 - rate, 4, y.device(), y.dtype())?;
            y = y.broadcast_mul(&mask)?;
        }
        y + x
    }

    /// Eval mode on the fused CPU kernels, `None` when they cannot run the block.
    fn forward_fused(&self, x: &Tensor) -> CResult<Option<Tensor>> {
        if !self.fusable() {
            return Ok(None);
        }
        let Some(m) = FusedMap::from_nchw(x)? else {
            return Ok(None);
        };
        match self.fused(&m)? {
            Some(y) => y.to_nchw().map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn fusable(&self) -> bool {
        !self.layers.is_empty()
            && self.layers.iter().all(ConvBnAct::fusable)
            && self.se.as_ref().is_none_or(SqueezeExcite::fusable)
    }

    /// The whole block in eval mode on the fused CPU kernels (NHWC): each convolution with
    /// its BatchNorm and activation in one pass, the SE squeeze accumulated by the layer that
    /// produces its input, the residual added in the last layer's epilogue.
    pub(crate) fn fused(&self, x: &FusedMap) -> CResult<Option<FusedMap>> {
        let last = self.layers.len().saturating_sub(1);
        let mut cur: Option<FusedMap> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let input = cur.as_ref().unwrap_or(x);
            let want_means = self.se.is_some() && i == self.se_after;
            let residual = (i == last && self.spec.residual).then_some(x.data.as_slice());
            let Some(mut out) = layer.fused(input, residual, want_means)? else {
                return Ok(None);
            };
            if let (Some(se), Some(means)) = (&self.se, out.means.take()) {
                let [n, h, w, c] = out.dims;
                let Some(gate) = se.fused_gates(&means, n)? else {
                    return Ok(None);
                };
                crate::ops::cpu::gate_channels(&mut out.data, &gate, n, h * w, c);
            }
            cur = Some(out);
        }
        Ok(cur)
    }

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        for (i, l) in self.layers.iter().enumerate() {
            l.named(out);
            if i == self.se_after
                && let Some(se) = &self.se
            {
                se.named(out);
            }
        }
    }
}

/// A whole network, built from the IR.
#[derive(Debug)]
pub struct Network {
    pub ir: ir::Network,
    pub stem: ConvBnAct,
    pub stages: Vec<Vec<Block>>,
    pub head: Option<ConvBnAct>,
    pub classifier: Classifier,
    /// Head dropout in training; starts at the IR's, progressive learning changes it.
    pub dropout: f64,
    /// Multiplies every block's drop-path rate; 1 keeps the IR's rates.
    pub drop_path_scale: f64,
    rng: NetRng,
}

impl Network {
    /// Build the network, asking `vb` for every tensor by its IR (timm) name.
    pub fn from_ir(ir: &ir::Network, vb: VarBuilder) -> CResult<Self> {
        let pad = ir.padding;
        let stem = ConvBnAct::load(&ir.stem.conv, &ir.stem.bn, pad, Some(ir.activation), &vb)?;
        let stages = ir
            .stages
            .iter()
            .map(|s| s.blocks.iter().map(|b| Block::load(b, pad, &vb)).collect())
            .collect::<CResult<Vec<Vec<Block>>>>()?;
        let head = ir
            .head
            .as_ref()
            .map(|h| ConvBnAct::load(&h.conv, &h.bn, pad, Some(ir.activation), &vb))
            .transpose()?;
        let classifier = Classifier::load(&ir.classifier, &vb)?;
        Ok(Network {
            ir: ir.clone(),
            stem,
            stages,
            head,
            classifier,
            dropout: ir.dropout,
            drop_path_scale: 1.0,
            rng: NetRng(Mutex::new(ChaCha8Rng::seed_from_u64(0))),
        })
    }

    /// Reseed the generator behind stochastic depth and dropout.
    pub fn seed(&mut self, seed: u64) {
        self.rng = NetRng(Mutex::new(ChaCha8Rng::seed_from_u64(seed)));
    }

    /// The generator's state, for checkpoints.
    pub fn rng_state(&self) -> Option<ChaCha8Rng> {
        self.rng.0.lock().ok().map(|r| r.clone())
    }

    pub fn set_rng_state(&mut self, rng: ChaCha8Rng) {
        self.rng = NetRng(Mutex::new(rng));
    }

    /// The network as borrowed parts, the one place the forward pass is written (shared with
    /// the structs `#[effnet::model]` generates). `stages` holds the stage slices.
    fn parts<'a>(&'a self, stages: &'a [&'a [Block]]) -> NetworkParts<'a> {
        NetworkParts {
            ir: &self.ir,
            stem: &self.stem,
            stages,
            head: self.head.as_ref(),
            classifier: &self.classifier,
            dropout: self.dropout,
            drop_path_scale: self.drop_path_scale,
            rng: &self.rng,
        }
    }

    fn stage_slices(&self) -> Vec<&[Block]> {
        self.stages.iter().map(Vec::as_slice).collect()
    }

    /// Each stage's output, like timm's `features_only` (stem excluded).
    pub fn forward_features_t(&self, x: &Tensor, train: bool) -> CResult<Vec<Tensor>> {
        self.parts(&self.stage_slices())
            .forward_features_t(x, train)
    }

    pub fn forward_features(&self, x: &Tensor) -> CResult<Vec<Tensor>> {
        self.forward_features_t(x, false)
    }

    /// The logits.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        self.parts(&self.stage_slices()).forward_t(x, train)
    }

    /// Every tensor the network holds, named as timm names them, in `state_dict` order.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.parts(&self.stage_slices()).named_tensors()
    }
}

impl ModuleT for Network {
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        Network::forward_t(self, x, train)
    }
}
