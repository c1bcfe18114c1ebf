//! Diagnostics: what `check` reports, rendered by miette with the file name, `line:col`, the
//! source line and a label.

use std::fmt;
use std::sync::Arc;

use effnet_grammar::Span;
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Label {
    pub span: Span,
    pub text: String,
}

/// One problem in a spec. `code` names the kind (`effnet::kernel`, ...), so tools and tests can
/// match on it without parsing the message.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub primary: Label,
    pub secondary: Vec<Label>,
    pub help: Option<String>,
    /// The model it belongs to (a schedule's diagnostics belong to its model); `None` for the
    /// file as a whole (a syntax error). Lets a command show only the model it uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>, span: Span) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            primary: Label {
                span,
                text: String::new(),
            },
            secondary: vec![],
            help: None,
            item: None,
        }
    }
    pub fn warning(code: &'static str, message: impl Into<String>, span: Span) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message, span)
        }
    }
    pub fn label(mut self, text: impl Into<String>) -> Self {
        self.primary.text = text.into();
        self
    }
    pub fn with_secondary(mut self, span: Span, text: impl Into<String>) -> Self {
        self.secondary.push(Label {
            span,
            text: text.into(),
        });
        self
    }
    pub fn help(mut self, text: impl Into<String>) -> Self {
        self.help = Some(text.into());
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
    /// Say which model this diagnostic belongs to.
    pub fn for_item(mut self, model: impl Into<String>) -> Self {
        self.item = Some(model.into());
        self
    }
}

/// A source file, named as the user gave it, that diagnostics point into.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: Arc<str>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }

    /// A spec read as bytes. Text that is not UTF-8 is an error at the line and column of the
    /// first invalid byte, pointing into the text with the invalid bytes replaced (U+FFFD).
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<Self, Box<NotUtf8>> {
        let invalid = match String::from_utf8(bytes) {
            Ok(text) => return Ok(SourceFile::new(name, text)),
            Err(e) => e,
        };
        let at = invalid.utf8_error().valid_up_to();
        let bytes = invalid.as_bytes();
        // `error_len` is `None` when the text ends inside a character.
        let bad = &bytes[at..at + invalid.utf8_error().error_len().unwrap_or(bytes.len() - at)];
        let shown = bad
            .iter()
            .map(|b| format!("0x{b:02X}"))
            .collect::<Vec<_>>()
            .join(" ");
        // The replaced text keeps every byte before `at`, so the offset still points there.
        let file = SourceFile::new(name, String::from_utf8_lossy(bytes).into_owned());
        let (line, col) = file.line_col(at);
        let diagnostic = Diagnostic::error(
            "effnet::encoding",
            format!(
                "the spec is not valid UTF-8: {} {shown} at line {line}, column {col}",
                if bad.len() == 1 { "byte" } else { "bytes" }
            ),
            Span::new(at, at + char::REPLACEMENT_CHARACTER.len_utf8()),
        )
        .label("not UTF-8")
        .help("save the file as UTF-8 (Latin-1 writes `é` as the single byte 0xE9)");
        Err(Box::new(NotUtf8 { file, diagnostic }))
    }

    /// 1-based line and column of a byte offset (columns count characters).
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before
            .get(line_start..)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        (line, col)
    }
}

/// A spec that is not UTF-8: the diagnostic at its first invalid byte and the text it points
/// into (invalid bytes replaced), ready for [`render`].
#[derive(Debug, Clone)]
pub struct NotUtf8 {
    pub file: SourceFile,
    pub diagnostic: Diagnostic,
}

/// A diagnostic together with its source, as miette wants it.
#[derive(Debug)]
pub struct Report<'a> {
    pub diagnostic: &'a Diagnostic,
    pub source: NamedSource<Arc<str>>,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnostic.message)
    }
}

impl std::error::Error for Report<'_> {}

fn source_span(span: Span, len: usize) -> SourceSpan {
    let start = span.start.min(len);
    let end = span.end.min(len).max(start);
    SourceSpan::new(start.into(), end - start)
}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diagnostic.code))
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diagnostic
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let len = self.source.inner().len();
        let d = self.diagnostic;
        let primary = LabeledSpan::new_primary_with_span(
            (!d.primary.text.is_empty()).then(|| d.primary.text.clone()),
            source_span(d.primary.span, len),
        );
        let rest = d.secondary.iter().map(move |l| {
            LabeledSpan::new_with_span(Some(l.text.clone()), source_span(l.span, len))
        });
        Some(Box::new(std::iter::once(primary).chain(rest)))
    }
}

/// Render diagnostics as text: `error[code]: message`, then `--> file:line:col`, the source
/// line and the labels, then the help. `color` turns on ANSI colors for terminals.
pub fn render(file: &SourceFile, diagnostics: &[Diagnostic], color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    for d in diagnostics {
        let report = Report {
            diagnostic: d,
            source: NamedSource::new(file.name.clone(), file.text.clone()),
        };
        let mut body = String::new();
        if handler.render_report(&mut body, &report).is_err() {
            body = format!("  {}\n", d.message);
        }
        out.push_str(&body);
        if !body.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The closest candidate to a misspelt name, when one is close enough to suggest.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
