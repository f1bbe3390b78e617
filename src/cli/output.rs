//! How pochi talks to people: errors as `error:` with causes and hints, colour only on a
//! terminal and never with `NO_COLOR`.

use std::io::IsTerminal;

use miette::{GraphicalReportHandler, GraphicalTheme};

/// Whether stderr gets colour.
pub(super) fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stderr().is_terminal()
        && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true)
}

/// Wraps `text` in an ANSI style when colour is on.
pub(super) fn paint(text: &str, code: &str) -> String {
    if color() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Prints one line on stderr, made safe for a terminal (see `sanitize`).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stderr(&format!("{}\n", $crate::cli::output::sanitize(&format!($($arg)*))))
    };
}

/// Prints one line on stderr with pochi's prefix, `pochi: `, made safe for a terminal:
/// the one place the prefix is written.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stderr(&format!("pochi: {}\n", $crate::cli::output::sanitize(&format!($($arg)*))))
    };
}

/// Prints one line on stdout, made safe for a terminal (see `sanitize`).
macro_rules! show {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(&format!("{}\n", $crate::cli::output::sanitize(&format!($($arg)*))))
    };
}

pub(crate) use {note, say, show};

/// Set when a write to stdout failed for another reason than a reader going away: the
/// command then ends with status 1 (`stdout_failed`), whatever it did.
static STDOUT_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The one place pochi writes to stdout. A reader that went away (`pochi graph | head`)
/// is no error: the rest is dropped. Any other write error (a full disk) is said once on
/// stderr and makes the command fail.
pub(super) fn write_stdout(text: &str) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
        && !STDOUT_FAILED.swap(true, Ordering::SeqCst)
    {
        write_stderr(&format!("error: cannot write to stdout: {e}\n"));
    }
}

/// Whether some output to stdout was lost (see `write_stdout`).
pub(super) fn stdout_failed() -> bool {
    STDOUT_FAILED.load(std::sync::atomic::Ordering::SeqCst)
}

/// The one place pochi writes to stderr (progress bars aside, which `indicatif` draws).
pub(super) fn write_stderr(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Tells people what happens, on stderr with the `pochi:` prefix (e.g. while the
/// toolchain is created).
pub(super) fn note_line(message: &str) {
    note!("{message}");
}

/// `text` made safe to print: file names, stage output and values from a pipeline may hold
/// escape sequences that would clear the screen or move the cursor. Control characters
/// other than newline and tab become visible (`\u{1b}`); colour sequences (`ESC [ ... m`,
/// which only change colours) are kept when colour is on and dropped otherwise.
pub(super) fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    sanitize_with(text, color())
}

/// `sanitize`, keeping colour sequences only when `keep_color`.
fn sanitize_with(text: &str, keep_color: bool) -> std::borrow::Cow<'_, str> {
    let is_unsafe = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(is_unsafe) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(len) = sgr_len(rest) {
            if keep_color {
                out.push_str(&rest[..len]);
            }
            rest = &rest[len..];
            continue;
        }
        if is_unsafe(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

/// The length of a colour sequence (`ESC [ digits and ; m`) at the start of `text`.
fn sgr_len(text: &str) -> Option<usize> {
    let params = text.strip_prefix("\x1b[")?;
    let digits = params
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    (params.as_bytes().get(digits) == Some(&b'm')).then_some(2 + digits + 1)
}

pub(super) fn print_error(report: &miette::Report) {
    let diagnostic: &dyn miette::Diagnostic = report.as_ref();
    write_stderr(&format!("{}\n", render_error(diagnostic, color()).trim()));
}

/// An error as pochi prints it: `error:`, the source snippet with its label, the causes and
/// `help:`, made safe to print (see `sanitize`; with `color` off, no escape sequence at all).
/// A label further right than miette can draw (past column 65,535, where its renderer
/// panics) is shown as `file:line:col` without the snippet.
pub fn render_error(diagnostic: &dyn miette::Diagnostic, color: bool) -> String {
    render(diagnostic, color, true)
}

/// `render_error` without wrapping long lines (a stage's failure, whose lines are a
/// tool's own output and paths, is shown as the tool wrote it).
pub(super) fn render_error_unwrapped(diagnostic: &dyn miette::Diagnostic, color: bool) -> String {
    render(diagnostic, color, false)
}

fn render(diagnostic: &dyn miette::Diagnostic, color: bool, wrap: bool) -> String {
    let mut theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    theme.characters.error = if color {
        "\x1b[1;31merror:\x1b[0m".to_string()
    } else {
        "error:".to_string()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_cause_chain()
        .with_width(100)
        .with_wrap_lines(wrap)
        .with_break_words(false)
        .with_word_separator(textwrap::WordSeparator::AsciiSpace)
        .with_word_splitter(textwrap::WordSplitter::NoHyphenation);
    let mut text = String::new();
    let rendered = match far_label(diagnostic) {
        None => handler.render_report(&mut text, diagnostic),
        Some(location) => handler.render_report(
            &mut text,
            &WithoutSnippet {
                inner: diagnostic,
                location,
            },
        ),
    };
    if rendered.is_err() {
        text = format!("error: {diagnostic}");
    }
    sanitize_with(&text, color).into_owned()
}

/// The widest line miette draws a label on: beyond it, its renderer panics.
const MAX_LABEL_COLUMN: usize = 60_000;

/// `file:line:col` of the first label, if a label's line is too wide to draw.
fn far_label(diagnostic: &dyn miette::Diagnostic) -> Option<String> {
    let source = diagnostic.source_code()?;
    let labels: Vec<miette::LabeledSpan> = diagnostic.labels()?.collect();
    // The whole text: every line around offset 0.
    let whole = source
        .read_span(&(0..0).into(), usize::MAX / 2, usize::MAX / 2)
        .ok()?;
    let text = String::from_utf8_lossy(whole.data());
    let line_of = |offset: usize| {
        let offset = offset.min(text.len());
        let start = text[..offset].rfind('\n').map_or(0, |n| n + 1);
        let end = text[offset..].find('\n').map_or(text.len(), |n| offset + n);
        (start, end)
    };
    let width = |line: &str| {
        line.chars()
            .map(|c| if c == '\t' { 4 } else { 1 })
            .sum::<usize>()
    };
    let too_wide = labels.iter().any(|label| {
        let (start, end) = line_of(label.offset());
        width(&text[start..end]) > MAX_LABEL_COLUMN
    });
    if !too_wide {
        return None;
    }
    let first = labels.first()?.offset().min(text.len());
    let line = text[..first].matches('\n').count() + 1;
    let column = first - line_of(first).0 + 1;
    let name = whole.name().unwrap_or("the pipeline file").to_string();
    Some(format!("{name}:{line}:{column}"))
}

/// A diagnostic shown without its source snippet, its location in the message instead.
#[derive(Debug)]
struct WithoutSnippet<'a> {
    inner: &'a dyn miette::Diagnostic,
    location: String,
}

impl std::fmt::Display for WithoutSnippet<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (at {}; the line is too long to show)",
            self.inner, self.location
        )
    }
}

