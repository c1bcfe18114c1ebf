// A spec that does not exist: the compile error names the path. (An absolute path, so that
// the message does not depend on where trybuild builds; relative paths are looked up under
// the crate's Cargo.toml, then beside the source file.)
#[effnet::model("/nonexistent/effnet/no_such_spec.effnet")]
pub struct Missing;

fn main() {
    let _ = Missing::SPEC;
}
