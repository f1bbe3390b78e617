//! Output directories from their `Tree` messages: fetched, their files listed (to ask the
//! store which it lacks) and written with every file verified against its digest. Names
//! come from the server, so each one is checked: nothing is written outside the
//! destination.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use super::CacheBackend;
use super::digest::Digest;
use super::error::RemoteError;
use super::verify::set_mode;

/// Deepest directory nesting accepted from a server (a guard against cycles).
const MAX_DEPTH: usize = 256;

/// Downloads a `Tree` (verified) and decodes it.
pub fn fetch_tree(backend: &dyn CacheBackend, digest: &Digest) -> Result<re::Tree, RemoteError> {
    let bytes = backend.download_bytes(digest)?;
    re::Tree::decode(bytes.as_slice()).map_err(|e| RemoteError::Protocol {
        endpoint: backend.endpoint().to_string(),
        what: "Tree",
        detail: format!("{digest}: {e}"),
    })
}

/// The digests of every file a `Tree` names (blobs may repeat).
pub fn tree_files(tree: &re::Tree) -> Result<Vec<Digest>, RemoteError> {
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

/// Writes a `Tree` under `dest` (created if needed), every file downloaded and verified.
pub fn write_tree(
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
    create_dir(dest)?;
    let writer = TreeWriter {
        backend,
        name,
        children,
    };
    writer.write(
        tree.root.as_ref().unwrap_or(&re::Directory::default()),
        dest,
        0,
    )
}

struct TreeWriter<'a> {
    backend: &'a dyn CacheBackend,
    name: String,
    children: HashMap<Digest, &'a re::Directory>,
}

impl TreeWriter<'_> {
    fn write(&self, dir: &re::Directory, path: &Path, depth: usize) -> Result<(), RemoteError> {
        if depth > MAX_DEPTH {
            return Err(self.malformed(format!("directories nest deeper than {MAX_DEPTH}")));
        }
        for file in &dir.files {
            self.check_name(&file.name)?;
            let digest = self.digest(file.digest.as_ref())?;
            let target = path.join(&file.name);
            self.backend.download_to_file(&digest, &target)?;
            set_mode(&target, file.is_executable).map_err(|source| RemoteError::Io {
                action: "set the mode of",
                path: target.clone(),
                source,
            })?;
        }
        for node in &dir.directories {
            self.check_name(&node.name)?;
            let digest = self.digest(node.digest.as_ref())?;
            let child = self.children.get(&digest).ok_or_else(|| {
                self.malformed(format!(
                    "the tree lacks directory {digest} (`{}`)",
                    node.name
                ))
            })?;
            let target = path.join(&node.name);
            create_dir(&target)?;
            self.write(child, &target, depth + 1)?;
        }
        for link in &dir.symlinks {
            self.check_name(&link.name)?;
            check_link_target(&self.name, &link.target, depth)?;
            let target = path.join(&link.name);
            std::os::unix::fs::symlink(&link.target, &target).map_err(|source| {
                RemoteError::Io {
                    action: "create the symbolic link",
                    path: target,
                    source,
                }
            })?;
        }
        Ok(())
    }

    fn check_name(&self, name: &str) -> Result<(), RemoteError> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(RemoteError::UnsafePath {
                endpoint: self.name.clone(),
                path: name.to_owned(),
            });
        }
        Ok(())
    }

    fn digest(&self, digest: Option<&re::Digest>) -> Result<Digest, RemoteError> {
        Digest::from_proto(digest.ok_or_else(|| self.malformed("a node without a digest".into()))?)
    }

    fn malformed(&self, detail: String) -> RemoteError {
        RemoteError::Protocol {
            endpoint: self.name.clone(),
            what: "Tree",
            detail,
        }
    }
}

/// A link target must be relative and stay inside the destination: from a link `depth`
/// directories below it, `..` may climb at most `depth` levels.
fn check_link_target(endpoint: &str, target: &str, depth: usize) -> Result<(), RemoteError> {
    let unsafe_path = || RemoteError::UnsafePath {
        endpoint: endpoint.to_owned(),
        path: target.to_owned(),
    };
    let mut level = depth as i64;
    for component in Path::new(target).components() {
        match component {
            Component::Normal(_) => level += 1,
            Component::CurDir => {}
            Component::ParentDir => level -= 1,
            Component::RootDir | Component::Prefix(_) => return Err(unsafe_path()),
        }
        if level < 0 {
            return Err(unsafe_path());
        }
    }
    if target.is_empty() {
        return Err(unsafe_path());
    }
    Ok(())
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

    #[test]
    fn link_targets_stay_inside() {
        assert!(check_link_target("s", "a/b", 0).is_ok());
        assert!(check_link_target("s", "../x", 1).is_ok());
        assert!(check_link_target("s", "../x", 0).is_err());
        assert!(check_link_target("s", "a/../../x", 0).is_err());
        assert!(check_link_target("s", "/etc/passwd", 3).is_err());
        assert!(check_link_target("s", "", 0).is_err());
    }
}
