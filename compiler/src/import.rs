//! Importers: a `.effnet` model from timm's `arch_def` block strings or from automl's
//! (`efficientnetv2/effnetv2_model.py`, `BlockDecoder`) block strings.
//!
//! Both return formatted `.effnet` text with one `stage` line per block string, each carrying the
//! block string it came from as a trailing comment. The text is not checked here: compile it with
//! [`crate::compile`] (the `effnet import` command does).
//!
//! timm block strings (`_decode_block_str`): `TYPE_rN_kN_sN_eF_cN[_seF][_noskip|_skip][_nXX]`.
//!
//! | timm | stage |
//! |---|---|
//! | `cn` | `conv` (with `skip` when the string has `skip`; `e` is ignored, as timm does) |
//! | `er` | `fused`, or `edge` when `e1` (timm's EdgeResidual keeps both convs at e1, while our `fused e1` is a single conv) |
//! | `ir` | `mbconv` |
//! | `ds` | `ds` (`e` is ignored, as timm does) |
//!
//! `nre`, `nr6`, `nhs`, `nsw`, `nmi` become `act relu`, `act relu6`, `act hard_swish`, `act silu`,
//! `act mish` (every activation timm's block strings name); `dsa` becomes `dsa`. Mixed kernels
//! (`k3.5.7`, `a1.1`, `p1.1`: MixNet) are written as timm writes them, `gsN` becomes `gs N`;
//! `a` is dropped where timm ignores it (every type but `ir`), as is `p` on `cn`. A stage
//! of timm's `arch_def` holding several block strings becomes a `stage` line and a `then` line
//! per further string, so that its blocks are numbered within one stage as timm numbers them
//! (`blocks.3.0`, `blocks.3.1`, ...).
//!
//! automl block strings: `rN_kN_sN_eN_iN_oN[_cN][_seF][_noskip]`, with `s11`/`s22` (automl V1)
//! or `s1`/`s2` (V2). `c1` is Fused-MBConv (`fused`; automl's `e1` fused block is one conv,
//! which is exactly our `fused e1`), `c0` (or no `c`) MBConv: `mbconv`, or `ds` when `e1`
//! (automl's MBConv without an expansion conv is a depthwise-separable block). Each block's `i`
//! must equal the previous block's `o`; the first block's `i` is the stem width unless the options
//! say otherwise.
//!
//! Block strings say nothing of the model around them; [`ImportOptions`] carries what timm's
//! `_gen_*` functions pass to the builder: width and depth (or per-stage depths, with
//! `fix_first_last`), depth rounding, channel divisor and round limit, stem and head widths and
//! whether they are fixed, activation, input channels, GroupNorm instead of BatchNorm (timm's
//! `GroupNormAct(group_size=N)`) and a model-wide group size (`group_size`). Every model timm's
//! builder makes in `tests/reference/timm/arch_defs.json` imports with its generator's arguments
//! to timm's parameter count and `state_dict` names (compiler/tests/import.rs).
//!
//! Each import carries its source's [`Conventions`] (padding, BatchNorm eps, channel rounding)
//! unless the options override them, and its doc comment says which it has: automl's networks
//! use TensorFlow's `same` padding and eps 1e-3, so automl-converted weights give automl's
//! numbers only through a spec that says so.

use std::collections::HashMap;

use crate::format::format_source;

/// TensorFlow `same` or PyTorch symmetric padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    #[default]
    Symmetric,
    Same,
}

impl Padding {
    pub fn name(self) -> &'static str {
        match self {
            Padding::Symmetric => "symmetric",
            Padding::Same => "same",
        }
    }
}

/// How a source builds what its block strings do not say: padding, BatchNorm eps and channel
/// rounding. An imported model carries its source's, so that weights converted from that source
/// give that source's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conventions {
    pub padding: Padding,
    pub bn_eps: f64,
    /// timm's `round_limit`: round a channel count up one divisor when rounding to the nearest
    /// would lose more than (1 - limit) of it; 0 never does.
    pub round_limit: f64,
}

impl Conventions {
    /// timm's native models: PyTorch's symmetric padding, eps 1e-5, the 0.9 rounding guard.
    pub const TIMM: Conventions = Conventions {
        padding: Padding::Symmetric,
        bn_eps: 1e-5,
        round_limit: 0.9,
    };
    /// automl's `efficientnet` (V1, strides written `s11`/`s22`): TensorFlow `same` padding,
    /// `batch_norm_epsilon` 1e-3, and its `round_filters` keeps the 0.9 guard (timm's
    /// `tf_efficientnet_b*` ports agree).
    pub const AUTOML_V1: Conventions = Conventions {
        padding: Padding::Same,
        bn_eps: 1e-3,
        round_limit: 0.9,
    };
    /// automl's `efficientnetv2` (strides `s1`/`s2`): `same` padding, eps 1e-3, and a
    /// `round_filters` without the guard (timm's `tf_efficientnetv2_b*` use `round_limit=0`).
    pub const AUTOML_V2: Conventions = Conventions {
        padding: Padding::Same,
        bn_eps: 1e-3,
        round_limit: 0.0,
    };

    fn describe(&self) -> String {
        format!(
            "{} padding, BatchNorm eps {}, {}",
            match self.padding {
                Padding::Symmetric => "PyTorch's symmetric",
                Padding::Same => "TensorFlow's `same`",
            },
            num(self.bn_eps),
            if self.round_limit == 0.0 {
                "channels rounded without timm's 0.9 guard".to_string()
            } else {
                format!("channels rounded with a {} guard", num(self.round_limit))
            }
        )
    }
}

