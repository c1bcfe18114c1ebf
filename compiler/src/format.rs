//! `effnet fmt`: the canonical layout of a `.effnet` file.
//!
//! The formatter works on the spanned AST plus the plain `//` comments the parser keeps, and
//! never reorders anything: statements, options and arguments come back in the order they were
//! written, so `parse(format(x))` is `parse(x)` up to spans. What it decides:
//!
//! - items are separated by exactly one blank line; inside a body, one blank line stands for any
//!   run of blank lines the source had between two statements (paragraphs are kept), and there is
//!   none at the start or the end of a body;
//! - 4-space indentation, one statement per line, single spaces between tokens, `(a = 1, b = 2)`
//!   for arguments, `(1, 2)` for tuples, `[1, 2]` for lists; numbers keep their text (`1e-5`);
//! - consecutive `stage` lines (not separated by a blank line) form a table: the kind is padded to
//!   the longest kind, the channels and the leading `xN` to the widest of the run (at least 3
//!   characters, as in `-> 24  x2  se 0.25`); parameters and other options are single-spaced;
//! - doc comments sit right above their item or statement;
//! - a `//` comment on its own line goes before the statement that follows it, at that statement's
//!   indentation (comments written inside a statement move above it); a comment after code stays
//!   at the end of that line, and trailing comments of consecutive lines are aligned two spaces
//!   after the longest line of the run; comments before a closing `}` stay at the end of the body,
//!   comments after the last item stay at the end of the file.
//!
//! The result is a fixed point: `format(format(x)) == format(x)`.

use effnet_grammar::{
    Alternative, Choice, ChoiceTarget, Comment, Decay, Doc, File, Item, KwArg, Layer, LayerOpt,
    LayerOptKind, Model, ModelStmt, ModelStmtKind, Number, ParseError, Part, ScaleArg, ScaleValue,
    Schedule, ScheduleStmt, ScheduleStmtKind, SearchStmt, SearchStmtKind, SettingValue, Span,
    Value, parse,
};

/// Indentation of a body.
const INDENT: usize = 4;

/// The least width of the channels and repeats columns of a stage table.
const MIN_COLUMN: usize = 3;

/// Parse `source` and format it; a syntax error is returned as is.
pub fn format_source(source: &str) -> Result<String, ParseError> {
    let file = parse(source)?;
    Ok(format_file(&file, source))
}

/// Format a parsed file. `source` must be the text `file` was parsed from: comments and blank
/// lines are placed by their byte positions in it.
pub fn format_file(file: &File, source: &str) -> String {
    let mut comments: Vec<&Comment> = file.comments.iter().collect();
    comments.sort_by_key(|c| c.span.start);
    comments.dedup_by_key(|c| c.span.start);
    let mut f = Formatter {
        src: source,
        comments,
        next: 0,
        lines: Vec::new(),
    };
    let mut para = Para::default();
    for (i, item) in file.items.iter().enumerate() {
        f.item(item, i > 0, &mut para);
    }
    let mut rest = Vec::new();
    f.comments_before(usize::MAX, &mut para, &mut rest);
    f.push_entries(rest, 0);
    render(&f.lines)
}

/// One output line.
enum Line {
    Blank,
    Text {
        indent: usize,
        code: String,
        trailing: Option<String>,
    },
}

/// One line of a body (or of the top level) before stage tables are laid out.
enum Entry {
    Blank,
    /// A comment or doc line, complete (`// text`, `/// text`).
    Note(String),
    Code {
        code: Code,
        trailing: Option<String>,
    },
}

enum Code {
    Plain(String),
    Stage(StageRow),
}

/// The cells of a `stage` line, aligned with its neighbours.
struct StageRow {
    /// A `then` line (more blocks of the stage above).
    then: bool,
    kind: String,
    params: String,
    channels: String,
    /// The `xN` when it is the first option; otherwise every option is in `rest`.
    repeats: Option<String>,
    rest: Vec<String>,
}

