// A model name the spec does not define.
#[effnet::model("../../fixtures/ok/derived.effnet", name = "narrower")]
pub struct Narrower;

fn main() {
    let _ = Narrower::NUM_CLASSES;
}
