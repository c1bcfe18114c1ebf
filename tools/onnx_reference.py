#!/usr/bin/env python3
"""ONNX export parity: effnet's exported files run in onnxruntime against timm's logits.

    python tools/onnx_reference.py [--effnet target/debug/effnet] [--out tests/fixtures/onnx]
                                   [--models] [--tol 1e-5]

For the same weights in timm and in effnet (random, BatchNorm statistics calibrated on a batch,
tools/timm_fixtures.py `randomize_`), it exports with `effnet export`, checks every file with
`onnx.checker` (full check, shape inference included), runs it in onnxruntime (CPU) and compares
the logits with timm's:

  * every timm fixture (tests/fixtures/runtime: every block kind, both paddings, SE, odd sizes),
    at effnet's default opset and fixed resolution, and a few with a dynamic resolution or other
    opsets (a CondConv fixture at its fixed batch, which its grouped convolution needs): onnxruntime's logits go to OUT/onnxruntime.json, which `cargo test` (runtime/tests/
    export_onnx.rs) checks effnet's export against, in tract;
  * two fixtures (TF `same` padding; GroupNorm) at every opset effnet writes (11 to 28), fixed
    and dynamic resolution;
  * every activation the language has (silu, relu, relu6, hard_swish, gelu, mish) in a small
    timm network built like the fixtures, in an opset that decomposes HardSwish / GELU / Mish
    (13) and one that has them as operators (20);
  * with --models, full-size networks from the bundled specs (tf_efficientnetv2_b0 at 224 with
    TensorFlow `same` padding, efficientnet_b0 at 224), exported at a fixed and at a dynamic
    resolution, also compared with `effnet run`.

The script exits 1 when any difference exceeds --tol. Figures (the largest differences) go to
OUT/onnxruntime.json too; nothing large is written to the repository (the .onnx files and
full-size weights stay in a temporary directory).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from functools import partial

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from safetensors.numpy import load_file as load_np
from safetensors.torch import save_file

import timm
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timm_fixtures import FIXTURES, arch_def, effnet_text, randomize_  # noqa: E402

FIXTURE_DIR = "tests/fixtures/runtime"
DEFAULT_OPSET = 17
OPSETS = range(11, 29)
# Fixtures also exported with a dynamic resolution or another opset, checked in cargo test too.
EXTRA = [
    ("fx_v2b_same67", 11, "dynamic"),
    ("fx_conv_nohead", 13, "dynamic"),
    ("fx_w125_d15_limit09", 28, "dynamic"),
    ("fx_v1_relu32", 20, 32),
    # mixed kernels: Split's sizes as an attribute (opset 11) and as an input (13), SAME
    # padding per kernel decided at run time
    ("fx_mixgs_same19", 11, "dynamic"),
    ("fx_mixnet21", 13, "dynamic"),
    # GroupNorm: ReduceMean's axes as an attribute (11) and as an input (18), any batch and size
    ("fx_gn_g8_22", 11, "dynamic"),
    ("fx_gn_g8_22", 18, "dynamic"),
    # CondConv: the batch folded into the channels, SAME padding decided at run time
    ("fx_cc_same33", 13, "dynamic"),
]
# Fixtures exported at every opset (fixed and dynamic resolution): TF `same` padding, and
# GroupNorm (whose ReduceMean changes form at opset 18).
SWEEP = ["fx_v2b_same67", "fx_gn_g8_22"]
ACTIVATIONS = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hard_swish": nn.Hardswish,
    "gelu": nn.GELU,
    "mish": nn.Mish,
}


def effnet_export(effnet, spec, weights, out, opset, resolution, model=None, batch=None):
    cmd = [effnet, "export", spec, "--weights", weights, "--onnx", out,
           "--opset", str(opset), "--resolution", str(resolution)]
    if model:
        cmd += ["--model", model]
    if batch:
        cmd += ["--batch", str(batch)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return out


def onnxruntime_logits(path, x):
    onnx.checker.check_model(onnx.load(path), full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def operators(path):
    return sorted({n.op_type for n in onnx.load(path).graph.node})


def fixture_weights(name, tmp):
    """The fixture's weights alone (no __input__ / __logits__), its input and timm's logits."""
    t = load_np(os.path.join(FIXTURE_DIR, name + ".safetensors"))
    x, y = t.pop("__input__"), t.pop("__logits__")
    w = os.path.join(tmp, name + ".safetensors")
    from safetensors.numpy import save_file as save_np
    save_np(t, w)
    return w, x, y


def check(diff, tol, what, failures):
    status = "ok" if diff <= tol else "FAIL"
    print(f"  {what:58s} max |onnxruntime - timm| {diff:.2e}  {status}")
    if diff > tol:
        failures.append(f"{what}: {diff:.2e}")


def fixtures(effnet, tmp, tol, failures):
    entries, opsets = [], []
    names = sorted(f[:-7] for f in os.listdir(FIXTURE_DIR) if f.endswith(".effnet"))
    runs = [(n, DEFAULT_OPSET, None) for n in names] + EXTRA
    for name, opset, res in runs:
        w, x, timm_logits = fixture_weights(name, tmp)
        res = x.shape[-1] if res is None else res
        spec = os.path.join(FIXTURE_DIR, name + ".effnet")
        # CondConv's grouped convolution over the batch fixes the batch (effnet's export docs).
        with open(spec) as f:
            batch = x.shape[0] if " cc " in f.read() else None
        out = effnet_export(effnet, spec, w, os.path.join(tmp, f"{name}_{opset}_{res}.onnx"),
                            opset, res, batch=batch)
        got = onnxruntime_logits(out, x)
        diff = float(np.abs(got - timm_logits).max())
        check(diff, tol, f"{name} opset {opset} resolution {res}", failures)
        entries.append(dict(fixture=name, opset=opset, resolution=res,
                            max_abs_diff_vs_timm=diff,
                            onnxruntime_logits=[[float(v) for v in row] for row in got]))
    for name in SWEEP:
        sweep(effnet, tmp, tol, failures, name, opsets)
    return entries, opsets


def sweep(effnet, tmp, tol, failures, name, opsets):
    """`name` exported at every opset, at its own and a dynamic resolution."""
    w, x, timm_logits = fixture_weights(name, tmp)
    for opset in OPSETS:
        for res in (x.shape[-1], "dynamic"):
            out = effnet_export(effnet, os.path.join(FIXTURE_DIR, name + ".effnet"), w,
                                os.path.join(tmp, f"sweep_{opset}_{res}.onnx"), opset, res)
            diff = float(np.abs(onnxruntime_logits(out, x) - timm_logits).max())
            check(diff, tol, f"{name} opset {opset} resolution {res}", failures)
            opsets.append(dict(fixture=name, opset=opset, resolution=res,
                               ir_version=onnx.load(out).ir_version, max_abs_diff_vs_timm=diff))


def activation_network(act):
    """fx_v2b_same67's layout (same padding, fused + SE, mbconv k5) with activation `act`."""
    fx = dict(next(f for f in FIXTURES if f["name"] == "fx_v2b_same67"))
    fx.update(name=f"acts_{act}", act=act, size=32, doc=f"every block kind with {act}")
    fx["stages"] = [("ds", 3, 1, 1, 8, 1, dict(se=0.25))] + fx["stages"][1:]
    round_chs_fn = partial(round_channels, multiplier=fx["width"], round_limit=fx["limit"])
    model = EfficientNet(
        block_args=decode_arch_def(arch_def(fx), fx["depth"]),
        num_classes=fx["classes"], num_features=round_chs_fn(fx["head"]), stem_size=fx["stem"],
        round_chs_fn=round_chs_fn, pad_type="same", act_layer=ACTIVATIONS[act],
        norm_layer=partial(nn.BatchNorm2d, eps=fx["eps"]))
    return fx, model


