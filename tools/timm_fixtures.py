#!/usr/bin/env python3
"""Small logits fixtures for the effnet runtime, computed by timm itself.

Each fixture is a reduced-width network described once in FIXTURES below. From that one description
the script
  * builds the network with timm's own builder (`decode_arch_def`, `round_channels`,
    `timm.models.efficientnet.EfficientNet`), exactly as timm's `_gen_*` functions do,
  * randomizes every weight and the BatchNorm statistics with a fixed seed (see `randomize_`),
  * runs a fixed input `torch.randn(2, 3, H, W)` through it in eval mode, float32,
  * writes `tests/fixtures/runtime/<name>.safetensors`: every state_dict tensor under its timm name
    (float32; `num_batches_tracked` skipped) plus `__input__` (2, 3, H, W) and `__logits__` (2, classes),
  * writes `tests/fixtures/runtime/<name>.effnet`: the same network in the .effnet language
    (docs/language.md), model name = fixture name,
  * checks that a fresh timm model loaded from the file reproduces the stored logits bit for bit,
  * for the fixtures marked `features=True`, runs the same weights through timm's feature
    extractor (`EfficientNetFeatures`, what `timm.create_model(..., features_only=True)` builds)
    with every level in `out_indices` and writes `tests/fixtures/runtime/<name>.features.safetensors`:
    `level{i}` (2, C, H, W) for each level i, and timm's `feature_info` in the metadata,
  * and (when all fixtures are made) writes `tests/fixtures/runtime/README.md`.

Usage (from the repository root):
    python tools/timm_fixtures.py [--out tests/fixtures/runtime] [--features-only] [NAME ...]
"""
import argparse
import json
import math
import os
from functools import partial

import torch
import torch.nn as nn
from safetensors.torch import save_file

import timm
from timm.layers import CondConv2d
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet, EfficientNetFeatures
from timm.layers import GroupNormAct

