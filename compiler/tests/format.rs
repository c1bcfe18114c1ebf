//! The formatter: a fixed point, the same AST, every comment kept, and the canonical layout.

use std::path::{Path, PathBuf};

use effnet_compiler::format::{format_file, format_source};
use effnet_compiler::parse;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.effnet` file under `dir`, recursively, sorted.
fn effnet_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        // `tests/fixtures/encoding` holds specs that are not UTF-8 on purpose: not text.
        if p.ends_with("tests/fixtures/encoding") {
            continue;
        }
        if p.is_dir() {
            effnet_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "effnet") {
            out.push(p);
        }
    }
}

fn all_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    effnet_files(&root().join("specs"), &mut files);
    effnet_files(&root().join("tests/fixtures"), &mut files);
    files
}

fn strip_spans(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("span");
            for (_, x) in map.iter_mut() {
                strip_spans(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_spans),
        _ => {}
    }
}

/// The AST without spans; comment texts without trailing spaces (the formatter trims them).
fn ast(source: &str) -> Value {
    let mut file = parse(source).expect("parses");
    for c in &mut file.comments {
        c.text = c.text.trim_end().to_string();
    }
    let mut v = serde_json::to_value(&file).expect("serializes");
    strip_spans(&mut v);
    v
}

fn comment_texts(source: &str) -> Vec<String> {
    parse(source)
        .expect("parses")
        .comments
        .iter()
        .map(|c| c.text.trim_end().to_string())
        .collect()
}

/// The checks every input must pass: a fixed point, the same AST, the same comments.
fn check_roundtrip(name: &str, source: &str) -> String {
    let once = format_source(source).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let twice =
        format_source(&once).unwrap_or_else(|e| panic!("{name} after formatting: {e:?}\n{once}"));
    assert_eq!(once, twice, "{name}: formatting is not idempotent");
    assert_eq!(
        ast(source),
        ast(&once),
        "{name}: formatting changed the AST:\n{once}"
    );
    assert_eq!(
        comment_texts(source),
        comment_texts(&once),
        "{name}: comments changed:\n{once}"
    );
    once
}

#[test]
fn every_spec_and_fixture_is_a_fixed_point_with_the_same_ast() {
    let files = all_files();
    assert!(
        files.iter().any(|f| f.starts_with(root().join("specs"))),
        "no specs found under {}",
        root().display()
    );
    let mut checked = 0;
    for path in &files {
        let source = std::fs::read_to_string(path).expect("readable");
        let name = path.display().to_string();
        match parse(&source) {
            Ok(file) => {
                let once = check_roundtrip(&name, &source);
                // format_file on the parsed AST gives the same text as format_source.
                assert_eq!(format_file(&file, &source), once, "{name}");
                checked += 1;
            }
            // Fixtures with syntax errors: the formatter refuses them the same way.
            Err(e) => assert_eq!(format_source(&source), Err(e), "{name}"),
        }
    }
    assert!(checked > 0);
}

/// `source` with every space between two tokens of code turned into a line break: the layout
/// changes completely, but no blank line appears and no comment changes sides.
fn one_token_per_line(source: &str) -> String {
    let mut out = String::new();
    for line in source.lines() {
        let (code, comment) = match line.find("//") {
            Some(i) => line.split_at(i),
            None => (line, ""),
        };
        let indent_len = code.len() - code.trim_start().len();
        out.push_str(&code[..indent_len]);
        let words: Vec<&str> = code.split_whitespace().collect();
        out.push_str(&words.join("\n\t "));
        if !comment.is_empty() {
            out.push(' ');
            out.push_str(comment);
        }
        out.push('\n');
    }
    out
}

#[test]
fn layout_of_the_input_does_not_matter() {
    for path in all_files() {
        let source = std::fs::read_to_string(&path).expect("readable");
        let Ok(expected) = format_source(&source) else {
            continue;
        };
        let name = path.display().to_string();
        let scattered = one_token_per_line(&source);
        let out = check_roundtrip(&name, &scattered);
        assert_eq!(
            out, expected,
            "{name}: scattered input formats differently:\n{scattered}"
        );
    }
}

#[test]
fn bundled_specs_are_formatted() {
    let mut files = Vec::new();
    effnet_files(&root().join("specs"), &mut files);
    let mut problems = Vec::new();
    for path in files {
        let source = std::fs::read_to_string(&path).expect("readable");
        let formatted = format_source(&source).expect("specs parse");
        if formatted == source {
            continue;
        }
        let first = source
            .lines()
            .chain(std::iter::repeat(""))
            .zip(formatted.lines().chain(std::iter::repeat("")))
            .enumerate()
            .take(source.lines().count().max(formatted.lines().count()))
            .find(|(_, (a, b))| a != b);
        let detail = match first {
            Some((i, (a, b))) => format!("line {}:\n  is:        {a:?}\n  formatted: {b:?}", i + 1),
            None => "differs in line endings or the final newline".to_string(),
        };
        problems.push(format!("{}: {detail}", path.display()));
    }
    assert!(
        problems.is_empty(),
        "specs not in the canonical layout (run `effnet fmt specs/*.effnet`):\n{}",
        problems.join("\n")
    );
}

const MESSY: &str = "//   header comment   \n\n\n\
/// The doc.\n\
model   tiny{input 3x 64 train 48 classes 10   // ten classes\n\
activation relu\n\n\n\n\
norm batch ( eps=1e-3 , momentum = 0.01, )\n\
round channels ( divisor = 8 ,limit=0 )\n\
normalize mean( 0.5,0.5 ,0.5 ) std (0.5, 0.5, 0.5)\n\
    scale width 1.0 depth   1.0 stages( 1.2 ,1.6)\n\
stem conv k3 s2->32 fixed\n\
  stage ds k3 s1 -> 16 x1 se 0.25\n\
// the fused part\n\
stage fused k3 e4 s2 -> 128 x10 act relu6\n\
\t\tstage mbconv   k5 e6 s2 -> 8 x2 se 0.25 noskip // last\n\
stage conv k3 s1 -> 8 skip x3\n\
head conv k1 -> 1280\n\
  // before the brace\n\
}   // after the brace\n\
model tiny2=tiny scaled width 1.1 depth 1.2\n\
model tiny3 = tiny scaled width 1.1 depth 1.2 { dropout 0.3 drop_path 0.2 }\n\
schedule s for tiny{epochs 10 stages 2 interpolate linear image 128->300 batch[64,32,]\n\
optimizer rmsprop( decay = 0.9 ) lr 0.256 warmup 5 exponential (rate=0.97,every=2.4) ema 0.9999}\n\
// the end\n";

const MESSY_FORMATTED: &str = "//   header comment

/// The doc.
model tiny {
    input 3 x 64 train 48
    classes 10  // ten classes
    activation relu

    norm batch(eps = 1e-3, momentum = 0.01)
    round channels(divisor = 8, limit = 0)
    normalize mean(0.5, 0.5, 0.5) std(0.5, 0.5, 0.5)
    scale width 1.0 depth 1.0 stages(1.2, 1.6)
    stem conv k3 s2 -> 32 fixed
    stage ds     k3 s1 -> 16  x1  se 0.25
    // the fused part
    stage fused  k3 e4 s2 -> 128 x10 act relu6
    stage mbconv k5 e6 s2 -> 8   x2  se 0.25 noskip  // last
    stage conv   k3 s1 -> 8       skip x3
    head conv k1 -> 1280
    // before the brace
}  // after the brace

model tiny2 = tiny scaled width 1.1 depth 1.2

model tiny3 = tiny scaled width 1.1 depth 1.2 {
    dropout 0.3
    drop_path 0.2
}

schedule s for tiny {
    epochs 10
    stages 2
    interpolate linear
    image 128 -> 300
    batch [64, 32]
    optimizer rmsprop(decay = 0.9)
    lr 0.256 warmup 5 exponential(rate = 0.97, every = 2.4)
    ema 0.9999
}
// the end
";

#[test]
fn messy_input_gets_the_canonical_layout() {
    let out = check_roundtrip("messy", MESSY);
    assert_eq!(out, MESSY_FORMATTED, "got:\n{out}");
}

#[test]
fn the_canonical_layout_is_a_fixed_point() {
    assert_eq!(
        format_source(MESSY_FORMATTED).expect("parses"),
        MESSY_FORMATTED
    );
}

const COMMENTS: &str = "// file header
// second header line

// before the doc
/// doc of a
model a { // after the open brace
    // leading of input
    input 3 x 224 // trailing of input
    classes
      // inside classes
      1000 // trailing of classes

    // own paragraph


    // after blank lines
    stem conv k3 s2 -> 32
    /// doc of the stage
    // between doc and stage
    stage mbconv k3 e6 s1 -> 16 x1 // trailing of the stage
    head none   // trailing of head none
    // end of body 1

    // end of body 2
} // after the close brace
// between items
model b = a scaled // inside the header
  width 2.0 depth 1.0 // trailing of a bodiless model

model c = a scaled width 1.0 depth 1.0 {} // after an empty body
model d = a scaled width 1.0 depth 1.0 { // only a comment
}
// end of file 1

// end of file 2
";

#[test]
fn every_comment_is_kept() {
    let out = check_roundtrip("comments", COMMENTS);
    let before = comment_texts(COMMENTS);
    let after = comment_texts(&out);
    assert_eq!(before.len(), 23);
    assert_eq!(before, after);
    // Trailing comments stay on the line of their code.
    for (code, comment) in [
        ("model a {", "// after the open brace"),
        ("input 3 x 224", "// trailing of input"),
        ("classes 1000", "// trailing of classes"),
        (
            "stage mbconv k3 e6 s1 -> 16  x1",
            "// trailing of the stage",
        ),
        ("head none", "// trailing of head none"),
        ("}", "// after the close brace"),
        ("width 2.0 depth 1.0", "// trailing of a bodiless model"),
        (
            "model c = a scaled width 1.0 depth 1.0 {}",
            "// after an empty body",
        ),
        (
            "model d = a scaled width 1.0 depth 1.0 {",
            "// only a comment",
        ),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(comment))
            .unwrap_or_else(|| panic!("`{comment}` lost:\n{out}"));
        assert!(
            line.trim_start().starts_with(code) || line.contains(code),
            "`{comment}` left its line `{code}`:\n{out}"
        );
    }
    // Own-line comments stay on their own line.
    for comment in [
        "// file header",
        "// leading of input",
        "// inside classes",
        "// end of body 2",
        "// end of file 2",
        "// inside the header",
        "// between doc and stage",
    ] {
        assert!(
            out.lines().any(|l| l.trim() == comment),
            "`{comment}` is not on its own line:\n{out}"
        );
    }
    let expected = "// file header
// second header line

// before the doc
/// doc of a
model a {  // after the open brace
    // leading of input
    input 3 x 224  // trailing of input
    // inside classes
    classes 1000  // trailing of classes

    // own paragraph

    // after blank lines
    stem conv k3 s2 -> 32
    /// doc of the stage
    // between doc and stage
    stage mbconv k3 e6 s1 -> 16  x1  // trailing of the stage
    head none                        // trailing of head none
    // end of body 1

    // end of body 2
}  // after the close brace

// between items
// inside the header
model b = a scaled width 2.0 depth 1.0  // trailing of a bodiless model

model c = a scaled width 1.0 depth 1.0 {}  // after an empty body

model d = a scaled width 1.0 depth 1.0 {  // only a comment
}
// end of file 1

// end of file 2
";
    assert_eq!(out, expected, "got:\n{out}");
}

#[test]
fn stage_tables_break_at_blank_lines_and_other_statements() {
    let src = "model m {
    stem conv k3 s2 -> 32
    stage fused k3 e1 s1 -> 16 x1 skip
    stage mbconv k3 e6 s2 -> 24 x2
    // a comment does not break the table
    stage ds k3 s1 -> 1024 x12

    stage conv k3 s1 -> 8 x1
    stage mbconv k3 e6 s1 -> 16 x2 se 0.25
    head conv k1 -> 1280
    stage fused k3 e4 s2 -> 8
}
";
    let out = check_roundtrip("tables", src);
    let expected = "model m {
    stem conv k3 s2 -> 32
    stage fused  k3 e1 s1 -> 16   x1  skip
    stage mbconv k3 e6 s2 -> 24   x2
    // a comment does not break the table
    stage ds     k3 s1 -> 1024 x12

    stage conv   k3 s1 -> 8   x1
    stage mbconv k3 e6 s1 -> 16  x2  se 0.25
    head conv k1 -> 1280
    stage fused k3 e4 s2 -> 8
}
";
    assert_eq!(out, expected, "got:\n{out}");
}

#[test]
fn empty_and_comment_only_files() {
    assert_eq!(format_source("").expect("parses"), "");
    assert_eq!(format_source("\n\n  \n").expect("parses"), "");
    assert_eq!(
        check_roundtrip("only comments", "\n\n// a   \n\n\n//b\n\n"),
        "// a\n\n//b\n"
    );
}

#[test]
fn crlf_input_gives_the_same_output() {
    let spec = std::fs::read_to_string(root().join("specs/efficientnetv2_s.effnet")).expect("spec");
    let crlf = spec.replace('\n', "\r\n");
    assert_eq!(
        check_roundtrip("crlf", &crlf),
        format_source(&spec).expect("parses")
    );
}

#[test]
fn syntax_errors_are_returned() {
    let e = format_source("model m { stage fused k3 e1 s1 24 }").expect_err("no arrow");
    assert!(e.message.contains("->"), "{e:?}");
}

#[test]
fn numbers_and_names_keep_their_text() {
    let src = "model m { norm batch(eps=1E-5) dropout 0.20 drop_path .2e0 }";
    // `.2e0` is not a number in the language: this is a syntax error, not a rewrite.
    assert!(format_source(src).is_err());
    let src = "model m { norm batch(eps=1E-5) dropout 0.20 drop_path 2.e-1 }";
    let out = check_roundtrip("numbers", src);
    assert!(out.contains("eps = 1E-5"), "{out}");
    assert!(out.contains("dropout 0.20"), "{out}");
    assert!(out.contains("drop_path 2.e-1"), "{out}");
}

/// Fine-tuning's syntax: a derivation without `scaled`, and `freeze` / `lr_scale` with their
/// parts and `for N epoch(s)`, from any layout to one line each, comments kept.
#[test]
fn fine_tuning_statements_get_the_canonical_layout() {
    let messy = "model a { classes 10 stem conv k3 s2 -> 8 stage mbconv k3 e1 s1 -> 8 x1 }
model flowers   =   a{classes 5}   // five flowers
schedule tune for flowers { epochs 3 image 32
  freeze stem ,stages 0..1
     for 2 epochs   // the early layers
  freeze   head for 1 epoch lr_scale backbone,
  classifier 0.1 lr_scale stages 0 1e-1 }
";
    let want = "model a {
    classes 10
    stem conv k3 s2 -> 8
    stage mbconv k3 e1 s1 -> 8   x1
}

model flowers = a {
    classes 5
}  // five flowers

schedule tune for flowers {
    epochs 3
    image 32
    freeze stem, stages 0..1 for 2 epochs  // the early layers
    freeze head for 1 epoch
    lr_scale backbone, classifier 0.1
    lr_scale stages 0 1e-1
}
";
    let out = check_roundtrip("fine-tuning", messy);
    assert_eq!(out, want, "got:\n{out}");
    // Without a body: the header alone.
    assert_eq!(
        check_roundtrip(
            "alias",
            "model a { classes 2 stem conv k3 s1 -> 8 }\nmodel b = a\n"
        ),
        "model a {\n    classes 2\n    stem conv k3 s1 -> 8\n}\n\nmodel b = a\n"
    );
}

/// Choices and `search` items, from any layout to the canonical one: choices without inner
/// spaces, `se {..}` spaced like `se 0.25`, stage tables aligned on the written choices.
#[test]
fn choices_and_searches_get_the_canonical_layout() {
    let messy = "model s { classes 10 stem conv k3 s2 -> { 16 | 24 }
stage { fused|mbconv } k{ 3|5 } e{1 | 4} s1 -> 16 x{ 1..3 } skip
stage mbconv k3 e4 s2 -> 32 x2 se{0.25|0} // maybe no SE
}
search  quick  for s { strategy evolution( population = 8,sample=2 ) candidates 12
reward( step_time=-0.07 , params = -0.05 ) constraint step_time<1.2*base
constraint params <= 5e5 }
";
    let out = check_roundtrip("choices", messy);
    insta::assert_snapshot!("choices_and_searches", out);
}
