// A spec with kernel errors: the compile error is `effnet check`'s, with file:line:col, and the
// skeleton keeps the rest of the code free of follow-on errors.
#[effnet::model("../../fixtures/err/kernel.effnet")]
pub struct Bad;

fn main() {
    let _ = Bad::PARAMS;
    let _: effnet::Result<Bad> = Bad::load(effnet::nn::VarBuilder::zeros(
        effnet::candle::DType::F32,
        &effnet::candle::Device::Cpu,
    ));
}
