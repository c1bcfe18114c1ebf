#!/usr/bin/env bash
# The evidence for BENCHMARKS.md "Architecture search": on the bundled space and data,
# aging evolution against random search at equal budget over 3 seeds, the proxy's rank
# correlation with longer training, and the best model retrained against the nano
# architecture (the space's default candidate) with the same schedule.
#
#   bash tools/search_evidence.sh [OUT_DIR]      (default /tmp/effnet-search-evidence)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/effnet-search-evidence}
budget=${BUDGET:-40}
spec=specs/search/fashion.effnet
# BIN: an effnet binary to use instead of building one here.
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
fi
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/effnet}
mkdir -p "$out"
for seed in 0 1 2; do
    for strategy in evolution random; do
        dir=$out/$strategy-$seed
        rm -rf "$dir"
        /usr/bin/time -f "%e s wall" "$bin" search "$spec" --data data/fashion --out "$dir" \
            --strategy "$strategy" --seed "$seed" --budget "$budget" > "$dir.log" 2>&1
        echo "== $strategy seed $seed"; tail -5 "$dir.log"
    done
done
# The proxy against 4 epochs of the spec's schedule (its 20 -> 24 px progressive learning),
# on 8 candidates of the first evolution run.
"$bin" search "$spec" --data data/fashion --out "$out/evolution-0" --seed 0 --budget "$budget" \
    --resume --rank-check ${RANK:-8} --rank-epochs ${RANK_EPOCHS:-4} > "$out/rank.log" 2>&1
echo "== rank check"; tail -12 "$out/rank.log"
# The best of the first evolution run and the default candidate (nano's architecture),
# trained alike.
for model in best default; do
    dir=$out/retrain-$model
    rm -rf "$dir"
    if [ "$model" = best ]; then
        "$bin" train "$out/evolution-0/best_1.effnet" --data data/fashion --out "$dir" --epochs 8 > "$dir.log" 2>&1
    else
        "$bin" train "$spec" --model fashion_space --data data/fashion --out "$dir" --epochs 8 > "$dir.log" 2>&1
    fi
    echo "== retrain $model"; grep -E "^model|^done" "$dir.log"
    "$bin" bench "$( [ "$model" = best ] && echo "$out/evolution-0/best_1.effnet" || echo "$spec")" \
        --train --batch 64 --resolution 24 --iters 20 --json 2>/dev/null | tail -1
done