# ---------------------------------------------------------------------------------------------
# Fixture descriptions.
#
# stage = (kind, k, e, s, c, r, opts) with kind in conv | ds | dsa | fused | edge | mbconv (the
# .effnet names), k an int or mixed kernels as timm writes them ("3.5.7"), and opts a dict with
# any of: se (ratio), skip (True = `skip`, False = `noskip`), fc, then, a / p (expansion /
# projection kernels, "1.1"), gs (group size), act (the stage's own activation, `act NAME`),
# s2d (True: timm's space-to-depth `d1`).
# cc (CondConv experts, mbconv only; times the fixture's `experts` multiplier).
# features=True also stores timm's feature maps (features_only) for the fixture's input.
# train=True also stores timm's train-mode logits (batch-statistics BatchNorm) for that input.
# output_stride=N builds with timm's `output_stride` (strides past N become dilation).
# aa="blurpc" builds with timm's `aa_layer='blurpc'` (`antialias blur`); se_layer="gc" with
# timm's global context attention in the SE's place (`attention gc`).
# norm_group=N builds with timm's `GroupNormAct(group_size=N)` instead of BatchNorm2d (`norm group`);
# group_size=G is timm's model-wide `group_size` (`decode_arch_def(..., group_size=G)`).
# ---------------------------------------------------------------------------------------------
FIXTURES = [
    dict(
        name="fx_v2s_sym64",
        features=True,
        doc="EfficientNetV2-S shape at small width: cn+skip, er, ir+SE, kernel 5; symmetric padding, silu",
        covers="`fused e1 ... skip` (timm `cn` with residual), `fused e4` (timm `er`), `mbconv` + SE "
               "(timm `ir`), kernel 5 mbconv, symmetric padding, silu, eps 1e-5, limit 0.9, head conv",
        size=64, seed=1, classes=10, act="silu", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.0, limit=0.9, stem=8,
        stages=[
            ("fused", 3, 1, 1, 8, 2, dict(skip=True)),
            ("fused", 3, 4, 2, 16, 2, {}),
            ("mbconv", 3, 4, 2, 24, 2, dict(se=0.25)),
            ("mbconv", 5, 6, 2, 32, 2, dict(se=0.25)),
        ],
        head=64,
    ),
    dict(
        name="fx_v2b_same67",
        features=True,
        doc="tf_efficientnetv2_b* shape: TF SAME padding on an odd input, eps 1e-3, round limit 0, SE on a fused block",
        covers="TF `same` padding from odd input 67: stride-2 pads 1/1 on 67 and 17, 0/1 on 34, 2/2 for k5 "
               "on 9 (67 -> 34 -> 17 -> 9 -> 5), stride 1 static symmetric; eps 1e-3, `round channels(limit = 0)`, SE on a Fused-MBConv (`er` + se), "
               "kernel 5 mbconv, mbconv stride 1 with residual",
        size=67, seed=2, classes=10, act="silu", eps=1e-3, padding="same",
        width=1.0, depth=1.0, limit=0.0, stem=8,
        stages=[
            ("fused", 3, 1, 1, 8, 1, dict(skip=True)),
            ("fused", 3, 4, 2, 16, 2, {}),
            ("fused", 3, 4, 2, 24, 2, dict(se=0.25)),
            ("mbconv", 5, 6, 2, 32, 2, dict(se=0.25)),
            ("mbconv", 3, 6, 1, 32, 1, dict(se=0.25)),
        ],
        head=64,
    ),
    dict(
        name="fx_v1_relu32",
        doc="EfficientNet-B0 shape (V1): depthwise-separable first stage with SE, relu",
        covers="`ds` with SE and `ds` without SE (ds residual at stride 1 / equal channels), stride-2 ds, "
               "mbconv kernel 5 + SE, relu (also inside SE), symmetric padding, input 32",
        size=32, seed=3, classes=10, act="relu", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.0, limit=0.9, stem=8,
        stages=[
            ("ds", 3, 1, 1, 8, 1, dict(se=0.25)),
            ("ds", 3, 1, 2, 16, 1, {}),
            ("mbconv", 5, 6, 2, 24, 2, dict(se=0.25)),
            ("mbconv", 3, 6, 2, 32, 1, dict(se=0.25)),
        ],
        head=64,
    ),
    dict(
        name="fx_conv_nohead",
        features=True,
        doc="plain conv stages (timm `cn`) with and without skip, stride 2 in conv and fused stages, no head",
        covers="`conv` without skip (no residual even at stride 1 / equal channels), `conv ... skip` "
               "(residual), stride-2 conv stage, stride-2 fused stage, `head none` (timm num_features=0: "
               "classifier on the last stage's channels), TF `same` padding on even input 64, relu",
        size=64, seed=4, classes=10, act="relu", eps=1e-3, padding="same",
        width=1.0, depth=1.0, limit=0.9, stem=8,
        stages=[
            ("conv", 3, 1, 2, 16, 2, {}),
            ("conv", 3, 1, 1, 16, 1, dict(skip=True)),
            ("fused", 3, 4, 2, 24, 2, {}),
            ("mbconv", 3, 4, 2, 32, 1, dict(se=0.25)),
        ],
        head=None,
    ),
    dict(
        name="fx_edge_rw67",
        doc="timm efficientnetv2_rw_* shape: EdgeResidual with e1 (a kxk expansion and 1x1 projection), SE on an e1 edge block",
        covers="`edge e1` (timm `er` with exp 1: conv_exp + conv_pwl, residual on the 2nd block), "
               "`edge e1` + SE, `edge e4`, symmetric padding on odd input 67, silu",
        size=67, seed=5, classes=10, act="silu", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.0, limit=0.9, stem=8,
        stages=[
            ("edge", 3, 1, 1, 16, 2, {}),
            ("edge", 3, 1, 2, 24, 1, dict(se=0.25)),
            ("edge", 3, 4, 2, 24, 1, {}),
            ("mbconv", 3, 4, 2, 32, 2, dict(se=0.25)),
        ],
        head=64,
    ),
    dict(
        name="fx_w125_d15_limit09",
        doc="width 1.25, depth 1.5, round limit 0.9 (timm default): 8 channels round up to 16",
        covers="width multiplier 1.25 on stem/stages/head with the 0.9 guard (8*1.25=10 -> 8 < 9 -> 16), "
               "depth multiplier 1.5 with ceil (x1 -> 2, x2 -> 3), TF `same` padding on even input 64, silu",
        size=64, seed=6, classes=10, act="silu", eps=1e-3, padding="same",
        width=1.25, depth=1.5, limit=0.9, stem=8,
        stages=[
            ("fused", 3, 1, 1, 8, 1, dict(skip=True)),
            ("fused", 3, 4, 2, 16, 2, {}),
            ("mbconv", 3, 4, 2, 24, 2, dict(se=0.25)),
            ("mbconv", 5, 6, 2, 32, 1, dict(se=0.25)),
        ],
        head=64,
    ),
    dict(
        name="fx_w125_d15_limit0",
        doc="the same network as fx_w125_d15_limit09 but round limit 0 (automl): 8 channels stay 8",
        covers="width 1.25 / depth 1.5 with `round channels(limit = 0)`: stem and first stage 8 (not 16), "
               "everything else as fx_w125_d15_limit09; relu, symmetric padding, input 32",
        size=32, seed=7, classes=10, act="relu", eps=1e-5, padding="symmetric",
        width=1.25, depth=1.5, limit=0.0, stem=8,
        stages=[
            ("fused", 3, 1, 1, 8, 1, dict(skip=True)),
            ("fused", 3, 4, 2, 16, 2, {}),
            ("mbconv", 3, 4, 2, 24, 2, dict(se=0.25)),
            ("mbconv", 5, 6, 2, 32, 1, dict(se=0.25)),
        ],
        head=64,
    ),
    dict(
        name="fx_fixed_stem12",
        doc="a fixed (unrounded) 12-channel stem: mid channels and SE width follow timm's make_divisible",
        covers="`stem ... -> 12 fixed` (timm fix_stem: no width scaling and no rounding), `edge e1` + SE "
               "on 12 input channels: timm's mid = make_divisible(12 * 1) = 16 (not 12) and SE reduce = "
               "round(16 * 0.25 / 1) = 4 (not 12 * 0.25 = 3); `ds` + SE on 16; silu, symmetric, input 32. "
               "Assumes `fixed` means what timm's fix_stem does: the stem is neither scaled nor rounded",
        size=32, seed=8, classes=10, act="silu", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.0, limit=0.9, stem=12, fix_stem=True,
        stages=[
            ("edge", 3, 1, 1, 16, 1, dict(se=0.25)),
            ("ds", 3, 1, 2, 16, 1, dict(se=0.25)),
            ("mbconv", 3, 4, 2, 24, 1, dict(se=0.25)),
        ],
        head=32,
    ),
    dict(
        name="fx_ds_se12",
        doc="a depthwise-separable block with SE on 12 input channels, TF padding",
        covers="`ds` + SE where the input width is not a multiple of 8: timm's DepthwiseSeparableConv "
               "puts the SE on its input channels (12, reduce round(12 * 0.5) = 6), not on a rounded "
               "mid width (16); relu, TF `same` padding, eps 1e-3, input 32",
        size=32, seed=9, classes=10, act="relu", eps=1e-3, padding="same",
        width=1.0, depth=1.0, limit=0.9, stem=12, fix_stem=True,
        stages=[
            ("ds", 3, 1, 1, 16, 1, dict(se=0.5)),
            ("mbconv", 3, 4, 2, 24, 1, dict(se=0.25)),
        ],
        head=32,
    ),
    dict(
        name="fx_fixed_head_relu6",
        doc="width 0.5 with a fixed stem and head, ReLU6 (EfficientNet-Lite, MobileNetV2-0.5, MnasNet)",
        covers="`head ... fixed` (timm's `num_features` not passed through round_chs_fn: 64 stays 64 "
               "at width 0.5), `stem ... fixed`, relu6 in every block and in SE, `ds noskip`; "
               "symmetric padding, input 32",
        size=32, seed=10, classes=10, act="relu6", eps=1e-5, padding="symmetric",
        width=0.5, depth=1.0, limit=0.9, stem=16, fix_stem=True, fix_head=True,
        stages=[
            ("ds", 3, 1, 1, 16, 1, dict(skip=False)),
            ("mbconv", 3, 6, 2, 24, 2, {}),
            ("mbconv", 5, 3, 2, 40, 2, dict(se=0.25)),
        ],
        head=64,
    ),
    dict(
        name="fx_edge_fc20",
        doc="EdgeTPU's forced input width: the first EdgeResidual expands 16 channels, not the stem's 24",
        covers="`fused ... fc 16` and `edge ... fc 8` (timm `er` with `fc`: the expansion from the forced "
               "width, scaled by 1.5 and rounded: 24 and 16 channels), noskip; relu, TF `same` padding, "
               "eps 1e-3, input 20",
        size=20, seed=12, classes=10, act="relu", eps=1e-3, padding="same",
        width=1.5, depth=1.0, limit=0.9, stem=16,
        stages=[
            ("fused", 3, 4, 1, 16, 1, dict(skip=False, fc=16)),
            ("edge", 3, 1, 2, 24, 2, dict(fc=8, se=0.25)),
            ("mbconv", 5, 4, 2, 32, 1, {}),
        ],
        head=48,
    ),
    dict(
        name="fx_then_depth",
        doc="several block strings in one stage (SPNASNet, FBNet), depth-scaled as a whole",
        covers="`then` lines: blocks numbered on within the stage (`blocks.1.0` .. `blocks.1.4`), and "
               "timm's `_scale_stage_depth` at depth 1.6: the stage's 1 + 2 repeats become ceil(4.8) = 5, "
               "shared out from the last string back (3, then 2); relu, symmetric padding, input 24",
        size=24, seed=13, classes=10, act="relu", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.6, limit=0.9, stem=16,
        stages=[
            ("ds", 3, 1, 1, 16, 1, {}),
            ("mbconv", 5, 6, 2, 24, 1, {}),
            ("mbconv", 3, 3, 1, 24, 2, dict(then=True)),
            ("mbconv", 3, 6, 2, 32, 1, dict(se=0.25)),
            ("fused", 3, 4, 1, 32, 1, dict(then=True)),
        ],
        head=64,
    ),
    dict(
        name="fx_mixnet21",
        doc="MixNet's block options: mixed depthwise kernels, two-group 1x1 expansion and projection, "
            "dsa, relu early and swish later",
        covers="`k3.5.7` / `k3.5.7.9` / `k3.5` (timm MixedConv2d depthwise: uneven splits, the first "
               "taking the remainder), `a1.1` / `p1.1` (grouped 1x1 with timm's split), `dsa` (activated "
               "pointwise, no skip), `ds ... p1.1`, per-stage `act silu` on a relu model, SE 0.5; "
               "symmetric padding, odd input 21",
        size=21, seed=14, classes=10, act="relu", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.0, limit=0.9, stem=16,
        stages=[
            ("dsa", 3, 1, 1, 16, 1, {}),
            ("ds", "3.5", 1, 1, 16, 1, dict(p="1.1")),
            ("mbconv", 3, 6, 2, 24, 1, dict(a="1.1", p="1.1")),
            ("mbconv", "3.5.7", 6, 2, 40, 1, dict(se=0.5, act="silu")),
            ("mbconv", "3.5", 6, 1, 40, 2, dict(a="1.1", p="1.1", se=0.5, act="silu", then=True)),
            ("mbconv", "3.5.7.9", 3, 2, 48, 1, dict(p="1.1", se=0.25, act="silu")),
        ],
        head=64,
    ),
    dict(
        name="fx_mixgs_same19",
        doc="TensorFlow-ported MixNet options: mixed kernels with SAME padding per kernel, group sizes",
        covers="`k3.5.7` at stride 2 with TF `same` padding (each split padded for its own kernel), "
               "`edge k3.5 ... p1.1` (a dense MixedConv2d expansion), `mbconv ... gs 8` and `conv ... gs 8` "
               "(grouped convolutions), `mbconv k5 a3` (a 3x3 expansion); eps 1e-3, odd input 19",
        size=19, seed=15, classes=10, act="silu", eps=1e-3, padding="same",
        width=1.0, depth=1.0, limit=0.9, stem=16,
        stages=[
            ("conv", 3, 1, 1, 16, 1, dict(skip=True, gs=8)),
            ("mbconv", "3.5.7", 4, 2, 24, 1, dict(a="1.1", se=0.25)),
            ("edge", "3.5", 4, 2, 32, 1, dict(p="1.1")),
            ("mbconv", 3, 4, 1, 32, 1, dict(gs=8, se=0.25)),
            ("mbconv", 5, 4, 2, 40, 1, dict(a=3)),
        ],
        head=64,
    ),
    dict(
        name="fx_mish16",
        doc="Mish everywhere (timm's `nmi`), in the blocks and in SE",
        covers="`activation mish` (x * tanh(softplus(x)); timm nn.Mish) in conv, fused, MBConv and "
               "SE; symmetric padding, input 16",
        size=16, seed=11, classes=10, act="mish", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.0, limit=0.9, stem=16,
        stages=[
            ("fused", 3, 1, 1, 16, 1, dict(skip=True)),
            ("fused", 3, 4, 2, 24, 1, {}),
            ("mbconv", 3, 4, 2, 32, 2, dict(se=0.25)),
        ],
        head=64,
    ),
    dict(
        name="fx_os16_sym35",
        features=True,
        output_stride=16,
        doc="timm's output_stride=16: the last stride-2 stage dilates (MBConv depthwise, then an EdgeResidual)",
        covers="`output_stride 16` (timm `output_stride=16`): the fifth stride-2 stage's first block "
               "keeps dilation 1 at stride 1, the blocks after it have dilation 2 (the depthwise of "
               "`mbconv`, the kxk `conv_exp` of `edge` with a residual); padding `d * (k - 1) / 2`; "
               "feature levels end where the stride was written (reduction capped at 16); "
               "symmetric padding on odd input 35, silu",
        size=35, seed=14, classes=10, act="silu", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.0, limit=0.9, stem=8,
        stages=[
            ("fused", 3, 1, 1, 8, 1, dict(skip=True)),
            ("fused", 3, 4, 2, 16, 2, {}),
            ("mbconv", 3, 4, 2, 24, 2, dict(se=0.25)),
            ("mbconv", 5, 4, 2, 32, 2, dict(se=0.25)),
            ("mbconv", 3, 4, 2, 40, 3, dict(se=0.25)),
            ("edge", 3, 3, 1, 40, 1, {}),
        ],
        head=64,
    ),
    dict(
        name="fx_os8_same29",
        features=True,
        output_stride=8,
        doc="timm's output_stride=8: every block kind dilated, dilations 2, 4 and 8, TF padding",
        covers="`output_stride 8`: stride 2 turned into dilation in `ds` (residual on the block whose "
               "stride became 1), `conv ... skip` (dilated kxk conv), `fused e4` (dilated `conv_exp`, "
               "with a residual), `mbconv` kernel 5 at dilation 4 (17 pixels wide on a 4x4 map) and "
               "kernel 3 at dilation 8; TF `same` padding (stride-2 layers dynamic on odd input 29, "
               "the dilated stride-1 ones static `d * (k - 1) / 2`), relu, eps 1e-3",
        size=29, seed=15, classes=10, act="relu", eps=1e-3, padding="same",
        width=1.0, depth=1.0, limit=0.9, stem=16,
        stages=[
            ("ds", 3, 1, 1, 16, 1, dict(se=0.25)),
            ("conv", 3, 1, 2, 24, 1, {}),
            ("fused", 3, 4, 2, 24, 2, {}),
            ("ds", 3, 1, 2, 24, 2, {}),
            ("conv", 3, 1, 2, 32, 2, dict(skip=True)),
            ("mbconv", 5, 4, 1, 32, 2, dict(se=0.25)),
            ("fused", 3, 3, 2, 32, 1, {}),
            ("mbconv", 3, 4, 1, 40, 1, dict(se=0.25)),
        ],
        head=64,
    ),
    dict(
        name="fx_s2d_sym25",
        features=True,
        doc="EfficientNet-X's space-to-depth (timm `d1`): two regions, opened by a ds and an ir block",
        covers="`ds ... s2d` (a 2x2 stride-2 TF-`same` conv to 4x the channels, padded on the odd "
               "13x13 map, then a 2x2 `same` depthwise: k3 halved), a second ds inside the region "
               "(4x wide), `fused ... s2` closing it (stride 1, expansion 4 / 4), `mbconv k5 ... s2d` "
               "(k5 halved to 3, symmetric), closed by a stride-2 mbconv; SE ratio / 4 in the opening "
               "blocks; feature levels from the stem; symmetric padding, silu, odd input 25",
        size=25, seed=16, classes=10, act="silu", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.0, limit=0.9, stem=8,
        stages=[
            ("ds", 3, 1, 1, 8, 2, dict(se=0.25, s2d=True)),
            ("fused", 3, 4, 2, 16, 1, dict(act="relu")),
            ("mbconv", 5, 4, 1, 16, 1, dict(se=0.25, s2d=True)),
            ("mbconv", 3, 4, 2, 24, 2, dict(se=0.25)),
        ],
        head=48,
    ),
    dict(
        name="fx_blur_sym35",
        features=True,
        aa="blurpc",
        doc="timm's anti-aliased downsampling (`aa_layer='blurpc'`, efficientnet_blur_b0) in every block kind",
        covers="`antialias blur`: each stride-2 block's kxk convolution at stride 1, then its norm and "
               "activation, then timm's BlurPool2d (3x3 binomial, zero padding 1, stride 2) in `conv`, "
               "`ds`, `fused` (`er`) and `mbconv` blocks; stride-1 blocks untouched; odd input 35 "
               "(maps 18, 9, 5, 3, 2), symmetric padding, silu",
        size=35, seed=17, classes=10, act="silu", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.0, limit=0.9, stem=8,
        stages=[
            ("conv", 3, 1, 2, 16, 1, {}),
            ("ds", 3, 1, 2, 16, 1, dict(se=0.25)),
            ("fused", 3, 4, 2, 24, 2, {}),
            ("mbconv", 5, 4, 2, 32, 2, dict(se=0.25)),
        ],
        head=48,
    ),
    dict(
        name="fx_gc_sym29",
        features=True,
        se_layer="gc",
        doc="timm's global context attention in the SE's place (`se_layer='gc'`, gc_efficientnetv2_rw_t)",
        covers="`attention gc`: attention pooling (1x1 logits, softmax over each sample's pixels), "
               "`mlp_scale` fc1, LayerNorm2d (eps 1e-6) and the block's activation, fc2, sigmoid gate, "
               "in `ds`, `edge` (er) and `mbconv` blocks with SE ratios 0.25 and 0.5 (reduced widths "
               "rounded half up), random LayerNorm affine; symmetric padding, silu, odd input 29",
        size=29, seed=18, classes=10, act="silu", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.0, limit=0.9, stem=16,
        stages=[
            ("ds", 3, 1, 1, 16, 1, dict(se=0.25)),
            ("edge", 3, 4, 2, 24, 1, dict(se=0.25)),
            ("mbconv", 3, 4, 2, 32, 2, dict(se=0.25)),
            ("mbconv", 5, 3, 2, 40, 1, dict(se=0.5)),
        ],
        head=48,
    ),
    dict(
        name="fx_gn_g8_22",
        norm_group=8,
        group_size=8,
        doc="GroupNorm and a model-wide group size (timm's efficientnet_b0_g8_gn shape)",
        covers="`norm group(size = 8)` (timm `GroupNormAct(group_size=8)`: 2 to 16 groups, with and "
               "without the activation, in the stem, every block kind and the head) and `group_size 8` "
               "(timm's model-wide `group_size`: the kxk convolution of `conv`, `ds`, `mbconv` in groups "
               "of 8 channels), overridden by a stage's own `gs 0` (dense `fused`) and `gs 16`; SE, "
               "silu, symmetric padding, input 22",
        size=22, seed=16, classes=10, act="silu", eps=1e-5, padding="symmetric",
        width=1.0, depth=1.0, limit=0.9, stem=16,
        stages=[
            ("conv", 3, 1, 1, 16, 1, dict(skip=True)),
            ("ds", 3, 1, 1, 16, 1, dict(se=0.25)),
            ("mbconv", 3, 4, 2, 24, 2, dict(se=0.25)),
            ("fused", 3, 2, 2, 32, 1, dict(gs=0)),
            ("mbconv", 5, 4, 1, 32, 1, dict(gs=16, se=0.25)),
        ],
        head=64,
    ),
    dict(
        name="fx_cc_same33",
        train=True,
        doc="CondConv (timm's CondConvResidual): per-sample kernels mixed from experts, TF padding",
        covers="`mbconv ... cc N` (timm `ir` with `cc`) with `scale ... experts 2` (timm's "
               "`experts_multiplier`): 4 and 2 x 2 experts on `conv_pw`, `conv_dw` and `conv_pwl`, "
               "`routing_fn` on the block input's mean; stride-2 kernel-5 and stride-1 kernel-3 "
               "conditional depthwise (TF `same`, dynamic on odd input 33), a conditional grouped "
               "`conv_dw` (`gs 8`), SE and a residual on CondConv blocks; train-mode logits too",
        size=33, seed=16, classes=10, act="silu", eps=1e-3, padding="same",
        width=1.0, depth=1.0, limit=0.9, stem=16, experts=2,
        stages=[
            ("ds", 3, 1, 1, 16, 1, dict(se=0.25)),
            ("mbconv", 3, 4, 2, 24, 1, {}),
            ("mbconv", 5, 4, 2, 32, 2, dict(se=0.25, cc=2)),
            ("mbconv", 3, 6, 1, 40, 1, dict(cc=1, gs=8)),
        ],
        head=64,
    ),
]


