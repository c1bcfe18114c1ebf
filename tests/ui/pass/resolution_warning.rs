#![deny(warnings)]

// The spec has a warning (100 is not divisible by the total stride): it still expands.
#[effnet::model("../../fixtures/ok/resolution_warning.effnet")]
pub struct OddRes;

fn main() {
    assert_eq!(OddRes::INPUT, (3, 100, 100));
    assert_eq!(OddRes::TRAIN_RESOLUTION, Some(67));
}
