//! Search spaces: their size, sampling and mutation, concretized candidates, the reward, and
//! candidates written back as specs.

use effnet_compiler::grammar::{File, Item, Model};
use effnet_compiler::search::{
    Metric, Reward, Space, candidate_network, candidate_source, measure, summarize,
};
use effnet_compiler::{compile, format::format_source, parse};
use rand::SeedableRng;
use rand::rngs::StdRng;

const SPEC: &str = "model space {
    input 3 x 32
    classes 10
    stem conv k3 s2 -> {16|24}
    stage {fused|mbconv} k{3|5} e{1|4} s1 -> 16 x{1..3} skip
    stage mbconv k3 e{4|6} s2 -> 32 x2 se {0.25|0}
    head conv k1 -> 128
}
schedule space { epochs 2 image 24 -> 32 }
search s for space { candidates 5 }
";

fn space_of(file: &File) -> (Space, &Model) {
    let model = file
        .items
        .iter()
        .find_map(|i| match i {
            Item::Model(m) => Some(m),
            _ => None,
        })
        .expect("a model");
    (Space::of(model).expect("choices"), model)
}

#[test]
fn size_is_the_product_of_the_alternatives() {
    let file = parse(SPEC).expect("parses");
    let (space, _) = space_of(&file);
    // stem 2, kind 2, k 2, e 2, x 3 (a range), e 2, se 2.
    assert_eq!(space.points.len(), 7);
    assert_eq!(space.size(), 2.0 * 2.0 * 2.0 * 2.0 * 3.0 * 2.0 * 2.0);
    let names: Vec<String> = space.points.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "stem channels",
            "stage 0 block kind",
            "stage 0 k",
            "stage 0 e",
            "stage 0 x",
            "stage 1 e",
            "stage 1 se"
        ]
    );
    // Small enough to measure every candidate: the range is exact.
    let s = summarize(&file, &space);
    assert!(s.exact);
    assert_eq!(s.invalid, 0);
    let all: Vec<usize> = (0..192)
        .map(|mut k| {
            let picks: Vec<usize> = space
                .points
                .iter()
                .map(|p| {
                    let a = k % p.alternatives.len();
                    k /= p.alternatives.len();
                    a
                })
                .collect();
            measure(&file, &space, &picks).expect("valid").0
        })
        .collect();
    assert_eq!(s.params.min, *all.iter().min().unwrap() as f64);
    assert_eq!(s.params.max, *all.iter().max().unwrap() as f64);
}

#[test]
fn a_space_checks_and_lowers_as_its_default_candidate() {
    let compiled = compile(SPEC).expect("compiles");
    let default = compile(
        "model space {
    input 3 x 32
    classes 10
    stem conv k3 s2 -> 16
    stage fused k3 e1 s1 -> 16 x1 skip
    stage mbconv k3 e4 s2 -> 32 x2 se 0.25
    head conv k1 -> 128
}",
    )
    .expect("compiles");
    assert_eq!(
        compiled.networks[0].param_count(),
        default.networks[0].param_count()
    );
}

#[test]
fn candidates_are_ordinary_models() {
    let file = parse(SPEC).expect("parses");
    let (space, _) = space_of(&file);
    // stem 24, mbconv k5 e4 x3, stage 1 e6 without SE.
    let picks = vec![1, 1, 1, 1, 2, 1, 1];
    let net = candidate_network(&file, &space, &picks).expect("valid");
    let written = compile(
        "model space {
    input 3 x 32
    classes 10
    stem conv k3 s2 -> 24
    stage mbconv k5 e4 s1 -> 16 x3 skip
    stage mbconv k3 e6 s2 -> 32 x2
    head conv k1 -> 128
}
schedule space { epochs 2 image 24 -> 32 }",
    )
    .expect("compiles");
    assert_eq!(net.to_string(), written.networks[0].to_string());
}

#[test]
fn sampling_is_reproducible_and_mutation_stays_inside() {
    let file = parse(SPEC).expect("parses");
    let (space, _) = space_of(&file);
    let draw = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..20).map(|_| space.sample(&mut rng)).collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
    let mut rng = StdRng::seed_from_u64(3);
    let mut seen_moved = vec![false; space.points.len()];
    for _ in 0..500 {
        let parent = space.sample(&mut rng);
        let child = space.mutate(&parent, &mut rng);
        let moved: Vec<usize> = (0..parent.len())
            .filter(|&i| parent[i] != child[i])
            .collect();
        assert_eq!(moved.len(), 1, "one choice moves: {parent:?} -> {child:?}");
        for (i, p) in space.points.iter().enumerate() {
            assert!(child[i] < p.alternatives.len());
        }
        seen_moved[moved[0]] = true;
        assert!(candidate_network(&file, &space, &child).is_ok());
    }
    assert!(seen_moved.iter().all(|&m| m), "every choice gets mutated");
}

#[test]
fn reward_is_the_papers_formula() {
    // A * (S / S0)^w * (P / P0)^v with w = -0.07, v = -0.05 (Tan & Le 2021, section 3.3).
    let r = Reward::default();
    let (a, s, s0, p, p0) = (0.8, 0.030, 0.020, 400_000.0, 300_000.0);
    let got = r.score(a, |m| match m {
        Metric::StepTime => (s, s0),
        Metric::Params => (p, p0),
        Metric::Macs => panic!("the default reward has no MAC term"),
    });
    let want = a * (s / s0).powf(-0.07) * (p / p0).powf(-0.05);
    assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    assert!(
        got < a,
        "a slower, larger candidate scores below its accuracy"
    );
    // The base itself scores its accuracy.
    assert_eq!(r.score(a, |_| (1.0, 1.0)), a);
}

#[test]
fn a_candidate_written_as_a_spec_is_formatted_and_compiles_to_the_same_network() {
    let file = parse(SPEC).expect("parses");
    let (space, _) = space_of(&file);
    let picks = vec![1, 1, 1, 1, 2, 1, 1];
    let text = candidate_source(
        SPEC,
        &file,
        &space,
        &picks,
        "found",
        &["Found by a test.".to_string()],
    )
    .expect("writes");
    assert_eq!(format_source(&text).expect("parses"), text, "fmt-clean");
    assert!(
        text.starts_with("/// Found by a test.\nmodel found {"),
        "{text}"
    );
    assert!(
        !text.contains('{') || !text.contains('|'),
        "no choice left: {text}"
    );
    assert!(
        text.contains("schedule found {"),
        "the schedule comes along: {text}"
    );
    assert!(!text.contains("search"), "{text}");
    let compiled = compile(&text).expect("compiles");
    let net = candidate_network(&file, &space, &picks).expect("valid");
    assert_eq!(compiled.networks[0].param_count(), net.param_count());
    // `se {0.25|0}` at 0 drops the option.
    assert!(text.contains("stage mbconv k3 e6 s2 -> 32  x2\n"), "{text}");
}
