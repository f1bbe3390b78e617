//! Where a stage may run: `executor = "auto" | "local" | "remote"`, the GPU model it
//! targets (`gpu = "a100"` or nvidia-smi's full name) and the extra platform properties a
//! remote worker must offer (`platform = { KEY = "VALUE" }`). What the stage declares here;
//! the driver decides, per build, where it runs.

use std::collections::BTreeMap;

/// `executor = ...`: where the stage runs when a remote executor is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutorChoice {
    /// Remotely when an executor is configured and the stage can run there; else here.
    #[default]
    Auto,
    /// Always on this machine.
    Local,
    /// Always on the remote executor: without one configured, unavailable in the build.
    Remote,
}

impl ExecutorChoice {
    pub fn parse(text: &str) -> Option<ExecutorChoice> {
        match text {
            "auto" => Some(ExecutorChoice::Auto),
            "local" => Some(ExecutorChoice::Local),
            "remote" => Some(ExecutorChoice::Remote),
            _ => None,
        }
    }
}

/// What a stage declares about where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    pub executor: ExecutorChoice,
    /// The GPU model the stage targets, as nvidia-smi names it (aliases resolved).
    pub gpu: Option<String>,
    /// Extra platform properties for a remote worker (part of the stage's key).
    pub platform: BTreeMap<String, String>,
}

/// Short names for the GPU models users deploy to, and the name nvidia-smi (and so a
/// worker's `gpu` property) gives each. Documented in docs/remote.md.
pub(crate) const GPU_ALIASES: &[(&str, &str)] = &[
    ("t4", "Tesla T4"),
    ("l4", "NVIDIA L4"),
    ("a10g", "NVIDIA A10G"),
    ("a100", "NVIDIA A100-SXM4-40GB"),
    ("a100-40gb", "NVIDIA A100-SXM4-40GB"),
    ("a100-80gb", "NVIDIA A100-SXM4-80GB"),
    ("h100", "NVIDIA H100 80GB HBM3"),
    ("h200", "NVIDIA H200"),
];

/// The GPU model a `gpu` value names: an alias's full name, else the value itself (a
/// full nvidia-smi name). Aliases are matched ignoring case.
pub(crate) fn gpu_model(value: &str) -> String {
    GPU_ALIASES
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(value))
        .map(|(_, name)| (*name).to_string())
        .unwrap_or_else(|| value.to_string())
}

/// Whether a platform property name is one pochi sets itself (a stage may not override
/// it in `platform`: `gpu` has its own key, the rest come from the machine and toolchain).
pub(crate) fn is_reserved_property(name: &str) -> bool {
    matches!(
        name,
        "OSFamily" | "ISA" | "gpu" | "pochi-toolchain" | "compute_capability" | "cuda"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_name_the_models_and_full_names_pass_through() {
        assert_eq!(gpu_model("a100"), "NVIDIA A100-SXM4-40GB");
        assert_eq!(gpu_model("T4"), "Tesla T4");
        assert_eq!(gpu_model("NVIDIA H200"), "NVIDIA H200");
        assert_eq!(gpu_model("Some Future GPU"), "Some Future GPU");
    }

    #[test]
    fn executor_names_parse() {
        assert_eq!(ExecutorChoice::parse("auto"), Some(ExecutorChoice::Auto));
        assert_eq!(ExecutorChoice::parse("local"), Some(ExecutorChoice::Local));
        assert_eq!(
            ExecutorChoice::parse("remote"),
            Some(ExecutorChoice::Remote)
        );
        assert_eq!(ExecutorChoice::parse("cloud"), None);
        assert_eq!(ExecutorChoice::default(), ExecutorChoice::Auto);
    }
}
