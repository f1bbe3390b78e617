//! How pochi talks to people: errors as `error:` with causes and hints, colour only on a
//! terminal and never with `NO_COLOR`.

use std::io::IsTerminal;

use miette::{GraphicalReportHandler, GraphicalTheme};

/// Whether stderr gets colour.
pub fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stderr().is_terminal()
        && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true)
}

/// Wraps `text` in an ANSI style when colour is on.
pub fn paint(text: &str, code: &str) -> String {
    if color() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Prints one line on stderr, made safe for a terminal (see `sanitize`).
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::cli::output::sanitize(&format!($($arg)*)))
    };
}

/// Prints one line on stdout, made safe for a terminal (see `sanitize`).
macro_rules! show {
    ($($arg:tt)*) => {
        println!("{}", $crate::cli::output::sanitize(&format!($($arg)*)))
    };
}

pub(crate) use {say, show};

/// `text` made safe to print: file names, stage output and values from a pipeline may hold
/// escape sequences that would clear the screen or move the cursor. Control characters
/// other than newline and tab become visible (`\u{1b}`); colour sequences (`ESC [ ... m`,
/// which only change colours) are kept when colour is on and dropped otherwise.
pub fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    let is_unsafe = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(is_unsafe) {
        return std::borrow::Cow::Borrowed(text);
    }
    let keep_color = color();
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

pub fn print_error(report: &miette::Report) {
    let mut theme = if color() {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    theme.characters.error = paint("error:", "1;31");
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_cause_chain()
        .with_width(100);
    let mut text = String::new();
    let diagnostic: &dyn miette::Diagnostic = report.as_ref();
    if handler.render_report(&mut text, diagnostic).is_err() {
        text = format!("error: {report}");
    }
    eprintln!("{}", sanitize(text.trim()));
}

/// A hand-made error with a hint, for failures that are not a typed error elsewhere.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
pub struct Failure {
    pub message: String,
    #[help]
    pub hint: Option<String>,
}

pub fn failure(message: impl Into<String>, hint: impl Into<String>) -> miette::Report {
    miette::Report::new(Failure {
        message: message.into(),
        hint: Some(hint.into()),
    })
}

/// Formats a duration as people read it: 350ms, 1.2s, 2m03s.
pub fn duration(d: std::time::Duration) -> String {
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
