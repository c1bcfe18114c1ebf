//! The interpreter: builds a network from the IR and runs it, in eval or train mode.
//! Generated (macro) code calls the same blocks, so both share one implementation.

use std::sync::Mutex;

use candle_core::{Module, ModuleT, Tensor};

// `Network` implements `ModuleT` only: candle's blanket `ModuleT for M: Module` would drop the
// train flag.
use candle_nn::VarBuilder;
use effnet_compiler::ir::{self, Activation, BlockLayers, PaddingMode};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::layers::*;

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
        let y = self.bn.forward_t(&self.conv.forward(x)?, train)?;
        match self.activation {
            Some(a) => activate(&y, a),
            None => Ok(y),
        }
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
        let act = Some(spec.activation);
        let mut layers = Vec::new();
        let mut cba = |c: &ir::Conv, b: &ir::BatchNorm, a: Option<Activation>| -> CResult<()> {
            layers.push(ConvBnAct::load(c, b, padding, a, vb)?);
            Ok(())
        };
        // The last BatchNorm of ds, er and ir blocks has no activation (a linear bottleneck).
        let (se, se_after) = match &spec.layers {
            BlockLayers::Conv { conv, bn1 } => {
                cba(conv, bn1, act)?;
                (None, 0)
            }
            BlockLayers::DepthwiseSeparable {
                conv_dw,
                bn1,
                se,
                conv_pw,
                bn2,
            } => {
                cba(conv_dw, bn1, act)?;
                cba(conv_pw, bn2, None)?;
                (se.as_ref(), 0)
            }
            BlockLayers::Edge {
                conv_exp,
                bn1,
                se,
                conv_pwl,
                bn2,
            } => {
                cba(conv_exp, bn1, act)?;
                cba(conv_pwl, bn2, None)?;
                (se.as_ref(), 0)
            }
            BlockLayers::MbConv {
                conv_pw,
                bn1,
                conv_dw,
                bn2,
                se,
                conv_pwl,
                bn3,
            } => {
                cba(conv_pw, bn1, act)?;
                cba(conv_dw, bn2, act)?;
                cba(conv_pwl, bn3, None)?;
                (se.as_ref(), 1)
            }
        };
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
        let mut y = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            y = l.forward_t(&y, train)?;
            if i == self.se_after {
                if let Some(se) = &self.se {
                    y = se.forward(&y)?;
                }
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

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        for (i, l) in self.layers.iter().enumerate() {
            l.named(out);
            if i == self.se_after {
                if let Some(se) = &self.se {
                    se.named(out);
                }
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

    /// Each stage's output, like timm's `features_only` (stem excluded).
    pub fn forward_features_t(&self, x: &Tensor, train: bool) -> CResult<Vec<Tensor>> {
        self.check_input(x)?;
        let mut y = self.stem.forward_t(x, train)?;
        let mut out = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for b in stage {
                y = b.forward_t(&y, train, self.drop_path_scale, &self.rng)?;
            }
            out.push(y.clone());
        }
        Ok(out)
    }

    pub fn forward_features(&self, x: &Tensor) -> CResult<Vec<Tensor>> {
        self.forward_features_t(x, false)
    }

    /// The logits.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        self.check_input(x)?;
        let mut y = self.stem.forward_t(x, train)?;
        for stage in &self.stages {
            for b in stage {
                y = b.forward_t(&y, train, self.drop_path_scale, &self.rng)?;
            }
        }
        if let Some(h) = &self.head {
            y = h.forward_t(&y, train)?;
        }
        let pooled = y.mean((2, 3))?;
        let pooled = if train && self.dropout > 0.0 {
            let mask = self.rng.dropout_mask(&pooled, 1.0 - self.dropout)?;
            (pooled * mask)?
        } else {
            pooled
        };
        self.classifier.forward(&pooled)
    }

    fn check_input(&self, x: &Tensor) -> CResult<()> {
        match x.dims() {
            [_, c, h, w] if *c == self.ir.input_channels && *h > 0 && *w > 0 => Ok(()),
            d => Err(candle_core::Error::Msg(format!(
                "`{}` expects input [batch, {}, height, width], got {d:?}",
                self.ir.name, self.ir.input_channels
            ))),
        }
    }

    /// Every tensor the network holds, named as timm names them, in `state_dict` order.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut out = Vec::new();
        self.stem.named(&mut out);
        for b in self.stages.iter().flatten() {
            b.named(&mut out);
        }
        if let Some(h) = &self.head {
            h.named(&mut out);
        }
        self.classifier.named(&mut out);
        out
    }
}

impl ModuleT for Network {
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        Network::forward_t(self, x, train)
    }
}
