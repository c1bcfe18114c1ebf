//! `effnet search` end to end on a tiny space: candidates drawn, measured, trained and scored;
//! the state, `search.csv` and the best models written; a search killed between candidates
//! resumes with the candidate the uninterrupted one trains next.

use std::path::{Path, PathBuf};

use candle_core::Device;
use effnet_compiler::grammar::{Item, parse};
use effnet_compiler::search::{Metric, Space, Strategy, searches};
use effnet_runtime::search::{
    Engine, Record, STATE_FILE, Setup, Status, kendall_tau, next_picks, pareto_front,
};

const SPEC: &str = "/// A tiny space for tests.
model tiny {
    input 1 x 16
    classes 10
    normalize mean(0.286) std(0.353)
    stem conv k3 s2 -> 8
    stage {fused|mbconv} k{3|5} e{1|2} s1 -> 8 x{1..2} skip
    stage mbconv k3 e2 s2 -> 16 x1 se {0.25|0}
    head conv k1 -> 32
}

schedule tiny {
    epochs 3
    image 16 -> 16
    batch 50
    optimizer adamw(weight_decay = 0.0)
    lr 0.01 warmup 0 constant
}

search quick for tiny {
    strategy evolution(population = 2, sample = 2)
    candidates 3
    epochs 2
    images 500
}
";

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion")
}

fn setup(out: &Path, budget: usize) -> Setup {
    let file = parse(SPEC).expect("parses");
    let def = searches(&file).remove(0);
    let space = file
        .items
        .iter()
        .find_map(|i| match i {
            Item::Model(m) => Space::of(m),
            _ => None,
        })
        .expect("a space");
    Setup {
        source: SPEC.to_string(),
        spec_path: PathBuf::from("tiny.effnet"),
        strategy: def.strategy,
        file,
        def,
        space,
        budget,
        seed: 5,
        test_images: Some(200),
        device: Device::Cpu,
        out: out.to_path_buf(),
    }
}

