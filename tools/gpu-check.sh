#!/usr/bin/env bash
# The GPU checks of the CUDA plans (inference and training, one GPU and NCCL), in two
# halves, for a GPU machine without Rust.
#
#   bash tools/gpu-check.sh --bundle   # here (no GPU needed): build with the CUDA toolkit
#                                      # (tools/cuda-toolkit.sh) the release `effnet` and the
#                                      # GPU test binaries (runtime/tests/gpu.rs, gpu_nccl.rs),
#                                      # xz-compressed into gpu-bundle/ (ignored; carry it to
#                                      # the GPU machine)
#   bash tools/gpu-check.sh            # there: with nvidia-smi, Python, torch and timm
#
# The second half writes one report, $OUT/gpu-report.md (./gpu-report.md without OUT):
#   1. the GPU: nvidia-smi's name, driver and memory; NVRTC compiling the kernels;
#   2. the GPU tests: the cuda-fused plan against the candle plan on the CPU, every block kind,
#      both paddings, odd sizes, batch 1 and 7; the cuda-step plan against the cpu-step plan
#      (one step; twenty SGD steps' losses within 1e-4); then the NCCL tests (the
#      communicator on every GPU, world size 1 on one, and two data-parallel epochs);
#   3. full-size parity with timm at an odd resolution (225 px) on `--device cuda`:
#      tf_efficientnetv2_b0, efficientnetv2_s, efficientnetv2_rw_t, efficientnet_b0
#      (tools/parity.sh: random weights, calibrated BatchNorm, float64 reference);
#   4. side by side, alternating, best of ROUNDS (default 2): `effnet bench --device cuda`
#      (the cuda-fused plan, and the candle plan for comparison) against
#      `tools/torch_bench.py --device cuda --channels-last` (cuDNN benchmark mode, TF32 off):
#      efficientnetv2_s 384 batch 32, tf_efficientnetv2_b0 224 batch 1 and 128; and in bf16
#      (`--dtype bf16`) against PyTorch's autocast bf16 (`--amp-bf16`), and in f16 (first
#      round only) against autocast f16 (`--amp-f16`), after the bf16 and f16 logits'
#      distances to timm's float64 ones;
#   5. training steps side by side, the same way: `effnet bench --train --device cuda` (the
#      cuda-step plan, and the candle plan) against `tools/torch_bench.py --train --device cuda
#      --channels-last` (one SGD step per iteration, f32), and `--precision bf16` against
#      PyTorch's AMP (`--amp-bf16`): tf_efficientnetv2_b0 224 batch 128, efficientnetv2_s 300
#      batch 64;
#   6. the main job (the README's first command) on --device cuda in f32 and in bf16, and on
#      the CPU: wall time and the final accuracy of each;
#   7. the device memory after 1,000 inference calls against after 100 (no growth expected).
# Each part records its failure and the script goes on, so one run gives every answer.
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=gpu-bundle

