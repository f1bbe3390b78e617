//! The git that `pochi diff` needs, run as a process: the repository, the revision's
//! commit, whether a file exists there, and a temporary worktree that is always removed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What went wrong with git, each with what to do.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(super) enum GitError {
    #[error("cannot run git: {0}")]
    #[diagnostic(help("install git and make sure it is on PATH"))]
    NotRunnable(String),
    #[error("{0} is not in a git repository")]
    #[diagnostic(help(
        "`pochi diff` compares the working tree with a git revision; run it inside a git repository (`git init`, or a clone)"
    ))]
    NotARepository(String),
    #[error("unknown revision `{rev}`: {reason}")]
    #[diagnostic(help(
        "name a commit, branch or tag that exists here (`git log --oneline`); in CI, fetch it first (actions/checkout with `fetch-depth: 0`, or `git fetch origin main`)"
    ))]
    UnknownRevision { rev: String, reason: String },
    #[error("the pipeline {path} does not exist at {rev}")]
    #[diagnostic(help(
        "it is new in the working tree, or was moved; compare against a revision that has it (`git log --oneline -- {path}`)"
    ))]
    PipelineMissing { path: String, rev: String },
    #[error("cannot create a worktree of {rev} in {dir}: {reason}")]
    #[diagnostic(help(
        "`git worktree list` shows the worktrees; `git worktree prune` forgets removed ones"
    ))]
    Worktree {
        rev: String,
        dir: String,
        reason: String,
    },
}

/// A git command that ran and failed: the first line of its stderr (empty if none).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{first_line}")]
struct Refused {
    first_line: String,
}

/// Runs `git -C dir ARGS`; its stdout (trimmed), or its stderr's first line as the error.
fn git(dir: &Path, args: &[&str]) -> Result<Result<String, Refused>, GitError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| GitError::NotRunnable(e.to_string()))?;
    if output.status.success() {
        return Ok(Ok(String::from_utf8_lossy(&output.stdout)
            .trim()
            .to_string()));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    Ok(Err(Refused {
        first_line: first.trim().to_string(),
    }))
}

/// The top directory of the repository that holds `dir`.
pub(super) fn toplevel(dir: &Path) -> Result<PathBuf, GitError> {
    match git(dir, &["rev-parse", "--show-toplevel"])? {
        Ok(top) => Ok(PathBuf::from(top)),
        Err(_) => Err(GitError::NotARepository(dir.display().to_string())),
    }
}

/// The commit that `rev` names.
pub(super) fn commit_of(repo: &Path, rev: &str) -> Result<String, GitError> {
    let spec = format!("{rev}^{{commit}}");
    match git(repo, &["rev-parse", "--verify", "--end-of-options", &spec])? {
        Ok(commit) => Ok(commit),
        Err(Refused { first_line }) => Err(GitError::UnknownRevision {
            rev: rev.to_string(),
            reason: match first_line.is_empty() {
                true => "git knows no such commit".into(),
                false => first_line,
            },
        }),
    }
}

/// Whether `path` (relative to the repository's top) exists in `commit`.
pub(super) fn exists_at(repo: &Path, commit: &str, path: &Path) -> Result<bool, GitError> {
    let object = format!("{commit}:{}", path.display());
    Ok(git(repo, &["cat-file", "-e", &object])?.is_ok())
}

/// A detached worktree of one commit in a temporary directory, removed when dropped
/// (also after an error or Ctrl-C, which end the command through the same return).
#[derive(Debug)]
pub(super) struct Worktree {
    repo: PathBuf,
    pub path: PathBuf,
}

impl Worktree {
    pub(super) fn add(repo: &Path, commit: &str, rev: &str) -> Result<Worktree, GitError> {
        let parent = tempfile::Builder::new()
            .prefix("pochi-diff-")
            .tempdir()
            .map_err(|e| GitError::Worktree {
                rev: rev.into(),
                dir: std::env::temp_dir().display().to_string(),
                reason: e.to_string(),
            })?
            .keep();
        let path = parent.join("baseline");
        let path_text = path.display().to_string();
        let added = git(
            repo,
            &["worktree", "add", "--detach", "--quiet", &path_text, commit],
        )?;
        let worktree = Worktree {
            repo: repo.to_path_buf(),
            path,
        };
        match added {
            Ok(_) => Ok(worktree),
            Err(Refused { first_line }) => Err(GitError::Worktree {
                rev: rev.into(),
                dir: path_text,
                reason: first_line,
            }),
        }
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        let path = self.path.display().to_string();
        let _ = git(&self.repo, &["worktree", "remove", "--force", &path]);
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
        let _ = git(&self.repo, &["worktree", "prune"]);
    }
}
