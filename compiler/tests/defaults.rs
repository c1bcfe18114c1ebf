//! The training policy in `effnet_compiler::defaults`: what the checker, the trainer and the
//! command line fall back on, and how a run picks its schedule.

use effnet_compiler::compile;
use effnet_compiler::defaults::{self, OPTIMIZER, SCHEDULE_NAME};
use effnet_compiler::ir::{Interpolation, LrDecay, Network, Optimizer};

const MODEL: &str = "model net {
    input 3 x 32 train 24
    classes 10
    dropout 0.2
    stem conv k3 s2 -> 16
    stage mbconv k3 e4 s2 -> 24 x1
}
";

fn network(schedules: &str) -> Network {
    let compiled = compile(&format!("{MODEL}{schedules}")).expect("the spec compiles");
    compiled.network(None).expect("one model").clone()
}

#[test]
fn optimizers_by_name_round_trip() {
    for name in Optimizer::NAMES {
        let o = Optimizer::named(name).expect("a known optimizer");
        assert_eq!(o.name(), name);
    }
    assert_eq!(Optimizer::named("adam"), None);
    assert_eq!(Optimizer::named("rmsprop"), Some(OPTIMIZER));
}

#[test]
fn the_checker_fills_optimizer_arguments_from_the_defaults() {
    // Every argument left out comes from `Optimizer::named`; a given one replaces its default.
    let net = network(
        "schedule a for net { epochs 2 image 24 optimizer adamw }
         schedule b for net { epochs 2 image 24 optimizer sgd(momentum = 0.5) }
         schedule c for net { epochs 2 image 24 lr 0.1 exponential }",
    );
    let by_name = |n: &str| net.schedules.iter().find(|s| s.name == n).unwrap();
    assert_eq!(by_name("a").optimizer, Optimizer::named("adamw"));
    let Some(Optimizer::Sgd {
        momentum,
        nesterov,
        weight_decay,
    }) = by_name("b").optimizer
    else {
        panic!("schedule b trains with SGD");
    };
    let Some(Optimizer::Sgd {
        nesterov: nesterov_default,
        weight_decay: weight_decay_default,
        ..
    }) = Optimizer::named("sgd")
    else {
        unreachable!()
    };
    assert_eq!(
        (momentum, nesterov, weight_decay),
        (0.5, nesterov_default, weight_decay_default)
    );
    assert_eq!(
        by_name("c").lr.as_ref().map(|l| l.decay),
        Some(LrDecay::Exponential {
            rate: defaults::EXPONENTIAL_RATE,
            every: defaults::EXPONENTIAL_EVERY,
        })
    );
}

#[test]
fn a_schedule_without_optimizer_or_lr_trains_with_the_defaults() {
    let net = network("schedule net { epochs 2 image 24 }");
    let s = &net.schedules[0];
    assert_eq!(s.name, SCHEDULE_NAME);
    assert_eq!((&s.optimizer, &s.lr), (&None, &None));
    assert_eq!(s.optimizer_or_default(), OPTIMIZER);
    assert_eq!(s.lr_or_default(), OPTIMIZER.default_lr());

    // The default learning rate follows the schedule's optimizer.
    let net = network("schedule net { epochs 2 image 24 optimizer sgd }");
    let s = &net.schedules[0];
    assert_eq!(s.lr_or_default().peak, 0.1);
    assert_eq!(s.lr_or_default().decay, LrDecay::Cosine);
    // A schedule's own learning rate wins.
    let net = network("schedule net { epochs 2 image 24 lr 0.5 warmup 1 constant }");
    assert_eq!(net.schedules[0].lr_or_default().peak, 0.5);
}

#[test]
fn a_model_without_schedules_trains_one_fixed_stage_given_epochs() {
    let net = network("");
    let err = net.training_schedule(None, None).unwrap_err();
    assert!(
        err.contains("has no schedule") && err.contains("--epochs"),
        "{err}"
    );
    let s = net
        .training_schedule(None, Some(3))
        .expect("a fixed schedule");
    assert_eq!((s.name.as_str(), s.epochs), ("fixed", 3));
    assert_eq!(s.interpolation, Interpolation::Table);
    let [stage] = s.stages.as_slice() else {
        panic!("one stage, not {:?}", s.stages);
    };
    // The training resolution and the model's dropout, no augmentation.
    assert_eq!((stage.epochs, stage.image_size), ((0, 3), 24));
    assert_eq!((stage.randaug, stage.mixup, stage.dropout), (0.0, 0.0, 0.2));
    let err = net.training_schedule(Some("long"), None).unwrap_err();
    assert!(err.contains("no schedule `long` (it has: none)"), "{err}");
}

#[test]
fn training_picks_the_named_the_only_or_the_default_schedule() {
    let one = network("schedule short for net { epochs 2 image 24 }");
    assert_eq!(one.training_schedule(None, None).unwrap().name, "short");

    let two = network(
        "schedule short for net { epochs 2 image 24 }
         schedule long for net { epochs 9 image 24 }",
    );
    let err = two.training_schedule(None, None).unwrap_err();
    assert!(
        err.contains("several schedules (short, long)") && err.contains("--schedule"),
        "{err}"
    );
    assert_eq!(two.training_schedule(Some("long"), None).unwrap().epochs, 9);
    let err = two.training_schedule(Some("mid"), None).unwrap_err();
    assert!(
        err.contains("no schedule `mid` (it has: short, long)"),
        "{err}"
    );

    let with_default = network(
        "schedule short for net { epochs 2 image 24 }
         schedule net { epochs 5 image 24 }",
    );
    let s = with_default.training_schedule(None, None).unwrap();
    assert_eq!((s.name.as_str(), s.epochs), (SCHEDULE_NAME, 5));
}

#[test]
fn last_stage_only_keeps_the_last_stage_for_every_epoch() {
    let net = network("schedule net { epochs 6 stages 3 image 16 -> 24 randaug 0 -> 10 }");
    let s = net.schedules[0].last_stage_only();
    assert_eq!(s.name, "default-fixed");
    let [stage] = s.stages.as_slice() else {
        panic!("one stage, not {:?}", s.stages);
    };
    assert_eq!((stage.index, stage.epochs), (0, (0, 6)));
    assert_eq!((stage.image_size, stage.randaug), (24, 10.0));
}
