//! What every network looks like to the code that runs it: the interpreter ([`Network`]) and
//! the typed structs `#[effnet::model]` generates both implement [`EffNet`], so the trainer and
//! the tools take either.
//!
//! The rest of this module is what generated code calls: the parts of a forward pass outside the
//! blocks (the blocks themselves are [`Block`]s, the interpreter's own), loading helpers and the
//! `'static` schedule constants.

use std::sync::Mutex;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use effnet_compiler::ir;
use rand::SeedableRng;
pub use rand_chacha::ChaCha8Rng;

use crate::layers::{CResult, Classifier, FusedMap, NamedTensor, NetRng, fusable_tensor};
use crate::network::{Block, ConvBnAct, Network};

/// A network that can be run and trained: the interpreter or a generated struct.
pub trait EffNet {
    /// The IR the network was built from.
    fn ir(&self) -> &ir::Network;
    /// The logits; `train` selects batch statistics, stochastic depth and dropout.
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor>;
    /// Each stage's output, like timm's `features_only` (stem excluded).
    fn forward_features_t(&self, x: &Tensor, train: bool) -> CResult<Vec<Tensor>>;
    /// Every tensor the network holds, under timm's names, in `state_dict` order.
    fn named_tensors(&self) -> Vec<NamedTensor>;
    /// Head dropout used in training.
    fn dropout(&self) -> f64;
    fn set_dropout(&mut self, rate: f64);
    /// The factor on every block's drop-path rate (1 keeps the IR's rates).
    fn drop_path_scale(&self) -> f64;
    fn set_drop_path_scale(&mut self, scale: f64);
    /// Reseed the generator behind stochastic depth and dropout.
    fn seed(&mut self, seed: u64);
    /// The generator's state, for checkpoints.
    fn rng_state(&self) -> Option<ChaCha8Rng>;
    fn set_rng_state(&mut self, rng: ChaCha8Rng);
}

impl EffNet for Network {
    fn ir(&self) -> &ir::Network {
        &self.ir
    }
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        Network::forward_t(self, x, train)
    }
    fn forward_features_t(&self, x: &Tensor, train: bool) -> CResult<Vec<Tensor>> {
        Network::forward_features_t(self, x, train)
    }
    fn named_tensors(&self) -> Vec<NamedTensor> {
        Network::named_tensors(self)
    }
    fn dropout(&self) -> f64 {
        self.dropout
    }
    fn set_dropout(&mut self, rate: f64) {
        self.dropout = rate;
    }
    fn drop_path_scale(&self) -> f64 {
        self.drop_path_scale
    }
    fn set_drop_path_scale(&mut self, scale: f64) {
        self.drop_path_scale = scale;
    }
    fn seed(&mut self, seed: u64) {
        Network::seed(self, seed);
    }
    fn rng_state(&self) -> Option<ChaCha8Rng> {
        Network::rng_state(self)
    }
    fn set_rng_state(&mut self, rng: ChaCha8Rng) {
        Network::set_rng_state(self, rng);
    }
}

/// One stage of a progressive-learning schedule, as a constant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleStageConst {
    /// Epochs `[start, end)`.
    pub epochs: (usize, usize),
    pub image_size: usize,
    pub randaug: f64,
    pub mixup: f64,
    pub cutmix: f64,
    pub dropout: f64,
    pub drop_path: Option<f64>,
    pub batch_size: Option<usize>,
}

/// A schedule of the spec as a `'static` constant: its per-stage values (the optimizer and the
/// learning rate are in the IR, [`EffNet::ir`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleConst {
    pub name: &'static str,
    pub epochs: usize,
    pub stages: &'static [ScheduleStageConst],
    pub label_smoothing: Option<f64>,
    pub ema: Option<f64>,
    pub grad_clip: Option<f64>,
}

impl ScheduleConst {
    /// The stage that covers `epoch` (0-based); the last stage for epochs past the end.
    pub fn stage_at(&self, epoch: usize) -> Option<&'static ScheduleStageConst> {
        let stages: &'static [ScheduleStageConst] = self.stages;
        stages
            .iter()
            .find(|s| epoch >= s.epochs.0 && epoch < s.epochs.1)
            .or(stages.last())
    }

    /// The schedule named `name` among `schedules`.
    pub fn find(schedules: &'static [ScheduleConst], name: &str) -> Option<&'static ScheduleConst> {
        schedules.iter().find(|s| s.name == name)
    }
}

fn spec_error(msg: String) -> crate::Error {
    crate::Error::Candle(candle_core::Error::Msg(msg))
}

