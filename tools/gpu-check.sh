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
# On the device tool's lent GPU: one `run` with `carry: ["gpu-bundle"]`, command
# `bash tools/gpu-check.sh` and timeout_s 600 (the report comes back under $OUT); a second
# run with PARTS naming what the first did not reach, if device time is left.
#
# The second half writes one report, $OUT/gpu-report.md (./gpu-report.md without OUT), as it
# goes (what is written stays if the run is cut short). First the GPU (nvidia-smi's name,
# driver and memory), the libraries the binaries link (any missing one named), one training
# step through cuDNN (if cuDNN fails there, the rest of the run takes the patches path and
# says so) and NVRTC compiling the kernels; then the parts of PARTS in this order,
# most important first, each skipped with a line in the report once too little of DEADLINE
# (default 540 s, under the device tool's 600 s a command) is left, and every command
# stopped at the deadline:
#   tests    the GPU tests: the cuda-fused plan against the candle plan on the CPU, every
#            block kind, both paddings, odd sizes, batch 1 and 7; the cuda-step plan against
#            the cpu-step plan (one step; twenty optimizer steps' losses within 1e-4); the
#            fused optimizer kernels; bf16 and f16 inference against f32;
#   parity   full-size parity with timm at an odd resolution (225 px) on `--device cuda`:
#            tf_efficientnetv2_b0, efficientnetv2_s, efficientnetv2_rw_t, efficientnet_b0
#            (tools/parity.sh: random weights, calibrated BatchNorm, float64 reference);
#   infer    side by side, alternating, best of ROUNDS (default 2): `effnet bench --device
#            cuda` (the cuda-fused plan) against `tools/torch_bench.py --device cuda
#            --channels-last` (cuDNN benchmark mode, TF32 off): efficientnetv2_s 384 batch 32,
#            tf_efficientnetv2_b0 224 batch 1 and 128; in bf16 (`--dtype bf16`) against
#            PyTorch's autocast bf16 (`--amp-bf16`); images/s and peak device memory; in the
#            first round also effnet with its dense convolutions on patches + GEMM instead of
#            cuDNN (`EFFNET_DENSE_CONV=patches`), to say which path pays;
#   train    training steps the same way: `effnet bench --train` (the cuda-step plan) against
#            `tools/torch_bench.py --train` (one SGD step per iteration), f32 and `--precision
#            bf16` against AMP (`--amp-bf16`): tf_efficientnetv2_b0 224 batch 128,
#            efficientnetv2_s 300 batch 64; the patches path in the first round, as in infer;
#   profile  `effnet bench --profile`: each kind of layer operation's share of an inference
#            on the cuda-fused plan (efficientnetv2_s 384 batch 32, tf_efficientnetv2_b0 224
#            batch 128) and of a training step on the cuda-step plan (efficientnetv2_s 300
#            batch 64), to say where to optimize;
#   memory   the device memory after 1,000 inference calls against after 100 (no growth);
#   mainjob  the main job (the README's first command) on --device cuda in f32 and in bf16,
#            and on the CPU: wall time and the final accuracy of each;
#   nccl     the NCCL tests (the communicator on every GPU, world size 1 on one, and two
#            data-parallel epochs);
#   half     the bf16 (and with f16, f16) logits' distances to timm's float64 ones;
#   f16      adds the f16 rows to infer (first round only) and half;
#   candle   adds candle's own CUDA plan to the infer and train tables (slow: per-channel
#            depthwise convolutions; capped at 60 s a row; not in the default PARTS).
# Each part records its failure and the script goes on, so one run gives every answer.
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=gpu-bundle

