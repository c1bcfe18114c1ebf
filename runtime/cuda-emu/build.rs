//! Compiles the runtime's CUDA kernel source (`runtime/src/exec/cuda/kernels.cu`, the file
//! NVRTC compiles on a GPU machine) as C++ for the CPU, under `src/cuda_on_cpu.h`.

fn main() {
    let kernels = "../src/exec/cuda/kernels.cu";
    println!("cargo:rerun-if-changed={kernels}");
    println!("cargo:rerun-if-changed=src/cuda_on_cpu.h");
    println!("cargo:rerun-if-changed=src/launch.cpp");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/launch.cpp")
        .include("src")
        .include("../src/exec/cuda")
        // IEEE float arithmetic as nvcc/NVRTC compile it by default (no fast-math), and no
        // contraction of a * b + c into an FMA the GPU might not use either.
        .flag_if_supported("-ffp-contract=off")
        .warnings(true)
        .compile("effnet_cuda_emu");
}