/// What the block strings do not say.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    /// Stem output channels. `None`: 32 for timm, the first block's `i` for automl.
    pub stem: Option<usize>,
    /// Head channels (a 1x1 conv); `None` for `head none`.
    pub head: Option<usize>,
    pub width: f64,
    pub depth: f64,
    pub classes: usize,
    /// `None`: the source's ([`Conventions`]).
    pub padding: Option<Padding>,
    /// BatchNorm epsilon; `None`: the source's (timm's native models 1e-5, automl 1e-3).
    pub bn_eps: Option<f64>,
    /// timm's `round_limit` for channel rounding; `None`: the source's (0.9, automl V2 0).
    pub round_limit: Option<f64>,
    /// Evaluation resolution.
    pub resolution: usize,
    /// Input channels (timm's `in_chans`).
    pub input_channels: usize,
    /// The model's activation (`silu`, `relu`, `relu6`, ...; timm's `act_layer`). Blocks whose
    /// strings name another (`nre`, ...) keep theirs.
    pub activation: String,
    /// The stem keeps its width (timm's `fix_stem`).
    pub fix_stem: bool,
    /// The head keeps its width: timm's generators pass `num_features` already scaled (or not),
    /// so a head taken from a generator's `num_features` is fixed.
    pub fix_head: bool,
    /// timm's `channel_divisor`.
    pub divisor: usize,
    /// Repeats rounded up (timm's default `ceil`) or to the nearest (`round`, TinyNet).
    pub depth_round: DepthRound,
    /// Per-stage depth multipliers instead of `depth` (timm passes a tuple).
    pub stage_depths: Option<Vec<f64>>,
    /// The first and last stages are not depth-scaled (timm's `fix_first_last`: Lite,
    /// MobileNetV2's `d` variants).
    pub fix_first_last: bool,
    /// timm's `output_stride` (`create_model(..., output_stride=16)`): 8, 16 or 32; `None`
    /// writes none (timm's default 32).
    pub output_stride: Option<usize>,
    /// A pruned model's layer shapes in timm's `_pruned/*.txt` format (`name:[d0, d1, ...]`
    /// joined by `***`): the import writes `prune(...)` where they narrow a stage.
    pub pruned: Option<String>,
    /// Strided blocks blur-pool (timm's `aa_layer='blurpc'`): writes `antialias blur`.
    pub blur_pool: bool,
    /// Global context attention where blocks have SE (timm's `se_layer='gc'`): writes
    /// `attention gc`.
    pub global_context: bool,
    /// GroupNorm instead of BatchNorm, with this many channels per group (timm's
    /// `norm_layer=partial(GroupNormAct, group_size=N)`); its eps is `bn_eps`'s.
    pub norm_group_size: Option<usize>,
    /// timm's model-wide `group_size` (`decode_arch_def(..., group_size=N)`): the group size of
    /// every block string without its own `gs`.
    pub group_size: Option<usize>,
    /// timm's `experts_multiplier` (`_gen_efficientnet_condconv`): multiplies the experts of
    /// every `cc` block string; 1 writes none.
    pub experts: usize,
}

/// How scaled repeats are rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DepthRound {
    #[default]
    Ceil,
    Round,
}

impl ImportOptions {
    /// The source's conventions with this import's overrides.
    fn conventions(&self, source: Conventions) -> Conventions {
        Conventions {
            padding: self.padding.unwrap_or(source.padding),
            bn_eps: self.bn_eps.unwrap_or(source.bn_eps),
            round_limit: self.round_limit.unwrap_or(source.round_limit),
        }
    }
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            stem: None,
            head: Some(1280),
            width: 1.0,
            depth: 1.0,
            classes: 1000,
            padding: None,
            bn_eps: None,
            round_limit: None,
            resolution: 224,
            input_channels: 3,
            activation: "silu".to_string(),
            fix_stem: false,
            fix_head: false,
            divisor: 8,
            depth_round: DepthRound::Ceil,
            stage_depths: None,
            fix_first_last: false,
            output_stride: None,
            pruned: None,
            blur_pool: false,
            global_context: false,
            norm_group_size: None,
            group_size: None,
            experts: 1,
        }
    }
}

const TIMM_TYPES: &str = "cn, er, ir, ds, dsa";
const TIMM_KEYS: &str = "r (repeats), k (kernel), s (stride), e (expansion), c (channels), \
se (SE ratio), a / p (expansion / projection kernels), gs (group size), fc (forced input width, `er`), \
d1 (space-to-depth), cc (CondConv experts, `ir`), noskip, skip, \
nre / nr6 / nhs / nsw / nmi (activation)";
const AUTOML_KEYS: &str = "r (repeats), k (kernel), s (stride: s1, s2, s11, s22), e (expansion), \
i (input filters), o (output filters), c (conv type: 0 MBConv, 1 Fused-MBConv), se (SE ratio), noskip";

