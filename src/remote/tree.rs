//! Output directories from their `Tree` messages: fetched, their files listed (to ask the
//! store which it lacks) and written with every file verified against its digest. Names
//! and links come from the server, so the whole tree is checked before anything is
//! written (names valid, sorted and unique in each directory; every link, followed through
//! the other links of the tree, resolving inside the destination), and then written
//! relative to directory handles that never follow a link, links last: nothing is written
//! outside the destination.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;
use rustix::fs::{Mode, OFlags};

use super::CacheBackend;
use super::digest::Digest;
use super::error::RemoteError;
use super::verify::set_mode;

/// Deepest directory nesting accepted from a server (a guard against cycles).
const MAX_DEPTH: usize = 256;
/// Most entries (files, directories, links) a tree may expand to: a directory listed many
/// times over could otherwise expand without end.
const MAX_ENTRIES: usize = 1 << 20;
/// Most links followed to resolve one link, as the kernel's own limit (ELOOP).
const MAX_LINK_HOPS: u32 = 40;

/// The largest `Tree` held in memory: about 600,000 files. A digest that claims more is
/// refused before a byte is read (a server could otherwise make pochi buffer gigabytes).
const MAX_TREE_BYTES: u64 = 64 << 20;

/// Downloads a `Tree` (verified) and decodes it.
pub(crate) fn fetch_tree(
    backend: &dyn CacheBackend,
    digest: &Digest,
) -> Result<re::Tree, RemoteError> {
    if digest.size() > MAX_TREE_BYTES {
        return Err(RemoteError::RefusedTree {
            endpoint: backend.endpoint().to_string(),
            detail: format!(
                "{digest} claims {} bytes, over the {} MiB pochi holds in memory for a tree",
                digest.size(),
                MAX_TREE_BYTES >> 20
            ),
        });
    }
    let bytes = backend.download_bytes(digest)?;
    re::Tree::decode(bytes.as_slice()).map_err(|e| RemoteError::Protocol {
        endpoint: backend.endpoint().to_string(),
        what: "Tree",
        detail: format!("{digest}: {e}"),
    })
}

/// The digests of every file a `Tree` names (blobs may repeat).
pub(crate) fn tree_files(tree: &re::Tree) -> Result<Vec<Digest>, RemoteError> {
    tree.root
        .iter()
        .chain(&tree.children)
        .flat_map(|dir| &dir.files)
        .map(|file| match &file.digest {
            Some(digest) => Digest::from_proto(digest),
            None => Err(RemoteError::InvalidDigest {
                digest: String::new(),
                reason: format!("file `{}` of a Tree has no digest", file.name),
            }),
        })
        .collect()
}

/// Writes a `Tree` under `dest` (created if needed), every file downloaded and verified,
/// once the whole tree has passed `check_tree`.
pub(crate) fn write_tree(
    backend: &dyn CacheBackend,
    tree: &re::Tree,
    dest: &Path,
) -> Result<(), RemoteError> {
    let name = backend.endpoint().to_string();
    let function = backend.digest_function()?;
    let children: HashMap<Digest, &re::Directory> = tree
        .children
        .iter()
        .map(|d| (Digest::of_bytes(function, &d.encode_to_vec()), d))
        .collect();
    let empty = re::Directory::default();
    let root = tree.root.as_ref().unwrap_or(&empty);
    let shape = Shape {
        endpoint: &name,
        children: &children,
    };
    shape.check(root)?;
    create_dir(dest)?;
    let staging = Staging::beside(dest)?;
    let writer = TreeWriter {
        backend,
        shape,
        staging,
        staged: std::cell::Cell::new(0),
    };
    let dest_dir = open_dir(rustix::fs::CWD, dest, dest)?;
    writer.write_entries(root, &dest_dir, dest)?;
    writer.write_links(root, &dest_dir, dest)
}

/// How a tree's directories are found, and the checks on them.
#[derive(Clone, Copy)]
struct Shape<'a> {
    endpoint: &'a str,
    children: &'a HashMap<Digest, &'a re::Directory>,
}

/// One entry of a checked tree, by its path from the root.
enum Entry {
    File,
    Dir,
    Link(String),
}