if [ "${1:-}" = "--bundle" ]; then
    set -e
    eval "$(bash tools/cuda-toolkit.sh)"
    # `cudnn`: the dense convolutions through cuDNN (linked against the toolkit script's stub
    # libcudnn; the GPU machine's libcudnn.so.9 comes from PyTorch's nvidia-cudnn wheel).
    cargo build --release --features cuda,cudnn --bin effnet
    tests=$(cargo test --release --features cuda,cudnn -p effnet-runtime --test gpu --no-run \
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
# The parts to run, in this order (each skipped with a line in the report once too little of
# DEADLINE is left): tests, parity, infer, train, profile, memory, mainjob, nccl, half (bf16
# and f16 accuracy); `f16` adds f16 rows to infer and half, `candle` adds candle's own CUDA
# plan to the side-by-side tables (slow: per-channel depthwise convolutions; capped at 60 s
# a row).
PARTS=${PARTS:-"tests parity infer train profile memory mainjob nccl half f16"}
# Seconds for the whole run: under the device tool's 600 s a command, with room to spare.
DEADLINE=${DEADLINE:-540}
for f in effnet gpu-tests gpu-nccl-tests; do
    if [ -f "$bundle/$f.xz" ]; then xz -d -k -f "$bundle/$f.xz"; fi
    chmod +x "$bundle/$f" 2>/dev/null
done
EFFNET=$bundle/effnet
say() { echo "$@" | tee -a "$report"; }
# $1 in the report as a fenced block (a command's output).
say_fenced() { say '```'; say "$1"; say '```'; }

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
candle = any("effnet-candle" in s for s in best.values())
patches = any("effnet-patches" in s for s in best.values())
head = f"| model | input | batch | effnet {plan} |{' effnet candle |' if candle else ''}"
head += " effnet, dense convs on patches |" if patches else ""
head += f" {torch_title} | {plan} / PyTorch |"
for h in halves:
    head += f" effnet {h} | PyTorch {h} (autocast) | {h} ratio |"
print(head)
print("|---" * (6 + candle + patches + 3 * len(halves)) + "|")
for (m, r, b), s in best.items():
    e, c, t = s.get(f"effnet-{plan}"), s.get("effnet-candle"), s.get("torch")
    ratio = f"{e / t:.2f}x" if e and t else "n/a"
    row = f"| {m} | {r} | {b} | {e} |{f' {c} |' if candle else ''}"
    row += f" {s.get('effnet-patches')} |" if patches else ""
    row += f" {t} | {ratio} |"
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
START=$(date +%s)
# Seconds left before the deadline.
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
# Whether part $1 was asked for (PARTS).
wanted() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }
# The heading of a part, or a line saying why it is skipped: $1 the part, $2 its title, $3
# the seconds it needs at least (default 30). Returns 1 when it is to be skipped.
begin() {
    wanted "$1" || return 1
    say
    if [ "$(left)" -lt "${3:-30}" ]; then
        say "## $2: skipped, $(left) s left of DEADLINE=$DEADLINE"
        return 1
    fi
    say "## $2"
}
# "$@" stopped at the deadline, or after CAP seconds when CAP is set and sooner.
bounded() {
    local t
    t=$(left)
    if [ -n "${CAP:-}" ] && [ "$CAP" -lt "$t" ]; then t=$CAP; fi
    if [ "$t" -le 0 ]; then echo "out of time" >&2; return 124; fi
    timeout --kill-after=5 "$t" "$@"
}

say "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC') (PARTS=\"$PARTS\", DEADLINE=$DEADLINE s)"
say
say '```'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$report"
say '```'

# The directory of the shared library $1 in the Python environment's nvidia wheels
# (PyTorch's), or nothing.
wheel_lib_dir() {
    "$PYTHON" - "$1" <<'PY' 2>/dev/null
import glob, os, site, sys
for p in site.getsitepackages() + [site.getusersitepackages()]:
    for f in glob.glob(os.path.join(p, "nvidia", "**", sys.argv[1]), recursive=True):
        print(os.path.dirname(f))
        sys.exit()
PY
}

