//! A stage's portable Action (`action::PortableAction`) as REAPI messages under a
//! server's digest function: the `Command` (argv, sorted environment, output paths), the
//! input root as a Merkle tree of `Directory` messages, and the `Action` with the
//! platform on it and pochi's key of the stage (its fingerprint) as the salt. The one
//! Action of a stage: the remote cache looks it up and stores under its digest, and the
//! executor runs it.
//!
//! The salt is what makes an entry safe to reuse: it changes with everything pochi's key
//! holds (inputs' content, parameters, the toolchain's identity, the scripts), so two
//! stages share an entry only when pochi would call them the same stage. The rest is what
//! a farm runs and what other REAPI tools read.

use std::path::PathBuf;

use super::action::{
    ActionSpec, Blob, CommandSpec, InputFile, build_action, build_command, build_input_tree,
};
use super::digest::{Digest, DigestFunction};
use super::error::RemoteError;
use crate::action::PortableAction;

/// A stage's Action under one digest function, ready to look up, store under or run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageAction {
    /// The Action's digest: the action-cache key.
    pub digest: Digest,
    pub function: DigestFunction,
    /// What the action writes, (name, path in the input root), in the stage's order.
    pub outputs: Vec<(String, String)>,
    /// The Action, its Command and the input root's Directory messages, for upload (so
    /// another REAPI tool can read the entry's Action).
    pub blobs: Vec<Blob>,
    /// The Action's platform properties, sorted.
    pub platform: Vec<(String, String)>,
}

/// The input root's files of a portable Action under `function`, with where each is on
/// this machine.
pub fn input_root_files(
    function: DigestFunction,
    portable: &PortableAction,
) -> Result<Vec<(InputFile, PathBuf)>, RemoteError> {
    portable
        .inputs
        .iter()
        .map(|input| {
            let hash = match function {
                DigestFunction::Sha256 => &input.sha256,
                DigestFunction::Blake3 => &input.blake3,
            };
            let file = InputFile {
                path: input.path.clone(),
                digest: Digest::new(hash, input.size)?,
                executable: input.executable,
            };
            Ok((file, input.local.clone()))
        })
        .collect()
}

/// The REAPI Action of a stage's portable Action under `function`.
pub fn stage_action(
    function: DigestFunction,
    portable: &PortableAction,
) -> Result<StageAction, RemoteError> {
    let command = build_command(&CommandSpec {
        arguments: portable.argv.clone(),
        environment: portable.env.clone(),
        output_paths: portable
            .outputs
            .iter()
            .map(|(_, path)| path.clone())
            .collect(),
        working_directory: String::new(),
    })?;
    let command = Blob::of_message(function, &command);
    let files: Vec<InputFile> = input_root_files(function, portable)?
        .into_iter()
        .map(|(file, _)| file)
        .collect();
    let tree = build_input_tree(function, &files)?;
    let platform: Vec<(String, String)> = portable
        .platform
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (_, action) = build_action(
        function,
        &ActionSpec {
            command: command.digest.clone(),
            input_root: tree.root.clone(),
            platform: platform.clone(),
            salt: portable.salt.as_bytes().to_vec(),
            do_not_cache: false,
            timeout: None,
        },
    );
    let mut blobs = vec![action.clone(), command];
    blobs.extend(tree.directories);
    Ok(StageAction {
        digest: action.digest,
        function,
        outputs: portable.outputs.clone(),
        blobs,
        platform,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::PortableInput;
    use crate::remote::proto;
    use prost::Message;
    use std::collections::BTreeMap;

    const F: DigestFunction = DigestFunction::Sha256;

    fn portable(gpu: Option<&str>, salt: &str) -> PortableAction {
        let weights = b"weights";
        let mut platform = crate::action::base_platform();
        if let Some(gpu) = gpu {
            platform.insert("gpu".into(), gpu.into());
        }
        PortableAction {
            argv: vec![
                "/opt/pochi/v1/toolchains/x/bin/python".into(),
                "-I".into(),
                ".pochi-remote/export.py".into(),
                ".pochi/v1/p/tmp/s/.scratch/request.json".into(),
            ],
            env: BTreeMap::from([("SEED".to_string(), "1".to_string())]),
            inputs: vec![PortableInput {
                path: "model.pth".into(),
                local: PathBuf::from("/home/u/p/model.pth"),
                executable: false,
                size: weights.len() as u64,
                sha256: Digest::of_bytes(F, weights).hash().to_string(),
                blake3: blake3::hash(weights).to_hex().to_string(),
            }],
            outputs: vec![
                ("onnx".into(), ".pochi/v1/p/tmp/s/onnx/model.onnx".into()),
                (
                    ".answer".into(),
                    ".pochi/v1/p/tmp/s/.scratch/answer.json".into(),
                ),
            ],
            platform,
            salt: salt.into(),
        }
    }

    #[test]
    fn the_command_and_the_action_are_the_portable_actions() {
        let portable = portable(None, "key");
        let action = stage_action(F, &portable).unwrap();
        let command = proto::Command::decode(action.blobs[1].bytes.as_slice()).unwrap();
        assert_eq!(command.arguments, portable.argv);
        assert_eq!(command.environment_variables[0].name, "SEED");
        assert_eq!(
            command.output_paths,
            [
                ".pochi/v1/p/tmp/s/.scratch/answer.json",
                ".pochi/v1/p/tmp/s/onnx/model.onnx"
            ]
        );
        assert_eq!(command.working_directory, "");
        let stored = proto::Action::decode(action.blobs[0].bytes.as_slice()).unwrap();
        assert_eq!(action.digest, Digest::of_bytes(F, &action.blobs[0].bytes));
        assert_eq!(stored.salt, b"key");
        let platform = stored.platform.unwrap();
        assert!(platform.properties.iter().any(|p| p.name == "OSFamily"));
        // Deprecated in REAPI (the platform belongs on the Action): asserted unset.
        #[allow(deprecated)]
        let platform = &command.platform;
        assert!(platform.is_none(), "the platform is on the Action");
        // The input root names the file by its path and its digest, not where it is here.
        let root = proto::Directory::decode(action.blobs[2].bytes.as_slice()).unwrap();
        assert_eq!(root.files[0].name, "model.pth");
        let mut elsewhere = portable.clone();
        elsewhere.inputs[0].local = PathBuf::from("/srv/ci/q/model.pth");
        assert_eq!(stage_action(F, &elsewhere).unwrap(), action);
    }

    #[test]
    fn the_salt_the_platform_and_the_function_change_the_key() {
        let base = stage_action(F, &portable(None, "key")).unwrap();
        let salted = stage_action(F, &portable(None, "other key")).unwrap();
        assert_ne!(salted.digest, base.digest);
        let h100 = stage_action(F, &portable(Some("NVIDIA H100"), "key")).unwrap();
        let a100 = stage_action(F, &portable(Some("NVIDIA A100"), "key")).unwrap();
        assert_ne!(h100.digest, a100.digest);
        assert_ne!(h100.digest, base.digest);
        assert!(
            h100.platform
                .contains(&("gpu".into(), "NVIDIA H100".into()))
        );
        let blake = stage_action(DigestFunction::Blake3, &portable(None, "key")).unwrap();
        assert_ne!(blake.digest.hash(), base.digest.hash());
        let files = input_root_files(DigestFunction::Blake3, &portable(None, "key")).unwrap();
        assert_eq!(
            files[0].0.digest.hash(),
            blake3::hash(b"weights").to_hex().as_str()
        );
        let mut broken = portable(None, "key");
        broken.inputs[0].sha256 = "not hex".into();
        assert!(stage_action(F, &broken).is_err());
    }
}