# ---------------------------------------------------------------------------------------------
# The shared randomization recipe (also used by tools/parity.py).
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def randomize_(model, seed, calib_size=None, calib_batch=4, gain=1.0):
    """Randomize all parameters and BatchNorm statistics of `model` in place, deterministically.

    After torch.manual_seed(seed), modules in `named_modules` order:
      conv / linear weight ~ N(0, (gain / sqrt(fan_in))^2), fan_in = in / groups * kh * kw
      conv / linear bias   ~ N(0, 0.1^2)
      BN weight ~ U(0.5, 1.5), BN bias ~ N(0, 0.1^2)
    BN statistics:
      calib_size None: running_mean ~ N(0, 0.1^2), running_var ~ U(0.5, 1.5)  (plain recipe)
      calib_size S:    one eval-mode forward of a calibration batch torch.randn(calib_batch, 3, S, S);
                       each BN, when reached, takes the per-channel mean / variance of its actual
                       input (which already went through the perturbed BNs before it) and perturbs
                       them: running_mean = mean + N(0, 0.1^2) * sqrt(var),
                       running_var = var * U(0.5, 1.5).
    Calibration keeps every BN output near unit scale whatever the depth; with the plain recipe,
    or with statistics calibrated all at once and perturbed afterwards, activations shrink or grow
    geometrically through the blocks (logits of 1e-1 .. 1e5 seen).
    """
    torch.manual_seed(seed)
    bns = []
    for _, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight
            fan_in = w[0].numel()
            w.copy_(torch.randn_like(w) * (gain / math.sqrt(fan_in)))
            if m.bias is not None:
                m.bias.copy_(torch.randn_like(m.bias) * 0.1)
        elif isinstance(m, CondConv2d):
            # [experts, prod(weight_shape)]: each expert as the convolution it is a kernel of.
            fan_in = math.prod(m.weight_shape[1:])
            m.weight.copy_(torch.randn_like(m.weight) * (gain / math.sqrt(fan_in)))
            if m.bias is not None:
                m.bias.copy_(torch.randn_like(m.bias) * 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            bns.append(m)
            m.weight.copy_(torch.rand_like(m.weight) + 0.5)
            m.bias.copy_(torch.randn_like(m.bias) * 0.1)
            m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.1)
            m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            # As BatchNorm's affine; GroupNorm and LayerNorm (global context attention's) have
            # no statistics to calibrate: they normalize each sample by its own.
            m.weight.copy_(torch.rand_like(m.weight) + 0.5)
            m.bias.copy_(torch.randn_like(m.bias) * 0.1)
    if calib_size:
        xc = torch.randn(calib_batch, 3, calib_size, calib_size)

        def calibrate(m, inputs):
            x = inputs[0]
            var = x.var(dim=(0, 2, 3), unbiased=False)
            mean = x.mean(dim=(0, 2, 3))
            m.running_mean.copy_(mean + torch.randn_like(mean) * 0.1 * var.sqrt())
            m.running_var.copy_(var * (torch.rand_like(var) + 0.5))

        was_training = model.training
        hooks = [m.register_forward_pre_hook(calibrate) for m in bns]
        try:
            model.eval()
            model(xc)
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
    return model