# The libraries the bundle's binaries link (BENCHMARKS.md, "CI": NEEDED), from PyTorch's
# nvidia wheels where the Python environment has them (`nvidia/cu13/lib`: cuBLAS, cuRAND,
# NVRTC, the runtime; `nvidia/cudnn/lib`: libcudnn.so.9 and the engine libraries it opens
# beside it), put first on the library path: a system toolkit's directory is not always on
# the loader's path, and a binary that misses one library does not start at all.
cudnn_dir=
for lib in libcublas.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13 libcudnn.so.9; do
    dir=$(wheel_lib_dir "$lib")
    [ "$lib" = libcudnn.so.9 ] && cudnn_dir=$dir
    case ":${LD_LIBRARY_PATH:-}:" in
        *":$dir:"*) ;;
        *) [ -z "$dir" ] || export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
done
say
if [ -n "$cudnn_dir" ]; then
    say "cuDNN: $(basename "$(readlink -f "$cudnn_dir/libcudnn.so.9")") from $cudnn_dir"
else
    say "cuDNN: no libcudnn.so.9 in the Python environment's nvidia wheels (nvidia-cudnn-cu13)"
fi
missing=$(ldd "$EFFNET" 2>&1 | grep "not found")
if [ -n "$missing" ]; then
    say "effnet cannot start: a library it links is not found (ldd), and everything below fails:"
    say_fenced "$missing"
else
    say "effnet's libraries: $(ldd "$EFFNET" | grep -oE '(libcu|libnv)[a-zA-Z]*\.so\.[0-9]+ => [^ ]+' |
        sed 's/ => /: /' | paste -sd ';' | sed 's/;/; /g')"
fi

# One small training step through cuDNN before the parts: should cuDNN fail on this machine
# (a library it opens missing, a shape it refuses), every cuda row would fail with it, so the
# rest of the run takes the patches path instead and says so, and the figures still come.
probe=$(CAP=60 bounded "$EFFNET" bench specs/tf_efficientnetv2_b0.effnet --model \
    tf_efficientnetv2_b0 --resolution 65 --batch 2 --iters 1 --warmup 1 --device cuda --train \
    --plan cuda-step --json 2>&1 | tail -3)
say
if grep -q '"dense_conv"' <<<"$probe"; then
    say "Probe (one cuda-step training step at 65 px): $(grep -o '"dense_conv": *"[a-z]*"' <<<"$probe")"
elif grep -qi cudnn <<<"$probe"; then
    export EFFNET_DENSE_CONV=patches
    say "Probe: cuDNN failed, so every effnet row below runs with EFFNET_DENSE_CONV=patches:"
    say_fenced "$probe"
else
    say "Probe (one cuda-step training step at 65 px) failed:"
    say_fenced "$probe"
fi

say
say "## NVRTC compiles the kernels (tools/nvrtc_check.py)"
say '```'
CAP=60 bounded "$PYTHON" tools/nvrtc_check.py 2>&1 | tee -a "$report"
say '```'

if begin tests "GPU tests (cuda-fused and cuda-step against the CPU plans)"; then
    say '```'
    CAP=180 bounded "$bundle/gpu-tests" --nocapture --test-threads 1 2>&1 | tail -24 |
        tee -a "$report"
    say '```'
fi

if begin parity "Full-size parity with timm on --device cuda (225 px, batch 2)" 60; then
    EFFNET=$EFFNET EFFNET_ARGS="--device cuda" RES=225 PYTHON=$PYTHON bounded bash tools/parity.sh \
        tf_efficientnetv2_b0 efficientnetv2_s efficientnetv2_rw_t efficientnet_b0 2>&1 |
        tee -a "$report"
fi

# One side-by-side row: $1 the side's name, $2.. the command printing its JSON last.
measure() {
    local side=$1
    shift
    local j
    j=$(CAP=${ROW_CAP:-90} bounded "$@" 2>&1 | tail -1)
    printf '%s\t%s\t%s\t%s\t%s\n' "$side" "$model" "$res" "$batch" "$j" >>"$out"
}

