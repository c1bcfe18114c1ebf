#![deny(warnings)]

#[effnet::model("../../fixtures/ok/derived.effnet", name = "base")]
pub struct Base;

#[effnet::model("../../fixtures/ok/derived.effnet", name = "wider")]
pub struct Wider;

#[effnet::model("../../fixtures/ok/derived.effnet", name = "deeper_late")]
pub struct DeeperLate;

#[effnet::model("../../fixtures/ok/derived.effnet", name = "widest")]
pub(crate) struct Widest;

fn main() {
    assert!(Wider::PARAMS > Base::PARAMS);
    assert!(Widest::PARAMS > Base::PARAMS);
    assert_eq!(DeeperLate::INPUT, (3, 128, 128));
    assert_eq!(Base::NUM_CLASSES, 5);
    let _load: fn(effnet::nn::VarBuilder<'static>) -> effnet::Result<Widest> = Widest::load;
}
