#!/usr/bin/env bash
# Two effnet builds side by side (a before/after check of a runtime change), on 2 threads.
#
#   tools/bench_ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS]
#
# For each configuration (tools/bench.sh's four rows, plus the nano's training step at its
# 24 px) runs `effnet bench --json` with the two binaries alternately, ROUNDS times (default
# 3), and prints every JSON line plus a Markdown table with the best images/s of each, the
# ratio after / before, and the peak RSS. Alternating rounds share the machine's moods; the
# best of several is the least disturbed. ITERS / WARMUP as in tools/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

A=${1:?usage: tools/bench_ab.sh BEFORE AFTER [ROUNDS]}
B=${2:?usage: tools/bench_ab.sh BEFORE AFTER [ROUNDS]}
ROUNDS=${3:-3}
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
export RAYON_NUM_THREADS=2

CONFIGS=(
    "efficientnetv2_s specs/efficientnetv2_s.effnet 224 8 infer"
    "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 224 1 infer"
    "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 224 8 infer"
    "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 64 32 train"
    "efficientnetv2_nano specs/efficientnetv2_nano.effnet 24 64 train"
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
        for side in before after; do
            bin=$A
            [ "$side" = after ] && bin=$B
            j=$("$bin" bench "$spec" --model "$model" --resolution "$res" --batch "$batch" \
                --iters "$iters" --warmup "$WARMUP" --json "${train[@]}")
            echo "round $round $side $j"
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$model" "$res" "$batch" "$mode" "$side" "$j" >>"$out"
        done
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" <<'PY'
import json
import sys

best = {}
for line in open(sys.argv[1]):
    model, res, batch, mode, side, j = line.rstrip("\n").split("\t")
    j = json.loads(j)
    b = best.setdefault((model, int(res), int(batch), mode), {})
    s = b.setdefault(side, {"ips": 0.0, "rss": 0.0, "plan": None})
    s["ips"] = max(s["ips"], j["images_per_sec"])
    s["rss"] = max(s["rss"], j.get("peak_rss_mb") or 0.0)
    s["plan"] = j.get("plan") or s["plan"]
print()
print("| model | mode | resolution | batch | plan | before images/s | after images/s | after / before | before peak RSS MB | after peak RSS MB |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (model, res, batch, mode), b in best.items():
    a, n = b["before"], b["after"]
    print(f"| {model} | {mode} | {res} | {batch} | {n['plan']} | {a['ips']:.2f} | {n['ips']:.2f} | {n['ips'] / a['ips']:.3f} | {a['rss']:.0f} | {n['rss']:.0f} |")
PY