impl Shape<'_> {
    /// Checks the whole tree before anything is written: every name valid, each list
    /// sorted, no name twice in a directory, every directory present, the expansion
    /// bounded, and every link resolving inside the destination.
    fn check(&self, root: &re::Directory) -> Result<(), RemoteError> {
        let mut entries: HashMap<Vec<String>, Entry> = HashMap::new();
        let mut links = Vec::new();
        self.collect(root, &mut Vec::new(), &mut entries, &mut links)?;
        for (path, target) in links {
            let dir = &path[..path.len() - 1];
            let mut hops = 0;
            resolve(&entries, dir, &target, &mut hops).map_err(|why| {
                self.malformed(format!("the link `{}` -> `{target}` {why}", path.join("/")))
            })?;
        }
        Ok(())
    }

    fn collect(
        &self,
        dir: &re::Directory,
        path: &mut Vec<String>,
        entries: &mut HashMap<Vec<String>, Entry>,
        links: &mut Vec<(Vec<String>, String)>,
    ) -> Result<(), RemoteError> {
        if path.len() > MAX_DEPTH {
            return Err(self.malformed(format!("directories nest deeper than {MAX_DEPTH}")));
        }
        self.check_names(dir, path)?;
        let mut add = |path: &Vec<String>, name: &str, entry: Entry| {
            let mut full = path.clone();
            full.push(name.to_owned());
            entries.insert(full, entry);
        };
        for file in &dir.files {
            add(path, &file.name, Entry::File);
        }
        for link in &dir.symlinks {
            add(path, &link.name, Entry::Link(link.target.clone()));
            let mut full = path.clone();
            full.push(link.name.clone());
            links.push((full, link.target.clone()));
        }
        for node in &dir.directories {
            add(path, &node.name, Entry::Dir);
        }
        if entries.len() > MAX_ENTRIES {
            return Err(self.malformed(format!("it expands to more than {MAX_ENTRIES} entries")));
        }
        for node in &dir.directories {
            let child = self.child(node)?;
            path.push(node.name.clone());
            self.collect(child, path, entries, links)?;
            path.pop();
        }
        Ok(())
    }

    /// Each name valid; the files, directories and links each sorted by name, as REAPI
    /// requires; no name twice in the directory, across the three lists.
    fn check_names(&self, dir: &re::Directory, path: &[String]) -> Result<(), RemoteError> {
        let lists: [Vec<&str>; 3] = [
            dir.files.iter().map(|f| f.name.as_str()).collect(),
            dir.directories.iter().map(|d| d.name.as_str()).collect(),
            dir.symlinks.iter().map(|l| l.name.as_str()).collect(),
        ];
        let mut seen = HashSet::new();
        for names in &lists {
            for name in names {
                check_name(self.endpoint, name)?;
                if !seen.insert(*name) {
                    return Err(self.malformed(format!(
                        "`{}` is listed twice in its directory",
                        joined(path, name)
                    )));
                }
            }
            if let Some(pair) = names.windows(2).find(|pair| pair[0] >= pair[1]) {
                return Err(self.malformed(format!(
                    "the names `{}` and `{}` are not sorted",
                    joined(path, pair[0]),
                    joined(path, pair[1])
                )));
            }
        }
        Ok(())
    }

    fn child(&self, node: &re::DirectoryNode) -> Result<&re::Directory, RemoteError> {
        let digest = self.digest(node.digest.as_ref())?;
        self.children.get(&digest).copied().ok_or_else(|| {
            self.malformed(format!(
                "the tree lacks directory {digest} (`{}`)",
                node.name
            ))
        })
    }

    fn digest(&self, digest: Option<&re::Digest>) -> Result<Digest, RemoteError> {
        Digest::from_proto(digest.ok_or_else(|| self.malformed("a node without a digest".into()))?)
    }

    fn malformed(&self, detail: String) -> RemoteError {
        RemoteError::RefusedTree {
            endpoint: self.endpoint.to_owned(),
            detail,
        }
    }
}

fn joined(path: &[String], name: &str) -> String {
    let mut parts = path.to_vec();
    parts.push(name.to_owned());
    parts.join("/")
}