impl std::error::Error for WithoutSnippet<'_> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

impl miette::Diagnostic for WithoutSnippet<'_> {
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.inner.help()
    }
}

/// A hand-made error with a hint, for failures that are not a typed error elsewhere.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
pub(super) struct Failure {
    pub message: String,
    #[help]
    pub hint: Option<String>,
}

pub(super) fn failure(message: impl Into<String>, hint: impl Into<String>) -> miette::Report {
    miette::Report::new(Failure {
        message: message.into(),
        hint: Some(hint.into()),
    })
}

/// Formats a duration as people read it: 350ms, 1.2s, 2m03s.
pub(super) fn duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9: a long path in a message is never broken inside the path, in an error or
    /// a stage failure, whatever the wrapping width.
    #[test]
    fn long_paths_are_not_broken_mid_word() {
        let path = format!("/{}/model.onnx", "very_long_directory_name".repeat(8));
        let error = Failure {
            message: format!(
                "cannot read {path}: no such file or directory, so the stage cannot run"
            ),
            hint: Some(format!(
                "check that {path} exists, or change the `onnx` key"
            )),
        };
        for rendered in [
            render_error(&error, false),
            render_error_unwrapped(&error, false),
        ] {
            assert_eq!(rendered.matches(&path).count(), 2, "{rendered}");
        }
        assert!(
            render_error_unwrapped(&error, false)
                .contains("no such file or directory, so the stage cannot run"),
            "a stage failure keeps its lines as written"
        );
    }

    #[test]
    fn sanitize_makes_escapes_visible_and_drops_colour_off_a_terminal() {
        // Tests do not run on a terminal, so colour is off.
        assert_eq!(sanitize("plain\ntext\t"), "plain\ntext\t");
        assert_eq!(sanitize("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(sanitize("\x1b[1;31mred\x1b[0m"), "red");
        assert_eq!(sanitize("bell\x07\r"), "bell\\u{7}\\u{d}");
        assert_eq!(sanitize("c1\u{9b}2J"), "c1\\u{9b}2J");
    }
}