halves=(bf16)
if wanted f16; then halves+=(f16); fi

if begin infer "Inference side by side (best of $ROUNDS alternating rounds)" 60; then
    rows=(
        "efficientnetv2_s specs/efficientnetv2_s.effnet 384 32 20"
        "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 224 1 200"
        "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 224 128 20"
    )
    out=$(mktemp)
    for round in $(seq "$ROUNDS"); do
        [ "$(left)" -lt 60 ] && break
        for row in "${rows[@]}"; do
            read -r model spec res batch iters <<<"$row"
            common=("$spec" --model "$model" --resolution "$res" --batch "$batch" --iters "$iters"
                --warmup 5 --device cuda --json)
            tcommon=(tools/torch_bench.py --model "$model" --resolution "$res" --batch "$batch"
                --iters "$iters" --warmup 5 --device cuda --channels-last)
            measure effnet-cuda-fused "$EFFNET" bench "${common[@]}" --plan cuda-fused
            if [ "$round" = 1 ]; then measure effnet-patches env EFFNET_DENSE_CONV=patches \
                "$EFFNET" bench "${common[@]}" --plan cuda-fused; fi
            # candle's own CUDA plan (per-channel depthwise convolutions): slow, so only
            # when asked for, and capped.
            if wanted candle; then ROW_CAP=60 measure effnet-candle "$EFFNET" bench \
                "${common[@]}" --plan candle; fi
            measure torch "$PYTHON" "${tcommon[@]}"
            # Half precision: effnet's bf16 / f16 maps and GEMMs against PyTorch's autocast;
            # f16 (the issue's "where it works") in the first round only.
            for half in "${halves[@]}"; do
                [ "$half" = f16 ] && [ "$round" -gt 1 ] && continue
                measure "effnet-$half" "$EFFNET" bench "${common[@]}" --dtype "$half"
                measure "torch-$half" "$PYTHON" "${tcommon[@]}" "--amp-$half"
            done
        done
    done
    side_by_side "$out" cuda-fused "PyTorch eager (channels_last)" | tee -a "$report"
fi

if begin train "Training steps side by side (best of $ROUNDS alternating rounds, SGD)" 60; then
    train_rows=(
        "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 224 128 10"
        "efficientnetv2_s specs/efficientnetv2_s.effnet 300 64 10"
    )
    out=$(mktemp)
    for round in $(seq "$ROUNDS"); do
        [ "$(left)" -lt 60 ] && break
        for row in "${train_rows[@]}"; do
            read -r model spec res batch iters <<<"$row"
            common=("$spec" --model "$model" --resolution "$res" --batch "$batch" --iters "$iters"
                --warmup 3 --device cuda --train --json)
            tcommon=(tools/torch_bench.py --model "$model" --resolution "$res" --batch "$batch"
                --iters "$iters" --warmup 3 --device cuda --channels-last --train)
            measure effnet-cuda-step "$EFFNET" bench "${common[@]}" --plan cuda-step
            if [ "$round" = 1 ]; then measure effnet-patches env EFFNET_DENSE_CONV=patches \
                "$EFFNET" bench "${common[@]}" --plan cuda-step; fi
            if wanted candle; then ROW_CAP=60 measure effnet-candle "$EFFNET" bench \
                "${common[@]}" --plan candle; fi
            measure torch "$PYTHON" "${tcommon[@]}"
            # Mixed precision: effnet's bf16 step against PyTorch's autocast.
            measure effnet-bf16 "$EFFNET" bench "${common[@]}" --precision bf16
            measure torch-bf16 "$PYTHON" "${tcommon[@]}" --amp-bf16
        done
    done
    side_by_side "$out" cuda-step "PyTorch eager (channels_last, SGD)" | tee -a "$report"
fi

