#!/usr/bin/env bash
# The CUDA toolkit a `--features cuda` build needs, on a machine with no GPU and no system CUDA,
# installed into `.cuda/` (ignored by git); prints the environment the build needs.
#
#   eval "$(bash tools/cuda-toolkit.sh)"          # the real toolkit: nvcc 13.0 from PyPI
#   cargo build --release --features cuda         #   -> a binary to carry to a GPU machine
#
#   eval "$(bash tools/cuda-toolkit.sh --check)"  # no download: a stand-in nvcc
#   cargo clippy --workspace --all-targets --features nccl -- -D warnings  # nccl: cuda + NCCL
#
# Why 13.0 exactly: the lent H200 runs driver 580 (CUDA 13.0), and candle loads every kernel
# as PTX; PTX from a newer nvcc fails there with CUDA_ERROR_UNSUPPORTED_PTX_VERSION, and
# CUDARC_CUDA_VERSION above 13000 binds driver symbols that 580 lacks.
#
# The full mode installs `cuda-toolkit[nvcc,cccl,cudart,crt]==13.0.*` (about 270 MB) with pip,
# gives it the layout nvcc and cudarc's build script expect (`lib64`, an unversioned
# `libcudart.so`), and generates link-time stub libraries (libcuda, libcublas, libcublasLt,
# libcurand, libnvrtc, libnccl for `--features nccl`, libcudnn for `--features cudnn`) from
# cudarc's own bindings: the wheels ship no libcuda stub and no cuBLAS, and a binary linked
# against stubs loads the real libraries by soname at run time (a `--features nccl` binary
# needs the machine's libnccl.so.2 then, e.g. from `pip install nvidia-nccl-cu13`, and a
# `--features cudnn` one libcudnn.so.9, from `nvidia-cudnn-cu13`).
#
# The check mode writes a 20-line stand-in `nvcc` that reports version 13.0 and writes empty
# outputs: enough for `cargo check` / `cargo clippy` (which never link and never load PTX) to
# type-check every line behind `--features cuda`. It is what CI runs.
#
# Both modes print `export` lines: CUDA_HOME, PATH, CUDARC_CUDA_VERSION=13000, and
# CUDA_COMPUTE_CAP=90 (the H200's; candle's build asks nvidia-smi otherwise, which a machine
# without a GPU does not have).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/.cuda
mode=${1:-full}
cap=${CUDA_COMPUTE_CAP:-90}

emit() {
    local home=$1
    echo "export CUDA_HOME='$home'"
    echo "export PATH='$home/bin':\"\$PATH\""
    echo "export CUDARC_CUDA_VERSION=13000"
    echo "export CUDA_COMPUTE_CAP=$cap"
}

case "$mode" in
--check)
    home=$root/check
    mkdir -p "$home/bin"
    cat >"$home/bin/nvcc" <<'NVCC'
#!/usr/bin/env bash
# A stand-in nvcc for type-checking `--features cuda` (tools/cuda-toolkit.sh --check): it
# reports CUDA 13.0 and writes empty outputs where the real one writes PTX, objects or
# archives. A binary built with it links nothing usable; use the real toolkit to build.
set -euo pipefail
if [[ " $* " == *" --version "* ]]; then
    echo "nvcc: NVIDIA (R) Cuda compiler driver"
    echo "Cuda compilation tools, release 13.0, V13.0.88 (stand-in of tools/cuda-toolkit.sh --check)"
    exit 0
fi
out="" dir="" lib=0 ptx=0 srcs=()
while [ $# -gt 0 ]; do
    case "$1" in
    -o) out=$2; shift ;;
    --output-directory | -odir) dir=$2; shift ;;
    --lib | -lib) lib=1 ;;
    --ptx | -ptx) ptx=1 ;;
    *.cu) srcs+=("$1") ;;
    esac
    shift
done
if [ "$lib" = 1 ] && [ -n "$out" ]; then
    ar rcs "$out"
elif [ -n "$out" ]; then
    : >"$out"
elif [ "$ptx" = 1 ]; then
    for s in "${srcs[@]}"; do : >"${dir:-.}/$(basename "${s%.cu}").ptx"; done
fi
NVCC
    chmod +x "$home/bin/nvcc"
    emit "$home"
    ;;
full | --full)
    site=$root/pip
    home=$site/nvidia/cu13
    if [ ! -x "$home/bin/nvcc" ]; then
        echo "installing cuda-toolkit 13.0 from PyPI into $site (about 270 MB) ..." >&2
        python3 -m pip install --quiet --target "$site" "cuda-toolkit[nvcc,cccl,cudart,crt]==13.0.*" >&2
    fi
    [ -x "$home/bin/nvcc" ] || { echo "no nvcc under $home after the install" >&2; exit 1; }
    # nvcc.profile looks for lib64; cudarc's build script links libcudart by its plain name.
    [ -e "$home/lib64" ] || ln -s lib "$home/lib64"
    [ -e "$home/lib/libcudart.so" ] || ln -s libcudart.so.13 "$home/lib/libcudart.so"
    # Link-time stubs: every function cudarc's bindings declare, as an empty C function in a
    # shared library with the real soname. cudarc's sources come from cargo's registry.
    stubs=$home/lib/stubs
    if [ ! -e "$stubs/libcuda.so" ] || [ ! -e "$stubs/libcudnn.so" ]; then
        cargo fetch --quiet >&2
        cudarc=$(cargo metadata --format-version 1 --features cuda 2>/dev/null |
            python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc").rsplit("/", 1)[0])')
        mkdir -p "$stubs"
        for spec in driver:libcuda.so.1:libcuda cublas:libcublas.so.13:libcublas \
            cublaslt:libcublasLt.so.13:libcublasLt curand:libcurand.so.10:libcurand \
            nvrtc:libnvrtc.so.13:libnvrtc nccl:libnccl.so.2:libnccl cudnn:libcudnn.so.9:libcudnn; do
            IFS=: read -r module soname name <<<"$spec"
            grep -ohP 'pub unsafe fn \K\w+(?=\s*[<(])' "$cudarc/src/$module/sys/"*.rs | sort -u |
                sed 's/.*/void &(void) {}/' >"$stubs/$name.c"
            gcc -shared -fPIC -Wl,-soname,"$soname" -o "$stubs/$name.so" "$stubs/$name.c"
            rm "$stubs/$name.c"
        done
    fi
    emit "$home"
    ;;
*)
    echo "usage: tools/cuda-toolkit.sh [--check]" >&2
    exit 2
    ;;
esac
