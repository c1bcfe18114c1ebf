# Shared by tools/parity.sh and tools/feature_parity.sh (sourced from the repository root):
# the effnet binary, the Python check, and where each model's spec is.

PYTHON=${PYTHON:-python3}
RES=${RES:-128}
BATCH=${BATCH:-2}
if [ -z "${EFFNET:-}" ]; then
    cargo build --release --quiet
    EFFNET=target/release/effnet
fi
if ! "$PYTHON" -c "import timm, torch, safetensors, numpy" 2>/dev/null; then
    echo "error: $PYTHON lacks timm/torch/safetensors/numpy (see tools/README.md; set PYTHON)" >&2
    exit 2
fi

# The bundled spec that defines model $1 (specs/$1.effnet, else the family file that has it).
spec_for() {
    if [ -f "specs/$1.effnet" ]; then
        echo "specs/$1.effnet"
    else
        grep -lE "^model $1( |$)" specs/*.effnet | head -n 1
    fi
}
