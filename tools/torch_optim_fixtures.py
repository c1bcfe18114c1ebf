#!/usr/bin/env python3
"""Write tests/fixtures/optim/<name>.json: three optimizer steps on two small tensors
(a 2-D weight, which gets weight decay, and a 1-D bias, which does not), computed by PyTorch.

- sgd.json, sgd_nesterov.json: torch.optim.SGD (momentum, no dampening).
- adamw.json: torch.optim.AdamW.
- rmsprop_tf.json: timm.optim.RMSpropTF (TensorFlow form: ms starts at 1, eps inside the
  square root, lr folded into the momentum buffer), checked here against the TF formula
  written out in NumPy-style float32 torch ops:
      ms  = ms + (1 - decay) * (g^2 - ms)
      mom = momentum * mom + lr * g / sqrt(ms + eps)
      w   = w - mom
  with the L2 term `g += wd * w` first for decayed tensors.

Every tensor is float32. Each file holds the hyper-parameters, the initial values, the
gradient of every step (fixed, not computed from a loss) and the values after every step.
Usage: python tools/torch_optim_fixtures.py   (writes the files; deterministic)
"""

import json
import os

import torch
from timm.optim import RMSpropTF

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "optim")
STEPS = 3
LRS = [0.1, 0.05, 0.02]  # a different learning rate each step, as a schedule would give


def initial():
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(3, 4, generator=g, dtype=torch.float32)
    b = torch.randn(4, generator=g, dtype=torch.float32)
    grads = [
        (torch.randn(3, 4, generator=g) * 0.5, torch.randn(4, generator=g) * 0.5)
        for _ in range(STEPS)
    ]
    return w, b, grads


def run(make_opt):
    w0, b0, grads = initial()
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = make_opt(w, b)
    after = []
    for step, (gw, gb) in enumerate(grads):
        for group in opt.param_groups:
            group["lr"] = LRS[step]
        w.grad = gw.clone()
        b.grad = gb.clone()
        opt.step()
        after.append([w.detach().clone(), b.detach().clone()])
    return w0, b0, grads, after


def tf_rmsprop_reference(decay, momentum, eps, wd):
    """The TF1 RMSProp update, written out step by step."""
    w0, b0, grads, _ = run(lambda w, b: torch.optim.SGD([w, b], lr=0.0))
    params = [w0.clone(), b0.clone()]
    ms = [torch.ones_like(p) for p in params]
    mom = [torch.zeros_like(p) for p in params]
    after = []
    for step, g_step in enumerate(grads):
        lr = LRS[step]
        for i, g in enumerate(g_step):
            g = g.clone()
            if i == 0 and wd:
                g = g + wd * params[i]
            ms[i] = ms[i] + (1 - decay) * (g * g - ms[i])
            mom[i] = momentum * mom[i] + lr * g / torch.sqrt(ms[i] + eps)
            params[i] = params[i] - mom[i]
        after.append([p.clone() for p in params])
    return after


def dump(name, optimizer, hyper, result):
    w0, b0, grads, after = result
    doc = {
        "optimizer": optimizer,
        "hyper": hyper,
        "lrs": LRS,
        "source": f"torch {torch.__version__}",
        "params": [
            {"name": "weight", "shape": list(w0.shape), "decay": True, "values": w0.flatten().tolist()},
            {"name": "bias", "shape": list(b0.shape), "decay": False, "values": b0.flatten().tolist()},
        ],
        "grads": [[gw.flatten().tolist(), gb.flatten().tolist()] for gw, gb in grads],
        "after": [[a.flatten().tolist() for a in step] for step in after],
    }
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {name}.json")


def main():
    torch.set_num_threads(1)
    wd = 0.01
    # SGD, heavy-ball and Nesterov.
    for name, nesterov in (("sgd", False), ("sgd_nesterov", True)):
        res = run(lambda w, b: torch.optim.SGD(
            [{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}],
            lr=LRS[0], momentum=0.9, nesterov=nesterov))
        dump(name, "sgd", {"momentum": 0.9, "nesterov": nesterov, "weight_decay": wd}, res)
    # AdamW.
    res = run(lambda w, b: torch.optim.AdamW(
        [{"params": [w], "weight_decay": 0.05}, {"params": [b], "weight_decay": 0.0}],
        lr=LRS[0], betas=(0.9, 0.999), eps=1e-8))
    dump("adamw", "adamw", {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.05}, res)
    # RMSProp, TF form: timm's RMSpropTF, checked against the formula.
    decay, momentum, eps = 0.9, 0.9, 1e-3
    res = run(lambda w, b: RMSpropTF(
        [{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}],
        lr=LRS[0], alpha=decay, momentum=momentum, eps=eps))
    ref = tf_rmsprop_reference(decay, momentum, eps, wd)
    for got, want in zip(res[3], ref):
        for g, r in zip(got, want):
            assert torch.allclose(g, r, rtol=1e-6, atol=1e-7), (g, r)
    dump("rmsprop_tf", "rmsprop",
         {"decay": decay, "momentum": momentum, "eps": eps, "weight_decay": wd}, res)


if __name__ == "__main__":
    main()
