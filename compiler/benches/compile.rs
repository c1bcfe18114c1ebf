//! parse + check + lower of the largest bundled spec (EfficientNetV2-XL, 8 stages, 100 blocks).
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../specs/tf_efficientnetv2_xl.effnet"
    );
    let text = std::fs::read_to_string(path).expect("the XL spec is bundled");
    c.bench_function("compile tf_efficientnetv2_xl (parse+check+lower)", |b| {
        b.iter(|| effnet_compiler::compile(std::hint::black_box(&text)).map(|c| c.networks.len()))
    });
    c.bench_function("parse tf_efficientnetv2_xl", |b| {
        b.iter(|| effnet_compiler::parse(std::hint::black_box(&text)).map(|f| f.items.len()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