/// Why block strings could not be imported.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read the block list: {0}")]
    Syntax(String),
    #[error("no block strings given")]
    Empty,
    #[error("block `{block}`: unknown block type `{kind}`; the importable types are {known}")]
    UnknownBlockType {
        block: String,
        kind: String,
        known: &'static str,
    },
    #[error("block `{block}`: unknown key `{token}`; the known keys are {known}")]
    UnknownKey {
        block: String,
        token: String,
        known: &'static str,
    },
    #[error("block `{block}`: `{key}` is missing ({what})")]
    MissingKey {
        block: String,
        key: &'static str,
        what: &'static str,
    },
    #[error("block `{block}`: `{token}`: {reason}")]
    BadValue {
        block: String,
        token: String,
        reason: String,
    },
    #[error(
        "block `{block}` takes {found} input filters (`i{found}`), but the block before it \
         outputs {expected} (`o{expected}`)"
    )]
    Chaining {
        block: String,
        expected: usize,
        found: usize,
    },
    #[error(
        "`{0}` cannot be a model name: use letters, digits and `_`, not starting with a digit, and not a keyword"
    )]
    BadName(String),
    #[error("{0}")]
    BadOption(String),
    #[error("internal error: the generated text does not parse: {0}")]
    Internal(String),
    /// timm's pruned layer shapes (`_pruned/*.txt`) do not fit the network.
    #[error("pruned shapes: {0}")]
    Pruned(String),
}

/// One stage, decoded.
#[derive(Debug, Clone, PartialEq)]
struct StageLine {
    kind: &'static str,
    /// The kernel as timm writes it: `3`, or mixed kernels `3.5.7`.
    kernel: String,
    /// `a` and `p` kernels when not the default 1x1 (`1.1`: two groups).
    exp_kernels: Option<String>,
    proj_kernels: Option<String>,
    /// `gs N` (timm's group size).
    group_size: Option<usize>,
    expansion: Option<f64>,
    stride: usize,
    channels: usize,
    repeats: usize,
    se: Option<f64>,
    /// `Some(true)`: `skip`, `Some(false)`: `noskip`.
    skip: Option<bool>,
    act: Option<&'static str>,
    /// `fc N` (timm's `force_in_chs`, `er` blocks only).
    force_in: Option<usize>,
    /// `s2d` (timm's `d1`).
    space_to_depth: bool,
    /// `prune(...)`, from a pruned model's layer shapes.
    prune: Option<String>,
    /// `cc N` (timm's CondConv experts, `ir` blocks only).
    experts: Option<usize>,
    /// A further block string of the stage above: a `then` line.
    then: bool,
    /// The block string, for the trailing comment.
    source: String,
}

/// Import timm's `arch_def`: the Python list of lists of block strings as written in timm's
/// source (`[['cn_r2_k3_s1_e1_c24_skip'], ['er_r4_k3_s2_e4_c48'], ...]`), or a flat list of
/// block strings (one per stage) separated by whitespace or commas.
pub fn import_timm(
    name: &str,
    arch_def: &str,
    opts: &ImportOptions,
) -> Result<String, ImportError> {
    check_name(name)?;
    let groups = parse_list(arch_def)?;
    let mut stages = Vec::new();
    for group in groups {
        for (j, block) in group.iter().enumerate() {
            stages.push(StageLine {
                then: j > 0,
                ..decode_timm(block)?
            });
        }
    }
    if stages.is_empty() {
        return Err(ImportError::Empty);
    }
    let stem = opts.stem.unwrap_or(32);
    let source = Source {
        name: "timm",
        command: "effnet import timm",
        conventions: Conventions::TIMM,
        what: "timm's native models",
    };
    let text = render_model(name, &source, stem, &stages, opts)?;
    let Some(pruned) = &opts.pruned else {
        return Ok(text);
    };
    // timm builds the unpruned network and narrows its layers to the file's shapes: compare
    // the unpruned import with them, line by line.
    let shapes = pruned_shapes(pruned)?;
    for (line, prune) in stages.iter_mut().zip(prune_options(&text, &shapes)?) {
        line.prune = prune;
    }
    render_model(name, &source, stem, &stages, opts)
}

/// timm's pruned layer shapes, by `state_dict` name.
fn pruned_shapes(text: &str) -> Result<HashMap<String, Vec<usize>>, ImportError> {
    let mut out = HashMap::new();
    for entry in text.split("***").map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || ImportError::Pruned(format!("`{entry}` is not `name:[d0, d1, ...]`"));
        let (name, shape) = entry.split_once(':').ok_or_else(bad)?;
        let dims = shape
            .trim()
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .ok_or_else(bad)?;
        let dims = dims
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| d.parse::<usize>().map_err(|_| bad()))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(name.trim().to_string(), dims);
    }
    if out.is_empty() {
        return Err(ImportError::Pruned("no layer shapes given".into()));
    }
    Ok(out)
}

