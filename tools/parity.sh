#!/usr/bin/env bash
# Full-size parity of `effnet run` against timm, with random weights.
#
#   tools/parity.sh [MODEL...]
#
# For each model (default: tf_efficientnetv2_b0 efficientnetv2_s efficientnet_b0
# efficientnetv2_rw_t), tools/parity.py builds the timm model with random weights (calibrated
# BatchNorm statistics), a random NCHW batch and timm's eval-mode logits in a temporary
# directory; `effnet run` computes the logits from the bundled spec and the same weights;
# numpy compares them. Prints a table and exits 1 if any model is over the tolerance.
#
# Environment: PYTHON (a Python with timm, torch, safetensors, numpy; default python3),
# RES (input resolution, default 128), BATCH (default 2), TOL (max |diff| allowed, default
# 1e-3), EFFNET (the binary; default: build target/release/effnet), RAYON_NUM_THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
RES=${RES:-128}
BATCH=${BATCH:-2}
TOL=${TOL:-1e-3}
if [ $# -gt 0 ]; then
    MODELS=("$@")
else
    MODELS=(tf_efficientnetv2_b0 efficientnetv2_s efficientnet_b0 efficientnetv2_rw_t)
fi
if [ -z "${EFFNET:-}" ]; then
    cargo build --release --quiet
    EFFNET=target/release/effnet
fi
if ! "$PYTHON" -c "import timm, torch, safetensors, numpy" 2>/dev/null; then
    echo "error: $PYTHON lacks timm/torch/safetensors/numpy (see tools/README.md; set PYTHON)" >&2
    exit 2
fi

# The bundled spec that defines each model.
spec_for() {
    case "$1" in
        efficientnet_b[0-7]) echo specs/efficientnet.effnet ;;
        tf_efficientnetv2_b[1-3]) echo specs/tf_efficientnetv2_b.effnet ;;
        *) echo "specs/$1.effnet" ;;
    esac
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

printf '| model | resolution | batch | max abs diff | max abs logit | relative | result |\n'
printf '|---|---|---|---|---|---|---|\n'
status=0
for m in "${MODELS[@]}"; do
    spec=$(spec_for "$m")
    mapfile -t files < <("$PYTHON" tools/parity.py "$m" "$RES" "$tmp" --batch "$BATCH" 2>"$tmp/$m.log")
    if [ "${#files[@]}" -ne 3 ]; then
        echo "error: tools/parity.py $m failed:" >&2
        cat "$tmp/$m.log" >&2
        exit 2
    fi
    weights=${files[0]} input=${files[1]} logits=${files[2]}
    out="$tmp/${m}_effnet.npy"
    "$EFFNET" run "$spec" --model "$m" --weights "$weights" --input "$input" --output "$out" 2>"$tmp/$m.run.log" || {
        echo "error: effnet run failed for $m:" >&2
        cat "$tmp/$m.run.log" >&2
        exit 2
    }
    row=$("$PYTHON" - "$out" "$logits" "$TOL" <<'EOF'
import sys
import numpy as np
ours, ref, tol = np.load(sys.argv[1]), np.load(sys.argv[2]), float(sys.argv[3])
assert ours.shape == ref.shape, (ours.shape, ref.shape)
diff = float(np.abs(ours.astype(np.float64) - ref).max())
scale = float(np.abs(ref).max())
print(f"{diff:.3e} | {scale:.3f} | {diff / scale:.2e} | {'ok' if diff <= tol else 'FAIL'}")
EOF
)
    printf '| %s | %s | %s | %s |\n' "$m" "$RES" "$BATCH" "$row"
    case "$row" in *FAIL*) status=1 ;; esac
    rm -f "$weights" "$input" "$logits" "$out"
done
exit $status
