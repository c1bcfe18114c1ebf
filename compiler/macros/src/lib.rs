//! `#[effnet::model("path/to/spec.effnet")]` (use it through the `effnet` crate). Everything
//! happens in `effnet_compiler::codegen`; this crate only forwards the tokens.

#![forbid(unsafe_code)]

use proc_macro::TokenStream;

/// Generate a typed network from a `.effnet` spec: see `effnet_compiler::codegen`.
///
/// ```ignore
/// #[effnet::model("specs/tf_efficientnetv2_b0.effnet")]
/// pub struct B0;
///
/// #[effnet::model("specs/tf_efficientnetv2_b.effnet", name = "tf_efficientnetv2_b2")]
/// pub struct B2;
/// ```
///
/// The path is relative to the crate's `CARGO_MANIFEST_DIR` (or, when no such file exists
/// there, to the directory of the file holding the attribute).
#[proc_macro_attribute]
pub fn model(attr: TokenStream, item: TokenStream) -> TokenStream {
    let ctx = effnet_compiler::codegen::Context {
        manifest_dir: std::env::var_os("CARGO_MANIFEST_DIR").map(Into::into),
        call_site_file: proc_macro::Span::call_site().local_file(),
    };
    effnet_compiler::codegen::expand_attribute(attr.into(), item.into(), &ctx).into()
}