/// Where the previous output element of a body ended in the source, to see blank lines.
#[derive(Default)]
struct Para {
    last_end: usize,
    /// Nothing emitted in this body yet.
    started: bool,
}

struct Formatter<'a> {
    src: &'a str,
    comments: Vec<&'a Comment>,
    /// The first comment not yet placed.
    next: usize,
    lines: Vec<Line>,
}

fn comment_line(c: &Comment) -> String {
    format!("//{}", c.text.trim_end())
}

fn doc_line(d: &Doc) -> String {
    if d.text.is_empty() {
        "///".to_string()
    } else {
        format!("/// {}", d.text)
    }
}

impl<'a> Formatter<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.src.as_bytes()
    }

    /// The first position at or after `pos` that is not whitespace or a plain comment.
    fn skip_trivia(&self, mut pos: usize) -> usize {
        let b = self.bytes();
        loop {
            while b
                .get(pos)
                .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
            {
                pos += 1;
            }
            let rest = b.get(pos..).unwrap_or(&[]);
            if rest.starts_with(b"//") && !rest.starts_with(b"///") {
                while b.get(pos).is_some_and(|c| !matches!(c, b'\n' | b'\r')) {
                    pos += 1;
                }
            } else {
                return pos;
            }
        }
    }

    /// After the next word (letters, digits, `_`) following `pos`.
    fn skip_word(&self, pos: usize) -> usize {
        let b = self.bytes();
        let mut p = self.skip_trivia(pos);
        while b
            .get(p)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            p += 1;
        }
        p
    }

    /// Extend the end of a statement's last token over closing punctuation: `)`, `]`, a
    /// trailing `,` and an empty `()`.
    fn close_end(&self, mut pos: usize) -> usize {
        let b = self.bytes();
        loop {
            let p = self.skip_trivia(pos);
            match b.get(p) {
                Some(b',' | b')' | b']') => pos = p + 1,
                Some(b'(') => {
                    let q = self.skip_trivia(p + 1);
                    if b.get(q) == Some(&b')') {
                        pos = q + 1;
                    } else {
                        return pos;
                    }
                }
                _ => return pos,
            }
        }
    }

    /// Whether the source has a blank line (a whole line of nothing but spaces) between `a`
    /// and `b`.
    fn blank_between(&self, a: usize, b: usize) -> bool {
        let Some(text) = self.src.get(a..b).filter(|_| a < b) else {
            return false;
        };
        let lines: Vec<&str> = text.split('\n').collect();
        // The first and last pieces are partial lines; the ones between are whole lines.
        lines.len() > 2
            && lines[1..lines.len() - 1]
                .iter()
                .any(|l| l.chars().all(|c| c == ' ' || c == '\t' || c == '\r'))
    }

    /// Where the code of a statement or item starts: after its doc comments.
    fn code_start(&self, span_start: usize, docs: &[Doc]) -> usize {
        self.skip_trivia(docs.last().map_or(span_start, |d| d.span.end))
    }

    /// The comment right after `end` on the same line, if any, taken.
    fn trailing(&mut self, end: usize) -> Option<(String, usize)> {
        let c = self.comments.get(self.next)?;
        let between = self.src.get(end..c.span.start)?;
        if between.bytes().all(|b| b == b' ' || b == b'\t') {
            self.next += 1;
            Some((comment_line(c), c.span.end))
        } else {
            None
        }
    }

    /// Every comment starting before `limit`, as own-line entries.
    fn comments_before(&mut self, limit: usize, para: &mut Para, out: &mut Vec<Entry>) {
        while let Some(c) = self.comments.get(self.next) {
            if c.span.start >= limit {
                break;
            }
            self.next += 1;
            if para.started && self.blank_between(para.last_end, c.span.start) {
                out.push(Entry::Blank);
            }
            out.push(Entry::Note(comment_line(c)));
            para.started = true;
            para.last_end = para.last_end.max(c.span.end);
        }
    }

    /// The lines above a statement's code: comments before `limit` (those before the statement
    /// and those inside it) and its doc comments, in source order; then the blank line, if any,
    /// that goes right before the code.
    fn prefix(
        &mut self,
        docs: &[Doc],
        limit: usize,
        code_start: usize,
        para: &mut Para,
        force_blank: bool,
        out: &mut Vec<Entry>,
    ) {
        let mut elems: Vec<(Span, String, bool)> =
            docs.iter().map(|d| (d.span, doc_line(d), true)).collect();
        while let Some(c) = self.comments.get(self.next) {
            if c.span.start >= limit {
                break;
            }
            self.next += 1;
            elems.push((c.span, comment_line(c), false));
        }
        elems.sort_by_key(|e| e.0.start);
        let mut force = force_blank;
        let mut seen_doc = false;
        for (span, text, is_doc) in elems {
            if para.started && !seen_doc && (force || self.blank_between(para.last_end, span.start))
            {
                out.push(Entry::Blank);
            }
            force = false;
            out.push(Entry::Note(text));
            para.started = true;
            para.last_end = para.last_end.max(span.end);
            seen_doc |= is_doc;
        }
        if para.started && !seen_doc && (force || self.blank_between(para.last_end, code_start)) {
            out.push(Entry::Blank);
        }
        para.started = true;
    }

    /// A statement: its prefix, its code line and the comment after it.
    fn statement(
        &mut self,
        docs: &[Doc],
        span: Span,
        code: Code,
        code_end: usize,
        para: &mut Para,
        out: &mut Vec<Entry>,
    ) {
        let start = self.code_start(span.start, docs);
        self.prefix(docs, code_end, start, para, false, out);
        let trailing = self.trailing(code_end);
        para.last_end = trailing
            .as_ref()
            .map_or(code_end, |t| t.1)
            .max(para.last_end);
        out.push(Entry::Code {
            code,
            trailing: trailing.map(|t| t.0),
        });
    }

    fn item(&mut self, item: &Item, after_item: bool, para: &mut Para) {
        let (docs, header, header_end, has_body) = match item {
            Item::Model(m) => (
                &m.docs,
                model_header(m),
                self.model_header_end(m),
                m.body.is_some(),
            ),
            Item::Schedule(s) => (&s.docs, schedule_header(s), s.model.span.end, true),
            Item::Search(s) => (
                &s.docs,
                format!("search {} for {}", s.name.name, s.space.name),
                s.space.span.end,
                true,
            ),
        };
        let span = item.span();
        let start = self.code_start(span.start, docs);
        let open = if has_body {
            let p = self.skip_trivia(header_end);
            if self.bytes().get(p) == Some(&b'{') {
                p
            } else {
                header_end
            }
        } else {
            header_end
        };
        let mut entries = Vec::new();
        self.prefix(docs, open, start, para, after_item, &mut entries);
        self.push_entries(entries, 0);
        if !has_body {
            let trailing = self.trailing(header_end);
            para.last_end = trailing.as_ref().map_or(header_end, |t| t.1);
            self.lines.push(Line::Text {
                indent: 0,
                code: header,
                trailing: trailing.map(|t| t.0),
            });
            return;
        }
        let open_trailing = self.trailing(open + 1);
        let mut body_para = Para {
            last_end: open_trailing.as_ref().map_or(open + 1, |t| t.1),
            started: false,
        };
        let mut body = Vec::new();
        match item {
            Item::Model(m) => {
                for stmt in m.body.iter().flatten() {
                    let (code, end) = self.model_stmt(stmt);
                    self.statement(&stmt.docs, stmt.span, code, end, &mut body_para, &mut body);
                }
            }
            Item::Schedule(s) => {
                for stmt in &s.body {
                    let (code, end) = self.schedule_stmt(stmt);
                    self.statement(&stmt.docs, stmt.span, code, end, &mut body_para, &mut body);
                }
            }
            Item::Search(s) => {
                for stmt in &s.body {
                    let (code, end) = self.search_stmt(stmt);
                    self.statement(&stmt.docs, stmt.span, code, end, &mut body_para, &mut body);
                }
            }
        }
        let close = {
            let p = self.skip_trivia(body_para.last_end);
            if self.bytes().get(p) == Some(&b'}') {
                p
            } else {
                span.end.saturating_sub(1)
            }
        };
        self.comments_before(close, &mut body_para, &mut body);
        let close_trailing = self.trailing(close + 1);
        para.last_end = close_trailing.as_ref().map_or(close + 1, |t| t.1);
        if body.is_empty() && open_trailing.is_none() {
            self.lines.push(Line::Text {
                indent: 0,
                code: format!("{header} {{}}"),
                trailing: close_trailing.map(|t| t.0),
            });
        } else {
            self.lines.push(Line::Text {
                indent: 0,
                code: format!("{header} {{"),
                trailing: open_trailing.map(|t| t.0),
            });
            self.push_entries(body, INDENT);
            self.lines.push(Line::Text {
                indent: 0,
                code: "}".to_string(),
                trailing: close_trailing.map(|t| t.0),
            });
        }
    }

    fn model_header_end(&self, m: &Model) -> usize {
        let end = m
            .derivation
            .as_ref()
            .map(|d| {
                d.scale
                    .iter()
                    .map(|a| a.span.end)
                    .max()
                    .unwrap_or(d.base.span.end)
            })
            .unwrap_or(m.name.span.end);
        self.close_end(end.max(m.name.span.end))
    }

    fn model_stmt(&self, stmt: &ModelStmt) -> (Code, usize) {
        let start = self.code_start(stmt.span.start, &stmt.docs);
        let (code, last) = match &stmt.kind {
            ModelStmtKind::Input {
                channels,
                resolution,
                train,
            } => {
                let mut s = format!("input {} x {}", channels.text, resolution.text);
                let mut end = resolution.span.end;
                if let Some(t) = train {
                    s.push_str(&format!(" train {}", t.text));
                    end = t.span.end;
                }
                (Code::Plain(s), end)
            }
            ModelStmtKind::Classes(n) => (Code::Plain(format!("classes {}", n.text)), n.span.end),
            ModelStmtKind::Activation(i) => {
                (Code::Plain(format!("activation {}", i.name)), i.span.end)
            }
            ModelStmtKind::Norm { kind, args } => (
                Code::Plain(format!("norm {}{}", kind.name, kwargs(args))),
                args_end(args).max(kind.span.end),
            ),
            ModelStmtKind::GroupSize(n) => {
                (Code::Plain(format!("group_size {}", n.text)), n.span.end)
            }
            ModelStmtKind::Padding(i) => (Code::Plain(format!("padding {}", i.name)), i.span.end),
            ModelStmtKind::OutputStride(n) => {
                (Code::Plain(format!("output_stride {}", n.text)), n.span.end)
            }
            ModelStmtKind::Antialias(i) => {
                (Code::Plain(format!("antialias {}", i.name)), i.span.end)
            }
            ModelStmtKind::Attention(i) => {
                (Code::Plain(format!("attention {}", i.name)), i.span.end)
            }
            ModelStmtKind::Dropout(n) => (Code::Plain(format!("dropout {}", n.text)), n.span.end),
            ModelStmtKind::DropPath(n) => {
                (Code::Plain(format!("drop_path {}", n.text)), n.span.end)
            }
            ModelStmtKind::RoundChannels(args) => {
                // `round channels` with no arguments has no span of its own: skip the two words.
                let words = self.skip_word(self.skip_word(start));
                (
                    Code::Plain(format!("round channels{}", kwargs(args))),
                    args_end(args).max(words),
                )
            }
            ModelStmtKind::RoundDepth(i) => {
                (Code::Plain(format!("round depth {}", i.name)), i.span.end)
            }
            ModelStmtKind::Normalize { mean, std } => (
                Code::Plain(format!("normalize mean{} std{}", tuple(mean), tuple(std))),
                numbers_end(mean).max(numbers_end(std)),
            ),
            ModelStmtKind::Scale(args) => (
                Code::Plain(format!("scale {}", scale_args(args))),
                args.iter().map(|a| a.span.end).max().unwrap_or(0),
            ),
            ModelStmtKind::Stem(l) => (Code::Plain(format!("stem {}", layer(l))), layer_end(l)),
            ModelStmtKind::Stage(l) => (Code::Stage(stage_row(l, false)), layer_end(l)),
            ModelStmtKind::Then(l) => (Code::Stage(stage_row(l, true)), layer_end(l)),
            ModelStmtKind::Head(None) => (
                Code::Plain("head none".to_string()),
                self.skip_word(self.skip_word(start)),
            ),
            ModelStmtKind::Head(Some(l)) => {
                (Code::Plain(format!("head {}", layer(l))), layer_end(l))
            }
        };
        (code, self.close_end(last.max(start)))
    }

    fn schedule_stmt(&self, stmt: &ScheduleStmt) -> (Code, usize) {
        let start = self.code_start(stmt.span.start, &stmt.docs);
        let (code, last) = match &stmt.kind {
            ScheduleStmtKind::Interpolate(i) => (format!("interpolate {}", i.name), i.span.end),
            ScheduleStmtKind::Optimizer { kind, args } => (
                format!("optimizer {}{}", kind.name, kwargs(args)),
                args_end(args).max(kind.span.end),
            ),
            ScheduleStmtKind::Lr {
                peak,
                warmup,
                decay,
            } => {
                let mut s = format!("lr {}", peak.text);
                let mut end = peak.span.end;
                if let Some(w) = warmup {
                    s.push_str(&format!(" warmup {}", w.text));
                    end = end.max(w.span.end);
                }
                if let Some(d) = decay {
                    s.push(' ');
                    s.push_str(&decay_text(d));
                    end = end.max(d.kind.span.end).max(args_end(&d.args));
                }
                (s, end)
            }
            ScheduleStmtKind::Setting { key, value } => {
                let (v, end) = match value {
                    SettingValue::Single(n) => (n.text.clone(), n.span.end),
                    SettingValue::Range(a, b) => (format!("{} -> {}", a.text, b.text), b.span.end),
                    SettingValue::List(v) => (
                        format!("[{}]", join_numbers(v)),
                        numbers_end(v).max(key.span.end),
                    ),
                };
                (format!("{} {v}", key.name), end)
            }
            ScheduleStmtKind::Freeze { parts, epochs } => {
                let mut s = format!("freeze {}", parts_text(parts));
                let mut end = parts_end(parts).max(stmt.span.start);
                if let Some(n) = epochs {
                    let unit = if n.value == 1.0 { "epoch" } else { "epochs" };
                    s.push_str(&format!(" for {} {unit}", n.text));
                    // The statement ends with the `epochs` keyword, which has no node of its
                    // own: the statement's span ends there.
                    end = end.max(n.span.end).max(stmt.span.end);
                }
                (s, end)
            }
            ScheduleStmtKind::LrScale { parts, scale } => (
                format!("lr_scale {} {}", parts_text(parts), scale.text),
                parts_end(parts).max(scale.span.end),
            ),
        };
        (Code::Plain(code), self.close_end(last.max(start)))
    }

    fn search_stmt(&self, stmt: &SearchStmt) -> (Code, usize) {
        let start = self.code_start(stmt.span.start, &stmt.docs);
        let (code, last) = match &stmt.kind {
            SearchStmtKind::Strategy { kind, args } => (
                format!("strategy {}{}", kind.name, kwargs(args)),
                args_end(args).max(kind.span.end),
            ),
            SearchStmtKind::Reward(args) => (
                format!("reward{}", kwargs(args)),
                args_end(args).max(stmt.span.end),
            ),
            SearchStmtKind::Constraint {
                metric,
                comparison,
                bound,
                relative,
            } => {
                let base = if *relative { " * base" } else { "" };
                (
                    format!(
                        "constraint {} {comparison} {}{base}",
                        metric.name, bound.text
                    ),
                    // `base` has no node of its own: the statement's span ends with it.
                    if *relative {
                        stmt.span.end
                    } else {
                        bound.span.end
                    },
                )
            }
            SearchStmtKind::Base(i) => (format!("base {}", i.name), i.span.end),
            SearchStmtKind::Setting { key, value } => {
                let (v, end) = match value {
                    SettingValue::Single(n) => (n.text.clone(), n.span.end),
                    SettingValue::Range(a, b) => (format!("{} -> {}", a.text, b.text), b.span.end),
                    SettingValue::List(v) => (
                        format!("[{}]", join_numbers(&v[..])),
                        numbers_end(&v[..]).max(key.span.end),
                    ),
                };
                (format!("{} {v}", key.name), end)
            }
        };
        (Code::Plain(code), self.close_end(last.max(start)))
    }

    /// Lay out a body's entries (stage tables) and append them as lines.
    fn push_entries(&mut self, entries: Vec<Entry>, indent: usize) {
        // Runs of stage lines: broken by blank lines and by other statements, not by comments.
        let mut widths: Vec<Option<(usize, usize, usize)>> = Vec::with_capacity(entries.len());
        let mut run: Vec<usize> = Vec::new();
        let close_run = |run: &mut Vec<usize>, widths: &mut Vec<Option<(usize, usize, usize)>>| {
            // Channels and repeats columns are at least 3 wide (`24 `, `x2 `), so that typical
            // tables line up across models.
            let mut w = (0, MIN_COLUMN, 0);
            for &i in run.iter() {
                if let Some(Entry::Code {
                    code: Code::Stage(r),
                    ..
                }) = entries.get(i)
                {
                    w.0 = w.0.max(r.kind.chars().count());
                    w.1 = w.1.max(r.channels.chars().count());
                    if let Some(x) = &r.repeats {
                        w.2 = w.2.max(x.chars().count()).max(MIN_COLUMN);
                    }
                }
            }
            for &i in run.iter() {
                if let Some(slot) = widths.get_mut(i) {
                    *slot = Some(w);
                }
            }
            run.clear();
        };
        for (i, e) in entries.iter().enumerate() {
            widths.push(None);
            match e {
                Entry::Code {
                    code: Code::Stage(_),
                    ..
                } => run.push(i),
                Entry::Blank
                | Entry::Code {
                    code: Code::Plain(_),
                    ..
                } => close_run(&mut run, &mut widths),
                Entry::Note(_) => {}
            }
        }
        close_run(&mut run, &mut widths);

        for (e, w) in entries.into_iter().zip(widths) {
            let line = match e {
                Entry::Blank => Line::Blank,
                Entry::Note(text) => Line::Text {
                    indent,
                    code: text,
                    trailing: None,
                },
                Entry::Code { code, trailing } => {
                    let code = match code {
                        Code::Plain(s) => s,
                        Code::Stage(r) => stage_text(&r, w.unwrap_or((0, 0, 0))),
                    };
                    Line::Text {
                        indent,
                        code,
                        trailing,
                    }
                }
            };
            self.lines.push(line);
        }
    }
}