/// Compile the embedded spec again and take the model `name` (generated `load` calls this; the
/// macro has already compiled the same text, so the errors here cannot happen in practice).
pub fn network_ir(spec: &str, name: &str) -> crate::Result<ir::Network> {
    let compiled = effnet_compiler::compile(spec).map_err(|d| {
        spec_error(format!(
            "the embedded spec no longer compiles: {}",
            d.iter()
                .map(|d| d.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    compiled
        .networks
        .into_iter()
        .find(|n| n.name == name)
        .ok_or_else(|| spec_error(format!("the embedded spec has no model `{name}`")))
}

/// The stem: conv, BatchNorm, the network's activation.
pub fn load_stem(ir: &ir::Network, vb: &VarBuilder) -> crate::Result<ConvBnAct> {
    Ok(ConvBnAct::load(
        &ir.stem.conv,
        &ir.stem.bn,
        ir.padding,
        Some(ir.activation),
        vb,
    )?)
}

/// The blocks of stage `stage`, which must have exactly `N` of them.
pub fn load_blocks<const N: usize>(
    ir: &ir::Network,
    stage: usize,
    vb: &VarBuilder,
) -> crate::Result<[Block; N]> {
    let spec = ir
        .stages
        .get(stage)
        .ok_or_else(|| spec_error(format!("`{}` has no stage {stage}", ir.name)))?;
    let blocks = spec
        .blocks
        .iter()
        .map(|b| Block::load(b, ir.padding, vb))
        .collect::<CResult<Vec<Block>>>()?;
    let found = blocks.len();
    <[Block; N]>::try_from(blocks).map_err(|_| {
        spec_error(format!(
            "stage {stage} of `{}` has {found} blocks, the generated struct {N}",
            ir.name
        ))
    })
}

/// The head conv-bn-act, which the generated struct expects to exist.
pub fn load_head(ir: &ir::Network, vb: &VarBuilder) -> crate::Result<ConvBnAct> {
    let h = ir
        .head
        .as_ref()
        .ok_or_else(|| spec_error(format!("`{}` has no head", ir.name)))?;
    Ok(ConvBnAct::load(
        &h.conv,
        &h.bn,
        ir.padding,
        Some(ir.activation),
        vb,
    )?)
}

pub fn load_classifier(ir: &ir::Network, vb: &VarBuilder) -> crate::Result<Classifier> {
    Ok(Classifier::load(&ir.classifier, vb)?)
}

/// A generator seeded as the interpreter seeds its own.
pub fn new_rng(seed: u64) -> NetRng {
    NetRng(Mutex::new(ChaCha8Rng::seed_from_u64(seed)))
}

pub fn rng_from_state(rng: ChaCha8Rng) -> NetRng {
    NetRng(Mutex::new(rng))
}

pub fn rng_state(rng: &NetRng) -> Option<ChaCha8Rng> {
    rng.0.lock().ok().map(|r| r.clone())
}

/// The input must be `[batch, channels, height, width]` with the network's channels.
pub fn check_input(ir: &ir::Network, x: &Tensor) -> CResult<()> {
    match x.dims() {
        [_, c, h, w] if *c == ir.input_channels && *h > 0 && *w > 0 => Ok(()),
        d => Err(candle_core::Error::Msg(format!(
            "`{}` expects input [batch, {}, height, width], got {d:?}",
            ir.name, ir.input_channels
        ))),
    }
}

/// A network's parts, borrowed: the forward pass over them is written once, here, for the
/// interpreter ([`Network`]) and for the structs `#[effnet::model]` generates (whose stages
/// are typed fields), so both give bit-identical outputs: the same [`Block`]s, and in eval
/// mode the same whole-network fused CPU path (NHWC from stem to pooling) where it applies.
#[derive(Debug, Clone, Copy)]
pub struct NetworkParts<'a> {
    pub ir: &'a ir::Network,
    pub stem: &'a ConvBnAct,
    pub stages: &'a [&'a [Block]],
    pub head: Option<&'a ConvBnAct>,
    pub classifier: &'a Classifier,
    pub dropout: f64,
    pub drop_path_scale: f64,
    pub rng: &'a NetRng,
}

impl NetworkParts<'_> {
    fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.stages.iter().flat_map(|s| s.iter())
    }

    /// The logits.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        check_input(self.ir, x)?;
        if !train && let Some(logits) = self.forward_fused(x)? {
            return Ok(logits);
        }
        let mut y = self.stem.forward_t(x, train)?;
        for b in self.blocks() {
            y = b.forward_t(&y, train, self.drop_path_scale, self.rng)?;
        }
        classify(
            &y,
            self.head,
            self.classifier,
            self.dropout,
            train,
            self.rng,
        )
    }

    /// Each stage's output (stem excluded).
    pub fn forward_features_t(&self, x: &Tensor, train: bool) -> CResult<Vec<Tensor>> {
        check_input(self.ir, x)?;
        if !train && let Some((_, outs)) = self.fused_body(x, true)? {
            return Ok(outs);
        }
        let mut y = self.stem.forward_t(x, train)?;
        let mut out = Vec::with_capacity(self.stages.len());
        for stage in self.stages {
            for b in *stage {
                y = b.forward_t(&y, train, self.drop_path_scale, self.rng)?;
            }
            out.push(y.clone());
        }
        Ok(out)
    }

    /// Every tensor, under timm's names, in `state_dict` order.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut out = Vec::new();
        self.stem.named(&mut out);
        for b in self.blocks() {
            b.named(&mut out);
        }
        if let Some(h) = self.head {
            h.named(&mut out);
        }
        self.classifier.named(&mut out);
        out
    }

    /// Whether eval mode can run entirely on the fused CPU kernels.
    fn fusable(&self) -> bool {
        self.stem.fusable()
            && self.blocks().all(Block::fusable)
            && self.head.is_none_or(ConvBnAct::fusable)
            && fusable_tensor(&self.classifier.weight)
            && fusable_tensor(&self.classifier.bias)
    }

    /// Stem and stages in eval mode on the fused kernels, in NHWC between layers; with
    /// `features`, each stage's output as an NCHW tensor too.
    fn fused_body(&self, x: &Tensor, features: bool) -> CResult<Option<(FusedMap, Vec<Tensor>)>> {
        if !self.fusable() {
            return Ok(None);
        }
        let Some(input) = FusedMap::from_nchw(x)? else {
            return Ok(None);
        };
        let Some(mut y) = self.stem.fused(&input, None, false)? else {
            return Ok(None);
        };
        let mut outs = Vec::new();
        for stage in self.stages {
            for b in *stage {
                let Some(next) = b.fused(&y)? else {
                    return Ok(None);
                };
                y = next;
            }
            if features {
                outs.push(y.to_nchw()?);
            }
        }
        Ok(Some((y, outs)))
    }

    /// The logits in eval mode on the fused kernels: body, head, pooling in NHWC, then the
    /// classifier in f32.
    fn forward_fused(&self, x: &Tensor) -> CResult<Option<Tensor>> {
        let Some((mut y, _)) = self.fused_body(x, false)? else {
            return Ok(None);
        };
        if let Some(h) = self.head {
            let Some(next) = h.fused(&y, None, false)? else {
                return Ok(None);
            };
            y = next;
        }
        let [n, hh, ww, c] = y.dims;
        let pooled = crate::ops::cpu::channel_means(&y.data, n, hh * ww, c);
        let pooled = Tensor::from_vec(pooled, (n, c), &candle_core::Device::Cpu)?;
        let f32 = candle_core::DType::F32;
        let w = self.classifier.weight.to_dtype(f32)?;
        let b = self.classifier.bias.to_dtype(f32)?;
        crate::ops::linear(&pooled, &w, Some(&b))?
            .to_dtype(y.dtype)
            .map(Some)
    }
}