# ---------------------------------------------------------------------------------------------
# Description -> timm arch_def and -> .effnet text.
# ---------------------------------------------------------------------------------------------
ACT_CODES = {"relu": "re", "relu6": "r6", "hard_swish": "hs", "silu": "sw", "mish": "mi"}


def block_string(stage):
    kind, k, e, s, c, r, o = stage
    se = f"_se{o['se']}" if o.get("se") else ""
    # timm's other block-string options, in the order its MixNet strings write them
    ap = "".join(f"_{key}{o[key]}" for key in ("a", "p") if o.get(key))
    extra = (f"_gs{o['gs']}" if "gs" in o else "") + (f"_n{ACT_CODES[o['act']]}" if o.get("act") else "")
    extra += "_d1" if o.get("s2d") else ""
    if kind == "conv" or (kind == "fused" and e == 1):
        assert not o.get("se"), "SE on a conv-bn-act stage: use `edge`"
        return f"cn_r{r}_k{k}_s{s}_e1_c{c}" + ("_skip" if o.get("skip") else "") + extra
    tail = "_noskip" if o.get("skip") is False else ""
    if kind in ("fused", "edge"):
        fc = f"_fc{o['fc']}" if o.get("fc") else ""
        return f"er_r{r}_k{k}{ap}_s{s}_e{e}_c{c}{se}{fc}{tail}{extra}"
    if kind == "mbconv":
        cc = f"_cc{o['cc']}" if o.get("cc") else ""
        return f"ir_r{r}_k{k}{ap}_s{s}_e{e}_c{c}{se}{cc}{tail}{extra}"
    if kind in ("ds", "dsa"):
        return f"{kind}_r{r}_k{k}{ap}_s{s}_e1_c{c}{se}{tail}{extra}"
    raise ValueError(kind)