fn stage_text(r: &StageRow, (kind_w, ch_w, rep_w): (usize, usize, usize)) -> String {
    // `then` is padded to `stage`'s width so that a stage's block strings line up.
    let keyword = if r.then { "then " } else { "stage" };
    let mut cells = vec![keyword.to_string(), format!("{:<kind_w$}", r.kind)];
    if !r.params.is_empty() {
        cells.push(r.params.clone());
    }
    cells.push("->".to_string());
    cells.push(format!("{:<ch_w$}", r.channels));
    if rep_w > 0 {
        cells.push(format!("{:<rep_w$}", r.repeats.as_deref().unwrap_or("")));
    }
    cells.extend(r.rest.iter().cloned());
    cells.join(" ").trim_end().to_string()
}

/// The final text: trailing comments aligned per run, no trailing spaces, a final newline.
fn render(lines: &[Line]) -> String {
    // Column of the trailing comment for each line: runs of consecutive lines with the same
    // indentation that all have one.
    let mut cols = vec![0usize; lines.len()];
    let mut i = 0;
    while i < lines.len() {
        let Some(Line::Text {
            indent,
            trailing: Some(_),
            ..
        }) = lines.get(i)
        else {
            i += 1;
            continue;
        };
        let mut j = i;
        let mut width = 0;
        while let Some(Line::Text {
            indent: ind,
            code,
            trailing: Some(_),
        }) = lines.get(j)
        {
            if ind != indent {
                break;
            }
            width = width.max(code.chars().count());
            j += 1;
        }
        for c in cols.iter_mut().take(j).skip(i) {
            *c = width + 2;
        }
        i = j;
    }
    let mut out = String::new();
    for (line, col) in lines.iter().zip(cols) {
        if let Line::Text {
            indent,
            code,
            trailing,
        } = line
        {
            let mut s = " ".repeat(*indent);
            s.push_str(code);
            if let Some(t) = trailing {
                let pad = col.saturating_sub(code.chars().count()).max(1);
                s.push_str(&" ".repeat(pad));
                s.push_str(t);
            }
            out.push_str(s.trim_end());
        }
        out.push('\n');
    }
    out
}

