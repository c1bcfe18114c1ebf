//! Macro expansion time: `#[effnet::model]` on the largest bundled spec (EfficientNetV2-XL,
//! 100+ blocks). Goal: under 50 ms. `expand` is what the proc-macro does (compile the spec,
//! analyse it, build the tokens); `expand_and_format` adds prettyplease, as `effnet expand` does.
//!
//! cargo bench -p effnet-compiler --bench codegen

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use effnet_compiler::codegen::{Context, expand_attribute, expand_source};
use quote::quote;

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec = "specs/tf_efficientnetv2_xl.effnet";
    let text = std::fs::read_to_string(root.join(spec)).expect("the XL spec is bundled");
    let ctx = Context {
        manifest_dir: Some(root.clone()),
        call_site_file: None,
    };
    let mut group = c.benchmark_group("codegen");
    group.bench_function("expand_xl", |b| {
        b.iter(|| {
            let out = expand_attribute(
                quote!("specs/tf_efficientnetv2_xl.effnet"),
                quote!(
                    pub struct Xl;
                ),
                black_box(&ctx),
            );
            // What rustc receives: the token stream as text.
            black_box(out.to_string())
        })
    });
    group.bench_function("expand_and_format_xl", |b| {
        b.iter(|| expand_source(black_box(&text), spec, spec, None).expect("expands"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
