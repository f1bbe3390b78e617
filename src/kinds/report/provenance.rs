//! Where a report comes from, for its title: the pipeline, the date (UTC) and the git
//! commit the project is at, read from the repository's files (`HEAD`, loose refs,
//! `packed-refs`, worktree links); no `git` process is started.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::kinds::InvocationContext;

#[derive(Debug, Serialize)]
pub(super) struct Provenance {
    pub pipeline: String,
    /// When the report was written: "2026-12-01 14:35 UTC".
    pub date: String,
    /// The commit `HEAD` names when the project is in a git repository (uncommitted
    /// changes are not detected).
    pub commit: Option<String>,
}

pub(super) fn query(context: &InvocationContext) -> Provenance {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Provenance {
        pipeline: context
            .state_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        date: utc(seconds),
        commit: git_commit(&context.dir),
    }
}

/// "YYYY-MM-DD HH:MM UTC" of seconds since the Unix epoch (the proleptic Gregorian
/// calendar, by Howard Hinnant's days-to-civil algorithm).
pub(super) fn utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let minutes = (seconds % 86_400) / 60;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minutes / 60,
        minutes % 60
    )
}

/// The commit of `HEAD` of the repository holding `dir`, if any.
pub(super) fn git_commit(dir: &Path) -> Option<String> {
    let git_dir = dir.ancestors().find_map(|d| git_dir_of(&d.join(".git")))?;
    // A linked worktree keeps its HEAD in its own directory and the refs in the common one.
    let common = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(text) => git_dir.join(text.trim()),
        Err(_) => git_dir.clone(),
    };
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref:").map(str::trim) else {
        return is_hash(head).then(|| head.to_string());
    };
    for base in [&git_dir, &common] {
        if let Ok(text) = std::fs::read_to_string(base.join(reference)) {
            let text = text.trim();
            if is_hash(text) {
                return Some(text.to_string());
            }
        }
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (hash, name) = line.split_once(' ')?;
        (name.trim() == reference && is_hash(hash)).then(|| hash.to_string())
    })
}

/// `.git` as a directory, or a file `gitdir: PATH` (worktrees, submodules).
fn git_dir_of(dot_git: &Path) -> Option<PathBuf> {
    if dot_git.is_dir() {
        return Some(dot_git.to_path_buf());
    }
    let text = std::fs::read_to_string(dot_git).ok()?;
    let target = Path::new(text.trim().strip_prefix("gitdir:")?.trim());
    let base = dot_git.parent().unwrap_or(Path::new("."));
    Some(base.join(target)).filter(|p| p.is_dir())
}

fn is_hash(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        // 2000-02-29 12:34:56 UTC
        assert_eq!(utc(951_827_696), "2000-02-29 12:34 UTC");
        // 2026-12-01 14:35:00 UTC
        assert_eq!(utc(1_796_135_700), "2026-12-01 14:35 UTC");
    }

    #[test]
    fn the_commit_from_loose_and_packed_refs_and_a_worktree_link() {
        let repo = tempfile::tempdir().unwrap();
        let git = repo.path().join(".git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(
            git.join("packed-refs"),
            format!("# pack\n{b} refs/heads/main\n"),
        )
        .unwrap();
        let sub = repo.path().join("project/sub");
        std::fs::create_dir_all(&sub).unwrap();
        assert_eq!(git_commit(&sub), Some(b.clone()));
        std::fs::write(git.join("refs/heads/main"), format!("{a}\n")).unwrap();
        assert_eq!(git_commit(&sub), Some(a.clone()));
        // A linked worktree: `.git` is a file, HEAD detached.
        let linked = git.join("worktrees/w");
        std::fs::create_dir_all(&linked).unwrap();
        std::fs::write(linked.join("commondir"), "../..\n").unwrap();
        std::fs::write(linked.join("HEAD"), format!("{b}\n")).unwrap();
        let tree = tempfile::tempdir().unwrap();
        std::fs::write(
            tree.path().join(".git"),
            format!("gitdir: {}\n", linked.display()),
        )
        .unwrap();
        assert_eq!(git_commit(tree.path()), Some(b));
    }
}
