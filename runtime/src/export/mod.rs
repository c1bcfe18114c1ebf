//! ONNX export: a network written as a standard ONNX graph from its IR and its loaded weights.
//!
//! The graph is built layer by layer from the IR, one function per node kind: `Conv` (with
//! `group` for depthwise convolutions, and the padding of the spec's mode), an eval-mode
//! `BatchNormalization` after every convolution (running statistics; BatchNorm is not folded,
//! so every tensor keeps timm's name) or a GroupNorm as `ReduceMean` and elementwise operators
//! on the map reshaped to its groups, then the per-channel affine, the activations as standard operators (SiLU as
//! `Sigmoid` and `Mul`; HardSwish, GELU and Mish as their own operators where the opset has
//! them, decomposed where it does not), squeeze-excitation as `GlobalAveragePool`, two 1x1 `Conv`s
//! and a `Sigmoid` gate, residuals as `Add`, and the classifier as `GlobalAveragePool`,
//! `Flatten` and `Gemm`. Dropout and drop-path are training-only and have no node.
//!
//! Every initializer is named as timm names the tensor (`blocks.1.0.conv_pw.weight`,
//! `bn1.running_var`, `classifier.bias`); node outputs are named after the timm module that
//! computes them (`blocks.1.0.bn1.act`, `blocks.1.0.se.gate`).
//!
//! TensorFlow `same` padding (the `tf_` models) depends on the input size on stride-2
//! convolutions. At a fixed export resolution each convolution gets its explicit `pads` for
//! that resolution; with a dynamic resolution those convolutions use `auto_pad = SAME_UPPER`,
//! which is TensorFlow's rule for every input size (output `ceil(in / stride)`, the odd pixel
//! of padding after).
//!
//! CondConv blocks (timm's `CondConvResidual`) are written as timm computes them: the routing
//! weights (`GlobalAveragePool`, `Flatten`, `Gemm` with `routing_fn`, `Sigmoid`), and for each
//! conditional convolution the samples' kernels (`MatMul` of the routing weights with the
//! `[experts, prod(shape)]` expert weights, `Reshape`d to `batch * out` kernels), one grouped
//! `Conv` over the batch folded into the channels (`[1, batch * C, H, W]`, `batch * groups`
//! groups) and a `Reshape` back to `[batch, out, H, W]`. A `group` attribute is a constant, so
//! such a graph has a fixed batch: exporting one with a dynamic batch is an error naming the
//! layer.
//!
//! The input is the network's input as `effnet run` takes it: already normalized. With
//! [`ExportOptions::normalize`] the graph takes pixels in `[0, 1]` and subtracts the spec's
//! mean and divides by its std first (`Sub`, `Div`); the model's metadata says which, and
//! holds the mean and std either way.

pub mod onnx;

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor};
use effnet_compiler::ir::{self, Activation, PaddingMode};
use prost::Message;

use crate::model::EffNet;
use onnx::{
    AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto::{Dimension, dimension},
    type_proto,
};

/// The oldest opset effnet writes: `Clip` takes its bounds as inputs from 11 on.
pub const MIN_OPSET: i64 = 11;
/// The newest opset effnet writes: the newest of onnx 1.23, whose checker and onnxruntime 1.32
/// accept every opset from [`MIN_OPSET`] up to it (`tools/onnx_reference.py` runs them all).
/// No operator effnet writes changed its meaning in between.
pub const MAX_OPSET: i64 = 28;
/// What `effnet export` writes without `--opset`: supported by every current runtime.
pub const DEFAULT_OPSET: i64 = 17;
/// `HardSwish` is an operator from opset 14 on.
const HARD_SWISH_OPSET: i64 = 14;
/// `Gelu` is an operator from opset 20 on.
const GELU_OPSET: i64 = 20;
/// `Mish` is an operator from opset 18 on.
const MISH_OPSET: i64 = 18;
/// `ReduceMean` takes its axes as an input from opset 18 on (an attribute before).
const REDUCE_AXES_INPUT_OPSET: i64 = 18;

/// The name of the graph's input and output.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "logits";

/// A dimension of the graph's input: fixed, or a named symbol the runtime binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Fixed(usize),
    Dynamic,
}

/// What to export, besides the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    /// The `ai.onnx` opset, [`MIN_OPSET`]..=[`MAX_OPSET`].
    pub opset: i64,
    /// The batch dimension (`batch` when dynamic).
    pub batch: Size,
    /// Height and width (`height`, `width` when dynamic).
    pub resolution: Size,
    /// Put the spec's mean/std normalization in the graph.
    pub normalize: bool,
}

impl ExportOptions {
    /// The default opset, a dynamic batch and the network's eval resolution, no normalization.
    pub fn for_network(net: &ir::Network) -> Self {
        ExportOptions {
            opset: DEFAULT_OPSET,
            batch: Size::Dynamic,
            resolution: Size::Fixed(net.resolution),
            normalize: false,
        }
    }
}