/// For each stage line of the unpruned model `text`, the `prune(...)` that narrows it to
/// `shapes`, where they differ.
fn prune_options(
    text: &str,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<Vec<Option<String>>, ImportError> {
    let compiled = crate::compile(text).map_err(|d| {
        ImportError::Internal(d.first().map_or(String::new(), |d| d.message.clone()))
    })?;
    let (Some(def), Some(net)) = (compiled.checked.models.first(), compiled.networks.first())
    else {
        return Err(ImportError::Internal("no model".into()));
    };
    let width = |name: String| -> Result<usize, ImportError> {
        shapes
            .get(&name)
            .and_then(|s| s.first().copied())
            .ok_or_else(|| ImportError::Pruned(format!("no shape for `{name}`")))
    };
    let head = net.head.as_ref().map(|h| h.conv.out_channels);
    for (name, ours) in [
        ("conv_stem", Some(net.stem.conv.out_channels)),
        ("conv_head", head),
    ] {
        let theirs = shapes
            .get(&format!("{name}.weight"))
            .and_then(|s| s.first());
        if let (Some(&t), Some(o)) = (theirs, ours)
            && t != o
        {
            return Err(ImportError::Pruned(format!(
                "`{name}` is pruned to {t} output channels from {o}: effnet prunes stage lines only"
            )));
        }
    }
    let mut blocks = net.blocks();
    let mut out = Vec::new();
    for n in crate::lower::line_repeats(def) {
        let (mut outs, mut mids, mut ses) = (Vec::new(), Vec::new(), Vec::new());
        let (mut outs0, mut mids0, mut ses0) = (Vec::new(), Vec::new(), Vec::new());
        for b in blocks.by_ref().take(n) {
            let layers = b.layers.conv_bns();
            let Some(last) = layers.last() else { continue };
            outs.push(width(format!("{}.weight", last.conv.path))?);
            outs0.push(b.out_channels);
            if matches!(
                b.kind,
                crate::ir::BlockKind::MbConv | crate::ir::BlockKind::Edge
            ) {
                let kxk = if b.kind == crate::ir::BlockKind::MbConv {
                    "conv_dw"
                } else {
                    "conv_exp"
                };
                mids.push(width(format!("{}.{kxk}.weight", b.path))?);
                mids0.push(b.mid_channels);
            }
            if let Some(se) = b.se_channels {
                ses.push(width(format!("{}.se.conv_reduce.weight", b.path))?);
                ses0.push(se);
            }
        }
        let mut args = Vec::new();
        if outs != outs0 {
            match outs.first() {
                Some(&o) if outs.iter().all(|&x| x == o) => args.push(format!("out = {o}")),
                _ => {
                    return Err(ImportError::Pruned(format!(
                        "the blocks of one stage line are pruned to different output widths ({outs:?})"
                    )));
                }
            }
        }
        let list = |v: &[usize]| {
            v.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if mids != mids0 {
            args.push(format!("mid = ({})", list(&mids)));
        }
        if ses != ses0 {
            args.push(format!("se = ({})", list(&ses)));
        }
        out.push((!args.is_empty()).then(|| format!("prune({})", args.join(", "))));
    }
    Ok(out)
}

/// Import automl's block strings (`r1_k3_s1_e1_i24_o24_c1`, ...), one per stage, as a Python
/// list or separated by whitespace or commas.
pub fn import_automl(
    name: &str,
    blocks: &str,
    opts: &ImportOptions,
) -> Result<String, ImportError> {
    check_name(name)?;
    let groups = parse_list(blocks)?;
    let mut stages = Vec::new();
    let mut first_in = None;
    let mut prev_out: Option<usize> = None;
    let mut v1_strides = false;
    for group in groups {
        for block in group {
            let (stage, input, v1) = decode_automl(&block)?;
            v1_strides |= v1;
            if let Some(expected) = prev_out
                && input != expected
            {
                return Err(ImportError::Chaining {
                    block,
                    expected,
                    found: input,
                });
            }
            first_in.get_or_insert(input);
            prev_out = Some(stage.channels);
            stages.push(stage);
        }
    }
    let Some(first_in) = first_in else {
        return Err(ImportError::Empty);
    };
    let stem = opts.stem.unwrap_or(first_in);
    let source = if v1_strides {
        Source {
            name: "automl",
            command: "effnet import automl",
            conventions: Conventions::AUTOML_V1,
            what: "automl's efficientnet (V1)",
        }
    } else {
        Source {
            name: "automl",
            command: "effnet import automl",
            conventions: Conventions::AUTOML_V2,
            what: "automl's efficientnetv2",
        }
    };
    render_model(name, &source, stem, &stages, opts)
}

fn check_name(name: &str) -> Result<(), ImportError> {
    let mut chars = name.chars();
    let ok_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let ok_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    let keyword = matches!(
        name,
        "model" | "schedule" | "scaled" | "stage" | "stem" | "head"
    );
    if ok_start && ok_rest && !keyword {
        Ok(())
    } else {
        Err(ImportError::BadName(name.to_string()))
    }
}

/// The block strings, grouped by stage: `[['a'], ['b', 'c']]` gives two groups, `['a', 'b']` and
/// `a b` / `a, b` one group per string. `#` comments (Python) are skipped.
fn parse_list(text: &str) -> Result<Vec<Vec<String>>, ImportError> {
    if !text.contains('[') {
        let groups: Vec<Vec<String>> = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .map(|t| t.trim_matches(|c| c == '\'' || c == '"'))
            .filter(|t| !t.is_empty())
            .map(|t| vec![t.to_string()])
            .collect();
        if groups.is_empty() {
            return Err(ImportError::Empty);
        }
        return Ok(groups);
    }
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut depth = 0usize;
    let mut closed_outer = false;
    let mut chars = text.char_indices().peekable();
    while let Some((pos, c)) = chars.next() {
        match c {
            '#' => {
                while chars.peek().is_some_and(|(_, c)| *c != '\n') {
                    chars.next();
                }
            }
            '[' => {
                if closed_outer {
                    return Err(ImportError::Syntax(format!(
                        "unexpected `[` at byte {pos} after the closing `]`"
                    )));
                }
                depth += 1;
                if depth > 2 {
                    return Err(ImportError::Syntax(format!(
                        "lists nested more than two deep at byte {pos}"
                    )));
                }
            }
            ']' => {
                match depth {
                    0 => {
                        return Err(ImportError::Syntax(format!("unmatched `]` at byte {pos}")));
                    }
                    2 => groups.push(std::mem::take(&mut current)),
                    _ => closed_outer = true,
                }
                depth -= 1;
            }
            c if c.is_whitespace() || c == ',' => {}
            _ => {
                // A quoted string, or a bare word.
                let word = if c == '\'' || c == '"' {
                    let mut s = String::new();
                    let mut closed = false;
                    for (_, d) in chars.by_ref() {
                        if d == c {
                            closed = true;
                            break;
                        }
                        s.push(d);
                    }
                    if !closed {
                        return Err(ImportError::Syntax(format!(
                            "unterminated string starting at byte {pos}"
                        )));
                    }
                    s
                } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                    let mut s = c.to_string();
                    while let Some((_, d)) = chars.peek() {
                        if d.is_ascii_alphanumeric() || *d == '_' || *d == '.' {
                            s.push(*d);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    s
                } else {
                    return Err(ImportError::Syntax(format!(
                        "unexpected `{c}` at byte {pos}; expected block strings in a Python list"
                    )));
                };
                match depth {
                    0 => {
                        return Err(ImportError::Syntax(format!("`{word}` is outside the list")));
                    }
                    1 => groups.push(vec![word]),
                    _ => current.push(word),
                }
            }
        }
    }
    if depth != 0 {
        return Err(ImportError::Syntax("a `[` is never closed".to_string()));
    }
    if let Some((i, _)) = groups.iter().enumerate().find(|(_, g)| g.is_empty()) {
        return Err(ImportError::Syntax(format!("stage {i} is an empty list")));
    }
    if groups.is_empty() {
        return Err(ImportError::Empty);
    }
    Ok(groups)
}

/// `k3` -> ("k", "3"): the key is everything before the first digit.
fn split_token(token: &str) -> (&str, &str) {
    let at = token
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or(token.len());
    token.split_at(at)
}

fn bad(block: &str, token: &str, reason: impl Into<String>) -> ImportError {
    ImportError::BadValue {
        block: block.to_string(),
        token: token.to_string(),
        reason: reason.into(),
    }
}

fn whole(block: &str, token: &str, value: &str, what: &str) -> Result<usize, ImportError> {
    match value.parse::<usize>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(bad(
            block,
            token,
            format!("{what} must be a whole number of at least 1, not `{value}`"),
        )),
    }
}

/// A kernel, or mixed kernels joined by dots (`3.5.7`), each a whole number of at least 1;
/// returned as written for the stage line.
fn kernels(block: &str, token: &str, value: &str) -> Result<String, ImportError> {
    for k in value.split('.') {
        whole(block, token, k, "each kernel size")?;
    }
    Ok(value.to_string())
}

fn ratio(block: &str, token: &str, value: &str, what: &str) -> Result<f64, ImportError> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(bad(
            block,
            token,
            format!("{what} must be a positive number, not `{value}`"),
        )),
    }
}

