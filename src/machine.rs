//! What this machine offers: cores, memory, and GPUs (from `POCHI_GPUS`, else one
//! `nvidia-smi` query that also gives each GPU's model, memory, driver and compute
//! capability), with `POCHI_CPUS` / `POCHI_MEMORY` to override detection.

use std::process::Command;

use crate::facts::GpuModel;
use crate::size::ByteSize;

/// What the machine offers, as detected once per command.
#[derive(Debug, Clone)]
pub(crate) struct Hardware {
    pub cores: u32,
    pub memory: u64,
    pub gpus: Vec<u32>,
    /// The models of the GPUs `nvidia-smi` lists (empty without it).
    pub gpu_models: Vec<GpuModel>,
}

/// Detects the machine, once per process (later calls return the first answer).
pub(crate) fn detect() -> Hardware {
    static DETECTED: std::sync::OnceLock<Hardware> = std::sync::OnceLock::new();
    DETECTED.get_or_init(detect_now).clone()
}

fn detect_now() -> Hardware {
    let gpu_models = nvidia_smi();
    Hardware {
        cores: env_number("POCHI_CPUS").unwrap_or_else(cores),
        memory: std::env::var("POCHI_MEMORY")
            .ok()
            .and_then(|m| ByteSize::parse(&m).ok())
            .map(|m| m.0)
            .unwrap_or_else(total_memory),
        gpus: match std::env::var("POCHI_GPUS") {
            Ok(list) => parse_gpu_list(&list),
            Err(_) => gpu_models.iter().map(|gpu| gpu.index).collect(),
        },
        gpu_models,
    }
}

fn env_number(name: &str) -> Option<u32> {
    std::env::var(name)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
}

fn cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo_total(&text))
        .unwrap_or(u64::MAX)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `"0,1"` -> [0, 1]; `""` -> none.
pub(crate) fn parse_gpu_list(list: &str) -> Vec<u32> {
    list.split(',')
        .filter_map(|id| id.trim().parse().ok())
        .collect()
}

/// The one `nvidia-smi` query: every GPU's index, model, memory, driver and compute
/// capability.
fn nvidia_smi() -> Vec<GpuModel> {
    let output = Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total,memory.free,driver_version,compute_cap",
            "--format=csv,noheader",
        ])
        .output();
    match output {
        Ok(output) if output.status.success() => {
            parse_gpu_models(&String::from_utf8_lossy(&output.stdout))
        }
        _ => Vec::new(),
    }
}

/// `nvidia-smi`'s CSV lines as GPU models (lines that do not parse are left out).
fn parse_gpu_models(text: &str) -> Vec<GpuModel> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            match fields[..] {
                [index, name, memory, memory_free, driver, compute_capability] => Some(GpuModel {
                    index: index.parse().ok()?,
                    name: name.into(),
                    memory: memory.into(),
                    memory_free: memory_free.into(),
                    driver: driver.into(),
                    compute_capability: compute_capability.into(),
                }),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_total_memory_from_meminfo() {
        let text = "MemTotal:       24576000 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(24_576_000 * 1024));
    }

    #[test]
    fn parses_gpu_lists() {
        assert_eq!(parse_gpu_list("0, 1,3"), vec![0, 1, 3]);
        assert!(parse_gpu_list("").is_empty());
    }

    #[test]
    fn parses_nvidia_smis_gpu_models() {
        let text = "0, NVIDIA H100 80GB HBM3, 81559 MiB, 81000 MiB, 550.54.15, 9.0\nnot a gpu\n";
        let models = parse_gpu_models(text);
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].index, 0);
        assert_eq!(models[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(models[0].compute_capability, "9.0");
    }
}
