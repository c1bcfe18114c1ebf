#!/usr/bin/env bash
# effnet vs PyTorch (timm, eager) throughput, side by side, on 2 threads.
#
#   tools/bench.sh [ROUNDS]
#
# For each configuration (inference: efficientnetv2_s @224 batch 8, tf_efficientnetv2_b0 @224
# batch 1 and batch 8; training: one SGD step of tf_efficientnetv2_b0 @64 batch 32) runs
# `effnet bench --json` (RAYON_NUM_THREADS=2) and `tools/torch_bench.py --threads 2`
# alternately, ROUNDS times (default 3), and prints every JSON line plus a Markdown table with
# the best images/s of each side, the ratio, and the peak RSS. The best of several alternating rounds is the least disturbed by other jobs on a
# shared machine; check `uptime` first and record the load average with the figures.
#
# Environment: PYTHON (a Python with timm and torch; default python3), EFFNET (the binary;
# default: build target/release/effnet), ITERS / WARMUP (default 20 / 5; batch 1 uses
# 2 * ITERS).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
ROUNDS=${1:-3}
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
if [ -z "${EFFNET:-}" ]; then
    cargo build --release --quiet
    EFFNET=target/release/effnet
fi
export RAYON_NUM_THREADS=2

CONFIGS=(
    "efficientnetv2_s specs/efficientnetv2_s.effnet 224 8 infer"
    "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 224 1 infer"
    "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 224 8 infer"
    "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 64 32 train"
)

out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "machine: $(lscpu | grep 'Model name' | sed 's/Model name: *//'), $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    for cfg in "${CONFIGS[@]}"; do
        read -r model spec res batch mode <<<"$cfg"
        iters=$ITERS
        [ "$batch" -eq 1 ] && iters=$((ITERS * 2))
        train=()
        [ "$mode" = train ] && train=(--train) && iters=$((ITERS / 2))
        e=$("$EFFNET" bench "$spec" --model "$model" --resolution "$res" --batch "$batch" \
            --iters "$iters" --warmup "$WARMUP" --json "${train[@]}")
        t=$("$PYTHON" tools/torch_bench.py --model "$model" --resolution "$res" --batch "$batch" \
            --iters "$iters" --warmup "$WARMUP" --threads 2 "${train[@]}")
        echo "round $round effnet $e"
        echo "round $round torch  $t"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$model" "$res" "$batch" "$mode" "$e" "$t" >>"$out"
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PYTHON" - "$out" <<'PY'
import json
import sys

best = {}
for line in open(sys.argv[1]):
    model, res, batch, mode, e, t = line.rstrip("\n").split("\t")
    e, t = json.loads(e), json.loads(t)
    k = (model, int(res), int(batch), mode)
    b = best.setdefault(k, {"e": 0.0, "t": 0.0, "e_rss": 0.0, "t_rss": 0.0})
    b["e"] = max(b["e"], e["images_per_sec"])
    b["t"] = max(b["t"], t["images_per_sec"])
    b["e_rss"] = max(b["e_rss"], e.get("peak_rss_mb") or 0.0)
    b["t_rss"] = max(b["t_rss"], t.get("peak_rss_mb") or 0.0)
print()
print("| model | mode | resolution | batch | effnet images/s | PyTorch images/s | ratio | effnet peak RSS MB | PyTorch peak RSS MB |")
print("|---|---|---|---|---|---|---|---|---|")
for (model, res, batch, mode), b in best.items():
    ratio = b["e"] / b["t"] if b["t"] else float("nan")
    print(f"| {model} | {mode} | {res} | {batch} | {b['e']:.2f} | {b['t']:.2f} | {ratio:.2f}x | {b['e_rss']:.0f} | {b['t_rss']:.0f} |")
PY
