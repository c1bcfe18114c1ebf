//! The runtime's modules depend on each other one way only (issue 11: "no two modules of
//! `runtime/` import each other"): what a network is (`nn`) below how it runs (`exec`), the
//! kernels (`ops`) below both, and inside `ops` the candle ops above the CPU kernels above
//! the shared geometry. This reads the sources' `crate::` paths (doc comments and tests
//! excluded) and fails on any cycle, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The `crate::a::b::...` paths in the code (not comments) of a file before its tests, with
/// `super::x` resolved against `module` (the file's module path; a `mod.rs` is its folder).
fn crate_paths(src: &str, module: &[String]) -> Vec<Vec<String>> {
    let code = src.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        for (anchor, base) in [
            ("crate::", Vec::new()),
            // The parent of the file's module (a `mod.rs` file's module is its folder).
            ("super::", module[..module.len().saturating_sub(1)].to_vec()),
        ] {
            let mut rest = line;
            while let Some(i) = rest.find(anchor) {
                rest = &rest[i + anchor.len()..];
                let tail: Vec<String> = rest
                    .split("::")
                    .map(|s| {
                        s.chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect::<String>()
                    })
                    .take_while(|s| !s.is_empty() && s != "super")
                    .collect();
                let mut path = base.clone();
                path.extend(tail);
                out.push(path);
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module `depth` levels below `src` that a file belongs to (`ops/cpu/conv.rs` at depth 2 is
/// `ops/cpu`), or `None` for a file above that depth.
fn module_of(rel: &Path, depth: usize) -> Option<String> {
    let parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    (parts.len() >= depth && !(parts.len() == depth && parts[depth - 1] == "mod"))
        .then(|| parts[..depth].join("/"))
}

fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for (a, bs) in edges {
        for b in bs {
            if edges.get(b).is_some_and(|cs| cs.contains(a)) && a < b {
                found.push(format!("{a} <-> {b}"));
            }
        }
    }
    found
}

fn graph(prefix: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let depth = prefix.len() + 1;
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let Some(from) = module_of(rel, depth) else {
            continue;
        };
        if !from.starts_with(&prefix.join("/")) {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read");
        let module: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        let module = match module.split_last() {
            Some((last, parent)) if last == "mod" => parent.to_vec(),
            _ => module,
        };
        for p in crate_paths(&text, &module) {
            if p.len() < depth || p[..prefix.len()] != prefix[..] {
                continue;
            }
            let to = p[..depth].join("/");
            if to != from {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

#[test]
fn runtime_modules_import_each_other_one_way_only() {
    let top = graph(&[]);
    assert!(
        top.get("nn").is_some_and(|d| d.contains("ops")),
        "the reader found no edges: {top:?}"
    );
    assert_eq!(cycles(&top), Vec::<String>::new(), "{top:?}");
    let ops = graph(&["ops"]);
    assert_eq!(cycles(&ops), Vec::<String>::new(), "{ops:?}");
    let exec = graph(&["exec"]);
    assert_eq!(cycles(&exec), Vec::<String>::new(), "{exec:?}");
}