fn run(out: &Path, budget: usize, resume: bool) -> Vec<Record> {
    let mut engine = Engine::start(setup(out, budget), &data(), resume).expect("starts");
    while !engine.done() {
        engine.step(&mut |_| {}).expect("candidate");
    }
    engine.state.records.clone()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("effnet-search-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Records without their wall times (which differ run to run).
fn outcome(records: &[Record]) -> Vec<(Vec<usize>, Status, usize, f64)> {
    records
        .iter()
        .map(|r| (r.picks.clone(), r.status.clone(), r.params, r.accuracy))
        .collect()
}

#[test]
fn a_tiny_search_end_to_end_and_resumed_after_a_kill() {
    let whole = tmp("whole");
    let records = run(&whole, 3, false);
    assert_eq!(records.len(), 3);
    let trained: Vec<&Record> = records
        .iter()
        .filter(|r| r.status == Status::Trained)
        .collect();
    assert!(!trained.is_empty(), "{records:?}");
    for r in &trained {
        assert!(r.params > 0 && r.macs > 0 && r.step_time > 0.0);
        assert!(r.accuracy > 0.0 && r.accuracy <= 1.0, "{r:?}");
        assert!(r.reward > 0.0);
    }
    // Ten classes: the best proxy is well above chance on 200 test images after 20 steps.
    let best_accuracy = trained.iter().map(|r| r.accuracy).fold(0.0, f64::max);
    assert!(best_accuracy > 0.3, "{records:?}");
    // Distinct candidates.
    for (i, a) in records.iter().enumerate() {
        for b in &records[i + 1..] {
            assert_ne!(a.picks, b.picks);
        }
    }
    // The files: state, one CSV row per candidate, the best model as a spec that compiles.
    assert!(whole.join(STATE_FILE).exists());
    let csv = std::fs::read_to_string(whole.join("search.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(
        csv.starts_with("candidate,status,stage 0 block kind,stage 0 k"),
        "{csv}"
    );
    let best = std::fs::read_to_string(whole.join("best_1.effnet")).expect("best model");
    assert_eq!(
        effnet_compiler::format::format_source(&best).expect("parses"),
        best,
        "fmt-clean"
    );
    let compiled = effnet_compiler::compile(&best).expect("the best model compiles");
    let top = trained
        .iter()
        .max_by(|a, b| a.reward.total_cmp(&b.reward))
        .expect("one");
    assert_eq!(compiled.networks[0].param_count(), top.params);
    assert!(best.contains("Found by `effnet search`"), "{best}");

    // Killed after two candidates (a state file and a stray temporary file left behind):
    // resuming trains the third exactly as the uninterrupted search did.
    let killed = tmp("killed");
    let first_two = run(&killed, 2, false);
    assert_eq!(outcome(&first_two), outcome(&records[..2]));
    std::fs::write(killed.join("search.tmp"), "{ half a state").expect("write");
    let resumed = run(&killed, 3, true);
    assert_eq!(outcome(&resumed), outcome(&records));

    // The proxy's ranking against longer training: two candidates, their accuracies, a tau.
    let engine = Engine::start(setup(&whole, 3), &data(), true).expect("resumes");
    assert!(engine.done());
    let check = engine.rank_check(2, 3, &mut |_| {}).expect("rank check");
    assert_eq!(check.rows.len(), 2);
    assert!(
        check.rows.iter().all(|r| r.2 > 0.0 && r.2 <= 1.0),
        "{check:?}"
    );
    assert!((-1.0..=1.0).contains(&check.tau));
    let rank = std::fs::read_to_string(whole.join("rank.csv")).expect("rank.csv");
    assert!(rank.contains("kendall_tau"), "{rank}");

    // A new search in a directory that holds one is refused; a resumed one with another seed
    // too.
    let err = Engine::start(setup(&whole, 3), &data(), false)
        .err()
        .expect("refused");
    assert!(err.contains("--resume"), "{err}");
    let mut other = setup(&whole, 3);
    other.seed = 6;
    let err = Engine::start(other, &data(), true).err().expect("refused");
    assert!(err.contains("seed"), "{err}");
    let _ = std::fs::remove_dir_all(&whole);
    let _ = std::fs::remove_dir_all(&killed);
}

fn record(index: usize, picks: Vec<usize>, accuracy: f64, step_time: f64, params: usize) -> Record {
    Record {
        index,
        picks,
        status: Status::Trained,
        params,
        macs: 1,
        step_time,
        accuracy,
        reward: accuracy,
        wall_s: 0.0,
    }
}

#[test]
fn evolution_mutates_the_best_of_its_sample_and_is_reproducible() {
    let s = setup(Path::new("/nonexistent"), 10);
    let space = &s.space;
    let strategy = Strategy::Evolution {
        population: 2,
        sample: 2,
    };
    // Until the population is full: random draws, a function of the seed and index only.
    assert_eq!(
        next_picks(space, strategy, 1, &[]),
        next_picks(space, strategy, 1, &[])
    );
    assert_ne!(
        (0..4)
            .map(|s| next_picks(space, strategy, s, &[]))
            .collect::<Vec<_>>(),
        vec![next_picks(space, strategy, 0, &[]); 4]
    );
    // A full population: the child is one mutation away from the better parent (sample =
    // population, so the best is always drawn).
    let good = vec![1, 1, 1, 1, 0];
    let bad = vec![0, 0, 0, 0, 1];
    let records = vec![
        record(0, bad.clone(), 0.2, 0.01, 100),
        record(1, good.clone(), 0.9, 0.01, 100),
    ];
    for seed in 0..20 {
        let child = next_picks(space, strategy, seed, &records);
        let diff = child.iter().zip(&good).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 1, "{child:?} from {good:?}");
    }
}

#[test]
fn pareto_fronts_and_kendall_tau() {
    let records = vec![
        record(0, vec![0], 0.80, 0.010, 300),
        record(1, vec![1], 0.85, 0.020, 200),
        record(2, vec![2], 0.70, 0.015, 400), // dominated in both
        record(3, vec![3], 0.90, 0.030, 250),
    ];
    assert_eq!(pareto_front(&records, Metric::StepTime), vec![0, 1, 3]);
    assert_eq!(pareto_front(&records, Metric::Params), vec![1, 3]);
    assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), 1.0);
    assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
    // 5 concordant, 1 discordant pair of 4 items: (5 - 1) / 6.
    let tau = kendall_tau(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]);
    assert!((tau - 4.0 / 6.0).abs() < 1e-12, "{tau}");
}
