#!/usr/bin/env python3
"""Full-size parity data: a timm model with random weights, an input and its logits.

    python tools/parity.py MODEL RESOLUTION OUT_DIR [--seed 0] [--batch 2] [--plain-bn] [--num-classes N]
                           [--torchvision]

builds `timm.create_model(MODEL, pretrained=False)`, randomizes it with the same recipe as the
runtime fixtures (tools/timm_fixtures.py `randomize_`: conv/linear weights N(0, 1/fan_in), biases
N(0, 0.01), BN affine U(0.5, 1.5) / N(0, 0.01), BN statistics from one calibration batch at
RESOLUTION then perturbed; `--plain-bn` uses running_mean N(0, 0.01) / running_var U(0.5, 1.5)
instead, which lets activations drift by orders of magnitude in deep models), and writes

    OUT_DIR/MODEL_rRES.safetensors     every state_dict tensor under its timm name, float32
                                       (num_batches_tracked skipped)
    OUT_DIR/MODEL_rRES_input.npy       NCHW float32 input, torch.randn(batch, 3, RES, RES)
    OUT_DIR/MODEL_rRES_logits.npy      float32 logits (batch, classes), eval mode

With --torchvision the model is torchvision's (`torchvision.models.get_model(MODEL,
weights=None)`, e.g. efficientnet_v2_s) and the tensors keep torchvision's names.

Then it prints the three paths, one per line (and a summary on stderr). The files are large (a
full model is 20-800 MB): write them outside the repository, never commit them.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import timm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timm_fixtures import randomize_  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("resolution", type=int)
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--num-classes", type=int, default=None, help="default: the model's 1000")
    ap.add_argument("--plain-bn", action="store_true", help="no BN calibration (see above)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torchvision", action="store_true", help="torchvision's model and names")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
    if args.torchvision:
        import torchvision
        model = torchvision.models.get_model(args.model, weights=None, **kw)
    else:
        model = timm.create_model(args.model, pretrained=False, **kw)
    randomize_(model, args.seed, calib_size=None if args.plain_bn else args.resolution, calib_batch=2)
    model.eval()
    torch.manual_seed(args.seed + 1000)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, dtype=torch.float32)
    with torch.no_grad():
        logits = model(x).float()

    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, f"{args.model}_r{args.resolution}")
    tensors = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    save_file(tensors, base + ".safetensors",
              metadata={"effnet_parity": json.dumps(
                  {"model": args.model, "timm": timm.__version__, "torch": torch.__version__,
                   "seed": args.seed, "resolution": args.resolution, "batch": args.batch}, sort_keys=True)})
    np.save(base + "_input.npy", x.numpy())
    np.save(base + "_logits.npy", logits.numpy())
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.model} @{args.resolution} batch {args.batch}: params {params:,}, logits std "
          f"{float(logits.std()):.3f}, row difference std {float((logits[0] - logits[-1]).std()):.3f}",
          file=sys.stderr)
    for p in (base + ".safetensors", base + "_input.npy", base + "_logits.npy"):
        print(p)


if __name__ == "__main__":
    main()
