#!/usr/bin/env python3
"""Reference data from timm (the reference implementation) for the effnet importer and compiler.

For every model in MODELS this script runs `timm.create_model(name, pretrained=False)` and writes
`tests/reference/timm/<name>.json`:

    model, timm, torch          names and versions
    params                      sum(p.numel() for p in model.parameters())
    bn_eps                      eps of the stem's normalization layer (model.bn1)
    norm_groups                 only for models with GroupNorm (timm's GroupNormAct): [path, num_groups]
                                for every GroupNorm layer, in module order
    default_cfg                 input_size, test_input_size (if any), mean, std, crop_pct (+ tag)
    blocks                      [path, class name] for every module `blocks.S.B`
    block_details               [path, class, in_chs, mid_chs, out_chs, se_rd_chs, kernel, stride, has_skip]
                                (mid_chs = output of the expansion conv, or in_chs for ConvBnAct / ds;
                                se_rd_chs = SE conv_reduce out channels, 0 without SE)
    tensors                     [[state_dict key, [shape...]], ...] in state_dict order, without
                                `num_batches_tracked`
    feature_info                [index, module, reduction, num_chs, stage] for every level of
                                `timm.create_model(name, features_only=True).feature_info` (timm's
                                `stage` counts the stem as 0, so blocks.S is stage S + 1)

and `tests/reference/timm/arch_defs.json`: for every model the arch_def block strings and the
generator arguments exactly as timm's own `_gen_*` function passes them (`group_size`, the
model-wide group size of `decode_arch_def`, and `norm_layer` / `norm_group_size` for a
`GroupNormAct` norm layer, only where the generator passes them).

`tests/reference/timm/output_stride.json` (also written alone by `--output-stride`): for the
models in OUTPUT_STRIDE_MODELS (every block kind, both paddings, `then` stages) built with
`timm.create_model(name, output_stride=OS)` for OS 8 and 16, the stem's stride and every block's
spatial convolution as [path, stride, dilation, padding] (padding: timm's static symmetric
padding, or "dynamic" for its TF-same `Conv2dSame`), and `feature_info` as above. They are captured, not
copied: the script wraps `decode_arch_def` and `_create_effnet` inside `timm.models.efficientnet`
while the model is created, so whatever the installed timm does (including the `rw=True` edits of
`_gen_efficientnetv2_s`) is what gets recorded.

Usage (from the repository root):
    python tools/timm_reference.py [--out tests/reference/timm] [--output-stride] [MODEL ...]
"""
import argparse
import functools
import inspect
import json
import os
import re
import sys

import torch
import timm
import timm.models.efficientnet as tme
from timm.models._efficientnet_builder import round_channels

MODELS = [
    "efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l", "efficientnetv2_xl",
    "tf_efficientnetv2_s", "tf_efficientnetv2_m", "tf_efficientnetv2_l", "tf_efficientnetv2_xl",
    "tf_efficientnetv2_b0", "tf_efficientnetv2_b1", "tf_efficientnetv2_b2", "tf_efficientnetv2_b3",
    "efficientnetv2_rw_t", "efficientnetv2_rw_s", "efficientnetv2_rw_m",
] + [f"efficientnet_b{i}" for i in range(9)] + ["efficientnet_l2"] + [
    f"tf_efficientnet_b{i}" for i in range(9)
] + ["tf_efficientnet_l2"] + [f"efficientnet_lite{i}" for i in range(5)] + [
    f"tf_efficientnet_lite{i}" for i in range(5)
] + [
    "mnasnet_050", "mnasnet_075", "mnasnet_100", "mnasnet_140",
    "semnasnet_050", "semnasnet_075", "semnasnet_100", "semnasnet_140", "mnasnet_small",
    "mobilenetv2_035", "mobilenetv2_050", "mobilenetv2_075", "mobilenetv2_100",
    "mobilenetv2_110d", "mobilenetv2_120d", "mobilenetv2_140",
] + [f"tinynet_{c}" for c in "abcde"] + [
    "efficientnet_es", "efficientnet_em", "efficientnet_el",
    "tf_efficientnet_es", "tf_efficientnet_em", "tf_efficientnet_el",
    "spnasnet_100", "fbnetc_100",
    "mixnet_s", "mixnet_m", "mixnet_l", "mixnet_xl", "mixnet_xxl",
    "tf_mixnet_s", "tf_mixnet_m", "tf_mixnet_l",
    "efficientnet_b0_gn", "efficientnet_b0_g8_gn", "efficientnet_b0_g16_evos",
    "efficientnet_b3_gn", "efficientnet_b3_g8_gn",
    "efficientnet_cc_b0_4e", "efficientnet_cc_b0_8e", "efficientnet_cc_b1_8e",
    "tf_efficientnet_cc_b0_4e", "tf_efficientnet_cc_b0_8e", "tf_efficientnet_cc_b1_8e",
]
# EfficientNet-X and -H (`_gen_efficientnet_x`): space-to-depth (`d1`).
MODELS += ["efficientnet_x_b3", "efficientnet_x_b5", "efficientnet_h_b5"]
# The pruned EfficientNets: B1-B3 narrowed to timm's `_pruned/*.txt` shapes; ES and EL are
# their unpruned networks under the names of pruned weights.
MODELS += ["efficientnet_b1_pruned", "efficientnet_b2_pruned", "efficientnet_b3_pruned",
           "efficientnet_es_pruned", "efficientnet_el_pruned"]