/// Why a network could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "opset {0} is out of range: effnet writes ONNX opsets {MIN_OPSET} to {MAX_OPSET} \
         (default {DEFAULT_OPSET})"
    )]
    Opset(i64),
    #[error("cannot export `{model}`: {what}")]
    Unsupported { model: String, what: String },
    #[error("cannot export `{model}` at resolution {resolution}: {what}")]
    Resolution {
        model: String,
        resolution: usize,
        what: String,
    },
    #[error("the network has no tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {found:?}, the network expects {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// What an export wrote, for the command's report.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    pub opset: i64,
    pub ir_version: i64,
    /// Node count per operator, sorted by operator.
    pub operators: Vec<(String, usize)>,
    pub initializers: usize,
    /// Float values in the initializers.
    pub values: usize,
    /// The input's dimensions, numbers or symbols.
    pub input_shape: Vec<String>,
}

/// The smallest ONNX IR version that carries `opset` (onnx's `Versioning.md` table): a
/// reader older than that release does not know the opset anyway.
pub fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        23 => 11,
        24 => 12,
        25..=27 => 13,
        _ => 14,
    }
}

/// The network as an ONNX model.
pub fn export(net: &dyn EffNet, options: &ExportOptions) -> Result<ModelProto, ExportError> {
    if !(MIN_OPSET..=MAX_OPSET).contains(&options.opset) {
        return Err(ExportError::Opset(options.opset));
    }
    let ir = net.ir();
    let unsupported = |what: String| ExportError::Unsupported {
        model: ir.name.clone(),
        what,
    };
    if options.batch == Size::Fixed(0) {
        return Err(unsupported("a batch of 0 images".into()));
    }
    if options.resolution == Size::Fixed(0) {
        return Err(unsupported("a resolution of 0 pixels".into()));
    }
    let normalize = match (&ir.normalize, options.normalize) {
        (None, true) => {
            return Err(unsupported(
                "the graph cannot include the input normalization: the spec has no \
                 `normalize` line (add one, or export without it and normalize outside)"
                    .into(),
            ));
        }
        (n, _) => n.as_ref(),
    };
    let mut b = Builder::new(ir, net, options);
    let hw = match options.resolution {
        Size::Fixed(r) => Some((r, r)),
        Size::Dynamic => None,
    };
    let mut x = Value {
        name: INPUT.to_string(),
        hw,
    };
    if let (Some(n), true) = (normalize, options.normalize) {
        x = b.normalize(&x, n)?;
    }
    x = b.conv_bn_act(&x, &ir.stem.conv, &ir.stem.bn, Some(ir.activation), None)?;
    for block in ir.blocks() {
        x = b.block(&x, block)?;
    }
    if let Some(h) = &ir.head {
        x = b.conv_bn_act(&x, &h.conv, &h.bn, Some(ir.activation), None)?;
    }
    b.classifier(&x, &ir.classifier)?;
    Ok(b.finish(normalize))
}

/// The model's bytes, as an `.onnx` file holds them.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// A model from an `.onnx` file's bytes (what [`to_bytes`] wrote, or any ONNX model, with the
/// fields these messages declare).
pub fn from_bytes(bytes: &[u8]) -> Result<ModelProto, prost::DecodeError> {
    ModelProto::decode(bytes)
}

/// What `model` holds, counted.
pub fn summarize(model: &ModelProto) -> ExportSummary {
    let graph = model.graph.clone().unwrap_or_default();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
        *counts
            .entry(n.op_type.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let mut operators: Vec<(String, usize)> = counts.into_iter().collect();
    operators.sort();
    let values = graph
        .initializer
        .iter()
        .map(|t| t.dims.iter().product::<i64>().max(0) as usize)
        .sum();
    let input_shape = graph
        .input
        .first()
        .and_then(|i| i.r#type.as_ref())
        .and_then(|t| match &t.value {
            Some(type_proto::Value::TensorType(t)) => t.shape.as_ref(),
            None => None,
        })
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(dimension::Value::DimValue(v)) => v.to_string(),
                    Some(dimension::Value::DimParam(p)) => p.clone(),
                    None => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    ExportSummary {
        opset: model
            .opset_import
            .first()
            .and_then(|o| o.version)
            .unwrap_or(0),
        ir_version: model.ir_version.unwrap_or(0),
        operators,
        initializers: graph.initializer.len(),
        values,
        input_shape,
    }
}

/// A value in the graph: its name and, at a fixed resolution, its height and width.
#[derive(Debug, Clone)]
struct Value {
    name: String,
    hw: Option<(usize, usize)>,
}

/// A `Conv` node's geometry attributes, and its output's height and width where known.
type ConvGeometry = (Vec<AttributeProto>, Option<(usize, usize)>);

struct Builder<'a> {
    ir: &'a ir::Network,
    options: ExportOptions,
    tensors: HashMap<String, Tensor>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Initializer names already written (the shared constants are written once).
    written: HashSet<String>,
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(i),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: ints.to_vec(),
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(f),
        r#type: Some(AttributeType::Float as i32),
        ..Default::default()
    }
}

fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        s: Some(s.as_bytes().to_vec()),
        r#type: Some(AttributeType::String as i32),
        ..Default::default()
    }
}