fn model_header(m: &Model) -> String {
    let mut s = format!("model {}", m.name.name);
    if let Some(d) = &m.derivation {
        s.push_str(&format!(" = {}", d.base.name));
        if !d.scale.is_empty() {
            s.push_str(&format!(" scaled {}", scale_args(&d.scale)));
        }
    }
    s
}

fn parts_text(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Named(id) => id.name.clone(),
            Part::Stages { from, to, .. } => match to {
                Some(t) => format!("stages {}..{}", from.text, t.text),
                None => format!("stages {}", from.text),
            },
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn parts_end(parts: &[Part]) -> usize {
    parts.iter().map(|p| p.span().end).max().unwrap_or(0)
}

fn schedule_header(s: &Schedule) -> String {
    match &s.name {
        Some(n) => format!("schedule {} for {}", n.name, s.model.name),
        None => format!("schedule {}", s.model.name),
    }
}

fn join_numbers(v: &[Number]) -> String {
    v.iter()
        .map(|n| n.text.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn tuple(v: &[Number]) -> String {
    format!("({})", join_numbers(v))
}

fn numbers_end(v: &[Number]) -> usize {
    v.iter().map(|n| n.span.end).max().unwrap_or(0)
}

fn kwargs(args: &[KwArg]) -> String {
    if args.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = args
        .iter()
        .map(|a| {
            let v = match &a.value {
                Value::Number(n) => n.text.clone(),
                Value::Ident(i) => i.name.clone(),
            };
            format!("{} = {v}", a.key.name)
        })
        .collect();
    format!("({})", parts.join(", "))
}

fn args_end(args: &[KwArg]) -> usize {
    args.iter()
        .map(|a| a.span.end.max(a.value.span().end))
        .max()
        .unwrap_or(0)
}

fn decay_text(d: &Decay) -> String {
    format!("{}{}", d.kind.name, kwargs(&d.args))
}

fn scale_args(args: &[ScaleArg]) -> String {
    args.iter()
        .map(|a| match &a.value {
            ScaleValue::Number(n) => format!("{} {}", a.key.name, n.text),
            ScaleValue::Tuple(v) => format!("{}{}", a.key.name, tuple(v)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A choice as written: `{fused|mbconv}`, `{3|5}`, `{1..4}`.
fn choice_text(c: &Choice) -> String {
    match (c.range, c.alternatives.first(), c.alternatives.last()) {
        (true, Some(a), Some(b)) => format!("{{{}..{}}}", a.text(), b.text()),
        _ => format!(
            "{{{}}}",
            c.alternatives
                .iter()
                .map(Alternative::text)
                .collect::<Vec<_>>()
                .join("|")
        ),
    }
}

/// The value of `target` in `l`: its choice when it has one, else `written`.
fn value_text(l: &Layer, target: ChoiceTarget, written: &str) -> String {
    l.choices
        .iter()
        .find(|c| c.target == target)
        .map(choice_text)
        .unwrap_or_else(|| written.to_string())
}

fn params(l: &Layer) -> String {
    l.params
        .iter()
        .map(|p| {
            let values: Vec<&str> = p.values.iter().map(|v| v.text.as_str()).collect();
            let v = value_text(l, ChoiceTarget::Param(p.letter), &values.join("."));
            format!("{}{v}", p.letter)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn option(l: &Layer, o: &LayerOpt) -> String {
    match &o.kind {
        LayerOptKind::Repeats(n) => format!("x{}", value_text(l, ChoiceTarget::Repeats, &n.text)),
        LayerOptKind::Se(n) => format!("se {}", value_text(l, ChoiceTarget::Se, &n.text)),
        LayerOptKind::Skip => "skip".to_string(),
        LayerOptKind::NoSkip => "noskip".to_string(),
        LayerOptKind::Act(i) => format!("act {}", i.name),
        LayerOptKind::Depth(n) => format!("depth {}", n.text),
        LayerOptKind::Fixed => "fixed".to_string(),
        LayerOptKind::ForceIn(n) => format!("fc {}", n.text),
        LayerOptKind::GroupSize(n) => format!("gs {}", n.text),
        LayerOptKind::SpaceToDepth => "s2d".to_string(),
        LayerOptKind::Prune(args) => {
            let args: Vec<String> = args
                .iter()
                .map(|a| {
                    let v: Vec<&str> = a.values.iter().map(|n| n.text.as_str()).collect();
                    if a.list {
                        format!("{} = ({})", a.key.name, v.join(", "))
                    } else {
                        format!("{} = {}", a.key.name, v.join(", "))
                    }
                })
                .collect();
            format!("prune({})", args.join(", "))
        }
        LayerOptKind::Experts(n) => format!("cc {}", n.text),
    }
}

/// `KIND k3 s2 -> 24 OPTIONS`, single-spaced (stems and heads).
fn layer(l: &Layer) -> String {
    let mut cells = vec![value_text(l, ChoiceTarget::Kind, &l.kind.name)];
    let p = params(l);
    if !p.is_empty() {
        cells.push(p);
    }
    cells.push("->".to_string());
    cells.push(value_text(l, ChoiceTarget::Channels, &l.channels.text));
    cells.extend(l.options.iter().map(|o| option(l, o)));
    cells.join(" ")
}

fn layer_end(l: &Layer) -> usize {
    let mut end = l.kind.span.end.max(l.channels.span.end);
    for p in &l.params {
        end = end.max(p.span.end);
    }
    for o in &l.options {
        end = end.max(o.span.end);
    }
    for c in &l.choices {
        end = end.max(c.span.end);
    }
    end
}

fn stage_row(l: &Layer, then: bool) -> StageRow {
    let (repeats, rest) = match l.options.split_first() {
        Some((
            LayerOpt {
                kind: LayerOptKind::Repeats(n),
                ..
            },
            rest,
        )) => (
            Some(format!(
                "x{}",
                value_text(l, ChoiceTarget::Repeats, &n.text)
            )),
            rest,
        ),
        _ => (None, l.options.as_slice()),
    };
    StageRow {
        then,
        kind: value_text(l, ChoiceTarget::Kind, &l.kind.name),
        params: params(l),
        channels: value_text(l, ChoiceTarget::Channels, &l.channels.text),
        repeats,
        rest: rest.iter().map(|o| option(l, o)).collect(),
    }
}