# Anti-aliased downsampling (`aa_layer='blurpc'`).
MODELS += ["efficientnet_blur_b0"]
# Global context attention in the SE's place (`se_layer='gc'`).
MODELS += ["gc_efficientnetv2_rw_t"]

# Counts from /work/shared/reference/efficientnet.md (timm 1.0.31); checked after building.
EXPECTED_PARAMS = {
    "efficientnetv2_s": 21_458_488, "efficientnetv2_m": 54_139_356,
    "efficientnetv2_l": 118_515_272, "efficientnetv2_xl": 208_119_808,
    "tf_efficientnetv2_s": 21_458_488, "tf_efficientnetv2_m": 54_139_356,
    "tf_efficientnetv2_l": 118_515_272, "tf_efficientnetv2_xl": 208_119_808,
    "tf_efficientnetv2_b0": 7_139_704, "tf_efficientnetv2_b1": 8_141_052,
    "tf_efficientnetv2_b2": 10_096_086, "tf_efficientnetv2_b3": 14_358_406,
    "efficientnetv2_rw_t": 13_649_388, "efficientnetv2_rw_s": 23_941_296,
    "efficientnetv2_rw_m": 53_236_442,
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960,
}


def _fn_defaults(fn):
    """Keyword defaults of a plain function (or the function a partial wraps, with its keywords)."""
    base = fn.func if isinstance(fn, functools.partial) else fn
    out = {k: p.default for k, p in inspect.signature(base).parameters.items()
           if p.default is not inspect.Parameter.empty}
    if isinstance(fn, functools.partial):
        out.update(fn.keywords)
    return out


def capture_arch(name):
    """Create `name` while recording what its `_gen_*` function hands to the builder."""
    captured = {}
    orig_decode = tme.decode_arch_def
    orig_create = tme._create_effnet

    def decode(arch_def, depth_multiplier=1.0, *args, **kwargs):
        captured["arch_def"] = [list(stage) for stage in arch_def]
        dm = depth_multiplier
        captured["depth_multiplier"] = list(dm) if isinstance(dm, tuple) else dm
        captured["depth_trunc"] = kwargs.get("depth_trunc", args[0] if args else "ceil")
        captured["fix_first_last"] = kwargs.get("fix_first_last", args[2] if len(args) > 2 else False)
        if kwargs.get("group_size") is not None:
            captured["group_size"] = kwargs["group_size"]
        # CondConv's experts multiplier (`_gen_efficientnet_condconv`), recorded where it is not 1.
        em = kwargs.get("experts_multiplier", args[1] if len(args) > 1 else 1)
        if em != 1:
            captured["experts_multiplier"] = em
        return orig_decode(arch_def, depth_multiplier, *args, **kwargs)

    def create(variant, pretrained=False, **kwargs):
        rc = kwargs.get("round_chs_fn", round_channels)
        rcd = _fn_defaults(rc)
        captured["channel_multiplier"] = rcd.get("multiplier", 1.0)
        captured["channel_divisor"] = rcd.get("divisor", 8)
        captured["round_limit"] = rcd.get("round_limit", 0.9)
        captured["stem_size"] = kwargs.get("stem_size", 32)
        captured["fix_stem"] = kwargs.get("fix_stem", False)
        captured["num_features"] = kwargs.get("num_features", 1280)
        captured["pad_type"] = kwargs.get("pad_type", "")
        norm = kwargs.get("norm_layer")
        nd = _fn_defaults(norm) if norm is not None else {}
        captured["bn_eps"] = nd.get("eps", 1e-5)
        captured["bn_momentum"] = nd.get("momentum", 0.1)
        norm_cls = norm.func if isinstance(norm, functools.partial) else norm
        if norm_cls is not None and norm_cls is not torch.nn.BatchNorm2d:
            captured["norm_layer"] = norm_cls.__name__
            captured["norm_group_size"] = nd.get("group_size")
        act = kwargs.get("act_layer")
        captured["act_layer"] = getattr(act, "__name__", str(act))
        if isinstance(kwargs.get("se_layer"), str):
            captured["se_layer"] = kwargs["se_layer"]
        if kwargs.get("aa_layer"):
            captured["aa_layer"] = kwargs["aa_layer"]
        if kwargs.get("pruned"):
            # timm narrows the built model to the layer shapes of its `_pruned/<variant>.txt`.
            path = os.path.join(os.path.dirname(tme.__file__), "_pruned", f"{variant}.txt")
            with open(path) as f:
                captured["pruned"] = f.read().strip()
        return orig_create(variant, pretrained, **kwargs)

    tme.decode_arch_def = decode
    tme._create_effnet = create
    try:
        model = timm.create_model(name, pretrained=False)
    finally:
        tme.decode_arch_def = orig_decode
        tme._create_effnet = orig_create
    # the generator function that built it, and how it spells num_features, for the record
    from timm.models._registry import model_entrypoint
    src = inspect.getsource(model_entrypoint(name))
    gen = re.search(r"(_gen_\w+)\(", src)
    if gen:
        captured["generator"] = gen.group(1)
        gsrc = inspect.getsource(getattr(tme, gen.group(1)))
        nf = re.search(r"num_features=([^,\n]+),", gsrc)
        if nf:
            captured["num_features_expr"] = nf.group(1).strip()
    return model, captured


