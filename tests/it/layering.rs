//! The layering rules of ARCHITECTURE.md, checked on the source: which top-level module
//! names which (`crate::NAME` outside comments and unit-test modules), no module naming
//! one of a higher layer, and no import cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// ARCHITECTURE.md's layers, lowest first. A module may name modules of its own layer or
/// lower ones; cycles are refused separately.
const LAYERS: &[&[&str]] = &[
    &[
        "size",
        "action",
        "facts",
        "process",
        "fsutil",
        "onnx_info",
        "diff",
    ],
    &["machine", "fingerprint", "state", "scheduler"],
    &["toolchain", "cache", "remote"],
    &["pipeline", "graph"],
    &["kinds"],
    &["driver", "render"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level modules one file names, leaving out comments and its unit tests.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or("");
    let mut names = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// module -> the other top-level modules it names.
fn import_map() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" || relative.ends_with("tests.rs") {
            continue;
        }
        let names = named_modules(&std::fs::read_to_string(&file).unwrap());
        let entry = map.entry(module.clone()).or_default();
        entry.extend(names.into_iter().filter(|n| *n != module));
    }
    map
}

#[test]
fn every_module_has_a_layer_and_names_none_above_it() {
    let map = import_map();
    assert!(map.len() >= 15, "too few modules found: {map:?}");
    let mut violations = Vec::new();
    for (module, names) in &map {
        let own = layer_of(module).unwrap_or_else(|| panic!("{module} is in no layer"));
        for name in names {
            match layer_of(name) {
                Some(layer) if layer > own => violations.push(format!("{module} -> {name}")),
                None if map.contains_key(name) => panic!("{name} is in no layer"),
                _ => {}
            }
        }
    }
    assert!(violations.is_empty(), "higher layers named: {violations:?}");
}

#[test]
fn modules_form_no_import_cycle() {
    let map = import_map();
    // Kahn's algorithm: whatever cannot be ordered is on a cycle.
    let mut pending: BTreeMap<&str, usize> = map
        .iter()
        .map(|(m, names)| {
            (
                m.as_str(),
                names.iter().filter(|n| map.contains_key(*n)).count(),
            )
        })
        .collect();
    let mut ordered = Vec::new();
    while let Some(free) = pending.iter().find(|(_, n)| **n == 0).map(|(m, _)| *m) {
        pending.remove(free);
        ordered.push(free);
        for (module, count) in pending.iter_mut() {
            if map[*module].contains(free) {
                *count -= 1;
            }
        }
    }
    assert!(
        pending.is_empty(),
        "modules on an import cycle: {pending:?}"
    );
}

#[test]
fn the_scan_sees_an_import_and_skips_comments_and_unit_tests() {
    let text = "use crate::spec::Stage;\n// crate::cli in a comment\nfn f() { crate::size::X }\n\
                #[cfg(test)]\nmod tests {\n    use crate::kinds::KINDS;\n}\n";
    let names: Vec<_> = named_modules(text).into_iter().collect();
    assert_eq!(names, ["size", "spec"]);
}

/// Accelerators are data (ARCHITECTURE.md, "Adding an accelerator"): the engine core and the
/// kind seam name no accelerator runtime in code; only the kinds that build for one (and
/// the command line's one-shots, which are about engines) do. Comments may.
#[test]
fn the_engine_core_names_no_accelerator_runtime() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let core = [
        "pipeline",
        "facts.rs",
        "driver",
        "scheduler",
        "cache",
        "remote",
        "graph",
        "state",
        "process",
        "fingerprint",
        "machine.rs",
        "cli/facts.rs",
    ];
    let mut named = Vec::new();
    for part in core {
        let path = src.join(part);
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path);
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("").to_lowercase();
                if code.contains("tensorrt") {
                    named.push(format!(
                        "{}:{}: {}",
                        file.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        named.is_empty(),
        "the core names TensorRT:\n{}",
        named.join("\n")
    );
}
