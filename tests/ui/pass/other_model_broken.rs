#![deny(warnings)]

use effnet::candle::{DType, Device, Tensor};
use effnet::nn::{VarBuilder, VarMap};

// The file's other model has an error: this one still expands, and its `load` (which compiles
// the embedded spec again) works.
#[effnet::model("../../fixtures/err/one_model_broken.effnet", name = "fine")]
pub struct Fine;

fn main() -> effnet::Result<()> {
    let vm = VarMap::new();
    let net = Fine::load(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let (c, h, w) = Fine::INPUT;
    let x = Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu)?;
    assert_eq!(net.forward(&x)?.dims(), &[1, Fine::NUM_CLASSES]);
    Ok(())
}