/// The key/value tokens of a block string, in order, with duplicates refused.
struct Fields<'a> {
    block: &'a str,
    values: Vec<(&'a str, &'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    fn push(&mut self, key: &'a str, value: &'a str, token: &'a str) -> Result<(), ImportError> {
        if self.values.iter().any(|(k, _, _)| *k == key) {
            return Err(bad(self.block, token, format!("`{key}` is given twice")));
        }
        self.values.push((key, value, token));
        Ok(())
    }

    fn get(&self, key: &str) -> Option<(&'a str, &'a str)> {
        self.values
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, v, t)| (*v, *t))
    }

    fn require(
        &self,
        key: &'static str,
        what: &'static str,
    ) -> Result<(&'a str, &'a str), ImportError> {
        self.get(key).ok_or_else(|| ImportError::MissingKey {
            block: self.block.to_string(),
            key,
            what,
        })
    }
}

fn decode_timm(block: &str) -> Result<StageLine, ImportError> {
    let mut tokens = block.split('_');
    let block_type = tokens.next().unwrap_or("");
    let kind = match block_type {
        "cn" | "er" | "ir" | "ds" | "dsa" => block_type,
        _ => {
            return Err(ImportError::UnknownBlockType {
                block: block.to_string(),
                kind: block_type.to_string(),
                known: TIMM_TYPES,
            });
        }
    };
    let unknown = |token: &str| ImportError::UnknownKey {
        block: block.to_string(),
        token: token.to_string(),
        known: TIMM_KEYS,
    };
    let mut fields = Fields {
        block,
        values: Vec::new(),
    };
    let mut skip = None;
    let mut act = None;
    for token in tokens {
        match token {
            "noskip" => skip = Some(false),
            "skip" => skip = Some(true),
            _ if token.starts_with('n') => {
                act = Some(match &token[1..] {
                    "re" => "relu",
                    "r6" => "relu6",
                    "hs" => "hard_swish",
                    "sw" => "silu",
                    "mi" => "mish",
                    _ => return Err(unknown(token)),
                });
            }
            _ => {
                let (key, value) = split_token(token);
                if value.is_empty()
                    || !matches!(
                        key,
                        "r" | "k" | "a" | "p" | "s" | "e" | "c" | "se" | "fc" | "gs" | "d" | "cc"
                    )
                {
                    return Err(unknown(token));
                }
                fields.push(key, value, token)?;
            }
        }
    }
    let (v, t) = fields.require("r", "the number of repeats, like `r2`")?;
    let repeats = whole(block, t, v, "the number of repeats")?;
    let (v, t) = fields.require("k", "the kernel size, like `k3`")?;
    let kernel = kernels(block, t, v)?;
    let (v, t) = fields.require("s", "the stride, like `s2`")?;
    if v.len() != 1 {
        return Err(bad(
            block,
            t,
            "timm strides are one digit (`s1`, `s2`); `s22` is automl's notation",
        ));
    }
    let stride = whole(block, t, v, "the stride")?;
    let (v, t) = fields.require("c", "the output channels, like `c24`")?;
    let channels = whole(block, t, v, "the channel count")?;
    // timm reads `a` in `ir` blocks only, and `p` in all but `cn`; elsewhere they are ignored.
    let kernel_opt = |key: &str, used: bool| -> Result<Option<String>, ImportError> {
        match fields.get(key) {
            Some((v, t)) if used => {
                let ks = kernels(block, t, v)?;
                Ok((ks != "1").then_some(ks))
            }
            _ => Ok(None),
        }
    };
    let exp_kernels = kernel_opt("a", kind == "ir")?;
    let proj_kernels = kernel_opt("p", kind != "cn")?;
    let group_size = match fields.get("gs") {
        Some((v, t)) => Some(v.parse::<usize>().map_err(|_| {
            bad(
                block,
                t,
                format!("the group size must be a whole number, not `{v}`"),
            )
        })?),
        None => None,
    };
    let se = match fields.get("se") {
        Some((v, t)) => Some(ratio(block, t, v, "the SE ratio")?),
        None => None,
    };
    let force_in = match fields.get("fc") {
        Some((v, t)) if kind == "er" => Some(whole(block, t, v, "the forced input width")?),
        Some((_, t)) => {
            return Err(bad(
                block,
                t,
                "`fc` (force_in_chs) is an option of `er` blocks only",
            ));
        }
        None => None,
    };
    // timm reads `d` (space-to-depth) in `ds`, `dsa` and `ir` blocks: `d1` opens a region.
    let space_to_depth = match fields.get("d") {
        Some((v, t)) if matches!(kind, "ds" | "dsa" | "ir") => {
            whole(block, t, v, "the space-to-depth flag")? > 0
        }
        _ => false,
    };
    // timm reads `cc` in `ir` blocks only; `cc0` is a plain InvertedResidual.
    let experts = match fields.get("cc") {
        Some((v, t)) if kind == "ir" => Some(v.parse::<usize>().map_err(|_| {
            bad(
                block,
                t,
                format!("the number of experts must be a whole number, not `{v}`"),
            )
        })?)
        .filter(|&n| n > 0),
        Some((_, t)) => {
            return Err(bad(
                block,
                t,
                "`cc` (CondConv experts) is an option of `ir` blocks only",
            ));
        }
        None => None,
    };
    let expansion = match kind {
        "er" | "ir" => {
            let (v, t) = fields.require("e", "the expansion ratio, like `e4`")?;
            Some(ratio(block, t, v, "the expansion ratio")?)
        }
        // timm's ConvBnAct and DepthwiseSeparableConv have no expansion: `e` is ignored.
        _ => None,
    };
    let (kind, skip) = match kind {
        // `cn` has a residual only when asked for; `noskip` is its default.
        "cn" => ("conv", (skip == Some(true)).then_some(true)),
        // For the others `skip` is timm's default rule (stride 1, equal channels).
        "er" if expansion == Some(1.0) => ("edge", skip.filter(|s| !s)),
        "er" => ("fused", skip.filter(|s| !s)),
        "ir" => ("mbconv", skip.filter(|s| !s)),
        // timm's `dsa` never has a residual, whatever the string says.
        "dsa" => ("dsa", None),
        _ => ("ds", skip.filter(|s| !s)),
    };
    Ok(StageLine {
        kind,
        kernel,
        exp_kernels,
        proj_kernels,
        group_size,
        expansion,
        stride,
        channels,
        repeats,
        se,
        skip,
        act,
        force_in,
        space_to_depth,
        prune: None,
        experts,
        then: false,
        source: format!("timm {block}"),
    })
}

