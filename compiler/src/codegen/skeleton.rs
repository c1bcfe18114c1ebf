//! What a spec with errors expands to, next to its `compile_error!`: a struct with the public API
//! of a generated one (constants, `load`, the forward methods, the trait impls), which cannot
//! be built, so code using it produces no follow-on errors.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{ItemStruct, LitStr};

pub(super) fn skeleton(item: &ItemStruct, text: &str) -> TokenStream {
    let attrs = &item.attrs;
    let vis = &item.vis;
    let name = &item.ident;
    let features = format_ident!("{}Features", name);
    let p = quote!(::effnet::__private);
    let spec = LitStr::new(text, item.ident.span());
    let name_str = name.to_string();
    quote! {
        #(#attrs)*
        /// The spec did not compile: see the compile error.
        #[allow(dead_code)]
        #vis struct #name {
            never: #p::Infallible,
        }

        /// Each stage's output (the spec did not compile).
        #[derive(#p::Debug, #p::Clone)]
        #[allow(dead_code)]
        #vis struct #features {}

        #[allow(dead_code)]
        impl #features {
            /// The stage outputs in order.
            pub fn into_vec(self) -> #p::Vec<#p::Tensor> {
                #p::Vec::new()
            }
        }

        #[allow(dead_code)]
        impl #name {
            /// The spec's text.
            pub const SPEC: &'static str = #spec;
            /// The model's name.
            pub const NAME: &'static str = #name_str;
            /// Trainable parameters.
            pub const PARAMS: usize = 0;
            /// Multiply-adds at the evaluation resolution.
            pub const MACS: u64 = 0;
            /// `(channels, height, width)` of the input.
            pub const INPUT: (usize, usize, usize) = (0, 0, 0);
            /// The training resolution.
            pub const TRAIN_RESOLUTION: #p::Option<usize> = #p::None;
            /// Classifier outputs.
            pub const NUM_CLASSES: usize = 0;
            /// Channels the classifier sees.
            pub const NUM_FEATURES: usize = 0;
            /// Every schedule of the model.
            pub const SCHEDULES: &'static [#p::ScheduleConst] = &[];

            /// Fails: the spec did not compile.
            pub fn spec_ir() -> #p::EffnetResult<#p::ir::Network> {
                #p::spec_has_errors(#name_str)
            }
            /// Fails: the spec did not compile.
            pub fn load(_vb: #p::VarBuilder<'_>) -> #p::EffnetResult<Self> {
                #p::spec_has_errors(#name_str)
            }
            /// The logits in evaluation mode.
            pub fn forward(&self, _x: &#p::Tensor) -> #p::EffnetResult<#p::Tensor> {
                match self.never {}
            }
            /// The logits.
            pub fn forward_t(&self, _x: &#p::Tensor, _train: bool) -> #p::EffnetResult<#p::Tensor> {
                match self.never {}
            }
            /// Each stage's output in evaluation mode.
            pub fn forward_features(&self, _x: &#p::Tensor) -> #p::EffnetResult<#features> {
                match self.never {}
            }
            /// Each stage's output.
            pub fn forward_features_t(
                &self,
                _x: &#p::Tensor,
                _train: bool,
            ) -> #p::EffnetResult<#features> {
                match self.never {}
            }
            /// The feature-pyramid levels in evaluation mode.
            pub fn forward_pyramid<const N: usize>(
                &self,
                _x: &#p::Tensor,
                _levels: [usize; N],
            ) -> #p::EffnetResult<[#p::Tensor; N]> {
                match self.never {}
            }
            /// The feature-pyramid levels.
            pub fn forward_pyramid_t<const N: usize>(
                &self,
                _x: &#p::Tensor,
                _levels: [usize; N],
                _train: bool,
            ) -> #p::EffnetResult<[#p::Tensor; N]> {
                match self.never {}
            }
            /// Every tensor the network holds.
            pub fn named_tensors(&self) -> #p::Vec<#p::NamedTensor> {
                match self.never {}
            }
            /// The IR the network was built from.
            pub fn ir(&self) -> &#p::ir::Network {
                match self.never {}
            }
            /// Every stage's blocks (none: the spec did not compile).
            pub fn stages(&self) -> [&[#p::Block]; 0] {
                match self.never {}
            }
            /// The network's parts, borrowed.
            pub fn parts<'a>(&'a self, _stages: &'a [&'a [#p::Block]]) -> #p::NetworkParts<'a> {
                match self.never {}
            }
            /// Reseed the generator behind stochastic depth and dropout.
            pub fn seed(&mut self, _seed: u64) {
                match self.never {}
            }
        }

        impl #p::EffNet for #name {
            fn ir(&self) -> &#p::ir::Network {
                match self.never {}
            }
            fn forward_t(&self, _x: &#p::Tensor, _train: bool) -> #p::CandleResult<#p::Tensor> {
                match self.never {}
            }
            fn forward_features_t(
                &self,
                _x: &#p::Tensor,
                _train: bool,
            ) -> #p::CandleResult<#p::Vec<#p::Tensor>> {
                match self.never {}
            }
            fn forward_pyramid_t(
                &self,
                _x: &#p::Tensor,
                _levels: &[usize],
                _train: bool,
            ) -> #p::CandleResult<#p::Vec<#p::Tensor>> {
                match self.never {}
            }
            fn named_tensors(&self) -> #p::Vec<#p::NamedTensor> {
                match self.never {}
            }
            fn dropout(&self) -> f64 {
                match self.never {}
            }
            fn set_dropout(&mut self, _rate: f64) {
                match self.never {}
            }
            fn drop_path_scale(&self) -> f64 {
                match self.never {}
            }
            fn set_drop_path_scale(&mut self, _scale: f64) {
                match self.never {}
            }
            fn seed(&mut self, _seed: u64) {
                match self.never {}
            }
            fn rng_state(&self) -> #p::Option<#p::ChaCha8Rng> {
                match self.never {}
            }
            fn set_rng_state(&mut self, _rng: #p::ChaCha8Rng) {
                match self.never {}
            }
        }

        impl #p::ModuleT for #name {
            fn forward_t(&self, _x: &#p::Tensor, _train: bool) -> #p::CandleResult<#p::Tensor> {
                match self.never {}
            }
        }
    }
}
