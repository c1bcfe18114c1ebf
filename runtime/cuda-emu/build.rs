//! Compiles the runtime's CUDA kernel source (`runtime/src/exec/cuda/kernels.cu`, the file
//! NVRTC compiles on a GPU machine) as C++ for the CPU, under `src/cuda_on_cpu.h`, with one
//! entry point, `emu_call`, that launches any kernel by name. Its dispatch is generated here
//! from the kernels' own declarations (`dispatch.inc`: each pointer cast to its declared
//! type, each scalar read as its declared C type after its tag is checked), as is the table
//! of declarations the Rust side checks a launch's buffers against (`signatures.rs`), so no
//! per-kernel glue is written by hand.

use std::fmt::Write as _;
use std::path::PathBuf;

/// A kernel parameter as declared: a pointer to `elem` (const or not), or a scalar C type.
enum Param {
    Pointer { elem: String, constant: bool },
    Scalar(String),
}

/// The `extern "C"` kernels of `source`, with their parameters, in order.
fn kernels(source: &str) -> Vec<(String, Vec<Param>)> {
    let marker = "extern \"C\" __global__ void ";
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(marker) {
        rest = &rest[at + marker.len()..];
        let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else {
            panic!("kernels.cu: an unterminated kernel declaration");
        };
        let name = rest[..open].trim().to_string();
        let params = rest[open + 1..close]
            .split(',')
            .map(|p| {
                let p = p.replace("__restrict__", "").replace('*', " * ");
                let words: Vec<&str> = p.split_whitespace().collect();
                let constant = words.contains(&"const");
                let ty: Vec<&str> = words[..words.len() - 1]
                    .iter()
                    .copied()
                    .filter(|w| *w != "const")
                    .collect();
                match ty.split_last() {
                    Some((&"*", elem)) => Param::Pointer {
                        elem: elem.join(" "),
                        constant,
                    },
                    _ => Param::Scalar(ty.join(" ")),
                }
            })
            .collect();
        out.push((name, params));
        rest = &rest[close..];
    }
    out
}

/// The tag `emu_call` expects for a scalar of C type `ty` (and the Rust side passes).
fn tag(ty: &str) -> u8 {
    match ty {
        "int" => 0,
        "long" => 1,
        "double" => 2,
        t => panic!("kernels.cu: a scalar of type `{t}` (the emulator passes int, long, double)"),
    }
}

fn main() {
    let kernels_cu = "../src/exec/cuda/kernels.cu";
    println!("cargo:rerun-if-changed={kernels_cu}");
    println!("cargo:rerun-if-changed=src/cuda_on_cpu.h");
    println!("cargo:rerun-if-changed=src/launch.cpp");
    let source = std::fs::read_to_string(kernels_cu).expect("read kernels.cu");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));

    let mut dispatch = String::new();
    let mut table = String::from(
        "/// Every kernel's parameters as declared, by kernel name.\n\
         pub(crate) const SIGNATURES: &[(&str, &[KernelParam])] = &[\n",
    );
    for (name, params) in kernels(&source) {
        let pointers = params
            .iter()
            .filter(|p| matches!(p, Param::Pointer { .. }))
            .count();
        let scalars = params.len() - pointers;
        let mut args = Vec::new();
        let mut checks = String::new();
        let (mut pi, mut si) = (0, 0);
        let mut row = String::new();
        for p in &params {
            match p {
                Param::Pointer { elem, constant } => {
                    let c = if *constant { "const " } else { "" };
                    args.push(format!("({c}{elem}*)ptrs[{pi}]"));
                    let _ = write!(
                        row,
                        "KernelParam {{ ty: \"{elem}\", pointer: true, constant: {constant} }}, "
                    );
                    pi += 1;
                }
                Param::Scalar(ty) => {
                    let t = tag(ty);
                    let _ = write!(checks, " || tags[{si}] != {t}");
                    args.push(match t {
                        2 => format!("dbls[{si}]"),
                        _ => format!("({ty})ints[{si}]"),
                    });
                    let _ = write!(
                        row,
                        "KernelParam {{ ty: \"{ty}\", pointer: false, constant: false }}, "
                    );
                    si += 1;
                }
            }
        }
        let _ = writeln!(
            dispatch,
            "if (std::strcmp(name, \"{name}\") == 0) {{\n    if (nptrs != {pointers} || nscalars != \
             {scalars}{checks}) return 2;\n    effnet_launch(grid, block, [&] {{ {name}({}); }});\n    \
             return 0;\n}}",
            args.join(", ")
        );
        let _ = writeln!(table, "    (\"{name}\", &[{row}]),");
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("dispatch.inc"), dispatch).expect("write dispatch.inc");
    std::fs::write(out_dir.join("signatures.rs"), table).expect("write signatures.rs");

    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/launch.cpp")
        .include("src")
        .include("../src/exec/cuda")
        .include(&out_dir)
        // IEEE float arithmetic as nvcc/NVRTC compile it by default (no fast-math), and no
        // contraction of a * b + c into an FMA the GPU might not use either.
        .flag_if_supported("-ffp-contract=off")
        .warnings(true)
        .compile("effnet_cuda_emu");
}