/// The stage, its input filters, and whether the stride is written as automl V1 does (`s22`).
fn decode_automl(block: &str) -> Result<(StageLine, usize, bool), ImportError> {
    let mut fields = Fields {
        block,
        values: Vec::new(),
    };
    let mut noskip = false;
    for token in block.split('_') {
        if token == "noskip" {
            noskip = true;
            continue;
        }
        let (key, value) = split_token(token);
        if value.is_empty() || !matches!(key, "r" | "k" | "s" | "e" | "i" | "o" | "c" | "se") {
            return Err(ImportError::UnknownKey {
                block: block.to_string(),
                token: token.to_string(),
                known: AUTOML_KEYS,
            });
        }
        fields.push(key, value, token)?;
    }
    let (v, t) = fields.require("r", "the number of repeats, like `r2`")?;
    let repeats = whole(block, t, v, "the number of repeats")?;
    let (v, t) = fields.require("k", "the kernel size, like `k3`")?;
    let kernel = whole(block, t, v, "the kernel size")?;
    let (v, t) = fields.require("s", "the stride, like `s2` or `s22`")?;
    let v1_stride = v.len() == 2;
    let stride_text = match v.as_bytes() {
        [a] => Some(*a),
        [a, b] if a == b => Some(*a),
        _ => None,
    };
    let stride = match stride_text {
        Some(d) if d.is_ascii_digit() && d != b'0' => usize::from(d - b'0'),
        _ => {
            return Err(bad(
                block,
                t,
                "the stride must be one digit or two equal digits (`s1`, `s2`, `s11`, `s22`)",
            ));
        }
    };
    let (v, t) = fields.require("e", "the expansion ratio, like `e4`")?;
    let expansion = ratio(block, t, v, "the expansion ratio")?;
    let (v, t) = fields.require("i", "the input filters, like `i24`")?;
    let input = whole(block, t, v, "the input filter count")?;
    let (v, t) = fields.require("o", "the output filters, like `o48`")?;
    let channels = whole(block, t, v, "the output filter count")?;
    let fused = match fields.get("c") {
        None | Some(("0", _)) => false,
        Some(("1", _)) => true,
        Some((_, t)) => {
            return Err(bad(
                block,
                t,
                "the conv type must be `c0` (MBConv) or `c1` (Fused-MBConv)",
            ));
        }
    };
    let se = match fields.get("se") {
        Some((v, t)) => Some(ratio(block, t, v, "the SE ratio")?),
        None => None,
    };
    let (kind, expansion) = match (fused, expansion == 1.0) {
        (true, _) => ("fused", Some(expansion)),
        (false, true) => ("ds", None),
        (false, false) => ("mbconv", Some(expansion)),
    };
    let stage = StageLine {
        kind,
        kernel: kernel.to_string(),
        exp_kernels: None,
        proj_kernels: None,
        group_size: None,
        expansion,
        stride,
        channels,
        repeats,
        se,
        skip: noskip.then_some(false),
        act: None,
        force_in: None,
        space_to_depth: false,
        prune: None,
        experts: None,
        then: false,
        source: format!("automl {block}"),
    };
    Ok((stage, input, v1_stride))
}

