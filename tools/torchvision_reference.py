#!/usr/bin/env python3
"""Reference data from torchvision for the bundled torchvision specs (specs/torchvision/).

For each of torchvision's EfficientNets (efficientnet_b0 .. b7, efficientnet_v2_s/m/l) this
script builds `torchvision.models.get_model(name, weights=None)` and writes
`tests/reference/torchvision/<name>.json`:

    model, torchvision, torch   names and versions
    params                      sum(p.numel() for p in model.parameters())
    bn_eps, bn_momentum         of the first BatchNorm (every BatchNorm of a torchvision
                                EfficientNet shares them: the script checks)
    padding                     "symmetric": every convolution pads (k - 1) // 2 on both sides
                                (checked), never TensorFlow's `same`
    crop_size, mean, std        of the DEFAULT weights' transforms (the eval resolution)
    tensors                     [[state_dict key, [shape...]], ...] in state_dict order, without
                                `num_batches_tracked`

Usage (from the repository root):
    python tools/torchvision_reference.py [--out tests/reference/torchvision] [MODEL ...]
"""
import argparse
import json
import os
import sys

import torch
import torchvision
from torchvision.models import get_model, get_model_weights

MODELS = [f"efficientnet_b{i}" for i in range(8)] + [
    "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"]


def reference(name):
    model = get_model(name, weights=None)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    eps = {m.eps for m in bns}
    momentum = {m.momentum for m in bns}
    if len(eps) != 1 or len(momentum) != 1:
        sys.exit(f"{name}: BatchNorm layers differ: eps {eps}, momentum {momentum}")
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            k = m.kernel_size[0]
            if m.padding != ((k - 1) // 2 * m.dilation[0],) * 2:
                sys.exit(f"{name}: a {k}x{k} convolution pads {m.padding}")
    transforms = get_model_weights(name).DEFAULT.transforms()
    crop = transforms.crop_size
    crop = crop[0] if isinstance(crop, (list, tuple)) else crop
    tensors = [[k, list(v.shape)] for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked")]
    return {
        "model": name,
        "torchvision": torchvision.__version__,
        "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "bn_eps": eps.pop(),
        "bn_momentum": momentum.pop(),
        "padding": "symmetric",
        "crop_size": crop,
        "mean": list(transforms.mean),
        "std": list(transforms.std),
        "tensors": tensors,
    }


def write(path, ref):
    # One tensor per line keeps the diffs of a torchvision upgrade readable.
    head = {k: v for k, v in ref.items() if k != "tensors"}
    lines = [json.dumps(head)[:-1] + ', "tensors": [']
    lines += ["  " + json.dumps(t) + ("," if i + 1 < len(ref["tensors"]) else "")
              for i, t in enumerate(ref["tensors"])]
    lines.append("]}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/reference/torchvision")
    ap.add_argument("models", nargs="*", default=MODELS)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in args.models:
        ref = reference(name)
        write(os.path.join(args.out, f"{name}.json"), ref)
        print(f"{name}: {ref['params']} params, eps {ref['bn_eps']}, crop {ref['crop_size']}")


if __name__ == "__main__":
    main()