def arch_def(fx):
    """One list of block strings per stage; a stage option `then=True` joins the stage above."""
    stages = []
    for st in fx["stages"]:
        if st[6].get("then") and stages:
            stages[-1].append(block_string(st))
        else:
            stages.append([block_string(st)])
    return stages


def fmt_num(v):
    if isinstance(v, float) and v != 0 and abs(v) < 0.01:
        m, ex = f"{v:e}".split("e")
        return f"{float(m):g}e{int(ex)}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def effnet_text(fx):
    L = []
    L.append(f"/// {fx['doc']}")
    L.append(f"/// Fixture generated by tools/timm_fixtures.py (timm {timm.__version__}); weights in {fx['name']}.safetensors")
    L.append(f"model {fx['name']} {{")
    L.append(f"    input 3 x {fx['size']}")
    L.append(f"    classes {fx['classes']}")
    L.append(f"    activation {fx['act']}")
    if fx.get("norm_group"):
        L.append(f"    norm group(size = {fx['norm_group']}, eps = {fmt_num(fx['eps'])})")
    else:
        L.append(f"    norm batch(eps = {fmt_num(fx['eps'])}, momentum = 0.1)")
    if fx.get("group_size") is not None:
        L.append(f"    group_size {fx['group_size']}")
    L.append(f"    padding {fx['padding']}")
    if fx.get("aa"):
        L.append("    antialias blur")
    if fx.get("se_layer") == "gc":
        L.append("    attention gc")
    if fx.get("output_stride"):
        L.append(f"    output_stride {fx['output_stride']}")
    L.append(f"    round channels(divisor = 8, min = 8, limit = {fmt_num(fx['limit'])})")
    L.append("    round depth ceil")
    experts = f" experts {fx['experts']}" if fx.get("experts", 1) != 1 else ""
    if fx["width"] != 1.0 or fx["depth"] != 1.0 or experts:
        L.append(f"    scale width {fmt_num(fx['width'])} depth {fmt_num(fx['depth'])}{experts}")
    L.append("")
    fixed = " fixed" if fx.get("fix_stem") else ""
    L.append(f"    stem conv k3 s2 -> {fx['stem']}{fixed}")
    rows = []
    for st in fx["stages"]:
        kind, k, e, s, c, r, o = st
        ee = f"e{e}" if kind in ("fused", "edge", "mbconv") else ""
        kk = f"k{k}" + "".join(f" {key}{o[key]}" for key in ("a", "p") if o.get(key))
        opts = []
        if o.get("se"):
            opts.append(f"se {fmt_num(o['se'])}")
        if o.get("skip") is True:
            opts.append("skip")
        elif o.get("skip") is False:
            opts.append("noskip")
        if o.get("act"):
            opts.append(f"act {o['act']}")
        if o.get("fc"):
            opts.append(f"fc {o['fc']}")
        if "gs" in o:
            opts.append(f"gs {o['gs']}")
        if o.get("s2d"):
            opts.append("s2d")
        if o.get("cc"):
            opts.append(f"cc {o['cc']}")
        keyword = "then " if o.get("then") else "stage"
        left = f"    {keyword} {kind:<6} {kk} {ee:<2} s{s} -> {c:<3}"
        rows.append((left, f"x{r}", " ".join(opts), block_string(st)))
    w = max(len(a) for a, *_ in rows)
    for left, rep, opts, bs in rows:
        line = f"{left:<{w}} {rep:<3}" + (f" {opts}" if opts else "")
        L.append(f"{line:<{w + 20}} // timm {bs}")
    if fx["head"] is None:
        L.append("    head none")
    else:
        fixed = " fixed" if fx.get("fix_head") else ""
        L.append(f"    head conv k1 -> {fx['head']}{fixed}")
    L.append("}")
    return "\n".join(L) + "\n"