def block_details(model):
    rows = []
    for si, stage in enumerate(model.blocks):
        for bi, blk in enumerate(stage):
            path = f"blocks.{si}.{bi}"
            cls = type(blk).__name__
            first = {"ConvBnAct": "conv", "EdgeResidual": "conv_exp", "InvertedResidual": "conv_pw",
                     "CondConvResidual": "conv_pw", "DepthwiseSeparableConv": "conv_dw"}[cls]
            last = {"ConvBnAct": "conv", "EdgeResidual": "conv_pwl", "InvertedResidual": "conv_pwl",
                    "CondConvResidual": "conv_pwl", "DepthwiseSeparableConv": "conv_pw"}[cls]
            spatial = {"ConvBnAct": "conv", "EdgeResidual": "conv_exp", "InvertedResidual": "conv_dw",
                       "CondConvResidual": "conv_dw", "DepthwiseSeparableConv": "conv_dw"}[cls]
            c_first = getattr(blk, first)
            c_sp = getattr(blk, spatial)
            in_chs = c_first.in_channels
            mid = c_first.out_channels if cls in ("EdgeResidual", "InvertedResidual", "CondConvResidual") else in_chs
            out_chs = getattr(blk, last).out_channels
            se = getattr(blk, "se", None)
            se_rd = se.conv_reduce.out_channels if se is not None and hasattr(se, "conv_reduce") else 0
            # A MixedConv2d (MixNet's mixed kernels) holds one conv per kernel: the largest
            # kernel is what effnet's IR records for the block.
            parts = list(c_sp.values()) if isinstance(c_sp, torch.nn.ModuleDict) else [c_sp]
            k = max(p.kernel_size[0] for p in parts)
            s = parts[0].stride[0]
            rows.append([path, cls, in_chs, mid, out_chs, se_rd, k, s, bool(blk.has_skip)])
    return rows


def reference(name):
    model, arch = capture_arch(name)
    params = sum(p.numel() for p in model.parameters())
    sd = model.state_dict()
    tensors = [[k, list(v.shape)] for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    cfg = model.pretrained_cfg
    dcfg = {k: cfg[k] for k in ("input_size", "test_input_size", "mean", "std", "crop_pct") if k in cfg}
    dcfg["tag"] = cfg.get("tag")
    bn = model.bn1
    blocks = [[f"blocks.{si}.{bi}", type(b).__name__]
              for si, st in enumerate(model.blocks) for bi, b in enumerate(st)]
    features = timm.create_model(name, pretrained=False, features_only=True)
    feature_info = [[f["index"], f["module"], f["reduction"], f["num_chs"], f["stage"]]
                    for f in features.feature_info.get_dicts()]
    data = {
        "model": name,
        "timm": timm.__version__,
        "torch": torch.__version__,
        "params": params,
        "bn_eps": bn.eps,
        "default_cfg": dcfg,
        "blocks": blocks,
        "block_details": block_details(model),
        "tensors": tensors,
        "feature_info": feature_info,
    }
    groups = [[n, m.num_groups] for n, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm)]
    if groups:
        data["norm_groups"] = groups
    return data, arch