def activations(effnet, tmp, tol, failures):
    out = []
    for act in ACTIVATIONS:
        fx, model = activation_network(act)
        randomize_(model, 11, calib_size=fx["size"])
        model.eval()
        torch.manual_seed(111)
        x = torch.randn(2, 3, fx["size"], fx["size"])
        with torch.no_grad():
            want = model(x).numpy()
        spec = os.path.join(tmp, fx["name"] + ".effnet")
        with open(spec, "w") as f:
            f.write(effnet_text(fx))
        w = os.path.join(tmp, fx["name"] + ".safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()
                   if not k.endswith("num_batches_tracked")}, w)
        for opset in (13, 20):
            path = effnet_export(effnet, spec, w, os.path.join(tmp, f"{act}_{opset}.onnx"), opset, fx["size"])
            diff = float(np.abs(onnxruntime_logits(path, x.numpy()) - want).max())
            check(diff, tol, f"activation {act} opset {opset}", failures)
            out.append(dict(activation=act, opset=opset, operators=operators(path),
                            max_abs_diff_vs_timm=diff))
    return out


def models(effnet, tmp, tol, failures):
    out = []
    for name, spec, res in [("tf_efficientnetv2_b0", "specs/tf_efficientnetv2_b.effnet", 224),
                            ("efficientnet_b0", "specs/efficientnet.effnet", 224)]:
        model = timm.create_model(name, pretrained=False)
        randomize_(model, 0, calib_size=res)
        model.eval()
        torch.manual_seed(1)
        x = torch.randn(2, 3, res, res)
        with torch.no_grad():
            want = model(x).numpy()
        w = os.path.join(tmp, name + ".safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()
                   if not k.endswith("num_batches_tracked")}, w)
        xin = os.path.join(tmp, name + "_x.npy")
        np.save(xin, x.numpy())
        yrun = os.path.join(tmp, name + "_run.npy")
        subprocess.run([effnet, "run", spec, "--model", name, "--weights", w, "--input", xin,
                        "--output", yrun], check=True, capture_output=True)
        effnet_logits = np.load(yrun)
        for r in (res, "dynamic"):
            path = effnet_export(effnet, spec, w, os.path.join(tmp, f"{name}_{r}.onnx"),
                                 DEFAULT_OPSET, r, model=name)
            got = onnxruntime_logits(path, x.numpy())
            diff = float(np.abs(got - want).max())
            check(diff, tol, f"{name} {res}x{res} exported at resolution {r}", failures)
            out.append(dict(model=name, spec=spec, input=res, resolution=r, opset=DEFAULT_OPSET,
                            onnx_mb=round(os.path.getsize(path) / 1e6, 1),
                            logits_std=float(want.std()),
                            max_abs_diff_vs_timm=diff,
                            max_abs_diff_vs_effnet_run=float(np.abs(got - effnet_logits).max()),
                            max_abs_diff_effnet_run_vs_timm=float(np.abs(effnet_logits - want).max())))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--effnet", default=os.environ.get("EFFNET", "target/debug/effnet"))
    ap.add_argument("--out", default="tests/fixtures/onnx")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--models", action="store_true", help="also full-size tf_efficientnetv2_b0 and efficientnet_b0")
    args = ap.parse_args()
    if not os.path.exists(args.effnet):
        sys.exit(f"no effnet binary at {args.effnet}: run `cargo build` first (or pass --effnet)")
    torch.set_num_threads(2)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        print("timm fixtures (logits kept for cargo test):")
        entries, opsets = fixtures(args.effnet, tmp, args.tol, failures)
        print("activations:")
        acts = activations(args.effnet, tmp, args.tol, failures)
        full = []
        if args.models:
            print("full-size models:")
            full = models(args.effnet, tmp, args.tol, failures)
    doc = dict(
        generated_by="tools/onnx_reference.py",
        versions=dict(timm=timm.__version__, torch=torch.__version__, onnx=onnx.__version__,
                      onnxruntime=ort.__version__),
        tolerance=args.tol,
        fixtures=entries,
        opsets=opsets,
        activations=acts,
    )
    path = os.path.join(args.out, "onnxruntime.json")
    if full:
        doc["models"] = full
    elif os.path.exists(path):
        # Keep the full-size figures of an earlier --models run.
        with open(path) as f:
            old = json.load(f)
        if "models" in old:
            doc["models"] = old["models"]
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")
    if failures:
        sys.exit("differences above tolerance:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