/// Everything after the last stage, as the interpreter does it: head, global average pool,
/// dropout in training, classifier.
pub fn classify(
    x: &Tensor,
    head: Option<&ConvBnAct>,
    classifier: &Classifier,
    dropout: f64,
    train: bool,
    rng: &NetRng,
) -> CResult<Tensor> {
    let y = match head {
        Some(h) => h.forward_t(x, train)?,
        None => x.clone(),
    };
    let pooled = y.mean((2, 3))?;
    let pooled = if train && dropout > 0.0 {
        let mask = rng.dropout_mask(&pooled, 1.0 - dropout)?;
        (pooled * mask)?
    } else {
        pooled
    };
    classifier.forward(&pooled)
}

/// `N` stage outputs as an array (for a generated features struct).
pub fn stage_array<const N: usize>(stages: Vec<Tensor>) -> crate::Result<[Tensor; N]> {
    let found = stages.len();
    <[Tensor; N]>::try_from(stages)
        .map_err(|_| spec_error(format!("expected {N} stage outputs, found {found}")))
}

/// Error for the skeleton a spec with errors expands to.
pub fn spec_has_errors<T>(path: &str) -> crate::Result<T> {
    Err(spec_error(format!(
        "`{path}` did not compile; see the compile error"
    )))
}
