#![deny(warnings)]

use effnet::EffNet;
use effnet::candle::{DType, Device};
use effnet::nn::{VarBuilder, VarMap};

/// Every block kind.
#[effnet::model("../../fixtures/ok/all_blocks.effnet")]
pub struct AllBlocks;

fn main() -> effnet::Result<()> {
    let vm = VarMap::new();
    let mut net = AllBlocks::load(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    net.seed(3);
    EffNet::set_drop_path_scale(&mut net, 0.5);
    assert_eq!(net.drop_path_scale, 0.5);
    assert_eq!(net.named_tensors().len(), net.ir().tensors().len());
    assert_eq!(AllBlocks::STAGE_BLOCKS, [2, 1, 2, 2, 1, 4]);
    assert_eq!(net.stage5.blocks.len(), AllBlocksStage5::BLOCKS);
    assert!(AllBlocks::PARAMS > 0 && AllBlocks::MACS > 0);
    Ok(())
}
