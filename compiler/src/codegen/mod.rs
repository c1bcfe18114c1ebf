//! Code generation: a `.effnet` model as a typed Rust struct, for `#[effnet::model]`.
//!
//! ```ignore
//! #[effnet::model("specs/tf_efficientnetv2_b0.effnet")]
//! pub struct B0;
//! ```
//!
//! expands to `B0` with a field per stage (`stage0: B0Stage0`, ... each holding its blocks as a
//! `[Block; N]`), constants (`SPEC`, `PARAMS`, `MACS`, `INPUT`, `NUM_CLASSES`, a
//! `SCHEDULE_*` per schedule and `SCHEDULES`), `load(vb)` asking for timm's tensor names,
//! `forward`, `forward_t`, `forward_features` (a `B0Features` struct with a tensor per stage),
//! `forward_pyramid` (the feature-pyramid levels asked for, as an array; `FEATURE_STRIDES` and
//! `FEATURE_CHANNELS` describe them),
//! and impls of candle's `ModuleT` and the runtime's `EffNet`. The blocks are the runtime's own
//! `Block`s, so a generated struct computes exactly what the interpreter does.
//!
//! The proc-macro crate (`effnet-macros`) only forwards to [`expand_attribute`]; everything here
//! works on `proc_macro2` tokens, so it is unit-testable and `effnet expand` prints the same code.
//!
//! A spec whose model has errors expands to `compile_error!` with the text `effnet check` prints
//! for that model (errors in other models of the file do not stop it), next to a skeleton struct
//! with the same API (its `load` fails), so no follow-on errors appear.

mod emit;
mod skeleton;

use std::path::{Path, PathBuf};

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::{Fields, Ident, ItemStruct, LitStr, Token};

use crate::{Refusal, SourceFile, compile, compile_each, render};

/// Where the macro runs: the user crate's manifest directory and the file holding the attribute.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub manifest_dir: Option<PathBuf>,
    pub call_site_file: Option<PathBuf>,
}

/// The attribute's arguments: `"path/to/spec.effnet"` and an optional `name = "model"`.
#[derive(Clone)]
pub struct ModelArgs {
    pub path: LitStr,
    pub name: Option<LitStr>,
}

impl Parse for ModelArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(input.error(
                "expected the spec path: #[effnet::model(\"specs/model.effnet\")] or \
                 #[effnet::model(\"specs/zoo.effnet\", name = \"model\")]",
            ));
        }
        let path: LitStr = input.parse()?;
        let mut name = None;
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let key: Ident = input.parse()?;
            if key != "name" {
                return Err(syn::Error::new(
                    key.span(),
                    format!("unknown argument `{key}`; the only one is `name = \"model\"`"),
                ));
            }
            if name.is_some() {
                return Err(syn::Error::new(key.span(), "`name` given twice"));
            }
            input.parse::<Token![=]>()?;
            name = Some(input.parse::<LitStr>()?);
        }
        Ok(ModelArgs { path, name })
    }
}

/// One generation request: the struct the user wrote and the spec it names.
#[derive(Clone)]
pub struct Request<'a> {
    /// The user's unit struct (its attributes and visibility are kept).
    pub item: &'a ItemStruct,
    /// The spec file's path for `include_str!` (absolute in the macro).
    pub include_path: &'a str,
    /// The spec as the user named it, for diagnostics.
    pub display_name: &'a str,
    /// The spec's text.
    pub text: &'a str,
    /// The model to take from a file with several.
    pub model: Option<&'a str>,
    /// Where errors point (the path literal).
    pub span: Span,
}

/// The attribute's expansion. Never fails: errors become `compile_error!` next to a skeleton.
pub fn expand_attribute(attr: TokenStream, item: TokenStream, ctx: &Context) -> TokenStream {
    let item: ItemStruct = match syn::parse2(item) {
        Ok(i) => i,
        Err(e) => {
            let msg =
                format!("#[effnet::model] goes on a unit struct such as `pub struct B0;`: {e}");
            return syn::Error::new(e.span(), msg).to_compile_error();
        }
    };
    if let Err(e) = check_item(&item) {
        return with_skeleton(&item, "", e.to_compile_error());
    }
    let args: ModelArgs = match syn::parse2(attr) {
        Ok(a) => a,
        Err(e) => return with_skeleton(&item, "", e.to_compile_error()),
    };
    let given = args.path.value();
    let span = args.path.span();
    let path = match resolve(&given, ctx) {
        Ok(p) => p,
        Err(msg) => return with_skeleton(&item, "", error_at(span, &msg)),
    };
    let text = match std::fs::read(&path) {
        Ok(bytes) => match SourceFile::from_bytes(given.as_str(), bytes) {
            Ok(file) => file.text,
            Err(not_utf8) => {
                let msg = render(&not_utf8.file, &[not_utf8.diagnostic], false);
                return with_skeleton(&item, "", error_at(span, msg.trim_end()));
            }
        },
        Err(e) => {
            let msg = format!("cannot read spec `{given}` (`{}`): {e}", path.display());
            return with_skeleton(&item, "", error_at(span, &msg));
        }
    };
    let include_path = path.display().to_string();
    let model = args.name.as_ref().map(LitStr::value);
    generate(&Request {
        item: &item,
        include_path: &include_path,
        display_name: &given,
        text: &text,
        model: model.as_deref(),
        span,
    })
}

