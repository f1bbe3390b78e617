//! `MachineFacts`: the facts about the machine that stages depend on, gathered once per build by
//! the command line (the only layer that probes) and passed to every kind: the GPUs with
//! their models, the toolchain, what the kinds' accelerator probes found (TensorRT today,
//! by its id: `MachineFacts` does not know which accelerators exist), the Python packages'
//! versions and the pochi binary. No kind probes the machine itself, so a stage's key never
//! depends on the order in which commands or hooks ran.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The Python interpreter stages run, and its identity (Python and package versions)
/// that goes into the key of every stage whose tool is `Tool::Python`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toolchain {
    pub python: PathBuf,
    pub identity: String,
}

/// One GPU as `nvidia-smi` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuModel {
    pub index: u32,
    pub name: String,
    /// Total memory, as `nvidia-smi` says it (e.g. "81559 MiB").
    pub memory: String,
    /// Free memory when the machine was detected. Not serialized: it changes from minute
    /// to minute, and a `pochi run-stage` request (part of the stage's Action) carries the
    /// facts; nothing a stage does reads it.
    #[serde(skip)]
    pub memory_free: String,
    pub driver: String,
    pub compute_capability: String,
}

/// What an accelerator's probe found with the toolchain's interpreter (its version when it
/// imports, else why not; the GPU it sees).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AcceleratorFacts {
    /// The version, when it imports.
    pub version: Option<String>,
    /// Why it does not import.
    pub error: Option<String>,
    pub gpu_name: Option<String>,
    pub compute_capability: Option<String>,
    pub cuda: Option<String>,
}

impl AcceleratorFacts {
    /// Whether these facts describe an accelerator to build for: one that imports here, or a
    /// declared target (a GPU model named by the stage, for a remote worker).
    pub fn is_target(&self) -> bool {
        self.version.is_some() || (self.error.is_none() && self.gpu_name.is_some())
    }
}

/// The interpreter's version and its packages' versions (read without importing them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PythonFacts {
    pub python: String,
    pub versions: BTreeMap<String, String>,
    pub site_dirs: Vec<PathBuf>,
}

/// The machine facts of one build, for one pipeline (pipelines may name other toolchains).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineFacts {
    /// The GPUs the scheduler may hand out (detected, `POCHI_GPUS`, or `[resources] gpus`).
    pub gpus: Vec<u32>,
    /// What `nvidia-smi` says of the GPUs (empty without it).
    pub gpu_models: Vec<GpuModel>,
    pub toolchain: Toolchain,
    /// What each accelerator the stages use was found to be, by the accelerator's id
    /// (`pipeline::kind::Accelerator`); empty when none was probed.
    pub accelerators: BTreeMap<String, AcceleratorFacts>,
    /// Read only when a stage reports its environment; `None` when not read.
    pub python: Option<PythonFacts>,
    /// This pochi binary (the program of stages that pochi runs itself).
    pub pochi: PathBuf,
}

impl MachineFacts {
    /// A host with the given toolchain, no GPU and nothing probed (tests, `status`
    /// without Python stages).
    pub fn plain(toolchain: Toolchain) -> MachineFacts {
        MachineFacts {
            gpus: Vec::new(),
            gpu_models: Vec::new(),
            toolchain,
            accelerators: BTreeMap::new(),
            python: None,
            pochi: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pochi")),
        }
    }

    /// The facts of a stage that targets GPU model `gpu` (and version `version` of the
    /// accelerator `accelerator`, when declared), wherever it runs: this host's toolchain
    /// and binary, the declared GPU in place of what the probe found, so the stage's key
    /// and platform are the same on every machine.
    pub fn for_declared_gpu(
        &self,
        accelerator: &str,
        gpu: &str,
        version: Option<&str>,
    ) -> MachineFacts {
        let mut facts = self.clone();
        facts.accelerators.insert(
            accelerator.to_string(),
            AcceleratorFacts {
                version: version.map(str::to_string),
                error: None,
                gpu_name: Some(gpu.to_string()),
                compute_capability: None,
                cuda: None,
            },
        );
        facts
    }

    /// What the probe of accelerator `id` found, when it was probed.
    pub fn accelerator(&self, id: &str) -> Option<&AcceleratorFacts> {
        self.accelerators.get(id)
    }

    /// The version of accelerator `id`, when it imports here.
    pub fn accelerator_version(&self, id: &str) -> Option<&str> {
        self.accelerator(id)?.version.as_deref()
    }

    /// Where a result built with accelerator `id` can be used, as platform properties
    /// (REAPI names them on the Action): the GPU model, its compute capability, the
    /// accelerator's version (under its id) and CUDA's. Empty when it does not import here.
    pub fn accelerator_platform(&self, id: &str) -> BTreeMap<String, String> {
        let Some(found) = self.accelerator(id).filter(|t| t.is_target()) else {
            return BTreeMap::new();
        };
        [
            ("gpu", &found.gpu_name),
            ("compute_capability", &found.compute_capability),
            (id, &found.version),
            ("cuda", &found.cuda),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_string(), value.clone()?)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An accelerator's id as a kind would declare it (the facts know none by name).
    const ID: &str = "runtime";

    #[test]
    fn an_accelerators_platform_names_the_gpu_and_the_versions() {
        let mut facts = MachineFacts::plain(Toolchain {
            python: "python3".into(),
            identity: "py".into(),
        });
        assert!(facts.accelerator_platform(ID).is_empty());
        facts.accelerators.insert(
            ID.into(),
            AcceleratorFacts {
                version: Some("10.13.0".into()),
                gpu_name: Some("NVIDIA H200".into()),
                compute_capability: Some("9.0".into()),
                cuda: None,
                error: None,
            },
        );
        let platform = facts.accelerator_platform(ID);
        assert_eq!(platform["gpu"], "NVIDIA H200");
        assert_eq!(platform["compute_capability"], "9.0");
        assert_eq!(platform[ID], "10.13.0");
        assert!(!platform.contains_key("cuda"));
        assert!(facts.accelerator_platform("other").is_empty());
        let found = facts.accelerators.get_mut(ID).unwrap();
        found.version = None;
        found.error = Some("ModuleNotFoundError: No module named 'runtime'".into());
        assert!(
            facts.accelerator_platform(ID).is_empty(),
            "the accelerator did not import"
        );
    }

    #[test]
    fn a_declared_target_replaces_the_probed_gpu() {
        let facts = MachineFacts::plain(Toolchain {
            python: "python3".into(),
            identity: "py".into(),
        });
        let a100 = facts.for_declared_gpu(ID, "NVIDIA A100-SXM4-40GB", None);
        let platform = a100.accelerator_platform(ID);
        assert_eq!(platform["gpu"], "NVIDIA A100-SXM4-40GB");
        assert!(!platform.contains_key(ID), "{platform:?}");
        assert!(
            a100.accelerator_version(ID).is_none(),
            "nothing imported here"
        );
        let pinned = facts
            .for_declared_gpu(ID, "Tesla T4", Some("10.13.0"))
            .accelerator_platform(ID);
        assert_eq!(pinned[ID], "10.13.0");
        assert_eq!(a100.toolchain, facts.toolchain);
    }
}
