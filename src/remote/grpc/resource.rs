//! ByteStream resource names, as the REAPI spec writes them:
//! `{instance}/uploads/{uuid}/blobs/{hash}/{size}` for writes and
//! `{instance}/blobs/{hash}/{size}` for reads, with the digest function's name before the
//! hash for functions whose hash length does not identify them (BLAKE3 vs SHA-256).

use crate::remote::digest::{Digest, DigestFunction};

/// The name a blob is read under.
pub(crate) fn read_name(instance: &str, function: DigestFunction, digest: &Digest) -> String {
    format!(
        "{}blobs/{}",
        instance_prefix(instance),
        blob_part(function, digest)
    )
}

/// The name a blob is written under; `upload_id` is a fresh UUID per upload.
pub(crate) fn write_name(
    instance: &str,
    upload_id: &str,
    function: DigestFunction,
    digest: &Digest,
) -> String {
    format!(
        "{}uploads/{upload_id}/blobs/{}",
        instance_prefix(instance),
        blob_part(function, digest)
    )
}

/// A fresh upload id (random UUID v4).
pub(crate) fn new_upload_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn instance_prefix(instance: &str) -> String {
    if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    }
}

fn blob_part(function: DigestFunction, digest: &Digest) -> String {
    match function {
        // SHA-256 is the one 64-digit function a server assumes when none is named.
        DigestFunction::Sha256 => format!("{}/{}", digest.hash(), digest.size()),
        DigestFunction::Blake3 => format!("blake3/{}/{}", digest.hash(), digest.size()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::new(&"ab".repeat(32), 1234).unwrap()
    }

    #[test]
    fn names_follow_the_spec() {
        let hash = "ab".repeat(32);
        let d = digest();
        assert_eq!(
            read_name("", DigestFunction::Sha256, &d),
            format!("blobs/{hash}/1234")
        );
        assert_eq!(
            read_name("main", DigestFunction::Sha256, &d),
            format!("main/blobs/{hash}/1234")
        );
        assert_eq!(
            read_name("a/b", DigestFunction::Blake3, &d),
            format!("a/b/blobs/blake3/{hash}/1234")
        );
        assert_eq!(
            write_name("main", "u-1", DigestFunction::Sha256, &d),
            format!("main/uploads/u-1/blobs/{hash}/1234")
        );
        assert_eq!(
            write_name("", "u-1", DigestFunction::Blake3, &d),
            format!("uploads/u-1/blobs/blake3/{hash}/1234")
        );
    }

    #[test]
    fn upload_ids_are_fresh_uuids() {
        let a = new_upload_id();
        assert_ne!(a, new_upload_id());
        assert_eq!(a.len(), 36);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