/// A number as the language writes it: `4`, `0.25`, `1e-5`.
fn num(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-2 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// A multiplier, always with a decimal point: `1.0`, `1.2`.
fn multiplier(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{v:.1}")
    } else {
        num(v)
    }
}

/// Per-stage depth multipliers when the options need them: given ones, or `depth` everywhere but
/// the first and last stages (`fix_first_last`).
fn stage_depths(opts: &ImportOptions, stages: usize) -> Result<Option<Vec<f64>>, ImportError> {
    let mut depths = match &opts.stage_depths {
        Some(d) if d.len() != stages => {
            return Err(ImportError::BadOption(format!(
                "{} per-stage depth multipliers for {stages} stages",
                d.len()
            )));
        }
        Some(d) => d.clone(),
        None if opts.fix_first_last => vec![opts.depth; stages],
        None => return Ok(None),
    };
    if opts.fix_first_last && stages > 0 {
        depths[0] = 1.0;
        depths[stages - 1] = 1.0;
    }
    for &d in &depths {
        if !(d.is_finite() && d > 0.0) {
            return Err(ImportError::BadOption(format!(
                "a stage depth multiplier must be a positive number, not {d}"
            )));
        }
    }
    Ok(Some(depths))
}

fn check_options(opts: &ImportOptions, conv: &Conventions, stem: usize) -> Result<(), ImportError> {
    let positive = |v: f64, what: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(ImportError::BadOption(format!(
                "the {what} must be a positive number, not {v}"
            )))
        }
    };
    positive(opts.width, "width multiplier")?;
    positive(opts.depth, "depth multiplier")?;
    if opts.experts == 0 {
        return Err(ImportError::BadOption(
            "the experts multiplier must be at least 1".to_string(),
        ));
    }
    if !(conv.bn_eps.is_finite() && conv.bn_eps > 0.0 && conv.bn_eps < 1.0) {
        return Err(ImportError::BadOption(format!(
            "the BatchNorm eps must be in (0, 1), not {}",
            conv.bn_eps
        )));
    }
    if !(0.0..=1.0).contains(&conv.round_limit) {
        return Err(ImportError::BadOption(format!(
            "the round limit must be in [0, 1], not {}",
            conv.round_limit
        )));
    }
    let act_ok = !opts.activation.is_empty()
        && opts
            .activation
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !act_ok {
        return Err(ImportError::BadOption(format!(
            "the activation must be a name like `silu` or `relu6`, not `{}`",
            opts.activation
        )));
    }
    if !matches!(opts.divisor, 1..=256) {
        return Err(ImportError::BadOption(format!(
            "the channel divisor must be in 1..=256, not {}",
            opts.divisor
        )));
    }
    for (v, what) in [
        (stem, "stem width"),
        (opts.input_channels, "number of input channels"),
        (opts.classes, "number of classes"),
        (opts.resolution, "resolution"),
    ] {
        if v == 0 {
            return Err(ImportError::BadOption(format!(
                "the {what} must be at least 1"
            )));
        }
    }
    if let Some(os) = opts.output_stride
        && !crate::check::OUTPUT_STRIDES.contains(&os)
    {
        return Err(ImportError::BadOption(format!(
            "the output stride must be 8, 16 or 32, not {os}"
        )));
    }
    if opts.norm_group_size == Some(0) {
        return Err(ImportError::BadOption(
            "the GroupNorm group size must be at least 1".to_string(),
        ));
    }
    if opts.head == Some(0) {
        return Err(ImportError::BadOption(
            "the head width must be at least 1 (no head is `None`)".to_string(),
        ));
    }
    Ok(())
}

