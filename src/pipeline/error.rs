//! Errors in a pipeline file: each one points at file:line:col with the span and a hint.

use std::path::PathBuf;
use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};

/// The text of one pipeline file, shared by every error that points into it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: Arc<String>,
    /// Where the piece being parsed starts in `text` (0 but while a stage section is
    /// parsed on its own): spans of that piece are shifted by it.
    offset: usize,
}

impl SourceFile {
    pub fn new(name: String, text: String) -> Self {
        Self {
            name,
            text: Arc::new(text),
            offset: 0,
        }
    }

    /// The same file, for parsing the piece of it that starts at byte `offset`.
    pub fn at(&self, offset: usize) -> SourceFile {
        SourceFile {
            name: self.name.clone(),
            text: Arc::clone(&self.text),
            offset,
        }
    }

    /// A span of the piece being parsed, as a span of the whole file.
    pub fn shift(&self, span: std::ops::Range<usize>) -> std::ops::Range<usize> {
        span.start + self.offset..span.end + self.offset
    }

    pub fn named_source(&self) -> NamedSource<Arc<String>> {
        NamedSource::new(self.name.clone(), Arc::clone(&self.text))
    }

    /// The 1-based line and column of byte `offset`.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(before.len(), |n| before.len() - n - 1)
            + 1;
        (line, column)
    }

    /// An error at `span` in this file.
    pub fn error(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> SpanError {
        SpanError(Box::new(SpanDetails {
            message: message.into(),
            src: self.named_source(),
            span: self.shift(span).into(),
            label: "here".into(),
            other: None,
            help: None,
            offset: self.offset,
        }))
    }
}

/// A problem located in the pipeline file (boxed: errors stay one pointer wide).
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error(transparent)]
#[diagnostic(transparent)]
pub struct SpanError(Box<SpanDetails>);

#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub(super) struct SpanDetails {
    pub message: String,
    #[source_code]
    pub src: NamedSource<Arc<String>>,
    /// The primary label: `file:line:col` in the header is its start, even when the
    /// second label comes first in the file.
    #[label(primary, "{label}")]
    pub span: SourceSpan,
    pub label: String,
    #[label("also here")]
    pub other: Option<SourceSpan>,
    #[help]
    pub help: Option<String>,
    /// The offset of the piece the spans came from (see `SourceFile::at`), for `also`.
    offset: usize,
}

impl SpanError {
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.0.label = label.into();
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.0.help = Some(help.into());
        self
    }

    /// Where the error points, in the whole file.
    pub fn span(&self) -> std::ops::Range<usize> {
        let span = self.0.span;
        span.offset()..span.offset() + span.len()
    }

    /// Whether the error already points at a second place.
    pub fn has_also(&self) -> bool {
        self.0.other.is_some()
    }

    /// The message with `suffix` appended.
    pub fn with_suffix(mut self, suffix: impl AsRef<str>) -> Self {
        self.0.message.push_str(suffix.as_ref());
        self
    }

    pub fn also(mut self, span: std::ops::Range<usize>) -> Self {
        let offset = self.0.offset;
        self.0.other = Some((span.start + offset..span.end + offset).into());
        self
    }
}

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum PipelineError {
    #[error("cannot read pipeline file `{}`", path.display())]
    #[diagnostic(help("check the path; pipeline files are TOML, e.g. pipelines/resnet18.toml"))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    At(#[from] SpanError),
}
