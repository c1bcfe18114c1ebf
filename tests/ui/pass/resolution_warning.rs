#![deny(warnings)]

// 100 is not divisible by the total stride, but it is the spec's own resolution: no warning.
#[effnet::model("../../fixtures/ok/resolution_warning.effnet")]
pub struct OddRes;

fn main() {
    assert_eq!(OddRes::INPUT, (3, 100, 100));
    assert_eq!(OddRes::TRAIN_RESOLUTION, Some(67));
}
