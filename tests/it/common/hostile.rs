//! What a HOSTILE cache or worker sends (issue 22): an output `Tree` whose links each pass
//! a lexical check (`l0 -> ..`, `l1 -> l0/../..`, ... `t -> l13/<absolute path>`) but
//! chain upwards out of the output (l13 climbs 27 levels: to `/` from any temporary
//! output, in 15 links, inside the kernel's 40), with the same directory listed a second
//! time holding a file under `t/`. A writer that follows the links writes that file into
//! `victim`.

use std::path::Path;

use pochi::remote::{CacheBackend, Digest, DigestFunction, proto};
use prost::Message;

/// Links in the chain.
const CHAIN: usize = 14;

/// The name of the file the tree would plant in the victim directory.
pub const PLANTED: &str = "planted-by-the-tree";

fn digest(bytes: &[u8]) -> proto::Digest {
    Digest::of_bytes(DigestFunction::Sha256, bytes).to_proto()
}

fn dir_node(name: &str, dir: &proto::Directory) -> proto::DirectoryNode {
    proto::DirectoryNode {
        name: name.into(),
        digest: Some(digest(&dir.encode_to_vec())),
    }
}

/// The hostile tree aimed at `victim` (an absolute directory), and the bytes of the file
/// it plants (upload them too: the tree names them by digest).
pub fn hostile_tree(victim: &Path) -> (proto::Tree, Vec<u8>) {
    let victim = victim.to_str().expect("a UTF-8 victim path");
    assert!(victim.starts_with('/'), "{victim}");
    let mut links: Vec<proto::SymlinkNode> = (0..CHAIN)
        .map(|i| proto::SymlinkNode {
            name: format!("l{i}"),
            target: if i == 0 {
                "..".into()
            } else {
                format!("l{}/../..", i - 1)
            },
            ..Default::default()
        })
        .collect();
    links.push(proto::SymlinkNode {
        name: "t".into(),
        target: format!("l{}{victim}", CHAIN - 1),
        ..Default::default()
    });
    links.sort_by(|a, b| a.name.cmp(&b.name));
    let chain = proto::Directory {
        symlinks: links,
        ..Default::default()
    };
    let planted = b"written through a link\n".to_vec();
    let leaf = proto::Directory {
        files: vec![proto::FileNode {
            name: PLANTED.into(),
            digest: Some(digest(&planted)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let through = proto::Directory {
        directories: vec![dir_node("t", &leaf)],
        ..Default::default()
    };
    let root = proto::Directory {
        directories: vec![dir_node("d", &chain), dir_node("d", &through)],
        ..Default::default()
    };
    let tree = proto::Tree {
        root: Some(root),
        children: vec![chain, through, leaf],
    };
    (tree, planted)
}

/// Replaces the first output directory of the server's entry for `action` with the hostile
/// tree aimed at `victim` (its blobs uploaded first).
pub fn poison_entry(backend: &dyn CacheBackend, action: &Digest, victim: &Path) {
    let (tree, planted) = hostile_tree(victim);
    let function = DigestFunction::Sha256;
    let planted_digest = Digest::of_bytes(function, &planted);
    backend.upload_bytes(&planted, &planted_digest).unwrap();
    let tree_bytes = tree.encode_to_vec();
    let tree_digest = Digest::of_bytes(function, &tree_bytes);
    backend.upload_bytes(&tree_bytes, &tree_digest).unwrap();
    let mut result = backend
        .get_action_result(action)
        .unwrap()
        .expect("the entry to poison");
    assert!(!result.output_directories.is_empty(), "{result:?}");
    result.output_directories[0].tree_digest = Some(tree_digest.to_proto());
    backend.update_action_result(action, &result).unwrap();
}

/// The files in `victim` (it must stay empty).
pub fn planted_in(victim: &Path) -> Vec<String> {
    std::fs::read_dir(victim)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}