/// Where the link `target`, in directory `dir`, leads: every link met on the way is
/// followed through the tree's own entries, as the kernel would. An error when it climbs
/// above the destination, is absolute, or takes too many links.
fn resolve(
    entries: &HashMap<Vec<String>, Entry>,
    dir: &[String],
    target: &str,
    hops: &mut u32,
) -> Result<Vec<String>, &'static str> {
    *hops += 1;
    if *hops > MAX_LINK_HOPS {
        return Err("takes too many links to resolve");
    }
    if target.is_empty() {
        return Err("is empty");
    }
    let mut at = dir.to_vec();
    for component in Path::new(target).components() {
        match component {
            Component::Normal(name) => {
                at.push(name.to_string_lossy().into_owned());
                if let Some(Entry::Link(next)) = entries.get(&at) {
                    let next = next.clone();
                    at.pop();
                    at = resolve(entries, &at, &next, hops)?;
                }
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if at.pop().is_none() {
                    return Err("leads outside the output");
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    Ok(at)
}

fn check_name(endpoint: &str, name: &str) -> Result<(), RemoteError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(RemoteError::UnsafePath {
            endpoint: endpoint.to_owned(),
            path: name.to_owned(),
        });
    }
    Ok(())
}

/// A directory beside the destination where each file is downloaded and verified before it
/// is renamed into the tree (removed when dropped).
struct Staging {
    dir: tempfile::TempDir,
    handle: OwnedFd,
}

impl Staging {
    fn beside(dest: &Path) -> Result<Staging, RemoteError> {
        let parent = dest.parent().unwrap_or(Path::new("."));
        let dir = tempfile::Builder::new()
            .prefix(".pochi-tree-")
            .tempdir_in(parent)
            .map_err(|source| RemoteError::Io {
                action: "create a directory beside",
                path: dest.to_owned(),
                source,
            })?;
        let handle = open_dir(rustix::fs::CWD, dir.path(), dir.path())?;
        Ok(Staging { dir, handle })
    }
}

struct TreeWriter<'a> {
    backend: &'a dyn CacheBackend,
    shape: Shape<'a>,
    staging: Staging,
    staged: std::cell::Cell<u64>,
}

impl TreeWriter<'_> {
    /// Files and directories (links come last, once every directory exists), each created
    /// in its directory's handle: a name is never looked up through a link.
    fn write_entries(
        &self,
        dir: &re::Directory,
        handle: &OwnedFd,
        path: &Path,
    ) -> Result<(), RemoteError> {
        for file in &dir.files {
            let digest = self.shape.digest(file.digest.as_ref())?;
            let staged = format!("f{}", self.staged.get());
            self.staged.set(self.staged.get() + 1);
            let staged_path = self.staging.dir.path().join(&staged);
            self.backend.download_to_file(&digest, &staged_path)?;
            set_mode(&staged_path, file.is_executable).map_err(|source| RemoteError::Io {
                action: "set the mode of",
                path: staged_path.clone(),
                source,
            })?;
            rustix::fs::renameat(&self.staging.handle, &staged, handle, &file.name)
                .map_err(|e| io_error("move a download to", &path.join(&file.name), e))?;
        }
        for node in &dir.directories {
            let target = path.join(&node.name);
            rustix::fs::mkdirat(handle, &node.name, Mode::from_raw_mode(0o755))
                .map_err(|e| io_error("create the directory", &target, e))?;
            let child = open_dir(handle, Path::new(&node.name), &target)?;
            self.write_entries(self.shape.child(node)?, &child, &target)?;
        }
        Ok(())
    }

    /// The links, directory by directory, once everything else exists.
    fn write_links(
        &self,
        dir: &re::Directory,
        handle: &OwnedFd,
        path: &Path,
    ) -> Result<(), RemoteError> {
        for link in &dir.symlinks {
            rustix::fs::symlinkat(&link.target, handle, &link.name)
                .map_err(|e| io_error("create the symbolic link", &path.join(&link.name), e))?;
        }
        for node in &dir.directories {
            let target = path.join(&node.name);
            let child = open_dir(handle, Path::new(&node.name), &target)?;
            self.write_links(self.shape.child(node)?, &child, &target)?;
        }
        Ok(())
    }
}

