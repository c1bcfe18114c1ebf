"""Compile effnet's CUDA kernels with NVRTC on any machine, GPU or not: the run-time path of
the cuda-fused plan (runtime/src/exec/cuda/ops.rs compiles the same source the same way, with
no options), checked without Rust or a GPU.

    python3 -m pip install --target .cuda/nvrtc "nvidia-cuda-nvrtc==13.0.*"
    LD_LIBRARY_PATH=.cuda/nvrtc/nvidia/cu13/lib python3 tools/nvrtc_check.py

Prints NVRTC's log, the PTX's version and target, and its entries; exits 1 when the source
does not compile or a kernel of runtime/src/exec/cuda/mod.rs's KERNELS is missing.
"""

import ctypes
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SOURCE = os.path.join(ROOT, "runtime/src/exec/cuda/kernels.cu")
KERNELS_RS = os.path.join(ROOT, "runtime/src/exec/cuda/mod.rs")


def main():
    lib_path = os.environ.get("NVRTC", "libnvrtc.so.13")
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as e:
        sys.exit(f"cannot load {lib_path} ({e}): install nvidia-cuda-nvrtc==13.0.* and set "
                 "LD_LIBRARY_PATH (see this file's docstring), or NVRTC=/path/to/libnvrtc.so.13")
    src = open(SOURCE, "rb").read()
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"effnet_kernels.cu", 0, None, None):
        sys.exit("nvrtcCreateProgram failed")
    result = lib.nvrtcCompileProgram(prog, 0, None)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    print("NVRTC log:", log.value.decode().strip() or "(empty)")
    if result:
        sys.exit(f"NVRTC could not compile {SOURCE} (result {result})")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    text = ptx.value.decode()
    for line in text.splitlines():
        if line.startswith((".version", ".target")):
            print(line)
    entries = re.findall(r"\.entry (\w+)\(", text)
    print("entries:", ", ".join(entries))
    wanted = re.findall(r'"(effnet_\w+)"', open(KERNELS_RS).read())
    missing = [k for k in wanted if k not in entries]
    if missing:
        sys.exit(f"missing kernels: {missing}")


if __name__ == "__main__":
    main()