if [ "${1:-}" = "--bundle" ]; then
    set -e
    eval "$(bash tools/cuda-toolkit.sh)"
    cargo build --release --features cuda --bin effnet
    tests=$(cargo test --release --features cuda -p effnet-runtime --test gpu --no-run \
        --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])' | tail -1)
    [ -n "$tests" ] || { echo "no GPU test binary was built" >&2; exit 1; }
    # The NCCL tests (world size 1 on one GPU through the whole NCCL path): `--features nccl`,
    # linked against the toolkit script's stub libnccl; the GPU machine's libnccl.so.2 (from
    # PyTorch's nvidia-nccl wheel) is found at run time.
    nccl_tests=$(cargo test --release --features nccl -p effnet-runtime --test gpu_nccl --no-run \
        --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu_nccl":
        print(m["executable"])' | tail -1)
    [ -n "$nccl_tests" ] || { echo "no NCCL test binary was built" >&2; exit 1; }
    mkdir -p "$bundle"
    strip -o "$bundle/effnet" "${CARGO_TARGET_DIR:-target}/release/effnet"
    strip -o "$bundle/gpu-tests" "$tests"
    strip -o "$bundle/gpu-nccl-tests" "$nccl_tests"
    xz -6 -f -T2 "$bundle/effnet" "$bundle/gpu-tests" "$bundle/gpu-nccl-tests"
    ls -l "$bundle"
    exit 0
fi

report=${OUT:-.}/gpu-report.md
PYTHON=${PYTHON:-python3}
ROUNDS=${ROUNDS:-2}
for f in effnet gpu-tests gpu-nccl-tests; do
    if [ -f "$bundle/$f.xz" ]; then xz -d -k -f "$bundle/$f.xz"; fi
    chmod +x "$bundle/$f" 2>/dev/null
done
EFFNET=$bundle/effnet
say() { echo "$@" | tee -a "$report"; }

# The best of each side per row, as a Markdown table, then every measurement: $1 the
# measurements (side, model, resolution, batch, JSON per line), $2 the effnet plan (cuda-fused
# or cuda-step), $3 PyTorch's column title.
side_by_side() {
    "$PYTHON" - "$1" "$2" "$3" <<'PY'
import json, sys
path, plan, torch_title = sys.argv[1:4]
best, peak, raw = {}, {}, []
for line in open(path):
    side, model, res, batch, j = line.rstrip("\n").split("\t", 4)
    raw.append(f"{side} {model} {res} {batch}: {j}")
    try:
        v = json.loads(j)["images_per_sec"]
    except Exception:
        continue
    k = (model, res, batch)
    best.setdefault(k, {})[side] = max(best.get(k, {}).get(side, 0.0), v)
    mb = json.loads(j).get("peak_device_mb")
    if mb is not None:
        peak.setdefault(k, {})[side] = max(peak.get(k, {}).get(side, 0.0), mb)
halves = [h for h in ("bf16", "f16") if any(f"effnet-{h}" in s for s in best.values())]
head = f"| model | input | batch | effnet {plan} | effnet candle | {torch_title} | {plan} / PyTorch |"
for h in halves:
    head += f" effnet {h} | PyTorch {h} (autocast) | {h} ratio |"
print(head)
print("|---" * (7 + 3 * len(halves)) + "|")
for (m, r, b), s in best.items():
    e, c, t = s.get(f"effnet-{plan}"), s.get("effnet-candle"), s.get("torch")
    ratio = f"{e / t:.2f}x" if e and t else "n/a"
    row = f"| {m} | {r} | {b} | {e} | {c} | {t} | {ratio} |"
    for h in halves:
        eh, th = s.get(f"effnet-{h}"), s.get(f"torch-{h}")
        row += f" {eh} | {th} | {f'{eh / th:.2f}x' if eh and th else 'n/a'} |"
    print(row)
if peak:
    sides = [f"effnet-{plan}", "torch"] + [f"{w}-{h}" for h in halves for w in ("effnet", "torch")]
    print()
    print("Peak device memory, MB (effnet: its allocator pool's high watermark; PyTorch: "
          "torch.cuda.max_memory_allocated):")
    print()
    print("| model | input | batch | " + " | ".join(sides) + " |")
    print("|---" * (3 + len(sides)) + "|")
    for (m, r, b), p in peak.items():
        print(f"| {m} | {r} | {b} | " + " | ".join(str(p.get(x)) for x in sides) + " |")
print()
print("Every measurement:")
print()
for r in raw:
    print(f"    {r}")
PY
}

: >"$report"
say "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
say
say '```'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$report"
say '```'

say
say "## NVRTC compiles the kernels (tools/nvrtc_check.py)"
say '```'
"$PYTHON" tools/nvrtc_check.py 2>&1 | tee -a "$report"
say '```'

say
say "## GPU tests (cuda-fused and cuda-step against the CPU plans)"
say '```'
"$bundle/gpu-tests" --nocapture --test-threads 1 2>&1 | tail -20 | tee -a "$report"
say '```'

say
say "## NCCL: the communicator and two data-parallel epochs through it (one rank per GPU)"
# libnccl.so.2 from the Python environment's nvidia-nccl wheel (PyTorch's).
nccl_dir=$("$PYTHON" - <<'PY' 2>/dev/null
import glob, os, site, sys
for p in site.getsitepackages() + [site.getusersitepackages()]:
    for f in glob.glob(os.path.join(p, "nvidia", "**", "libnccl.so.2"), recursive=True):
        print(os.path.dirname(f))
        sys.exit()
PY
)
say '```'
if [ -n "$nccl_dir" ] && [ -x "$bundle/gpu-nccl-tests" ]; then
    LD_LIBRARY_PATH="$nccl_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "$bundle/gpu-nccl-tests" --nocapture --test-threads 1 2>&1 | tail -20 | tee -a "$report"
else
    say "skipped: no libnccl.so.2 in the Python environment, or no NCCL test binary"
fi
say '```'

say
say "## Full-size parity with timm on --device cuda (225 px, batch 2)"
EFFNET=$EFFNET EFFNET_ARGS="--device cuda" RES=225 PYTHON=$PYTHON bash tools/parity.sh \
    tf_efficientnetv2_b0 efficientnetv2_s efficientnetv2_rw_t efficientnet_b0 2>&1 | tee -a "$report"

say
say "## bf16 accuracy: --dtype bf16 on --device cuda against timm float64 (225 px, batch 2)"
say "(the table's bar is float32's; in bf16 the distance itself is the figure)"
EFFNET=$EFFNET EFFNET_ARGS="--device cuda --dtype bf16" RES=225 PYTHON=$PYTHON bash tools/parity.sh \
    tf_efficientnetv2_b0 efficientnetv2_s 2>&1 | tee -a "$report"

say
say "## f16 accuracy: --dtype f16 on --device cuda against timm float64 (225 px, batch 2)"
say "(as for bf16, the distance itself is the figure)"
EFFNET=$EFFNET EFFNET_ARGS="--device cuda --dtype f16" RES=225 PYTHON=$PYTHON bash tools/parity.sh \
    tf_efficientnetv2_b0 efficientnetv2_s 2>&1 | tee -a "$report"

say
say "## Inference side by side (best of $ROUNDS alternating rounds)"
rows=(
    "efficientnetv2_s specs/efficientnetv2_s.effnet 384 32 20"
    "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 224 1 200"
    "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 224 128 20"
)
out=$(mktemp)
for round in $(seq "$ROUNDS"); do
    for row in "${rows[@]}"; do
        read -r model spec res batch iters <<<"$row"
        for plan in cuda-fused candle; do
            j=$("$EFFNET" bench "$spec" --model "$model" --resolution "$res" --batch "$batch" \
                --iters "$iters" --warmup 5 --device cuda --plan "$plan" --json 2>&1 | tail -1)
            printf 'effnet-%s\t%s\t%s\t%s\t%s\n' "$plan" "$model" "$res" "$batch" "$j" >>"$out"
        done
        t=$("$PYTHON" tools/torch_bench.py --model "$model" --resolution "$res" --batch "$batch" \
            --iters "$iters" --warmup 5 --device cuda --channels-last 2>&1 | tail -1)
        printf 'torch\t%s\t%s\t%s\t%s\n' "$model" "$res" "$batch" "$t" >>"$out"
        # Half precision: effnet's bf16 / f16 maps and GEMMs against PyTorch's autocast; f16
        # (the issue's "where it works") in the first round only, to save device time.
        for half in bf16 f16; do
            [ "$half" = f16 ] && [ "$round" -gt 1 ] && continue
            j=$("$EFFNET" bench "$spec" --model "$model" --resolution "$res" --batch "$batch" \
                --iters "$iters" --warmup 5 --device cuda --dtype "$half" --json 2>&1 | tail -1)
            printf 'effnet-%s\t%s\t%s\t%s\t%s\n' "$half" "$model" "$res" "$batch" "$j" >>"$out"
            t=$("$PYTHON" tools/torch_bench.py --model "$model" --resolution "$res" \
                --batch "$batch" --iters "$iters" --warmup 5 --device cuda --channels-last \
                "--amp-$half" 2>&1 | tail -1)
            printf 'torch-%s\t%s\t%s\t%s\t%s\n' "$half" "$model" "$res" "$batch" "$t" >>"$out"
        done
    done
done
side_by_side "$out" cuda-fused "PyTorch eager (channels_last)" | tee -a "$report"

say
say "## Training steps side by side (best of $ROUNDS alternating rounds, f32, SGD)"
out=$(mktemp)
train_rows=(
    "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 224 128 10"
    "efficientnetv2_s specs/efficientnetv2_s.effnet 300 64 10"
)
for round in $(seq "$ROUNDS"); do
    for row in "${train_rows[@]}"; do
        read -r model spec res batch iters <<<"$row"
        for plan in cuda-step candle; do
            j=$("$EFFNET" bench "$spec" --model "$model" --resolution "$res" --batch "$batch" \
                --iters "$iters" --warmup 3 --device cuda --train --plan "$plan" --json 2>&1 | tail -1)
            printf 'effnet-%s\t%s\t%s\t%s\t%s\n' "$plan" "$model" "$res" "$batch" "$j" >>"$out"
        done
        t=$("$PYTHON" tools/torch_bench.py --model "$model" --resolution "$res" --batch "$batch" \
            --iters "$iters" --warmup 3 --device cuda --channels-last --train 2>&1 | tail -1)
        printf 'torch\t%s\t%s\t%s\t%s\n' "$model" "$res" "$batch" "$t" >>"$out"
        # Mixed precision: effnet's bf16 step against PyTorch's autocast.
        j=$("$EFFNET" bench "$spec" --model "$model" --resolution "$res" --batch "$batch" \
            --iters "$iters" --warmup 3 --device cuda --train --precision bf16 --json 2>&1 | tail -1)
        printf 'effnet-bf16\t%s\t%s\t%s\t%s\n' "$model" "$res" "$batch" "$j" >>"$out"
        t=$("$PYTHON" tools/torch_bench.py --model "$model" --resolution "$res" --batch "$batch" \
            --iters "$iters" --warmup 3 --device cuda --channels-last --train --amp-bf16 2>&1 | tail -1)
        printf 'torch-bf16\t%s\t%s\t%s\t%s\n' "$model" "$res" "$batch" "$t" >>"$out"
    done
done
side_by_side "$out" cuda-step "PyTorch eager (channels_last, SGD)" | tee -a "$report"

say
say "## The main job on --device cuda and on the CPU"
for run in "cuda f32" "cuda bf16" "cpu f32"; do
    read -r dev prec <<<"$run"
    start=$(date +%s)
    log=$("$EFFNET" train specs/efficientnetv2_nano.effnet --data data/mnist \
        --out "$(mktemp -d)/nano-$dev-$prec" --device "$dev" --precision "$prec" 2>&1 | tail -3)
    say "- --device $dev --precision $prec: $(( $(date +%s) - start )) s wall"
    say '```'
    say "$log"
    say '```'
done

say
say "## Device memory: 100 against 1,000 inference calls (tf_efficientnetv2_b0 224 batch 8)"
for iters in 100 1000; do
    json=$(mktemp)
    "$EFFNET" bench specs/tf_efficientnetv2_b0.effnet --resolution 224 --batch 8 --iters "$iters" \
        --warmup 5 --device cuda --json >"$json" 2>&1 &
    pid=$!
    peak=0
    while kill -0 "$pid" 2>/dev/null; do
        used=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
            awk -F', ' -v p="$pid" '$1 == p { print $2 }')
        [ -n "$used" ] && [ "$used" -gt "$peak" ] && peak=$used
        sleep 0.2
    done
    pool=$("$PYTHON" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]).get("peak_device_mb"))' "$json" 2>/dev/null)
    say "- $iters calls: nvidia-smi's peak for the process $peak MiB (the pool keeps freed memory: its reservation), the pool's in-use high watermark ${pool:-n/a} MB"
done
echo "report: $report"
