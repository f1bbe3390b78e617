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

/// How a HOSTILE HTTP cache answers `GET .../cas/<hash>`.
#[derive(Clone)]
pub enum BlobAnswer {
    /// These bytes, announced whole, one byte every two seconds.
    Trickle(Vec<u8>),
    /// 404 (the test checks that pochi never asked).
    Missing,
}

/// A HOSTILE Bazel HTTP cache on 127.0.0.1: every `GET .../ac/<hash>` gets `entry` (any
/// bytes: a valid `ActionResult` or not), every `HEAD` says the blob is there, every `GET
/// .../cas/<hash>` gets `blob`; PUTs are read and dropped. It records the paths asked for.
pub struct HostileHttp {
    port: u16,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HostileHttp {
    pub fn start(entry: Vec<u8>, blob: BlobAnswer) -> HostileHttp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&asked);
        let entry = std::sync::Arc::new(entry);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (entry, blob, log) = (entry.clone(), blob.clone(), log.clone());
                std::thread::spawn(move || answer(stream, &entry, &blob, &log));
            }
        });
        HostileHttp { port, asked }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hostile", self.port)
    }

    /// The `METHOD PATH` of every request so far.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn answer(
    mut stream: std::net::TcpStream,
    entry: &[u8],
    blob: &BlobAnswer,
    log: &std::sync::Mutex<Vec<String>>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let mut words = request.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    log.lock().unwrap().push(format!("{method} {path}"));
    let head = |status: &str, length: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n")
    };
    let _ = match (method, path.contains("/ac/"), blob) {
        ("GET", true, _) => stream
            .write_all(head("200 OK", entry.len()).as_bytes())
            .and_then(|()| stream.write_all(entry)),
        ("HEAD", _, _) => stream.write_all(head("200 OK", 0).as_bytes()),
        ("GET", false, BlobAnswer::Trickle(bytes)) => {
            let _ = stream.write_all(head("200 OK", bytes.len()).as_bytes());
            for byte in bytes {
                if stream.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            Ok(())
        }
        ("PUT", _, _) => stream.write_all(head("200 OK", 0).as_bytes()),
        _ => stream.write_all(head("404 Not Found", 0).as_bytes()),
    };
}

/// An `ActionResult` naming one output file at `path` with `digest`.
pub fn entry_with_file(path: &str, digest: &Digest) -> Vec<u8> {
    proto::ActionResult {
        output_files: vec![proto::OutputFile {
            path: path.into(),
            digest: Some(digest.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

/// An `ActionResult` naming one output directory at `path` whose tree is `tree`.
pub fn entry_with_dir(path: &str, tree: &Digest) -> Vec<u8> {
    proto::ActionResult {
        output_directories: vec![proto::OutputDirectory {
            path: path.into(),
            tree_digest: Some(tree.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec()
}