def norm_layer(fx):
    if fx.get("norm_group"):
        return partial(GroupNormAct, group_size=fx["norm_group"], eps=fx["eps"])
    return partial(nn.BatchNorm2d, eps=fx["eps"])


def build(fx):
    act = {"silu": nn.SiLU, "relu": nn.ReLU, "relu6": nn.ReLU6, "mish": nn.Mish}[fx["act"]]
    round_chs_fn = partial(round_channels, multiplier=fx["width"], round_limit=fx["limit"])
    model = EfficientNet(
        block_args=decode_arch_def(arch_def(fx), fx["depth"], group_size=fx.get("group_size"),
                                   experts_multiplier=fx.get("experts", 1)),
        num_classes=fx["classes"],
        num_features=0 if fx["head"] is None else fx["head"] if fx.get("fix_head") else round_chs_fn(fx["head"]),
        stem_size=fx["stem"],
        fix_stem=fx.get("fix_stem", False),
        round_chs_fn=round_chs_fn,
        pad_type="same" if fx["padding"] == "same" else "",
        act_layer=act,
        norm_layer=norm_layer(fx),
        output_stride=fx.get("output_stride", 32),
        aa_layer=fx.get("aa"),
        **({"se_layer": fx["se_layer"]} if fx.get("se_layer") else {}),
    )
    return model


def build_features(fx, levels):
    """timm's feature extractor for the fixture's network, every one of its `levels` levels out."""
    act = {"silu": nn.SiLU, "relu": nn.ReLU, "relu6": nn.ReLU6, "mish": nn.Mish}[fx["act"]]
    round_chs_fn = partial(round_channels, multiplier=fx["width"], round_limit=fx["limit"])
    return EfficientNetFeatures(
        block_args=decode_arch_def(arch_def(fx), fx["depth"], group_size=fx.get("group_size"),
                                   experts_multiplier=fx.get("experts", 1)),
        out_indices=tuple(range(levels)),
        stem_size=fx["stem"],
        fix_stem=fx.get("fix_stem", False),
        round_chs_fn=round_chs_fn,
        pad_type="same" if fx["padding"] == "same" else "",
        act_layer=act,
        norm_layer=norm_layer(fx),
        output_stride=fx.get("output_stride", 32),
        aa_layer=fx.get("aa"),
        **({"se_layer": fx["se_layer"]} if fx.get("se_layer") else {}),
    )


