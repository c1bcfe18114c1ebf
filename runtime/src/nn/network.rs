//! A whole network as data: its layers, the training-time settings progressive learning
//! changes (dropout, the drop-path scale), the generator behind its own random masks, and a
//! cache the execution plans fill. [`NetworkParts`] is the borrowed view every walk takes, so
//! that the interpreter ([`Network`]) and the structs `#[effnet::model]` generates run the
//! same code.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::Tensor;
use candle_nn::VarBuilder;
use effnet_compiler::ir;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::layers::{Block, CResult, Classifier, ConvBnAct, NamedTensor};

/// The generator a network owns for the masks of its own train-mode forward
/// (`forward_t(x, true)`); the trainer passes its own generator explicitly instead.
#[derive(Debug)]
pub struct NetRng(pub Mutex<ChaCha8Rng>);

impl NetRng {
    pub fn seeded(seed: u64) -> Self {
        NetRng(Mutex::new(ChaCha8Rng::seed_from_u64(seed)))
    }

    /// The generator's current state.
    pub fn state(&self) -> ChaCha8Rng {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What the execution plans prepare from a network's weights and keep between calls (the CPU
/// kernels' packed convolution weights, for one), by key. Opaque here: how a network runs is
/// not what it is. A clone starts empty and refills on first use.
#[derive(Default)]
pub struct PreparedCache(Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>);

impl PreparedCache {
    /// The value stored under `key`, if it has type `T`.
    pub fn get<T: Any + Send + Sync>(&self, key: &str) -> Option<Arc<T>> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).cloned().and_then(|v| v.downcast::<T>().ok())
    }

    pub fn insert<T: Any + Send + Sync>(&self, key: &str, value: Arc<T>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(key.to_string(), value);
    }
}

impl Clone for PreparedCache {
    fn clone(&self) -> Self {
        PreparedCache::default()
    }
}

impl std::fmt::Debug for PreparedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |m| m.len());
        write!(f, "PreparedCache({n} entries)")
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
    prepared: PreparedCache,
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
            rng: NetRng::seeded(0),
            prepared: PreparedCache::default(),
        })
    }

    /// Reseed the generator behind the masks of `forward_t(x, true)`.
    pub fn seed(&mut self, seed: u64) {
        self.rng = NetRng::seeded(seed);
    }

    /// The generator's state, for checkpoints.
    pub fn rng_state(&self) -> ChaCha8Rng {
        self.rng.state()
    }

    pub fn set_rng_state(&mut self, rng: ChaCha8Rng) {
        self.rng = NetRng(Mutex::new(rng));
    }

    /// Each stage's blocks, as the slices [`NetworkParts`] borrows.
    pub fn stage_slices(&self) -> Vec<&[Block]> {
        self.stages.iter().map(Vec::as_slice).collect()
    }

    /// The network as borrowed parts, what every walk runs on. `stages` holds the stage
    /// slices ([`Network::stage_slices`]).
    pub fn parts<'a>(&'a self, stages: &'a [&'a [Block]]) -> NetworkParts<'a> {
        NetworkParts {
            ir: &self.ir,
            stem: &self.stem,
            stages,
            head: self.head.as_ref(),
            classifier: &self.classifier,
            dropout: self.dropout,
            drop_path_scale: self.drop_path_scale,
            rng: &self.rng,
            prepared: &self.prepared,
        }
    }

    /// Every tensor the network holds, named as timm names them, in `state_dict` order.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.parts(&self.stage_slices()).named_tensors()
    }
}

/// A network's parts, borrowed: the one form the walks (`crate::exec`) take, built by the
/// interpreter ([`Network::parts`]) and by the structs `#[effnet::model]` generates (whose
/// stages are typed fields), so both give bit-identical outputs.
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
    pub prepared: &'a PreparedCache,
}

impl NetworkParts<'_> {
    /// Every block, in order.
    pub fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.stages.iter().flat_map(|s| s.iter())
    }

    /// Every conv-bn-act layer (stem, blocks, head), in order.
    pub fn layers(&self) -> impl Iterator<Item = &ConvBnAct> {
        std::iter::once(self.stem)
            .chain(self.blocks().flat_map(|b| b.layers.iter()))
            .chain(self.head)
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

    /// The input must be `[batch, channels, height, width]` with the network's channels.
    pub fn check_input(&self, x: &Tensor) -> CResult<()> {
        match x.dims() {
            [_, c, h, w] if *c == self.ir.input_channels && *h > 0 && *w > 0 => Ok(()),
            d => Err(candle_core::Error::Msg(format!(
                "`{}` expects input [batch, {}, height, width], got {d:?}",
                self.ir.name, self.ir.input_channels
            ))),
        }
    }
}
