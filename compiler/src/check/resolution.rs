//! The resolution a user picks on the command line (`--resolution` of `summary`, `bench`,
//! `eval`). A spec's own `input` resolutions are its model's documented configuration (timm
//! evaluates EfficientNetV2-B1 at 240 although the network downsamples by 32), so they are not
//! warned about; a resolution picked by hand that the strides do not divide may be a slip.

use crate::ir::Network;

/// A warning when `resolution`, chosen for `net`, is not divisible by its total stride (each
/// stride-2 layer then rounds its feature map), unless it is one of the model's own
/// resolutions. `None` when there is nothing to say.
pub fn chosen_resolution(net: &Network, resolution: usize) -> Option<String> {
    let stride = net.total_stride();
    if stride == 0
        || resolution.is_multiple_of(stride)
        || resolution == net.resolution
        || net.train_resolution == Some(resolution)
    {
        return None;
    }
    let below = resolution / stride * stride;
    let evenly = if below == 0 {
        format!("{stride} divides evenly")
    } else {
        format!("{below} or {} divide evenly", below + stride)
    };
    Some(format!(
        "resolution {resolution} is not divisible by the total stride {stride} of `{}`: feature \
         maps are rounded at each stride ({evenly})",
        net.name
    ))
}