def make_features(fx, base):
    """timm's feature maps of the fixture's stored input through its stored weights (read back
    from `<base>.safetensors`, so they belong to the committed file), written beside it."""
    from safetensors.torch import load_file
    stored = load_file(base + ".safetensors")
    levels = len(build(fx).feature_info)
    feat = build_features(fx, levels)
    state = {k: v for k, v in stored.items() if k in feat.state_dict()}
    missing = set(k for k in feat.state_dict() if not k.endswith("num_batches_tracked")) - set(state)
    assert not missing, missing
    feat.load_state_dict(state, strict=False)
    feat.eval()
    with torch.no_grad():
        maps = feat(stored["__input__"])
    info = [[f["index"], f["module"], f["reduction"], f["num_chs"], f["stage"]]
            for f in feat.feature_info.get_dicts()]
    assert len(maps) == levels == len(info)
    tensors = {f"level{i}": m.float().contiguous() for i, m in enumerate(maps)}
    for t in tensors.values():
        assert torch.isfinite(t).all()
    save_file(tensors, base + ".features.safetensors",
              metadata={"effnet_fixture": json.dumps(
                  {"timm": timm.__version__, "torch": torch.__version__,
                   "feature_info": info}, sort_keys=True)})
    os.chmod(base + ".features.safetensors", 0o644)
    return [list(m.shape) for m in maps]


def describe(model):
    """One line per block: class, in -> mid -> out, SE reduce, kernel, stride, residual."""
    cs = model.conv_stem
    out = [f"stem {cs.in_channels}->{cs.out_channels} k{cs.kernel_size[0]} s{cs.stride[0]} ({type(cs).__name__})"]
    for si, st in enumerate(model.blocks):
        for bi, b in enumerate(st):
            cls = type(b).__name__
            if cls == "ConvBnAct":
                i, m, o, conv = b.conv.in_channels, b.conv.in_channels, b.conv.out_channels, b.conv
            elif cls == "EdgeResidual":
                i, m, o, conv = b.conv_exp.in_channels, b.conv_exp.out_channels, b.conv_pwl.out_channels, b.conv_exp
            elif cls in ("InvertedResidual", "CondConvResidual"):
                i, m, o, conv = b.conv_pw.in_channels, b.conv_pw.out_channels, b.conv_pwl.out_channels, b.conv_dw
            else:
                i, m, o, conv = b.conv_dw.in_channels, b.conv_dw.in_channels, b.conv_pw.out_channels, b.conv_dw
            se = b.se.conv_reduce.out_channels if hasattr(getattr(b, "se", None), "conv_reduce") else 0
            # a MixedConv2d (mixed kernels) holds one conv per kernel
            parts = list(conv.values()) if isinstance(conv, nn.ModuleDict) else [conv]
            ks = ".".join(str(p.kernel_size[0]) for p in parts)
            dil = f" d{parts[0].dilation[0]}" if parts[0].dilation[0] != 1 else ""
            out.append(f"blocks.{si}.{bi} {cls} {i}->{m}->{o} se_rd={se} k{ks} "
                       f"s{parts[0].stride[0]}{dil} skip={b.has_skip} ({type(conv).__name__})")
    head = model.conv_head
    out.append(f"head {head.out_channels if hasattr(head, 'out_channels') else 'none'} "
               f"classifier {model.classifier.in_features}->{model.classifier.out_features}")
    return out


def make(fx, out_dir):
    model = build(fx)
    randomize_(model, fx["seed"], calib_size=fx["size"])
    model.eval()
    torch.manual_seed(1000 + fx["seed"])
    x = torch.randn(2, 3, fx["size"], fx["size"], dtype=torch.float32)
    with torch.no_grad():
        logits = model(x).float()
    assert torch.isfinite(logits).all()
    tensors = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    tensors["__input__"] = x.contiguous()
    tensors["__logits__"] = logits.contiguous()
    base = os.path.join(out_dir, fx["name"])
    save_file(tensors, base + ".safetensors",
              # one key only: safetensors writes metadata in hash order, and one key keeps the
              # file byte-for-byte reproducible
              metadata={"effnet_fixture": json.dumps(
                  {"timm": timm.__version__, "torch": torch.__version__, "seed": fx["seed"],
                   "arch_def": arch_def(fx)}, sort_keys=True)})
    with open(base + ".effnet", "w") as f:
        f.write(effnet_text(fx))
    os.chmod(base + ".safetensors", 0o644)
    # self-check: a fresh timm model loaded from the file reproduces the stored logits
    from safetensors.torch import load_file
    loaded = load_file(base + ".safetensors")
    fresh = build(fx)
    fresh.load_state_dict({k: v for k, v in loaded.items() if not k.startswith("__")}, strict=False)
    missing = set(k for k in fresh.state_dict() if not k.endswith("num_batches_tracked")) - set(loaded)
    assert not missing, missing
    fresh.eval()
    with torch.no_grad():
        again = fresh(loaded["__input__"])
    assert torch.equal(again, loaded["__logits__"]), float((again - loaded["__logits__"]).abs().max())
    params = sum(p.numel() for p in model.parameters())
    maps = make_features(fx, base) if fx.get("features") else None
    if fx.get("train"):
        make_train_logits(fx, base, model, x)
    return dict(name=fx["name"], params=params, logits_std=float(logits.std()),
                logits=logits[0, :4].tolist(), size=os.path.getsize(base + ".safetensors"),
                blocks=describe(model), maps=maps)


