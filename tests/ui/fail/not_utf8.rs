// A spec saved as Latin-1: the compile error points at the line and column of the first byte
// that is not UTF-8.
#[effnet::model("../../fixtures/encoding/latin1.effnet")]
pub struct Latin1;

fn main() {
    let _ = Latin1::SPEC;
}
