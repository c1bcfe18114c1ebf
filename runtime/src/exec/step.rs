//! The training-step walk: one batch forward in train mode and backward through the whole
//! network, the one place a training step is written. A backend ([`StepOps`]) implements the
//! layer operations and their backward on its own maps and keeps the gradients; the walk
//! decides the order, keeps the tapes, draws the drop-path and dropout masks (in the forward
//! walk's order, so every plan draws the same masks from the same generator), and runs the
//! tail (dropout, classifier, soft-target cross-entropy and their backward) once for every
//! backend, as candle ops on the small pooled matrix.
//!
//! `super::loss_and_grads` (what the trainer and `effnet bench --train` call) picks the plan
//! and runs this walk on the CPU kernels (`Plan::CpuStep`), or candle's autograd through the
//! forward walk (`Plan::Candle`).

use std::collections::HashSet;
use std::rc::Rc;

use candle_core::{DType, Result, Tensor, bail};
use rand_chacha::ChaCha8Rng;

use super::shared::{keep_mask, soft_cross_entropy_and_grad};
use crate::nn::Param;
use crate::nn::{Block, ConvBnAct, NamedTensor, NetworkParts, SqueezeExcite};

/// The layer operations of a training step, forward (keeping a tape) and backward, on a
/// backend's maps; the backend accumulates every gradient by tensor name.
pub(crate) trait StepOps {
    /// An activation map, or a gradient shaped like one.
    type Map;
    /// What a conv-bn-act layer keeps for its backward.
    type LayerTape;
    /// What a squeeze-excitation keeps for its backward.
    type SeTape;

    fn input(&mut self, x: &Tensor) -> Result<Self::Map>;
    /// conv, train-mode BatchNorm (updating its running statistics), activation.
    fn layer_forward(
        &mut self,
        l: &ConvBnAct,
        x: Rc<Self::Map>,
    ) -> Result<(Self::LayerTape, Self::Map)>;
    /// The gradient at the layer's input from `d` at its output (`None` unless `need_dx`);
    /// adds the layer's parameter gradients.
    fn layer_backward(
        &mut self,
        l: &ConvBnAct,
        t: &Self::LayerTape,
        d: Self::Map,
        need_dx: bool,
    ) -> Result<Option<Self::Map>>;
    fn se_forward(
        &mut self,
        se: &SqueezeExcite,
        x: Rc<Self::Map>,
    ) -> Result<(Self::SeTape, Self::Map)>;
    fn se_backward(
        &mut self,
        se: &SqueezeExcite,
        t: &Self::SeTape,
        d: Self::Map,
    ) -> Result<Self::Map>;
    /// `y * keep + x` (`keep` one factor per image) or `y + x`.
    fn residual(&mut self, y: Self::Map, x: &Self::Map, keep: Option<&[f32]>) -> Result<Self::Map>;
    /// `d * keep` per image.
    fn scale_images(&mut self, d: Self::Map, keep: &[f32]) -> Result<Self::Map>;
    /// `a + b`.
    fn add(&mut self, a: Self::Map, b: &Self::Map) -> Result<Self::Map>;
    /// A copy (the residual's gradient goes two ways).
    fn duplicate(&mut self, d: &Self::Map) -> Result<Self::Map>;
    fn batch(&self, x: &Self::Map) -> usize;
    /// Global average pooling to an `[N, C]` f32 tensor, and the map's dims for the backward.
    fn pool(&mut self, y: Self::Map) -> Result<(Tensor, [usize; 4])>;
    /// The gradient at the pooled map's input from the `[N, C]` gradient at its output.
    fn unpool(&mut self, d: &Tensor, dims: [usize; 4]) -> Result<Self::Map>;
    /// Adds a gradient computed by the walk (the classifier's).
    fn add_grad(&mut self, name: String, g: &Tensor) -> Result<()>;
    /// The gradient of each of `params`, in their order (zeros for one never reached).
    fn into_grads(self, params: &[Param]) -> Result<Vec<Tensor>>;
}

struct BlockTape<O: StepOps> {
    layers: Vec<O::LayerTape>,
    se: Option<O::SeTape>,
    /// The drop-path factors, one per image, when the block drew them.
    keep: Option<Vec<f32>>,
}

fn block_forward<O: StepOps>(
    ops: &mut O,
    b: &Block,
    x: Rc<O::Map>,
    drop_path_scale: f64,
    rng: &mut ChaCha8Rng,
) -> Result<(BlockTape<O>, O::Map)> {
    let mut cur = Rc::clone(&x);
    let mut layers = Vec::with_capacity(b.layers.len());
    let mut se_tape = None;
    for (i, l) in b.layers.iter().enumerate() {
        let (t, y) = ops.layer_forward(l, cur)?;
        layers.push(t);
        cur = Rc::new(y);
        if i == b.se_after
            && let Some(se) = &b.se
        {
            let (t, gated) = ops.se_forward(se, cur)?;
            se_tape = Some(t);
            cur = Rc::new(gated);
        }
    }
    // The output map is shared only if a tape kept it (an SE after the last layer).
    let out = match Rc::try_unwrap(cur) {
        Ok(m) => m,
        Err(rc) => ops.duplicate(&rc)?,
    };
    let mut keep = None;
    let out = if b.spec.residual {
        let rate = b.spec.drop_path * drop_path_scale;
        if rate > 0.0 {
            keep = Some(keep_mask(ops.batch(&out), 1.0 - rate, rng));
        }
        ops.residual(out, &x, keep.as_deref())?
    } else {
        out
    };
    let tape = BlockTape {
        layers,
        se: se_tape,
        keep,
    };
    Ok((tape, out))
}