/// The code for `req`: the typed struct, or `compile_error!` and a skeleton.
pub fn generate(req: &Request) -> TokenStream {
    if let Err(e) = check_item(req.item) {
        return with_skeleton(req.item, req.text, e.to_compile_error());
    }
    // Only what concerns the chosen model: errors in other models of the file do not stop it.
    let compilation = compile_each(req.text);
    match compilation.choose(req.model) {
        Ok(chosen) => emit::network(req, chosen.network),
        Err(refusal) => {
            let msg = refused(&refusal, req.text, req.display_name);
            let err = error_at(req.span, &msg);
            with_skeleton(req.item, req.text, emit::with_include(req, err))
        }
    }
}

/// A refusal as `effnet check` shows it: the model's diagnostics, or a line naming the models.
fn refused(refusal: &Refusal, text: &str, display_name: &str) -> String {
    if refusal.diagnostics().is_empty() {
        refusal.message(display_name, "with `name = \"...\"`")
    } else {
        let file = SourceFile::new(display_name, text);
        render(&file, refusal.diagnostics(), false)
            .trim_end()
            .to_string()
    }
}

/// Parse `tokens` as a file and format them with prettyplease.
pub fn pretty(tokens: TokenStream) -> Result<String, String> {
    let file: syn::File = syn::parse2(tokens).map_err(|e| format!("generated code: {e}"))?;
    Ok(prettyplease::unparse(&file))
}

/// What `effnet expand` prints: the expansion of
/// `#[effnet::model("<path>", name = "<model>")] pub struct <Camel>;`, formatted.
/// `include_path` goes into `include_str!`; `display_name` into diagnostics.
pub fn expand_source(
    text: &str,
    include_path: &str,
    display_name: &str,
    model: Option<&str>,
) -> Result<String, String> {
    let compilation = compile_each(text);
    let net = compilation
        .choose(model)
        .map_err(|r| refused(&r, text, display_name))?
        .network;
    let item = unit_struct(&struct_name(&net.name))?;
    let tokens = generate(&Request {
        item: &item,
        include_path,
        display_name,
        text,
        model: Some(&net.name),
        span: Span::call_site(),
    });
    pretty(tokens)
}

/// Every model of a file expanded (formatted), each as its own struct: what the snapshots hold.
pub fn expand_all(text: &str, include_path: &str, display_name: &str) -> Result<String, String> {
    let compiled = compile(text).map_err(|d| {
        render(&SourceFile::new(display_name, text), &d, false)
            .trim_end()
            .to_string()
    })?;
    let mut tokens = TokenStream::new();
    for net in &compiled.networks {
        let item = unit_struct(&struct_name(&net.name))?;
        tokens.extend(generate(&Request {
            item: &item,
            include_path,
            display_name,
            text,
            model: Some(&net.name),
            span: Span::call_site(),
        }));
    }
    pretty(tokens)
}

/// `tf_efficientnetv2_b0` -> `TfEfficientnetv2B0`.
pub fn struct_name(model: &str) -> String {
    let mut out = String::new();
    for part in model.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "Model");
    }
    out
}

fn unit_struct(name: &str) -> Result<ItemStruct, String> {
    let ident: Ident =
        syn::parse_str(name).map_err(|e| format!("`{name}` is not a struct name: {e}"))?;
    syn::parse2(quote!(pub struct #ident;)).map_err(|e| e.to_string())
}

fn check_item(item: &ItemStruct) -> syn::Result<()> {
    if !matches!(item.fields, Fields::Unit) {
        return Err(syn::Error::new(
            item.ident.span(),
            "#[effnet::model] generates the fields: write a unit struct such as `pub struct B0;`",
        ));
    }
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            item.ident.span(),
            "#[effnet::model] structs cannot be generic",
        ));
    }
    Ok(())
}

