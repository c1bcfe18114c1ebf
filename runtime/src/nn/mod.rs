//! What a network is: its layers and their tensors (timm's names), built from the IR, with no
//! notion of how it runs (that is `crate::exec`).
//!
//! - [`layers`]: convolution, normalization (BatchNorm, GroupNorm), squeeze-excitation, the classifier, and the two
//!   compounds every network is made of: [`ConvBnAct`] and [`Block`].
//! - [`network`]: the whole [`Network`] and the borrowed view [`NetworkParts`] the walks take.

pub mod layers;
pub mod network;

pub use layers::{
    Block, CResult, Classifier, Conv2d, ConvBnAct, GlobalContext, NamedTensor, Norm, Param,
    RunningStats, SqueezeExcite,
};
pub use network::{NetRng, Network, NetworkParts, PreparedCache};
