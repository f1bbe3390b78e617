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
    eprintln!("{}", text.trim());
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
