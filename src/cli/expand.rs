//! `effnet expand FILE [--model NAME]`: the code `#[effnet::model]` generates for a model,
//! formatted with prettyplease.

use std::path::Path;
use std::process::ExitCode;

use effnet_compiler::codegen;

pub fn run(file: &Path, model: Option<&str>) -> Result<ExitCode, String> {
    let super::Loaded {
        file: source,
        network: net,
    } = super::load(file, model)?;
    // The macro embeds the absolute path (so editing the spec rebuilds the crate).
    let include = file
        .canonicalize()
        .unwrap_or_else(|_| file.to_path_buf())
        .display()
        .to_string();
    let name = codegen::struct_name(&net.name);
    let code = codegen::expand_source(&source.text, &include, &source.name, Some(&net.name))?;
    println!(
        "// #[effnet::model(\"{}\", name = \"{}\")] pub struct {name};",
        file.display(),
        net.name
    );
    print!("{code}");
    Ok(ExitCode::SUCCESS)
}
