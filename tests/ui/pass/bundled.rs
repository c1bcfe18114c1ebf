#![deny(warnings)]
#![warn(missing_docs)]
//! The bundled B0 spec, and a model picked by name from a file with several.

/// EfficientNetV2-B0.
#[effnet::model("../../../specs/tf_efficientnetv2_b0.effnet")]
pub struct B0;

#[effnet::model(
    "../../../specs/tf_efficientnetv2_b.effnet",
    name = "tf_efficientnetv2_b3"
)]
pub struct B3;

fn main() {
    assert_eq!(B0::PARAMS, 7_139_704);
    assert_eq!(B0::INPUT, (3, 224, 224));
    assert!(B3::PARAMS > B0::PARAMS);
}