fn int64_tensor(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(onnx::INT64),
        name: Some(name.into()),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

fn float_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(onnx::FLOAT),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn dim(size: Size, symbol: &str) -> Dimension {
    Dimension {
        value: Some(match size {
            Size::Fixed(n) => dimension::Value::DimValue(n as i64),
            Size::Dynamic => dimension::Value::DimParam(symbol.into()),
        }),
    }
}

fn float_value_info(name: &str, dims: Vec<Dimension>, doc: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(onnx::FLOAT),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
        }),
        doc_string: Some(doc.into()),
    }
}

impl<'a> Builder<'a> {
    fn new(ir: &'a ir::Network, net: &dyn EffNet, options: &ExportOptions) -> Self {
        let tensors = net
            .named_tensors()
            .into_iter()
            .map(|t| (t.name, t.tensor))
            .collect();
        Builder {
            ir,
            options: *options,
            tensors,
            nodes: Vec::new(),
            initializers: Vec::new(),
            written: HashSet::new(),
        }
    }

    /// One node with one output, named `output` (node and value share the name).
    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: Some(output.to_string()),
            op_type: Some(op.to_string()),
            attribute,
            domain: None,
        });
    }

    /// The network's tensor `name` as an initializer of that name, checked against `shape`.
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<String, ExportError> {
        if self.written.insert(name.to_string()) {
            let t = self
                .tensors
                .get(name)
                .ok_or_else(|| ExportError::MissingTensor(name.to_string()))?;
            if t.dims() != shape {
                return Err(ExportError::TensorShape {
                    name: name.to_string(),
                    expected: shape.to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            let values: Vec<f32> = t
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1()?;
            self.initializers.push(float_tensor(name, shape, &values));
        }
        Ok(name.to_string())
    }

    /// A float scalar the graph's arithmetic needs, written once under `name`.
    fn scalar(&mut self, name: &str, value: f32) -> String {
        if self.written.insert(name.to_string()) {
            self.initializers.push(float_tensor(name, &[], &[value]));
        }
        name.to_string()
    }

    fn normalize(&mut self, x: &Value, n: &ir::Normalize) -> Result<Value, ExportError> {
        let c = self.ir.input_channels;
        if n.mean.len() != c || n.std.len() != c {
            return Err(ExportError::Unsupported {
                model: self.ir.name.clone(),
                what: format!(
                    "the spec's normalization has {} means and {} stds for {c} input channels",
                    n.mean.len(),
                    n.std.len()
                ),
            });
        }
        let to_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        for (name, values) in [("normalize.mean", &n.mean), ("normalize.std", &n.std)] {
            self.written.insert(name.to_string());
            self.initializers
                .push(float_tensor(name, &[1, c, 1, 1], &to_f32(values)));
        }
        self.node(
            "Sub",
            &[&x.name, "normalize.mean"],
            "normalize.centered",
            vec![],
        );
        self.node(
            "Div",
            &["normalize.centered", "normalize.std"],
            "normalize",
            vec![],
        );
        Ok(Value {
            name: "normalize".into(),
            hw: x.hw,
        })
    }

    /// A convolution with the padding of `mode`, as explicit `pads` where the input size is
    /// known or does not matter, as `auto_pad = SAME_UPPER` where TensorFlow's rule must be
    /// applied to an input size known only at run time. A dilated convolution (past the
    /// network's output stride) has `dilations`, and pads for the pixels its kernel spans,
    /// as timm does (and ONNX's SAME_UPPER does for a dilated kernel).
    fn conv(&mut self, x: &Value, c: &ir::Conv, mode: PaddingMode) -> Result<Value, ExportError> {
        if !c.mixed.is_empty() {
            return self.mixed_conv(x, c, mode);
        }
        let weight = self.weight(&format!("{}.weight", c.path), &c.weight_shape())?;
        let bias = if c.bias {
            Some(self.weight(&format!("{}.bias", c.path), &[c.out_channels])?)
        } else {
            None
        };
        let (mut attrs, hw) = self.conv_geometry(x, c, mode)?;
        if c.groups > 1 {
            attrs.push(attr_int("group", c.groups as i64));
        }
        let mut inputs = vec![x.name.as_str(), weight.as_str()];
        if let Some(b) = &bias {
            inputs.push(b);
        }
        let out = c.path.clone();
        self.node("Conv", &inputs, &out, attrs);
        Ok(Value { name: out, hw })
    }

    /// A `Conv` node's kernel, stride, dilation and padding attributes for `c` on `x`, and the
    /// output's height and width where the input's are known.
    fn conv_geometry(
        &mut self,
        x: &Value,
        c: &ir::Conv,
        mode: PaddingMode,
    ) -> Result<ConvGeometry, ExportError> {
        let (k, s, d) = (c.kernel as i64, c.stride as i64, c.dilation as i64);
        // The pixels the kernel spans.
        let extent = d * (k - 1) + 1;
        let mut attrs = vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("strides", &[s, s]),
        ];
        if d != 1 {
            attrs.push(attr_ints("dilations", &[d, d]));
        }
        let hw = match x.hw {
            Some((h, w)) => {
                let (top, bottom, out_h) = mode.resolve(h, c.kernel, c.stride, c.dilation);
                let (left, right, out_w) = mode.resolve(w, c.kernel, c.stride, c.dilation);
                if out_h == 0 || out_w == 0 {
                    let resolution = match self.options.resolution {
                        Size::Fixed(r) => r,
                        Size::Dynamic => self.ir.resolution,
                    };
                    return Err(ExportError::Resolution {
                        model: self.ir.name.clone(),
                        resolution,
                        what: format!(
                            "`{}` gets a {h}x{w} input, too small for its {k}x{k} kernel{}",
                            c.path,
                            if d == 1 {
                                String::new()
                            } else {
                                format!(" (dilation {d}: {extent}x{extent} pixels)")
                            }
                        ),
                    });
                }
                attrs.push(attr_ints(
                    "pads",
                    &[top as i64, left as i64, bottom as i64, right as i64],
                ));
                Some((out_h, out_w))
            }
            None => {
                let needs_input_size = mode == PaddingMode::Same && s > 1 && k > 1;
                if !needs_input_size {
                    // Symmetric padding, and `same` at stride 1 or for a 1x1 kernel, does not
                    // depend on the input size: any size gives the same pads.
                    let any = (extent as usize).max(c.stride);
                    let (p, q, _) = mode.resolve(any, c.kernel, c.stride, c.dilation);
                    attrs.push(attr_ints("pads", &[p as i64, p as i64, q as i64, q as i64]));
                } else if extent >= s {
                    attrs.push(attr_string("auto_pad", "SAME_UPPER"));
                } else {
                    // ONNX does not clamp SAME_UPPER's padding at 0, TensorFlow does: they
                    // differ when the kernel is smaller than the stride.
                    return Err(ExportError::Unsupported {
                        model: self.ir.name.clone(),
                        what: format!(
                            "`{}` ({k}x{k}, stride {s}) has `same` padding that ONNX cannot \
                             express for any input size; export at a fixed --resolution",
                            c.path
                        ),
                    });
                }
                None
            }
        };
        Ok((attrs, hw))
    }

    /// A CondConv block's routing weights `[N, experts]`: the sigmoid of `routing_fn` on the
    /// block input's channel means.
    fn routing(&mut self, x: &Value, r: &ir::Linear) -> Result<String, ExportError> {
        let pool = format!("{}.pool", r.path);
        let flat = format!("{}.flatten", r.path);
        let linear = format!("{}.linear", r.path);
        self.node("GlobalAveragePool", &[&x.name], &pool, vec![]);
        self.node("Flatten", &[&pool], &flat, vec![attr_int("axis", 1)]);
        let w = self.weight(
            &format!("{}.weight", r.path),
            &[r.out_features, r.in_features],
        )?;
        let b = self.weight(&format!("{}.bias", r.path), &[r.out_features])?;
        self.node(
            "Gemm",
            &[&flat, &w, &b],
            &linear,
            vec![attr_int("transB", 1)],
        );
        self.node("Sigmoid", &[&linear], &r.path, vec![]);
        Ok(r.path.clone())
    }

    /// A CondConv convolution as timm's `CondConv2d` computes it: every sample's kernel
    /// (`routing @ experts`), then one `Conv` with `batch * groups` groups over the batch
    /// folded into the channels, unfolded after. The group count fixes the batch.
    fn cond_conv(
        &mut self,
        x: &Value,
        c: &ir::Conv,
        routing: &str,
        mode: PaddingMode,
    ) -> Result<Value, ExportError> {
        let Size::Fixed(n) = self.options.batch else {
            return Err(ExportError::Unsupported {
                model: self.ir.name.clone(),
                what: format!(
                    "`{}` is a CondConv convolution, written as one convolution grouped over                      the batch (each sample has its own kernel), and ONNX's `group` is a                      constant: export with a fixed batch (`--batch N`)",
                    c.path
                ),
            });
        };
        let experts = self.weight(&format!("{}.weight", c.path), &c.stored_weight_shape())?;
        let [o, per_group, k, _] = c.weight_shape();
        let p = &c.path;
        let as_i64 = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<i64>>();
        let mut shape = |name: String, values: Vec<i64>| {
            if self.written.insert(name.clone()) {
                self.initializers.push(int64_tensor(&name, &values));
            }
            name
        };
        let kernel_shape = shape(
            format!("{p}.kernel_shape"),
            as_i64(&[n * o, per_group, k, k]),
        );
        // `0` keeps the input's size on that axis: the height and width may be dynamic.
        let folded_shape = shape(format!("{p}.folded_shape"), vec![1, -1, 0, 0]);
        let out_shape = shape(format!("{p}.out_shape"), vec![n as i64, o as i64, 0, 0]);
        let kernels = format!("{p}.kernels");
        let kernel = format!("{p}.kernel");
        let folded = format!("{p}.folded");
        self.node("MatMul", &[routing, &experts], &kernels, vec![]);
        self.node("Reshape", &[&kernels, &kernel_shape], &kernel, vec![]);
        self.node("Reshape", &[&x.name, &folded_shape], &folded, vec![]);
        let (mut attrs, hw) = self.conv_geometry(x, c, mode)?;
        attrs.push(attr_int("group", (c.groups.max(1) * n) as i64));
        let grouped = format!("{p}.grouped");
        self.node("Conv", &[&folded, &kernel], &grouped, attrs);
        let unfolded = if c.bias {
            format!("{p}.unbiased")
        } else {
            p.clone()
        };
        self.node("Reshape", &[&grouped, &out_shape], &unfolded, vec![]);
        if c.bias {
            // Each sample's bias, mixed as its kernel is: `[N, O]` added per channel.
            let biases = self.weight(&format!("{p}.bias"), &[c.experts, o])?;
            let bias_shape = format!("{p}.bias_shape");
            if self.written.insert(bias_shape.clone()) {
                self.initializers
                    .push(int64_tensor(&bias_shape, &[n as i64, o as i64, 1, 1]));
            }
            let mixed = format!("{p}.bias_mixed");
            let bias = format!("{p}.bias_sample");
            self.node("MatMul", &[routing, &biases], &mixed, vec![]);
            self.node("Reshape", &[&mixed, &bias_shape], &bias, vec![]);
            self.node("Add", &[&unfolded, &bias], p, vec![]);
        }
        Ok(Value {
            name: p.clone(),
            hw,
        })
    }

    /// A mixed convolution as timm computes it: `Split` the channels, one `Conv` per part
    /// (timm's weights, `{path}.{i}.weight`, each padded for its own kernel), `Concat`.
    fn mixed_conv(
        &mut self,
        x: &Value,
        c: &ir::Conv,
        mode: PaddingMode,
    ) -> Result<Value, ExportError> {
        let parts = c.parts();
        let sizes: Vec<i64> = parts.iter().map(|p| p.in_channels as i64).collect();
        let slices: Vec<String> = (0..parts.len())
            .map(|i| format!("{}.split.{i}", c.path))
            .collect();
        let mut inputs = vec![x.name.clone()];
        let mut attribute = vec![attr_int("axis", 1)];
        if self.options.opset >= 13 {
            // From opset 13 on the sizes are an input.
            let name = format!("{}.split_sizes", c.path);
            if self.written.insert(name.clone()) {
                self.initializers.push(TensorProto {
                    dims: vec![sizes.len() as i64],
                    data_type: Some(onnx::INT64),
                    name: Some(name.clone()),
                    int64_data: sizes.clone(),
                    ..Default::default()
                });
            }
            inputs.push(name);
        } else {
            attribute.push(attr_ints("split", &sizes));
        }
        self.nodes.push(NodeProto {
            input: inputs,
            output: slices.clone(),
            name: Some(format!("{}.split", c.path)),
            op_type: Some("Split".into()),
            attribute,
            domain: None,
        });
        let mut outs = Vec::with_capacity(parts.len());
        for (part, slice) in parts.iter().zip(slices) {
            let v = Value {
                name: slice,
                hw: x.hw,
            };
            outs.push(self.conv(&v, part, mode)?);
        }
        let names: Vec<&str> = outs.iter().map(|v| v.name.as_str()).collect();
        self.node("Concat", &names, &c.path, vec![attr_int("axis", 1)]);
        Ok(Value {
            name: c.path.clone(),
            hw: outs.first().and_then(|v| v.hw),
        })
    }

    /// The normalization after a convolution, by its kind.
    fn norm(&mut self, x: &Value, n: &ir::Norm) -> Result<Value, ExportError> {
        match n.kind {
            ir::NormKind::Batch { .. } => self.batch_norm(x, n),
            ir::NormKind::Group { groups } => self.group_norm(x, n, groups),
        }
    }

    /// GroupNorm (timm's `GroupNormAct`) in elementwise operators and `ReduceMean`, which
    /// every opset has: `Reshape` to `[N, groups, -1]`, the mean and the biased variance of
    /// each sample's group over its channels and pixels, `(x - mean) / sqrt(var + eps)`,
    /// `Reshape` back to the input's `Shape`, then timm's per-channel `weight` and `bias` as
    /// `Mul` and `Add`. Not ONNX's `GroupNormalization` (opset 18), whose scale and bias were
    /// per group until opset 21 made them per channel, nor `InstanceNormalization` on the
    /// grouped map, which tract (the Rust runtime the tests run) averages over the batch too.
    fn group_norm(&mut self, x: &Value, n: &ir::Norm, groups: usize) -> Result<Value, ExportError> {
        let p = &n.path;
        let c = [n.channels];
        let grouped_shape = self.ints(&format!("{p}.group_shape"), &[0, groups as i64, -1]);
        let eps = self.scalar(&format!("{p}.eps"), n.eps as f32);
        let channel_shape = self.ints("const.channel_shape", &[-1, 1, 1]);
        let name = |s: &str| format!("{p}.{s}");
        self.node(
            "Reshape",
            &[&x.name, &grouped_shape],
            &name("grouped"),
            vec![],
        );
        self.reduce_mean(&name("grouped"), &name("mean"));
        self.node(
            "Sub",
            &[&name("grouped"), &name("mean")],
            &name("centered"),
            vec![],
        );
        self.node(
            "Mul",
            &[&name("centered"), &name("centered")],
            &name("squared"),
            vec![],
        );
        self.reduce_mean(&name("squared"), &name("var"));
        self.node("Add", &[&name("var"), &eps], &name("var_eps"), vec![]);
        self.node("Sqrt", &[&name("var_eps")], &name("std"), vec![]);
        self.node(
            "Div",
            &[&name("centered"), &name("std")],
            &name("group_normed"),
            vec![],
        );
        self.node("Shape", &[&x.name], &name("input_shape"), vec![]);
        self.node(
            "Reshape",
            &[&name("group_normed"), &name("input_shape")],
            &name("normed"),
            vec![],
        );
        let weight = self.weight(&format!("{p}.weight"), &c)?;
        let bias = self.weight(&format!("{p}.bias"), &c)?;
        self.node(
            "Reshape",
            &[&weight, &channel_shape],
            &name("weight.chw"),
            vec![],
        );
        self.node(
            "Reshape",
            &[&bias, &channel_shape],
            &name("bias.chw"),
            vec![],
        );
        self.node(
            "Mul",
            &[&name("normed"), &name("weight.chw")],
            &name("scaled"),
            vec![],
        );
        self.node("Add", &[&name("scaled"), &name("bias.chw")], p, vec![]);
        Ok(Value {
            name: p.clone(),
            hw: x.hw,
        })
    }

    /// The mean over the last axis of a `[N, groups, L]` tensor, kept as `[N, groups, 1]`:
    /// `ReduceMean`, whose axes are an attribute before opset 18 and an input from 18 on.
    fn reduce_mean(&mut self, x: &str, out: &str) {
        let keep = attr_int("keepdims", 1);
        if self.options.opset >= REDUCE_AXES_INPUT_OPSET {
            let axes = self.ints("const.last_axis", &[-1]);
            self.node("ReduceMean", &[x, &axes], out, vec![keep]);
        } else {
            self.node(
                "ReduceMean",
                &[x],
                out,
                vec![attr_ints("axes", &[-1]), keep],
            );
        }
    }

    /// An int64 constant, written once.
    fn ints(&mut self, name: &str, values: &[i64]) -> String {
        if self.written.insert(name.to_string()) {
            self.initializers.push(TensorProto {
                dims: vec![values.len() as i64],
                data_type: Some(onnx::INT64),
                name: Some(name.to_string()),
                int64_data: values.to_vec(),
                ..Default::default()
            });
        }
        name.to_string()
    }

    /// Eval-mode BatchNorm on the running statistics.
    fn batch_norm(&mut self, x: &Value, bn: &ir::Norm) -> Result<Value, ExportError> {
        let p = &bn.path;
        let c = [bn.channels];
        let inputs = [
            x.name.clone(),
            self.weight(&format!("{p}.weight"), &c)?,
            self.weight(&format!("{p}.bias"), &c)?,
            self.weight(&format!("{p}.running_mean"), &c)?,
            self.weight(&format!("{p}.running_var"), &c)?,
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node(
            "BatchNormalization",
            &inputs,
            p,
            vec![attr_float("epsilon", bn.eps as f32)],
        );
        Ok(Value {
            name: p.clone(),
            hw: x.hw,
        })
    }

    /// `act` on `x`, its output named `out`, in the operators of the export's opset.
    fn activation(&mut self, x: &Value, act: Activation, out: &str) -> Value {
        let opset = self.options.opset;
        let x_name = x.name.as_str();
        match act {
            Activation::Silu => {
                let gate = format!("{out}.sigmoid");
                self.node("Sigmoid", &[x_name], &gate, vec![]);
                self.node("Mul", &[x_name, &gate], out, vec![]);
            }
            Activation::Relu => self.node("Relu", &[x_name], out, vec![]),
            Activation::Relu6 => {
                let lo = self.scalar("const.zero", 0.0);
                let hi = self.scalar("const.six", 6.0);
                self.node("Clip", &[x_name, &lo, &hi], out, vec![]);
            }
            Activation::HardSwish if opset >= HARD_SWISH_OPSET => {
                self.node("HardSwish", &[x_name], out, vec![]);
            }
            Activation::HardSwish => {
                // x * relu6(x + 3) / 6, the gate as HardSigmoid: what HardSwish is defined as.
                let gate = format!("{out}.hard_sigmoid");
                self.node(
                    "HardSigmoid",
                    &[x_name],
                    &gate,
                    vec![attr_float("alpha", 1.0 / 6.0), attr_float("beta", 0.5)],
                );
                self.node("Mul", &[x_name, &gate], out, vec![]);
            }
            Activation::Gelu if opset >= GELU_OPSET => {
                self.node("Gelu", &[x_name], out, vec![]);
            }
            Activation::Gelu => {
                // The exact (erf) GELU, as torch writes it: x * 0.5 * (1 + erf(x / sqrt 2)).
                let sqrt2 = self.scalar("const.sqrt2", std::f32::consts::SQRT_2);
                let one = self.scalar("const.one", 1.0);
                let half = self.scalar("const.half", 0.5);
                let scaled = format!("{out}.scaled");
                let erf = format!("{out}.erf");
                let plus1 = format!("{out}.erf_plus_one");
                let prod = format!("{out}.x_times");
                self.node("Div", &[x_name, &sqrt2], &scaled, vec![]);
                self.node("Erf", &[&scaled], &erf, vec![]);
                self.node("Add", &[&erf, &one], &plus1, vec![]);
                self.node("Mul", &[x_name, &plus1], &prod, vec![]);
                self.node("Mul", &[&prod, &half], out, vec![]);
            }
            Activation::Mish if opset >= MISH_OPSET => {
                self.node("Mish", &[x_name], out, vec![]);
            }
            Activation::Mish => {
                // x * tanh(softplus(x)): Mish's definition in operators of every opset.
                let softplus = format!("{out}.softplus");
                let tanh = format!("{out}.tanh");
                self.node("Softplus", &[x_name], &softplus, vec![]);
                self.node("Tanh", &[&softplus], &tanh, vec![]);
                self.node("Mul", &[x_name, &tanh], out, vec![]);
            }
        }
        Value {
            name: out.to_string(),
            hw: x.hw,
        }
    }

    /// conv, normalization and (unless a linear projection) the activation, named `{bn}.act`
    /// as timm's `BatchNormAct2d` and `GroupNormAct` name it.
    /// A CondConv block's convolutions take its `routing` weights.
    fn conv_bn_act(
        &mut self,
        x: &Value,
        conv: &ir::Conv,
        bn: &ir::Norm,
        act: Option<Activation>,
        routing: Option<&str>,
    ) -> Result<Value, ExportError> {
        let padding = conv.padding_in(self.ir.padding);
        let y = match routing {
            Some(r) if conv.is_conditional() => self.cond_conv(x, conv, r, padding)?,
            _ => self.conv(x, conv, padding)?,
        };
        let y = self.norm(&y, bn)?;
        let y = match act {
            Some(a) => self.activation(&y, a, &format!("{}.act", bn.path)),
            None => y,
        };
        Ok(match conv.blur_stride {
            1 => y,
            s => self.blur_pool(&y, conv, s),
        })
    }

    /// timm's blur pool after `conv` (`antialias blur`): a depthwise `Conv` with the constant
    /// 3x3 binomial filter `[1, 2, 1]^T [1, 2, 1] / 16` (an initializer `{conv}.blur_filter`,
    /// not one of the network's tensors), zero padding 1, at `stride`.
    fn blur_pool(&mut self, x: &Value, conv: &ir::Conv, stride: usize) -> Value {
        let c = conv.out_channels;
        let filter = format!("{}.blur_filter", conv.path);
        if self.written.insert(filter.clone()) {
            let taps = [1f32, 2., 1., 2., 4., 2., 1., 2., 1.].map(|v| v / 16.0);
            let values: Vec<f32> = taps.iter().copied().cycle().take(9 * c).collect();
            self.initializers
                .push(float_tensor(&filter, &[c, 1, 3, 3], &values));
        }
        let out = format!("{}.blur", conv.path);
        let s = stride as i64;
        self.node(
            "Conv",
            &[&x.name, &filter],
            &out,
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[s, s]),
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_int("group", c as i64),
            ],
        );
        Value {
            name: out,
            hw: x
                .hw
                .map(|(h, w)| ((h + 2 - 3) / stride + 1, (w + 2 - 3) / stride + 1)),
        }
    }

    /// Squeeze-excitation: the channel means, `conv_reduce`, the block's activation,
    /// `conv_expand`, a sigmoid gate multiplied into `x`.
    fn squeeze_excite(
        &mut self,
        x: &Value,
        se: &ir::SqueezeExcite,
        act: Activation,
    ) -> Result<Value, ExportError> {
        let pooled = Value {
            name: format!("{}.pool", se.path),
            hw: Some((1, 1)),
        };
        match &se.global_context {
            Some(gc) => self.attention_pool(x, gc, &pooled.name)?,
            None => self.node("GlobalAveragePool", &[&x.name], &pooled.name, vec![]),
        }
        // The 1x1 convolutions of a 1x1 map pad nothing whatever the padding mode.
        let r = self.conv(&pooled, &se.conv_reduce, PaddingMode::Symmetric)?;
        // Global context attention's LayerNorm on the 1x1 map: a one-group GroupNorm.
        let r = match &se.global_context {
            Some(gc) => self.group_norm(&r, &gc.norm, 1)?,
            None => r,
        };
        let r = self.activation(&r, act, &format!("{}.act1", se.path));
        let e = self.conv(&r, &se.conv_expand, PaddingMode::Symmetric)?;
        let gate = format!("{}.gate", se.path);
        self.node("Sigmoid", &[&e.name], &gate, vec![]);
        let out = se.path.clone();
        self.node("Mul", &[&x.name, &gate], &out, vec![]);
        Ok(Value {
            name: out,
            hw: x.hw,
        })
    }

    /// Global context attention's pooling into `out` (`[N, C, 1, 1]`): the 1x1 attention
    /// logits, a softmax over each sample's pixels, and the channels weighted by it (`MatMul`
    /// of `[N, C, HW]` by `[N, HW, 1]`).
    fn attention_pool(
        &mut self,
        x: &Value,
        gc: &ir::GlobalContext,
        out: &str,
    ) -> Result<(), ExportError> {
        let logits = self.conv(x, &gc.conv_attn, PaddingMode::Symmetric)?;
        let p = &gc.conv_attn.path;
        let name = |s: &str| format!("{p}.{s}");
        let flat = self.ints("const.flat_pixels", &[0, 1, -1]);
        let column = self.ints("const.pixel_column", &[0, -1, 1]);
        let channels = self.ints("const.channel_pixels", &[0, 0, -1]);
        let pooled = self.ints("const.pooled_shape", &[0, 0, 1, 1]);
        self.node("Reshape", &[&logits.name, &flat], &name("flat"), vec![]);
        // Over the last axis, which every opset's Softmax reads alike for this shape.
        self.node(
            "Softmax",
            &[&name("flat")],
            &name("softmax"),
            vec![attr_int("axis", 2)],
        );
        self.node(
            "Reshape",
            &[&name("softmax"), &column],
            &name("weights"),
            vec![],
        );
        self.node("Reshape", &[&x.name, &channels], &name("pixels"), vec![]);
        self.node(
            "MatMul",
            &[&name("pixels"), &name("weights")],
            &name("context"),
            vec![],
        );
        self.node("Reshape", &[&name("context"), &pooled], out, vec![]);
        Ok(())
    }

    /// One block: its layers with the squeeze-excitation after `se_after`, then the residual.
    fn block(&mut self, x: &Value, b: &ir::Block) -> Result<Value, ExportError> {
        let se_after = b.layers.se_after();
        let routing = match b.layers.routing() {
            Some(r) => Some(self.routing(x, r)?),
            None => None,
        };
        let mut y = x.clone();
        for (i, l) in b.layers.conv_bns().into_iter().enumerate() {
            let act = l.activated.then_some(b.activation);
            y = self.conv_bn_act(&y, l.conv, l.bn, act, routing.as_deref())?;
            if i == se_after
                && let Some(se) = b.layers.se()
            {
                y = self.squeeze_excite(&y, se, b.activation)?;
            }
        }
        if !b.residual {
            return Ok(y);
        }
        // Drop-path is the identity at inference.
        let out = b.path.clone();
        self.node("Add", &[&y.name, &x.name], &out, vec![]);
        Ok(Value {
            name: out,
            hw: y.hw,
        })
    }

    /// Global average pooling, flattened to `[N, C]`, and the classifier as a `Gemm`.
    fn classifier(&mut self, x: &Value, c: &ir::Linear) -> Result<(), ExportError> {
        self.node("GlobalAveragePool", &[&x.name], "global_pool", vec![]);
        self.node(
            "Flatten",
            &["global_pool"],
            "global_pool.flatten",
            vec![attr_int("axis", 1)],
        );
        let w = self.weight(
            &format!("{}.weight", c.path),
            &[c.out_features, c.in_features],
        )?;
        let b = self.weight(&format!("{}.bias", c.path), &[c.out_features])?;
        self.node(
            "Gemm",
            &["global_pool.flatten", &w, &b],
            OUTPUT,
            vec![attr_int("transB", 1)],
        );
        Ok(())
    }

    fn finish(self, normalize: Option<&ir::Normalize>) -> ModelProto {
        let ir = self.ir;
        let o = self.options;
        let in_graph = o.normalize && normalize.is_some();
        let input_doc = if in_graph {
            "NCHW float32 pixels in [0, 1]; the graph normalizes them with the spec's mean and std"
                .to_string()
        } else {
            match normalize {
                Some(n) => format!(
                    "NCHW float32, normalized outside the graph: (pixel in [0, 1] - mean) / std \
                     with mean {:?}, std {:?}",
                    n.mean, n.std
                ),
                None => "NCHW float32, as the network was trained on it".to_string(),
            }
        };
        let input = float_value_info(
            INPUT,
            vec![
                dim(o.batch, "batch"),
                dim(Size::Fixed(ir.input_channels), "channels"),
                dim(o.resolution, "height"),
                dim(o.resolution, "width"),
            ],
            &input_doc,
        );
        let output = float_value_info(
            OUTPUT,
            vec![dim(o.batch, "batch"), dim(Size::Fixed(ir.num_classes), "")],
            "class logits (no softmax)",
        );
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut meta = vec![
            ("effnet.model", ir.name.clone()),
            ("effnet.resolution", ir.resolution.to_string()),
            ("effnet.padding", ir.padding.name().to_string()),
            ("effnet.normalize_in_graph", in_graph.to_string()),
        ];
        if let Some(n) = normalize {
            meta.push(("effnet.mean", list(&n.mean)));
            meta.push(("effnet.std", list(&n.std)));
        }
        let graph = GraphProto {
            node: self.nodes,
            name: Some(ir.name.clone()),
            initializer: self.initializers,
            doc_string: Some(ir.docs.join("\n")).filter(|d| !d.is_empty()),
            input: vec![input],
            output: vec![output],
        };
        ModelProto {
            ir_version: Some(ir_version(o.opset)),
            producer_name: Some("effnet".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            doc_string: Some(format!(
                "{} exported by effnet from its IR; initializers carry timm's state_dict names",
                ir.name
            )),
            graph: Some(graph),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(o.opset),
            }],
            metadata_props: meta
                .into_iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.into()),
                    value: Some(v),
                })
                .collect(),
        }
    }
}