/// `d` is the gradient at the block's output; returns the gradient at its input.
fn block_backward<O: StepOps>(
    ops: &mut O,
    b: &Block,
    t: &BlockTape<O>,
    d: O::Map,
) -> Result<O::Map> {
    let residual = if b.spec.residual {
        Some(ops.duplicate(&d)?)
    } else {
        None
    };
    let mut d = match &t.keep {
        Some(k) => ops.scale_images(d, k)?,
        None => d,
    };
    for (i, l) in b.layers.iter().enumerate().rev() {
        if i == b.se_after
            && let (Some(se), Some(st)) = (&b.se, &t.se)
        {
            d = ops.se_backward(se, st, d)?;
        }
        d = match ops.layer_backward(l, &t.layers[i], d, true)? {
            Some(dx) => dx,
            None => bail!("no input gradient from `{}`", l.conv.spec.path),
        };
    }
    match residual {
        Some(r) => ops.add(d, &r),
        None => Ok(d),
    }
}

/// How far back the backward pass must go: the stem and the first blocks may all be frozen
/// (fine-tuning), and then no gradient is needed there or before them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum BackwardTo {
    /// Through the stem: every gradient.
    #[default]
    Input,
    /// The stem and the first `n` blocks have no parameter to train: the backward stops at
    /// block `n`'s input, and their gradients stay zero.
    Block(usize),
}

impl BackwardTo {
    /// From the names of the frozen parameters: the stem's and the leading blocks' parameters
    /// all among them.
    pub(crate) fn of(net: &NetworkParts, frozen: &HashSet<&str>) -> Self {
        let all_frozen = |tensors: Vec<NamedTensor>| {
            tensors
                .iter()
                .filter(|t| t.trainable)
                .all(|t| frozen.contains(t.name.as_str()))
        };
        let mut stem = Vec::new();
        net.stem.named(&mut stem);
        if frozen.is_empty() || !all_frozen(stem) {
            return BackwardTo::Input;
        }
        let n = net
            .blocks()
            .take_while(|b| {
                let mut v = Vec::new();
                b.named(&mut v);
                all_frozen(v)
            })
            .count();
        BackwardTo::Block(n)
    }
}

/// The loss of one batch (before the update); the gradients stay in `ops`. `x` is
/// `[N, C, H, W]`, `targets` `[N, classes]`; updates the BatchNorm running statistics and
/// draws the drop-path and dropout masks from `rng`. The backward runs back to `to`.
pub(crate) fn step<O: StepOps>(
    ops: &mut O,
    net: &NetworkParts,
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
    to: BackwardTo,
) -> Result<f64> {
    net.check_input(x)?;
    let n = x.dim(0)?;
    let classes = net.ir.num_classes;
    if targets.dims() != [n, classes] {
        bail!("targets must be [{n}, {classes}], got {:?}", targets.dims());
    }

    // Forward.
    let input = Rc::new(ops.input(x)?);
    let (stem_tape, mut y) = ops.layer_forward(net.stem, input)?;
    let mut tapes = Vec::new();
    for b in net.blocks() {
        let (t, out) = block_forward(ops, b, Rc::new(y), net.drop_path_scale, rng)?;
        tapes.push(t);
        y = out;
    }
    let head_tape = match net.head {
        Some(h) => {
            let (t, out) = ops.layer_forward(h, Rc::new(y))?;
            y = out;
            Some(t)
        }
        None => None,
    };
    let (pooled, dims) = ops.pool(y)?;
    let fc = pooled.dim(1)?;
    let keep = (net.dropout > 0.0).then(|| keep_mask(n * fc, 1.0 - net.dropout, rng));
    let keep = match keep {
        Some(k) => Some(Tensor::from_vec(k, (n, fc), pooled.device())?),
        None => None,
    };
    let dropped = match &keep {
        Some(k) => (&pooled * k)?,
        None => pooled,
    };
    let cls = net.classifier;
    let w = cls.weight.to_dtype(DType::F32)?;
    let logits = dropped
        .matmul(&w.t()?)?
        .broadcast_add(&cls.bias.to_dtype(DType::F32)?)?;
    let (loss, dlogits) = soft_cross_entropy_and_grad(&logits, targets)?;

    // Backward.
    let cp = &cls.spec.path;
    ops.add_grad(format!("{cp}.weight"), &dlogits.t()?.matmul(&dropped)?)?;
    ops.add_grad(format!("{cp}.bias"), &dlogits.sum(0)?)?;
    let mut dpooled = dlogits.matmul(&w)?;
    if let Some(k) = &keep {
        dpooled = (dpooled * k)?;
    }
    let mut d = ops.unpool(&dpooled, dims)?;
    if let (Some(h), Some(t)) = (net.head, &head_tape) {
        d = match ops.layer_backward(h, t, d, true)? {
            Some(dx) => dx,
            None => bail!("no input gradient from the head"),
        };
    }
    let blocks: Vec<&Block> = net.blocks().collect();
    let first = match to {
        BackwardTo::Input => 0,
        BackwardTo::Block(n) => n,
    };
    for (b, t) in blocks.into_iter().zip(&tapes).skip(first).rev() {
        d = block_backward(ops, b, t, d)?;
    }
    if to == BackwardTo::Input {
        ops.layer_backward(net.stem, &stem_tape, d, false)?;
    }
    Ok(loss)
}
