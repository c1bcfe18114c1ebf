//! What every network looks like to the code that runs it: the interpreter ([`Network`]) and
//! the typed structs `#[effnet::model]` generates both implement [`EffNet`], so the trainer and
//! the tools take either.
//!
//! The rest of this module is what generated code calls: loading helpers, the generator
//! helpers and the `'static` schedule constants. Generated code runs through the same
//! [`NetworkParts`](crate::nn::NetworkParts) walks as the interpreter (`crate::exec`).

use std::sync::Mutex;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use effnet_compiler::ir;
pub use rand_chacha::ChaCha8Rng;

use crate::nn::{Block, CResult, Classifier, ConvBnAct, NamedTensor, NetRng, Network};

/// A network that can be run and trained: the interpreter or a generated struct.
pub trait EffNet {
    /// The IR the network was built from.
    fn ir(&self) -> &ir::Network;
    /// The logits; `train` selects batch statistics, stochastic depth and dropout.
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor>;
    /// Each stage's output (stem excluded); timm's `features_only` levels are
    /// [`EffNet::forward_pyramid_t`].
    fn forward_features_t(&self, x: &Tensor, train: bool) -> CResult<Vec<Tensor>>;
    /// The feature-pyramid levels `levels` names (timm's `out_indices` into
    /// [`ir::Network::feature_info`]), in that order, like timm's `features_only=True`.
    fn forward_pyramid_t(&self, x: &Tensor, levels: &[usize], train: bool) -> CResult<Vec<Tensor>>;
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
    fn forward_pyramid_t(&self, x: &Tensor, levels: &[usize], train: bool) -> CResult<Vec<Tensor>> {
        Network::forward_pyramid_t(self, x, levels, train)
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
        Some(Network::rng_state(self))
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
/// macro has already compiled the same text, so the errors here cannot happen in practice). As
/// the macro does, only what concerns `name` counts: errors in other models of the file do not.
pub fn network_ir(spec: &str, name: &str) -> crate::Result<ir::Network> {
    let compilation = effnet_compiler::compile_each(spec);
    match compilation.choose(Some(name)) {
        Ok(chosen) => Ok(chosen.network.clone()),
        Err(refusal) => Err(spec_error(format!(
            "the embedded spec no longer compiles: {}",
            match refusal.diagnostics() {
                [] => refusal.message("the embedded spec", "by name"),
                diagnostics => diagnostics
                    .iter()
                    .map(|d| d.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        ))),
    }
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
    NetRng::seeded(seed)
}

pub fn rng_from_state(rng: ChaCha8Rng) -> NetRng {
    NetRng(Mutex::new(rng))
}

pub fn rng_state(rng: &NetRng) -> Option<ChaCha8Rng> {
    Some(rng.state())
}

/// `N` stage outputs as an array (for a generated features struct).
pub fn stage_array<const N: usize>(stages: Vec<Tensor>) -> crate::Result<[Tensor; N]> {
    let found = stages.len();
    <[Tensor; N]>::try_from(stages)
        .map_err(|_| spec_error(format!("expected {N} stage outputs, found {found}")))
}

/// `N` feature-pyramid levels as an array (for a generated `forward_pyramid`).
pub fn level_array<const N: usize>(levels: Vec<Tensor>) -> crate::Result<[Tensor; N]> {
    let found = levels.len();
    <[Tensor; N]>::try_from(levels)
        .map_err(|_| spec_error(format!("expected {N} feature maps, found {found}")))
}

/// Error for the skeleton a spec with errors expands to.
pub fn spec_has_errors<T>(path: &str) -> crate::Result<T> {
    Err(spec_error(format!(
        "`{path}` did not compile; see the compile error"
    )))
}
