#!/usr/bin/env python3
"""Training-step throughput, PyTorch (timm) against effnet, side by side on the same machine.

    python tools/train_bench.py [--model tf_efficientnetv2_b0] [--spec specs/tf_efficientnetv2_b0.effnet]
        [--resolution 64] [--batch 32] [--threads 2] [--iters 10] [--rounds 2]

Each round runs, one after the other so that both see the same machine load:
  1. PyTorch eager: timm.create_model(model, pretrained=False), model.train(), one SGD step
     (lr 0.01, momentum 0.9) on cross-entropy against random labels per iteration, after 3
     warm-up steps; torch.set_num_threads(threads);
  2. `target/release/effnet bench SPEC --resolution R --batch B --train --json` (build it first
     with `cargo build --release`), the same step on candle with CANDLE_NUM_THREADS=threads.
It prints one JSON line per measurement and a summary with the best round of each (the least
disturbed by other jobs), plus the 1-minute load average seen at each measurement.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import timm


def torch_step_rate(model_name, res, batch, threads, iters):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, res, res)
    y = torch.randint(0, 1000, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    dt = time.perf_counter() - t
    return {"side": "pytorch", "images_per_sec": batch * iters / dt, "ms_per_batch": 1e3 * dt / iters,
            "loadavg": os.getloadavg()[0]}


def effnet_step_rate(spec, res, batch, threads, iters):
    exe = os.path.join("target", "release", "effnet")
    if not os.path.exists(exe):
        sys.exit(f"{exe} not found: run `cargo build --release` first")
    env = dict(os.environ, CANDLE_NUM_THREADS=str(threads))
    cmd = [exe, "bench", spec, "--resolution", str(res), "--batch", str(batch), "--train",
           "--iters", str(iters), "--warmup", "3", "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    line = [l for l in out.stdout.splitlines() if l.strip().startswith("{")][-1]
    r = json.loads(line)
    return {"side": "effnet", "images_per_sec": r["images_per_sec"],
            "ms_per_batch": r.get("ms_per_batch", 1e3 * batch / r["images_per_sec"]),
            "loadavg": os.getloadavg()[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tf_efficientnetv2_b0")
    ap.add_argument("--spec", default="specs/tf_efficientnetv2_b0.effnet")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    results = []
    for r in range(a.rounds):
        for f, name in ((torch_step_rate, a.model), (effnet_step_rate, a.spec)):
            m = f(name, a.resolution, a.batch, a.threads, a.iters)
            m.update(round=r, resolution=a.resolution, batch=a.batch, threads=a.threads)
            print(json.dumps(m), flush=True)
            results.append(m)
    best = {s: max(m["images_per_sec"] for m in results if m["side"] == s) for s in ("pytorch", "effnet")}
    print(f"best of {a.rounds}: pytorch {best['pytorch']:.1f} img/s, effnet {best['effnet']:.1f} img/s, "
          f"ratio effnet/pytorch {best['effnet'] / best['pytorch']:.2f}")


if __name__ == "__main__":
    main()
