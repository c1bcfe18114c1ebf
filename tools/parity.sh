#!/usr/bin/env bash
# Full-size parity of `effnet run` against timm, with random weights.
#
#   tools/parity.sh [MODEL...]
#
# For each model (default: tf_efficientnetv2_b0 efficientnetv2_s efficientnet_b0
# efficientnetv2_rw_t), tools/parity.py builds the timm model with random weights (calibrated
# BatchNorm statistics), a random NCHW batch and timm's eval-mode logits in a temporary
# directory; `effnet run` computes the logits from the bundled spec and the same weights.
# The same timm model is also run in float64 as a reference: deep random networks amplify
# float32 rounding (logits reach |100|), so the float32 difference to timm alone does not say
# whose rounding it is. A model passes when effnet's distance to the float64 logits is at
# most twice timm float32's own, plus 1e-5 of the largest logit. Prints a Markdown table and
# exits 1 if any model fails.
#
# Environment: PYTHON (a Python with timm, torch, safetensors, numpy; default python3),
# RES (input resolution, default 128), BATCH (default 2), EFFNET (the binary; default: build
# target/release/effnet), EFFNET_ARGS (more arguments for `effnet run`, e.g. `--device cuda`),
# RAYON_NUM_THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 0 ]; then
    MODELS=("$@")
else
    MODELS=(tf_efficientnetv2_b0 efficientnetv2_s efficientnet_b0 efficientnetv2_rw_t)
fi
source tools/parity_common.sh


tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Compares effnet's logits with timm's (float32 and float64); prints the table cells.
cat >"$tmp/compare.py" <<'PY'
import sys

import numpy as np
import timm
import torch
from safetensors.torch import load_file

name, weights, inp, ref, ours = sys.argv[1:6]
model = timm.create_model(name, pretrained=False)
model.load_state_dict(load_file(weights), strict=False)
model.eval().double()
with torch.no_grad():
    f64 = model(torch.from_numpy(np.load(inp)).double()).numpy()
ref, ours = np.load(ref).astype(np.float64), np.load(ours).astype(np.float64)
assert ours.shape == ref.shape, (ours.shape, ref.shape)
scale = float(np.abs(f64).max())
vs_timm = float(np.abs(ours - ref).max())
vs_f64 = float(np.abs(ours - f64).max())
timm_err = float(np.abs(ref - f64).max())
ok = vs_f64 <= 2 * timm_err + 1e-5 * scale
print(f"{scale:.3f} | {vs_timm:.3e} | {vs_f64:.3e} | {timm_err:.3e} | {'ok' if ok else 'FAIL'}")
PY

printf '| model | resolution | batch | max abs logit | effnet vs timm f32 | effnet vs timm f64 | timm f32 vs f64 | result |\n'
printf '|---|---|---|---|---|---|---|---|\n'
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
    read -ra extra <<<"${EFFNET_ARGS:-}"
    if ! "$EFFNET" run "$spec" --model "$m" --weights "$weights" --input "$input" \
        --output "$out" "${extra[@]}" 2>"$tmp/$m.run.log"; then
        echo "error: effnet run failed for $m:" >&2
        cat "$tmp/$m.run.log" >&2
        exit 2
    fi
    row=$("$PYTHON" "$tmp/compare.py" "$m" "$weights" "$input" "$logits" "$out")
    printf '| %s | %s | %s | %s |\n' "$m" "$RES" "$BATCH" "$row"
    case "$row" in *FAIL*) status=1 ;; esac
    rm -f "$weights" "$input" "$logits" "$out"
done
exit $status
