#!/usr/bin/env python3
"""PyTorch (eager, CPU) throughput of a timm model, in the manner of timm's benchmark.py.

    python tools/torch_bench.py --model tf_efficientnetv2_b0 --resolution 224 --batch 8 \
        [--iters 20] [--warmup 5] [--threads 2] [--train] [--channels-last] [--amp-bf16 | --amp-f16]

Inference: model.eval(), torch.no_grad(), a fixed random batch; `--warmup` untimed iterations,
then `--iters` timed ones. `--train`: model.train() and each iteration is one SGD step
(lr 0.01, momentum 0.9) on cross-entropy against random labels (forward, backward, step).
`--amp-bf16`: the forward (and so its backward) under torch.autocast in bfloat16, PyTorch's
mixed precision (f32 weights and optimizer), the comparison for effnet's `--dtype bf16`;
`--amp-f16` the same in float16 (for `--dtype f16` inference).
Weights are timm's random init (pretrained=False). Prints one JSON line:
{"model", "resolution", "batch", "mode", "threads", "iters", "images_per_sec", "ms_per_batch",
 "peak_rss_mb", "cpu_s", "cpu_bound_images_per_sec", "loadavg", "torch", "timm"}; peak_rss_mb is
resource.getrusage ru_maxrss; cpu_bound_images_per_sec = images / (CPU seconds / threads), an
estimate of the uncontended figure when other jobs share the cores (compare loadavg).
"""
import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F

import timm


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    amp = ap.add_mutually_exclusive_group()
    amp.add_argument("--amp-bf16", action="store_true")
    amp.add_argument("--amp-f16", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        # cuDNN picks its fastest algorithms per shape; TF32 off, as effnet's f32 is full f32.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model, x = model.to(dev), x.to(dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def autocast():
        half = torch.float16 if args.amp_f16 else torch.bfloat16
        return torch.autocast(dev.type, dtype=half, enabled=args.amp_bf16 or args.amp_f16)

    if args.train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        target = torch.randint(0, args.num_classes, (args.batch,)).to(dev)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.no_grad(), autocast():
                model(x)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(json.dumps({
        "model": args.model, "resolution": args.resolution, "batch": args.batch,
        "mode": "train" if args.train else "eval", "threads": args.threads, "iters": args.iters,
        "images_per_sec": round(args.batch * args.iters / dt, 2),
        "ms_per_batch": round(1000 * dt / args.iters, 2),
        "peak_rss_mb": round(rss_mb, 1),
        # CPU seconds the timed loop used, and the throughput it would have with `threads` cores
        # to itself (cpu / threads as wall time): a rough guide when the machine is busy
        "cpu_s": round(cpu, 2),
        "cpu_bound_images_per_sec": round(args.batch * args.iters / (cpu / args.threads), 2),
        "loadavg": [float(v) for v in open("/proc/loadavg").read().split()[:3]],
        "torch": torch.__version__, "timm": timm.__version__, "device": args.device,
        "precision": "amp-bf16" if args.amp_bf16 else "amp-f16" if args.amp_f16 else "f32",
        "peak_device_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                           if dev.type == "cuda" else None),
    }))


if __name__ == "__main__":
    main()