if begin profile "Where the time goes on the GPU (bench --profile: cuda-fused, cuda-step)" 40; then
    for row in "efficientnetv2_s specs/efficientnetv2_s.effnet 384 32 -" \
        "tf_efficientnetv2_b0 specs/tf_efficientnetv2_b0.effnet 224 128 -" \
        "efficientnetv2_s specs/efficientnetv2_s.effnet 300 64 --train"; do
        read -r model spec res batch train <<<"$row"
        [ "$train" = - ] && train=
        say "- $model $res px batch $batch ${train:-inference}:"
        say '```'
        CAP=60 bounded "$EFFNET" bench "$spec" --model "$model" --resolution "$res" \
            --batch "$batch" --iters 5 --warmup 2 --device cuda $train --profile 2>&1 |
            tail -40 | tee -a "$report"
        say '```'
    done
fi

if begin memory "Device memory: 100 against 1,000 inference calls (tf_efficientnetv2_b0 224 batch 8)" 40; then
    for iters in 100 1000; do
        json=$(mktemp)
        CAP=60 bounded "$EFFNET" bench specs/tf_efficientnetv2_b0.effnet --resolution 224 \
            --batch 8 --iters "$iters" --warmup 5 --device cuda --json >"$json" 2>&1 &
        pid=$!
        peak=0
        while kill -0 "$pid" 2>/dev/null; do
            used=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits \
                2>/dev/null | awk -F', ' '{ s += $2 } END { print s + 0 }')
            [ -n "$used" ] && [ "$used" -gt "$peak" ] && peak=$used
            sleep 0.2
        done
        pool=$("$PYTHON" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]).get("peak_device_mb"))' "$json" 2>/dev/null)
        say "- $iters calls: nvidia-smi's peak over the GPU's processes $peak MiB (the pool keeps freed memory: its reservation), the pool's in-use high watermark ${pool:-n/a} MB"
    done
fi

if begin mainjob "The main job (the README's first command) on --device cuda, and on the CPU" 60; then
    for run in "cuda f32" "cuda bf16" "cpu f32"; do
        read -r dev prec <<<"$run"
        [ "$(left)" -lt 30 ] && { say "- --device $dev --precision $prec: skipped, out of time"; continue; }
        start=$(date +%s)
        log=$(bounded "$EFFNET" train specs/efficientnetv2_nano.effnet --data data/mnist \
            --out "$(mktemp -d)/nano-$dev-$prec" --device "$dev" --precision "$prec" 2>&1 | tail -3)
        say "- --device $dev --precision $prec: $(( $(date +%s) - start )) s wall"
        say '```'
        say "$log"
        say '```'
    done
fi

if begin nccl "NCCL: the communicator and two data-parallel epochs through it (one rank per GPU)"; then
    # libnccl.so.2 from the Python environment's nvidia-nccl wheel (PyTorch's).
    nccl_dir=$(wheel_lib_dir libnccl.so.2)
    say '```'
    if [ -n "$nccl_dir" ] && [ -x "$bundle/gpu-nccl-tests" ]; then
        LD_LIBRARY_PATH="$nccl_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" CAP=120 \
            bounded "$bundle/gpu-nccl-tests" --nocapture --test-threads 1 2>&1 | tail -20 |
            tee -a "$report"
    else
        say "skipped: no libnccl.so.2 in the Python environment, or no NCCL test binary"
    fi
    say '```'
fi

if begin half "Half-precision accuracy: --dtype bf16 | f16 on --device cuda against timm float64 (225 px, batch 2)" 60; then
    say "(the table's bar is float32's; in half precision the distance itself is the figure)"
    for half in "${halves[@]}"; do
        say
        say "--dtype $half:"
        EFFNET=$EFFNET EFFNET_ARGS="--device cuda --dtype $half" RES=225 PYTHON=$PYTHON \
            bounded bash tools/parity.sh tf_efficientnetv2_b0 efficientnetv2_s 2>&1 |
            tee -a "$report"
    done
fi

say
say "Finished in $(( $(date +%s) - START )) s of DEADLINE=$DEADLINE."
echo "report: $report"
