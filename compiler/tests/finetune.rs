//! Fine-tuning in the language: a model derived without `scaled` is its base with a few items
//! changed, and a schedule's `freeze` / `lr_scale` lower to parts, epochs and factors that say
//! which tensors are frozen in which epoch and at what rate each trains; `effnet train
//! --freeze` / `--lr-scale` take the same text, checked against the model.

use effnet_compiler::check::{freeze_flag, lr_scale_flag};
use effnet_compiler::compile;
use effnet_compiler::ir::{Network, Part, Place};

const FIXTURE: &str = include_str!("../../tests/fixtures/ok/finetune.effnet");

fn networks() -> Vec<Network> {
    compile(FIXTURE)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .networks
}

fn net(name: &str) -> Network {
    networks()
        .into_iter()
        .find(|n| n.name == name)
        .expect("model")
}

#[test]
fn a_derivation_without_scaled_keeps_the_base_and_its_scaling() {
    let (wide, flowers) = (net("base_wide"), net("flowers"));
    assert_eq!(flowers.num_classes, 5);
    assert_eq!(flowers.stages, wide.stages, "the scaled stages, unchanged");
    assert_eq!(flowers.stem, wide.stem);
    assert_eq!(flowers.head, wide.head);
    let features = wide.num_features();
    assert_eq!(
        wide.param_count() - flowers.param_count(),
        (1000 - 5) * (features + 1),
        "only the classifier differs"
    );
}

#[test]
fn freeze_and_lr_scale_lower_to_parts_epochs_and_factors() {
    let flowers = net("flowers");
    let s = flowers
        .schedules
        .iter()
        .find(|s| s.name == "finetune")
        .expect("schedule");
    assert_eq!(s.freeze.len(), 2);
    assert_eq!(
        s.freeze[0].parts,
        [Part::Stem, Part::Stages { from: 0, to: 2 }]
    );
    assert_eq!(s.freeze[0].epochs, Some(2));
    assert_eq!(s.freeze[1].parts, [Part::Stages { from: 3, to: 4 }]);
    assert_eq!(s.freeze[0].to_string(), "stem, stages 0..2 for 2 epochs");
    assert_eq!(s.freeze[1].to_string(), "stages 3 for 1 epoch");

    // Which places are frozen in which epoch.
    for (place, epochs_frozen) in [
        (Place::Stem, 2),
        (Place::Stage(0), 2),
        (Place::Stage(1), 2),
        (Place::Stage(2), 0),
        (Place::Stage(3), 1),
        (Place::Head, 0),
        (Place::Classifier, 0),
    ] {
        for epoch in 0..4 {
            assert_eq!(
                s.frozen(place, epoch),
                epoch < epochs_frozen,
                "{place:?} in epoch {epoch}"
            );
        }
    }
    // The later `lr_scale head 0.5` overrides `lr_scale backbone 0.1` for the head.
    assert_eq!(s.lr_scale_at(Place::Head), 0.5);
    assert_eq!(s.lr_scale_at(Place::Stage(2)), 0.1);
    assert_eq!(s.lr_scale_at(Place::Stem), 0.1);
    assert_eq!(s.lr_scale_at(Place::Classifier), 1.0);

    // The linear probe: everything but the classifier, throughout.
    let probe = flowers
        .schedules
        .iter()
        .find(|s| s.name == "probe")
        .expect("probe");
    assert!(probe.frozen(Place::Head, 1000) && !probe.frozen(Place::Classifier, 0));
}

#[test]
fn every_tensor_has_its_place() {
    let flowers = net("flowers");
    let places = flowers.tensor_places();
    let names: Vec<String> = flowers.tensors().into_iter().map(|t| t.name).collect();
    let placed: Vec<String> = places.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(placed, names, "the same tensors, in state_dict order");
    let place = |name: &str| {
        places
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .expect(name)
    };
    assert_eq!(place("conv_stem.weight"), Place::Stem);
    assert_eq!(place("bn1.running_var"), Place::Stem);
    assert_eq!(place("blocks.0.0.conv.weight"), Place::Stage(0));
    assert_eq!(place("blocks.3.1.se.conv_reduce.bias"), Place::Stage(3));
    assert_eq!(place("bn2.weight"), Place::Head);
    assert_eq!(place("classifier.bias"), Place::Classifier);
    assert!(Part::Backbone.covers(Place::Head) && !Part::Backbone.covers(Place::Classifier));
}

#[test]
fn the_command_line_flags_take_the_statements_text() {
    let flowers = net("flowers");
    let f = freeze_flag("stem, stages 0..2 for 3 epochs", &flowers).expect("freeze");
    assert_eq!(f.parts, [Part::Stem, Part::Stages { from: 0, to: 2 }]);
    assert_eq!(f.epochs, Some(3));
    let f = freeze_flag("backbone", &flowers).expect("freeze");
    assert_eq!(
        (f.parts.as_slice(), f.epochs),
        (&[Part::Backbone][..], None)
    );
    let l = lr_scale_flag("stages 1, head 0.25", &flowers).expect("lr_scale");
    assert_eq!(l.parts, [Part::Stages { from: 1, to: 2 }, Part::Head]);
    assert_eq!(l.scale, 0.25);

    // Errors point into the flag's text.
    let text = "stem, stages 2..7";
    let d = freeze_flag(text, &flowers).expect_err("out of range");
    assert_eq!(d[0].code, "effnet::part");
    assert!(
        d[0].message.contains("the model has 4 stages"),
        "{}",
        d[0].message
    );
    let sp = d[0].primary.span;
    assert_eq!(&text[sp.start..sp.end], "2..7");
    let d = lr_scale_flag("backbone 0", &flowers).expect_err("zero");
    assert!(d[0].message.contains("above 0"), "{}", d[0].message);
    let d = lr_scale_flag("backbone", &flowers).expect_err("no factor");
    assert_eq!(d[0].code, "effnet::syntax");
    let d = freeze_flag("stem for 2 epochs please", &flowers).expect_err("trailing text");
    assert_eq!(d[0].code, "effnet::syntax");
    assert!(
        d[0].message.contains("the end of the text"),
        "{}",
        d[0].message
    );
}
