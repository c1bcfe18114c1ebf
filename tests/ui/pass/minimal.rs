#![deny(warnings)]

use effnet::EffNet;
use effnet::candle::{DType, Device, ModuleT, Tensor};
use effnet::nn::{VarBuilder, VarMap};

#[effnet::model("../../fixtures/ok/minimal.effnet")]
pub struct Tiny;

/// Generated structs are networks like the interpreter's.
fn logits<N: EffNet + ModuleT>(net: &N, x: &Tensor) -> effnet::candle::Result<Tensor> {
    let a = EffNet::forward_t(net, x, false)?;
    let b = ModuleT::forward_t(net, x, false)?;
    assert_eq!(a.dims(), b.dims());
    Ok(a)
}

fn main() -> effnet::Result<()> {
    let vm = VarMap::new();
    let net = Tiny::load(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let (c, h, w) = Tiny::INPUT;
    let x = Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu)?;
    assert_eq!(net.forward(&x)?.dims(), &[1, Tiny::NUM_CLASSES]);
    assert_eq!(logits(&net, &x)?.dims(), &[1, Tiny::NUM_CLASSES]);
    assert_eq!(net.forward_t(&x, true)?.dims(), &[1, Tiny::NUM_CLASSES]);
    let f: TinyFeatures = net.forward_features(&x)?;
    assert_eq!(f.stage0.dims()[1], Tiny::STAGE_CHANNELS[0]);
    assert_eq!(net.stage0.blocks.len(), TinyStage0::BLOCKS);
    Ok(())
}