@torch.no_grad()
def make_train_logits(fx, base, model, x):
    """timm's train-mode logits for the fixture's input (BatchNorm on batch statistics; the
    fixtures have no dropout or drop path), from a copy so the stored statistics stay as they
    are: `<name>.train.safetensors` with `logits`."""
    import copy
    m = copy.deepcopy(model).train()
    logits = m(x).float()
    assert torch.isfinite(logits).all()
    save_file({"logits": logits.contiguous()}, base + ".train.safetensors",
              metadata={"effnet_fixture": json.dumps({"timm": timm.__version__, "mode": "train"})})
    os.chmod(base + ".train.safetensors", 0o644)


README_HEAD = """# Runtime logits fixtures (generated by timm)

Each fixture is a pair:

- `<name>.effnet`: the network in the .effnet language (docs/language.md), model name = fixture name;
  each stage line carries the timm block string it lowers to as a comment.
- `<name>.safetensors`: every timm state_dict tensor under its timm name (float32, no
  `num_batches_tracked`), plus `__input__` (2, 3, H, W), float32 NCHW, and `__logits__` (2, 10), the
  eval-mode float32 logits timm computes for that input. The header metadata has one key,
  `effnet_fixture`: JSON with the timm/torch versions, the seed and the timm arch_def.

Generated by `python tools/timm_fixtures.py` (this README too; see tools/README.md), which builds
each network with timm's own builder (`decode_arch_def`, `round_channels`, `EfficientNet`),
randomizes all weights and BatchNorm statistics with a fixed seed (BN statistics calibrated on a
random batch, then perturbed, so activations stay O(1)), and checks that a fresh timm model loaded
from the file reproduces `__logits__` bit for bit. Regenerating gives byte-identical files with the
same torch build on the same kind of CPU (elsewhere the calibrated BatchNorm statistics can differ
in their last bits); `--features-only` rewrites only the feature maps, from the stored files.

Five fixtures (those with a `features:` line below) also have `<name>.features.safetensors`: timm's feature
maps for the same input and weights from its feature extractor (`EfficientNetFeatures`, what
`features_only=True` builds) with every level out, as `level0`, `level1`, ... (2, C, H, W), and
timm's `feature_info` ([index, module, reduction, channels, stage] per level) in the metadata.
Fixtures with a `train:` line below also have `<name>.train.safetensors`: `logits`, timm's
train-mode logits for the same input (BatchNorm on the batch's statistics).

No input normalization is applied (`normalize` is absent): feed `__input__` straight to the network.
Logits have a standard deviation of about 0.25 .. 1.5 and differ between the two samples, so an
absolute tolerance around 1e-4 (float32 summation order) is meaningful.

| fixture | input | padding | act | eps | width / depth / limit | params | covers |
|---|---|---|---|---|---|---|---|
"""

README_MID = """
Coverage across the set: every block kind (`conv` with and without `skip`, `fused e1` = timm `cn`,
`fused e4` = timm `er`, `edge e1` and `edge e4` = timm `er`, `mbconv` = timm `ir`, `ds`), SE on
`mbconv`, `ds`, a fused `er` block and an `edge e1` block; symmetric and TF `same` padding, both on the
odd input 67 and on even inputs 64 / 32; stride 2 in conv and fused stages; kernel 5; width 1.25 and
depth 1.5 with round limit 0.9 and with limit 0; silu and relu; `head none`; a fixed 12-channel stem;
MixNet's options (mixed depthwise kernels, `a1.1` / `p1.1`, `dsa`, `gs`, a dense mixed expansion,
per-stage activation) in both paddings;
`output_stride` 16 and 8 (dilation 2 to 8 in every block kind, symmetric and TF `same` padding);
CondConv (`cc`, `experts`: per-sample kernels on 1x1, depthwise and grouped convolutions).

## What timm builds

One line per block: class, in -> mid -> out channels, SE reduce channels, kernel, stride, residual,
and the conv class of the spatial conv. `mid` is the expansion conv's output (EdgeResidual
`conv_exp`, InvertedResidual `conv_pw`); for ConvBnAct and DepthwiseSeparableConv it is the input.
`Conv2dSame` marks timm's dynamic TF-same padding (stride 2); in `same` mode stride-1 convs with odd
kernels get static symmetric padding (plain `Conv2d`). `dN` is the spatial conv's dilation where
the fixture's `output_stride` turned strides into dilation.
"""


def write_readme(out_dir, results):
    rows = []
    for fx in FIXTURES:
        if fx["name"] not in results:
            continue
        r = results[fx["name"]]
        rows.append(f"| `{fx['name']}` | {fx['size']} | {fx['padding']} | {fx['act']} | {fmt_num(fx['eps'])} | "
                    f"{fmt_num(fx['width'])} / {fmt_num(fx['depth'])} / {fmt_num(fx['limit'])} | "
                    f"{r['params']:,} | {fx['covers']} |")
    text = README_HEAD + "\n".join(rows) + "\n" + README_MID
    for fx in FIXTURES:
        if fx["name"] in results:
            r = results[fx["name"]]
            text += f"\n### {fx['name']}\n```\n" + "\n".join(r["blocks"]) + "\n```\n"
            if r["maps"]:
                text += "features: " + ", ".join(f"level{i} {s}" for i, s in enumerate(r["maps"])) + "\n"
            if fx.get("train"):
                text += "train: train-mode logits in " + fx["name"] + ".train.safetensors\n"
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/runtime")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every block")
    ap.add_argument("--features-only", action="store_true",
                    help="only (re)write the .features.safetensors files, from the stored fixtures")
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    os.makedirs(args.out, exist_ok=True)
    if args.features_only:
        for fx in FIXTURES:
            if fx.get("features") and (not args.names or fx["name"] in args.names):
                maps = make_features(fx, os.path.join(args.out, fx["name"]))
                print(f"{fx['name']:22s} features {maps}")
        return
    results = {}
    for fx in FIXTURES:
        if args.names and fx["name"] not in args.names:
            continue
        r = make(fx, args.out)
        results[fx["name"]] = r
        print(f"{r['name']:22s} params {r['params']:>7,}  file {r['size'] / 1024:6.1f} KiB  "
              f"logits std {r['logits_std']:.3f}  [0,:4] {[round(v, 4) for v in r['logits']]}")
        if args.verbose:
            for line in r["blocks"]:
                print("    " + line)
    if not args.names:
        write_readme(args.out, results)


if __name__ == "__main__":
    main()
