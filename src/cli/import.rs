//! `effnet import timm|automl BLOCKS`: write a `.effnet` model from block strings, then check it.

use std::path::PathBuf;
use std::process::ExitCode;

use effnet_compiler::import::{DepthRound, ImportOptions, Padding, import_automl, import_timm};
use effnet_compiler::{SourceFile, compile};

#[derive(clap::Subcommand, Debug)]
pub enum Source {
    /// From timm's `arch_def`: `"[['cn_r2_k3_s1_e1_c24_skip'], ['er_r4_k3_s2_e4_c48'], ...]"`,
    /// or block strings separated by spaces or commas (one stage each).
    Timm {
        /// The arch_def (a Python list of lists of block strings) or the block strings.
        arch_def: String,
        #[command(flatten)]
        opts: Opts,
    },
    /// From automl's block strings: `r2_k3_s1_e1_i24_o24_c1 r4_k3_s2_e4_i24_o48_c1 ...`
    /// (or a Python list of them), one stage each.
    Automl {
        /// The block strings, or a Python list of them.
        blocks: String,
        #[command(flatten)]
        opts: Opts,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PaddingArg {
    /// PyTorch's symmetric padding (timm's native models).
    Symmetric,
    /// TensorFlow's `same` padding (timm's `tf_` models, automl).
    Same,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DepthRoundArg {
    Ceil,
    Round,
}

#[derive(clap::Args, Debug)]
pub struct Opts {
    /// The model's name.
    #[arg(long, default_value = "imported")]
    name: String,
    /// Stem channels [default: 32 for timm, the first block's `i` for automl].
    #[arg(long)]
    stem: Option<usize>,
    /// Head channels; 0 for no head.
    #[arg(long, default_value_t = 1280)]
    head: usize,
    /// Width multiplier.
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Depth multiplier.
    #[arg(long, default_value_t = 1.0)]
    depth: f64,
    /// Number of classes.
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// Padding of the convolutions [default: the source's: symmetric for timm, same for automl].
    #[arg(long, value_enum)]
    padding: Option<PaddingArg>,
    /// BatchNorm epsilon [default: the source's: 1e-5 for timm's native models, 1e-3 for automl].
    #[arg(long)]
    bn_eps: Option<f64>,
    /// Channel round limit [default: the source's: 0.9 for timm and automl V1 (`s22` strides),
    /// 0 for automl V2 (`s2` strides)].
    #[arg(long)]
    round_limit: Option<f64>,
    /// Evaluation resolution.
    #[arg(long, default_value_t = 224)]
    resolution: usize,
    /// Input channels (timm's `in_chans`).
    #[arg(long, default_value_t = 3)]
    input_channels: usize,
    /// The model's activation (timm's `act_layer`: silu, relu, relu6, hard_swish, gelu, ...).
    #[arg(long, default_value = "silu")]
    activation: String,
    /// The stem keeps its width under --width (timm's `fix_stem`).
    #[arg(long)]
    fix_stem: bool,
    /// The head keeps its width under --width (a head given as timm's final `num_features`).
    #[arg(long)]
    fix_head: bool,
    /// Channel divisor (timm's `channel_divisor`).
    #[arg(long, default_value_t = 8)]
    divisor: usize,
    /// How scaled repeats are rounded: ceil (timm's default) or round (TinyNet).
    #[arg(long, value_enum, default_value_t = DepthRoundArg::Ceil)]
    depth_round: DepthRoundArg,
    /// Per-stage depth multipliers, comma-separated (instead of --depth).
    #[arg(long, value_delimiter = ',')]
    stage_depths: Option<Vec<f64>>,
    /// Leave the first and last stages' depth alone (timm's `fix_first_last`).
    #[arg(long)]
    fix_first_last: bool,
    /// timm's `output_stride` (8, 16 or 32): the strides past it become dilation
    /// [default: none written, timm's 32].
    #[arg(long)]
    output_stride: Option<usize>,
    /// A pruned model's layer shapes, as timm's `timm/models/_pruned/*.txt` files list them
    /// (`efficientnet_b1_pruned`): stage lines get `prune(...)` where they are narrowed.
    #[arg(long, value_name = "FILE")]
    pruned: Option<PathBuf>,
    /// Strided blocks convolve at stride 1 and blur-pool (timm's `aa_layer='blurpc'`,
    /// `efficientnet_blur_b0`): writes `antialias blur`.
    #[arg(long)]
    blur_pool: bool,
    /// Global context attention where blocks have SE (timm's `se_layer='gc'`,
    /// `gc_efficientnetv2_rw_t`): writes `attention gc`.
    #[arg(long)]
    global_context: bool,
    /// GroupNorm with N channels per group instead of BatchNorm (timm's
    /// `norm_layer=partial(GroupNormAct, group_size=N)`), with --bn-eps as its eps.
    #[arg(long, value_name = "N")]
    group_norm: Option<usize>,
    /// The group size of every block string without its own `gs` (timm's model-wide
    /// `group_size`).
    #[arg(long, value_name = "N")]
    group_size: Option<usize>,
    /// timm's `experts_multiplier`: multiplies the experts of every `cc` (CondConv) block.
    #[arg(long, default_value_t = 1)]
    experts: usize,
    /// Write the model here instead of to stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

impl Opts {
    fn options(&self) -> Result<ImportOptions, String> {
        let pruned = match &self.pruned {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(ImportOptions {
            stem: self.stem,
            head: (self.head != 0).then_some(self.head),
            width: self.width,
            depth: self.depth,
            classes: self.classes,
            padding: self.padding.map(|p| match p {
                PaddingArg::Symmetric => Padding::Symmetric,
                PaddingArg::Same => Padding::Same,
            }),
            bn_eps: self.bn_eps,
            round_limit: self.round_limit,
            resolution: self.resolution,
            input_channels: self.input_channels,
            activation: self.activation.clone(),
            fix_stem: self.fix_stem,
            fix_head: self.fix_head,
            divisor: self.divisor,
            depth_round: match self.depth_round {
                DepthRoundArg::Ceil => DepthRound::Ceil,
                DepthRoundArg::Round => DepthRound::Round,
            },
            stage_depths: self.stage_depths.clone(),
            fix_first_last: self.fix_first_last,
            output_stride: self.output_stride,
            norm_group_size: self.group_norm,
            group_size: self.group_size,
            pruned,
            blur_pool: self.blur_pool,
            global_context: self.global_context,
            experts: self.experts,
        })
    }
}

/// Import, print or write the text, then compile it: exit 1 (with its diagnostics) if it does
/// not check.
pub fn run(source: Source) -> Result<ExitCode, String> {
    let (text, opts) = match &source {
        Source::Timm { arch_def, opts } => {
            (import_timm(&opts.name, arch_def, &opts.options()?), opts)
        }
        Source::Automl { opts, .. } if opts.pruned.is_some() => {
            return Err(
                "`--pruned` takes timm's pruned layer shapes: use it with `import timm`".into(),
            );
        }
        Source::Automl { blocks, opts } => {
            (import_automl(&opts.name, blocks, &opts.options()?), opts)
        }
    };
    let text = text.map_err(|e| e.to_string())?;
    let name = match &opts.output {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
            path.display().to_string()
        }
        None => {
            print!("{text}");
            "<imported>".to_string()
        }
    };
    let file = SourceFile::new(name, text.as_str());
    match compile(&text) {
        Ok(compiled) => {
            super::print_diagnostics(&file, compiled.warnings());
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            super::print_diagnostics(&file, &diags);
            eprintln!("error: the imported model does not check");
            Ok(ExitCode::from(1))
        }
    }
}