/// Opens the directory `name` in `parent` without following a link.
fn open_dir(parent: impl AsFd, name: &Path, shown: &Path) -> Result<OwnedFd, RemoteError> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error("open the directory", shown, e))
}

fn io_error(action: &'static str, path: &Path, errno: rustix::io::Errno) -> RemoteError {
    RemoteError::Io {
        action,
        path: PathBuf::from(path),
        source: errno.into(),
    }
}

fn create_dir(path: &Path) -> Result<(), RemoteError> {
    fs::create_dir_all(path).map_err(|source| RemoteError::Io {
        action: "create the directory",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::digest::DigestFunction;

    const F: DigestFunction = DigestFunction::Sha256;

    fn file(name: &str) -> re::FileNode {
        re::FileNode {
            name: name.into(),
            digest: Some(Digest::of_bytes(F, b"x").to_proto()),
            ..Default::default()
        }
    }

    fn link(name: &str, target: &str) -> re::SymlinkNode {
        re::SymlinkNode {
            name: name.into(),
            target: target.into(),
            ..Default::default()
        }
    }

    fn node(name: &str, dir: &re::Directory) -> re::DirectoryNode {
        re::DirectoryNode {
            name: name.into(),
            digest: Some(Digest::of_bytes(F, &dir.encode_to_vec()).to_proto()),
        }
    }

    /// Checks a root whose subdirectories are `children`.
    fn check(root: re::Directory, children: &[re::Directory]) -> Result<(), RemoteError> {
        let children: HashMap<Digest, &re::Directory> = children
            .iter()
            .map(|d| (Digest::of_bytes(F, &d.encode_to_vec()), d))
            .collect();
        let shape = Shape {
            endpoint: "s",
            children: &children,
        };
        shape.check(&root)
    }

    fn links(list: &[(&str, &str)]) -> re::Directory {
        re::Directory {
            symlinks: list.iter().map(|(n, t)| link(n, t)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn links_that_stay_inside_pass() {
        let sub = re::Directory {
            files: vec![file("a")],
            symlinks: vec![link("up", "../top"), link("x", "a")],
            ..Default::default()
        };
        let root = re::Directory {
            files: vec![file("top")],
            directories: vec![node("d", &sub)],
            symlinks: vec![link("l", "d/x"), link("m", "d/up")],
            ..Default::default()
        };
        assert!(check(root, &[sub]).is_ok());
    }

    #[test]
    fn links_that_leave_are_refused_even_when_each_looks_safe() {
        assert!(check(links(&[("l", "..")]), &[]).is_err());
        assert!(check(links(&[("l", "/etc/passwd")]), &[]).is_err());
        assert!(check(links(&[("l", "")]), &[]).is_err());
        // Each target alone climbs no higher than its own directory; followed, they do.
        let sub = links(&[("l0", ".."), ("l1", "l0/.."), ("t", "l1/etc")]);
        let root = re::Directory {
            directories: vec![node("a", &sub)],
            ..Default::default()
        };
        assert!(check(root, std::slice::from_ref(&sub)).is_err());
        // A loop of links never resolves.
        assert!(check(links(&[("a", "b"), ("b", "a")]), &[]).is_err());
    }

    #[test]
    fn names_twice_or_unsorted_are_refused() {
        let sub = re::Directory::default();
        let twice = re::Directory {
            directories: vec![node("d", &sub), node("d", &sub)],
            ..Default::default()
        };
        assert!(check(twice, std::slice::from_ref(&sub)).is_err());
        let across = re::Directory {
            files: vec![file("t")],
            symlinks: vec![link("t", "x")],
            ..Default::default()
        };
        assert!(check(across, &[]).is_err());
        let unsorted = re::Directory {
            files: vec![file("b"), file("a")],
            ..Default::default()
        };
        assert!(check(unsorted, &[]).is_err());
        for bad in ["", ".", "..", "a/b"] {
            let root = re::Directory {
                files: vec![file(bad)],
                ..Default::default()
            };
            assert!(check(root, &[]).is_err(), "{bad:?}");
        }
    }
}