/// Where block strings come from, and what that source does where they are silent.
struct Source {
    name: &'static str,
    command: &'static str,
    conventions: Conventions,
    /// The networks the conventions are those of, for the model's doc comment.
    what: &'static str,
}

fn render_model(
    name: &str,
    source: &Source,
    stem: usize,
    stages: &[StageLine],
    opts: &ImportOptions,
) -> Result<String, ImportError> {
    let conv = opts.conventions(source.conventions);
    check_options(opts, &conv, stem)?;
    let mut s = String::new();
    s.push_str(&format!(
        "/// Imported from {} block strings by `{}`.\n",
        source.name, source.command
    ));
    if conv == source.conventions {
        s.push_str(&format!(
            "/// The conventions of {}: {}.\n",
            source.what,
            conv.describe()
        ));
    } else {
        s.push_str(&format!(
            "/// Not the conventions of {}: {}.\n",
            source.what,
            conv.describe()
        ));
    }
    if let Some(size) = opts.norm_group_size {
        s.push_str(&format!(
            "/// GroupNorm (timm's `GroupNormAct`) with {size} channels per group instead of \
             BatchNorm, with that eps.\n"
        ));
    }
    s.push_str(&format!("model {name} {{\n"));
    s.push_str(&format!(
        "input {} x {}\n",
        opts.input_channels, opts.resolution
    ));
    s.push_str(&format!("classes {}\n", opts.classes));
    s.push_str(&format!("activation {}\n", opts.activation));
    match opts.norm_group_size {
        Some(size) => s.push_str(&format!(
            "norm group(size = {size}, eps = {})\n",
            num(conv.bn_eps)
        )),
        None => s.push_str(&format!(
            "norm batch(eps = {}, momentum = 0.1)\n",
            num(conv.bn_eps)
        )),
    }
    if let Some(g) = opts.group_size {
        s.push_str(&format!("group_size {g}\n"));
    }
    s.push_str(&format!("padding {}\n", conv.padding.name()));
    if let Some(os) = opts.output_stride {
        s.push_str(&format!("output_stride {os}\n"));
    }
    if opts.blur_pool {
        s.push_str("antialias blur\n");
    }
    if opts.global_context {
        s.push_str("attention gc\n");
    }
    s.push_str(&format!(
        "round channels(divisor = {}, limit = {})\n",
        opts.divisor,
        num(conv.round_limit)
    ));
    if opts.depth_round == DepthRound::Round {
        s.push_str("round depth round\n");
    }
    let depths = stage_depths(opts, stages.iter().filter(|s| !s.then).count())?;
    // timm's experts multiplier applies to `cc` strings only (and timm ignores it at 1).
    let experts = if opts.experts != 1 {
        format!(" experts {}", opts.experts)
    } else {
        String::new()
    };
    match depths {
        Some(d) => s.push_str(&format!(
            "scale width {} stages({}){experts}\n",
            multiplier(opts.width),
            d.iter()
                .map(|&v| multiplier(v))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None if opts.width != 1.0 || opts.depth != 1.0 || opts.experts != 1 => {
            s.push_str(&format!(
                "scale width {} depth {}{experts}\n",
                multiplier(opts.width),
                multiplier(opts.depth)
            ))
        }
        None => {}
    }
    s.push('\n');
    let fixed = |f: bool| if f { " fixed" } else { "" };
    s.push_str(&format!(
        "stem conv k3 s2 -> {stem}{}\n",
        fixed(opts.fix_stem)
    ));
    for st in stages {
        let keyword = if st.then { "then" } else { "stage" };
        let mut line = format!("{keyword} {} k{}", st.kind, st.kernel);
        if let Some(a) = &st.exp_kernels {
            line.push_str(&format!(" a{a}"));
        }
        if let Some(p) = &st.proj_kernels {
            line.push_str(&format!(" p{p}"));
        }
        if let Some(e) = st.expansion {
            line.push_str(&format!(" e{}", num(e)));
        }
        line.push_str(&format!(
            " s{} -> {} x{}",
            st.stride, st.channels, st.repeats
        ));
        if let Some(r) = st.se {
            line.push_str(&format!(" se {}", num(r)));
        }
        match st.skip {
            Some(true) => line.push_str(" skip"),
            Some(false) => line.push_str(" noskip"),
            None => {}
        }
        if let Some(a) = st.act {
            line.push_str(&format!(" act {a}"));
        }
        if st.space_to_depth {
            line.push_str(" s2d");
        }
        if let Some(f) = st.force_in {
            line.push_str(&format!(" fc {f}"));
        }
        if let Some(g) = st.group_size {
            line.push_str(&format!(" gs {g}"));
        }
        if let Some(p) = &st.prune {
            line.push_str(&format!(" {p}"));
        }
        if let Some(e) = st.experts {
            line.push_str(&format!(" cc {e}"));
        }
        s.push_str(&format!("{line} // {}\n", st.source));
    }
    match opts.head {
        Some(h) => s.push_str(&format!("head conv k1 -> {h}{}\n", fixed(opts.fix_head))),
        None => s.push_str("head none\n"),
    }
    s.push_str("}\n");
    format_source(&s).map_err(|e| ImportError::Internal(format!("{} ({})", e.message, e.found)))
}
