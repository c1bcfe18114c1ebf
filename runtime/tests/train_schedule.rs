//! Progressive-learning schedules as the trainer reads them from the IR: both interpolation
//! rules through the bundled specs, epoch rescaling, and the nano spec's stages.

use std::path::Path;

use effnet_compiler::compile;
use effnet_compiler::ir::{Network, Schedule};
use effnet_runtime::train::with_epochs;

fn network(spec: &str, model: &str) -> Network {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../specs")
        .join(spec);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let compiled = compile(&text).unwrap_or_else(|d| panic!("{}: {d:?}", path.display()));
    compiled.network(Some(model)).expect("model").clone()
}

fn schedule<'a>(net: &'a Network, name: &str) -> &'a Schedule {
    net.schedules
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("schedule {name}"))
}

#[test]
fn paper_schedule_interpolates_linearly() {
    let net = network("efficientnetv2_s.effnet", "efficientnetv2_s");
    let s = schedule(&net, "paper");
    let sizes: Vec<usize> = s.stages.iter().map(|st| st.image_size).collect();
    assert_eq!(sizes, vec![128, 185, 242, 300]);
    let ra: Vec<f64> = s.stages.iter().map(|st| st.randaug).collect();
    for (a, b) in ra.iter().zip([5.0, 25.0 / 3.0, 35.0 / 3.0, 15.0]) {
        assert!((a - b).abs() < 1e-9, "{ra:?}");
    }
    let dropout: Vec<f64> = s.stages.iter().map(|st| st.dropout).collect();
    for (a, b) in dropout
        .iter()
        .zip([0.1, 0.1 + 0.2 / 3.0, 0.1 + 0.4 / 3.0, 0.3])
    {
        assert!((a - b).abs() < 1e-9, "{dropout:?}");
    }
    assert_eq!(s.epochs, 350);
    assert_eq!(s.stages[0].epochs.0, 0);
    assert_eq!(s.stages[3].epochs.1, 350);
    // Stage lookup: the last stage covers epoch 349 and anything past it.
    assert_eq!(s.stage_at(349).map(|st| st.index), Some(3));
    assert_eq!(s.stage_at(0).map(|st| st.index), Some(0));
}

#[test]
fn automl_schedule_steps_image_sizes_from_the_base() {
    let net = network("efficientnetv2_s.effnet", "efficientnetv2_s");
    let s = schedule(&net, "automl");
    let sizes: Vec<usize> = s.stages.iter().map(|st| st.image_size).collect();
    assert_eq!(sizes, vec![171, 214, 257, 300]);
    // automl: stage i covers int(i / M * 350) .. int((i + 1) / M * 350).
    let epochs: Vec<(usize, usize)> = s.stages.iter().map(|st| st.epochs).collect();
    assert_eq!(epochs, vec![(0, 87), (87, 175), (175, 262), (262, 350)]);
    // RandAugment linspace(5, 10, 4).
    let ra: Vec<f64> = s.stages.iter().map(|st| st.randaug).collect();
    for (a, b) in ra
        .iter()
        .zip([5.0, 5.0 + 5.0 / 3.0, 5.0 + 10.0 / 3.0, 10.0])
    {
        assert!((a - b).abs() < 1e-9, "{ra:?}");
    }
}

#[test]
fn rescaling_epochs_keeps_each_stage_share() {
    let net = network("efficientnetv2_s.effnet", "efficientnetv2_s");
    let s = with_epochs(schedule(&net, "automl"), 10);
    let epochs: Vec<(usize, usize)> = s.stages.iter().map(|st| st.epochs).collect();
    assert_eq!(epochs, vec![(0, 2), (2, 5), (5, 7), (7, 10)]);
    assert_eq!(s.epochs, 10);
    let sizes: Vec<usize> = s.stages.iter().map(|st| st.image_size).collect();
    assert_eq!(sizes, vec![171, 214, 257, 300], "values do not change");
}

#[test]
fn nano_spec_is_a_progressive_digit_schedule() {
    let net = network("efficientnetv2_nano.effnet", "efficientnetv2_nano");
    assert_eq!(net.num_classes, 10);
    assert_eq!(net.input_channels, 1);
    let s = schedule(&net, "default");
    assert!(s.stages.len() >= 3);
    let sizes: Vec<usize> = s.stages.iter().map(|st| st.image_size).collect();
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?} grows");
    assert_eq!(*sizes.last().expect("stages"), net.resolution);
    assert!(s.optimizer.is_some() && s.lr.is_some());
    // The blocks: fused early, MBConv with SE later.
    let kinds: Vec<&str> = net.blocks().map(|b| b.kind.timm_name()).collect();
    assert_eq!(kinds.first(), Some(&"cn"));
    assert!(kinds.contains(&"er") && kinds.contains(&"ir"));
    assert!(
        net.blocks()
            .filter(|b| b.kind.timm_name() == "ir")
            .all(|b| b.se_channels.is_some())
    );
}
