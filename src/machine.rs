//! What this machine offers: cores, memory, and GPUs (from `POCHI_GPUS`, else
//! `nvidia-smi`), with `POCHI_CPUS` / `POCHI_MEMORY` to override detection.

use std::process::Command;

use crate::build::Machine;
use crate::spec::ByteSize;

/// Detects the machine once per command.
pub fn detect() -> Machine {
    Machine {
        cores: env_number("POCHI_CPUS").unwrap_or_else(cores),
        memory: std::env::var("POCHI_MEMORY")
            .ok()
            .and_then(|m| ByteSize::parse(&m).ok())
            .map(|m| m.0)
            .unwrap_or_else(total_memory),
        gpus: match std::env::var("POCHI_GPUS") {
            Ok(list) => parse_gpu_list(&list),
            Err(_) => nvidia_smi_gpus(),
        },
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
pub fn parse_gpu_list(list: &str) -> Vec<u32> {
    list.split(',')
        .filter_map(|id| id.trim().parse().ok())
        .collect()
}

fn nvidia_smi_gpus() -> Vec<u32> {
    let output = Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .output();
    match output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
        _ => Vec::new(),
    }
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
}