/// The spec file: relative paths are looked up under the manifest directory, then beside the
/// file holding the attribute.
fn resolve(given: &str, ctx: &Context) -> Result<PathBuf, String> {
    let path = Path::new(given);
    let mut tried = Vec::new();
    if path.is_absolute() {
        tried.push(path.to_path_buf());
    } else {
        if let Some(dir) = &ctx.manifest_dir {
            tried.push(dir.join(path));
        }
        if let Some(dir) = ctx.call_site_file.as_deref().and_then(Path::parent) {
            let dir = if dir.is_relative() {
                ctx.manifest_dir
                    .as_deref()
                    .map(|m| m.join(dir))
                    .unwrap_or_else(|| dir.to_path_buf())
            } else {
                dir.to_path_buf()
            };
            tried.push(dir.join(path));
        }
        if tried.is_empty() {
            tried.push(path.to_path_buf());
        }
    }
    for p in &tried {
        if p.is_file() {
            return Ok(p.canonicalize().unwrap_or_else(|_| p.clone()));
        }
    }
    let places = tried
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect::<Vec<_>>()
        .join(" or ");
    let note = if path.is_absolute() {
        ""
    } else {
        " (relative paths start at the crate's Cargo.toml)"
    };
    Err(format!(
        "cannot find spec `{given}`: no file at {places}{note}"
    ))
}

fn error_at(span: Span, msg: &str) -> TokenStream {
    syn::Error::new(span, msg).to_compile_error()
}

fn with_skeleton(item: &ItemStruct, text: &str, error: TokenStream) -> TokenStream {
    let skeleton = skeleton::skeleton(item, text);
    quote! {
        #error
        #skeleton
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse() {
        let a: ModelArgs = syn::parse2(quote!("a.effnet", name = "m",)).expect("parses");
        assert_eq!(a.path.value(), "a.effnet");
        assert_eq!(a.name.map(|n| n.value()).as_deref(), Some("m"));
        assert!(syn::parse2::<ModelArgs>(quote!("a.effnet", model = "m")).is_err());
        assert!(syn::parse2::<ModelArgs>(quote!()).is_err());
    }

    #[test]
    fn struct_names() {
        assert_eq!(struct_name("tf_efficientnetv2_b0"), "TfEfficientnetv2B0");
        assert_eq!(struct_name("net"), "Net");
        assert_eq!(struct_name("3d"), "Model3d");
    }

    #[test]
    fn missing_file_names_the_path() {
        let ctx = Context {
            manifest_dir: Some(PathBuf::from("/nowhere")),
            call_site_file: None,
        };
        let out = expand_attribute(
            quote!("specs/missing.effnet"),
            quote!(
                pub struct M;
            ),
            &ctx,
        )
        .to_string();
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("/nowhere/specs/missing.effnet"), "{out}");
        assert!(out.contains("pub struct M"), "{out}");
    }

    #[test]
    fn spec_errors_carry_the_location() {
        let item: ItemStruct = syn::parse2(quote!(
            pub struct M;
        ))
        .expect("parses");
        let text = "model m {\n    classes 10\n    stem conv k4 s2 -> 16\n    stage mbconv k3 e4 s2 -> 24 x1\n}\n";
        let out = generate(&Request {
            item: &item,
            include_path: "/x/bad.effnet",
            display_name: "bad.effnet",
            text,
            model: None,
            span: Span::call_site(),
        })
        .to_string();
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("bad.effnet:3:"), "{out}");
        assert!(pretty(out.parse().expect("tokens")).is_ok());
    }

    #[test]
    fn several_models_need_a_name() {
        let text = "model a {\n classes 2\n stem conv k3 s2 -> 8\n stage mbconv k3 e1 s1 -> 8 x1\n}\nmodel b = a scaled width 2.0 depth 1.0\n";
        let item: ItemStruct = syn::parse2(quote!(
            pub struct M;
        ))
        .expect("parses");
        let req = |model| Request {
            item: &item,
            include_path: "/x/z.effnet",
            display_name: "z.effnet",
            text,
            model,
            span: Span::call_site(),
        };
        let out = generate(&req(None)).to_string();
        assert!(out.contains("choose one with"), "{out}");
        let out = generate(&req(Some("c"))).to_string();
        assert!(out.contains("no model named"), "{out}");
        let out = generate(&req(Some("b"))).to_string();
        assert!(!out.contains("compile_error"), "{out}");
    }
}