# Networks for output_stride.json: ds + ir (b0), cn + er + ir (V2-S), TF same padding
# (tf_efficientnetv2_b0, tf_efficientnet_b0), er e1 (rw_s), EdgeTPU er with fc (efficientnet_es),
# several block strings per stage (spnasnet_100).
OUTPUT_STRIDE_MODELS = [
    "efficientnet_b0", "efficientnetv2_s", "tf_efficientnetv2_b0", "tf_efficientnet_b0",
    "efficientnetv2_rw_s", "efficientnet_es", "spnasnet_100",
]


def output_stride_reference():
    out = {"timm": timm.__version__, "models": {}}
    for name in OUTPUT_STRIDE_MODELS:
        per = {}
        for os_ in (8, 16):
            model = timm.create_model(name, pretrained=False, output_stride=os_)
            convs = []
            for si, stage in enumerate(model.blocks):
                for bi, blk in enumerate(stage):
                    cls = type(blk).__name__
                    sp = {"ConvBnAct": "conv", "EdgeResidual": "conv_exp", "InvertedResidual": "conv_dw",
                          "DepthwiseSeparableConv": "conv_dw"}[cls]
                    c = getattr(blk, sp)
                    pad = "dynamic" if type(c).__name__ == "Conv2dSame" else c.padding[0]
                    convs.append([f"blocks.{si}.{bi}.{sp}", c.stride[0], c.dilation[0], pad])
            features = timm.create_model(name, pretrained=False, features_only=True, output_stride=os_)
            per[str(os_)] = {
                "stem_stride": model.conv_stem.stride[0],
                "convs": convs,
                "feature_info": [[f["index"], f["module"], f["reduction"], f["num_chs"], f["stage"]]
                                 for f in features.feature_info.get_dicts()],
            }
        out["models"][name] = per
        print(f"{name:24s} output_stride 8, 16", flush=True)
    return out


def dump_compact(data):
    """JSON with one list entry per line for the long lists, everything else compact."""
    lines = ["{"]
    items = list(data.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        if isinstance(v, list) and v and isinstance(v[0], list):
            lines.append(f"  {json.dumps(k)}: [")
            for j, e in enumerate(v):
                lines.append("    " + json.dumps(e, separators=(",", ":")) + ("," if j + 1 < len(v) else ""))
            lines.append("  ]" + comma)
        else:
            lines.append(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/reference/timm")
    ap.add_argument("--output-stride", action="store_true",
                    help="write only output_stride.json")
    ap.add_argument("models", nargs="*", default=MODELS)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.output_stride or set(args.models) == set(MODELS):
        data = output_stride_reference()
        # Indented, with each innermost list (a conv, a level) on one line.
        text = re.sub(r"\[\s+([^\[\]]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                      json.dumps(data, indent=1))
        with open(os.path.join(args.out, "output_stride.json"), "w") as f:
            f.write(text + "\n")
        if args.output_stride:
            return
    arch_defs = {}
    bad = []
    for name in args.models:
        data, arch = reference(name)
        arch_defs[name] = arch
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            f.write(dump_compact(data))
        exp = EXPECTED_PARAMS.get(name)
        ok = "ok" if exp == data["params"] else f"MISMATCH (expected {exp:,})" if exp else "no expectation"
        if exp is not None and exp != data["params"]:
            bad.append(name)
        print(f"{name:24s} params {data['params']:>12,}  {ok}", flush=True)
    if set(args.models) == set(MODELS):
        out = {"timm": timm.__version__, "models": arch_defs}
        with open(os.path.join(args.out, "arch_defs.json"), "w") as f:
            f.write("{\n")
            f.write(f'  "timm": {json.dumps(timm.__version__)},\n  "models": {{\n')
            names = list(arch_defs)
            for i, n in enumerate(names):
                a = dict(arch_defs[n])
                ad = a.pop("arch_def")
                f.write(f"    {json.dumps(n)}: {{\n")
                f.write("      \"arch_def\": [\n")
                f.write(",\n".join("        " + json.dumps(s) for s in ad) + "\n      ],\n")
                f.write("      " + json.dumps(a, separators=(", ", ": "))[1:-1] + "\n")
                f.write("    }" + ("," if i + 1 < len(names) else "") + "\n")
            f.write("  }\n}\n")
        json.load(open(os.path.join(args.out, "arch_defs.json")))  # sanity: valid JSON
    if bad:
        print("parameter count mismatch:", ", ".join(bad), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
