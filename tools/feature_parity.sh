#!/usr/bin/env bash
# Full-size feature-pyramid parity of `effnet run --features` against timm's
# `features_only=True`, with random weights.
#
#   tools/feature_parity.sh [MODEL...]
#
# For each model (default: tf_efficientnetv2_b0 efficientnetv2_s efficientnet_b0), tools/parity.py
# builds the timm model with random weights (calibrated BatchNorm statistics) and a random NCHW
# batch in a temporary directory; `effnet run --features 0,1,2,3,4` writes every level from the
# bundled spec and the same weights, and timm's feature extractor
# (`timm.create_model(MODEL, features_only=True)`, loaded with those weights) computes them in
# float32 and in float64. As in tools/parity.sh, float64 is the yardstick: a level passes when
# effnet's distance to timm's float64 map is at most twice timm float32's own, plus 1e-5 of the
# map's largest value. Prints a Markdown table (one row per level) and exits 1 if any level
# fails.
#
# Environment: PYTHON (a Python with timm, torch, safetensors, numpy; default python3),
# RES (input resolution, default 128), BATCH (default 2), EFFNET (the binary; default: build
# target/release/effnet), RAYON_NUM_THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 0 ]; then
    MODELS=("$@")
else
    MODELS=(tf_efficientnetv2_b0 efficientnetv2_s efficientnet_b0)
fi
source tools/parity_common.sh


tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Compares effnet's levels with timm's features_only maps (float32 and float64); prints one
# table row per level.
cat >"$tmp/compare.py" <<'PY'
import sys

import numpy as np
import timm
import torch
from safetensors.torch import load_file

name, res, weights, inp, ours_base = sys.argv[1:6]
model = timm.create_model(name, pretrained=False, features_only=True)
state = load_file(weights)
missing, _ = model.load_state_dict(state, strict=False)
assert not [k for k in missing if not k.endswith("num_batches_tracked")], missing
model.eval()
x = torch.from_numpy(np.load(inp))
with torch.no_grad():
    f32 = [m.numpy().astype(np.float64) for m in model(x)]
    f64 = [m.numpy() for m in model.double()(x.double())]
failed = False
for info, a, b in zip(model.feature_info.get_dicts(), f32, f64):
    i = info["index"]
    ours = np.load(f"{ours_base}.level{i}.npy").astype(np.float64)
    assert ours.shape == a.shape, (i, ours.shape, a.shape)
    scale = float(np.abs(b).max())
    vs_timm = float(np.abs(ours - a).max())
    vs_f64 = float(np.abs(ours - b).max())
    timm_err = float(np.abs(a - b).max())
    ok = vs_f64 <= 2 * timm_err + 1e-5 * scale
    failed |= not ok
    shape = "x".join(str(d) for d in ours.shape)
    print(f"| {name} | {res} | {i} `{info['module']}` | {info['reduction']} | {shape} | {scale:.3f} | "
          f"{vs_timm:.3e} | {vs_timm / scale:.1e} | {vs_f64:.3e} | {timm_err:.3e} | {'ok' if ok else 'FAIL'} |")
sys.exit(1 if failed else 0)
PY

printf '| model | resolution | level | stride | shape | max abs | effnet vs timm f32 | relative | effnet vs timm f64 | timm f32 vs f64 | result |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
status=0
for m in "${MODELS[@]}"; do
    spec=$(spec_for "$m")
    mapfile -t files < <("$PYTHON" tools/parity.py "$m" "$RES" "$tmp" --batch "$BATCH" 2>"$tmp/$m.log")
    if [ "${#files[@]}" -ne 3 ]; then
        echo "error: tools/parity.py $m failed:" >&2
        cat "$tmp/$m.log" >&2
        exit 2
    fi
    weights=${files[0]} input=${files[1]}
    out="$tmp/${m}_effnet.npy"
    if ! "$EFFNET" run "$spec" --model "$m" --weights "$weights" --input "$input" \
        --output "$out" --features 0,1,2,3,4 2>"$tmp/$m.run.log"; then
        echo "error: effnet run --features failed for $m:" >&2
        cat "$tmp/$m.run.log" >&2
        exit 2
    fi
    "$PYTHON" "$tmp/compare.py" "$m" "$RES" "$weights" "$input" "${out%.npy}" || status=1
    rm -f "$weights" "$input" "${files[2]}" "${out%.npy}".level*.npy
done
exit $status
