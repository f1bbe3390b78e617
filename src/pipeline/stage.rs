//! Parsing one stage table: its name, its kind (which parses the kind's own keys), the
//! keys every stage has, and the stages of a file in parallel (matrices expanded first).

use std::collections::BTreeMap;
use std::ops::Range;

use rayon::prelude::*;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{SourceFile, SpanError};
use super::keys::keys_of;
use super::kind::KindInfo;
use super::matrix::{self, Entry};
use super::parse::{MAX_NAME_LEN, Parser, default_devices_from_producers, is_valid_name, shorten};
use super::placement::{ExecutorChoice, Placement, gpu_model, is_reserved_property};
use super::tables::{CommonStageKeys, StageResourcesSection};
use super::{Device, Located, Stage, StageResources};
use crate::size::ByteSize;

impl Parser<'_> {
    pub(super) fn stages(&self, root: &Spanned<DeTable>) -> Result<Vec<Stage>, SpanError> {
        let Some(value) = root.get_ref().get("stages") else {
            return Ok(Vec::new());
        };
        let table = value.get_ref().as_table().ok_or_else(|| {
            self.src
                .error(value.span(), "`stages` must be a table of stage tables")
        })?;
        let entries: Vec<Entry> = table
            .iter()
            .map(|(name, value)| Entry {
                src: self.src,
                name,
                value,
            })
            .collect();
        self.parse_entries(&entries)
    }

    /// Expands the stages' matrices, then parses every stage. Stages parse independently,
    /// so in parallel; the first error in file order wins, so errors do not depend on
    /// thread timing.
    fn parse_entries(&self, entries: &[Entry]) -> Result<Vec<Stage>, SpanError> {
        let expanded = matrix::expand(self.src, entries)?;
        let parsed: Vec<Result<Stage, SpanError>> = expanded
            .par_iter()
            .map(|entry| {
                let parser = Parser {
                    src: entry.src,
                    ..*self
                };
                let mut stage = parser
                    .stage(&entry.name, &entry.value)
                    .map_err(|error| entry.annotate(error))?;
                stage.matrix = entry.matrix.clone();
                Ok(stage)
            })
            .collect();
        let mut stages = parsed.into_iter().collect::<Result<Vec<_>, _>>()?;
        stages.par_sort_unstable_by(|a, b| a.name.cmp(&b.name));
        default_devices_from_producers(&mut stages);
        Ok(stages)
    }

    /// The stages of the file's `[stages.NAME]` sections, parsed in parallel, each as its
    /// own document; `None` if a section is not valid TOML on its own.
    pub(super) fn stages_in_sections(
        &self,
        text: &str,
        sections: &[Range<usize>],
    ) -> Option<Result<Vec<Stage>, SpanError>> {
        let roots: Vec<Option<(SourceFile, Spanned<DeTable>)>> = sections
            .par_iter()
            .map(|section| {
                let root = DeTable::parse(&text[section.clone()]).ok()?;
                Some((self.src.at(section.start), root))
            })
            .collect();
        let roots: Vec<(SourceFile, Spanned<DeTable>)> =
            roots.into_iter().collect::<Option<_>>()?;
        let entries: Vec<Entry> = roots
            .iter()
            .map(|(src, root)| {
                let stages = root.get_ref().get("stages")?.get_ref().as_table()?;
                let (name, value) = stages.iter().next()?;
                Some(Entry { src, name, value })
            })
            .collect::<Option<_>>()?;
        Some(self.parse_entries(&entries))
    }

    fn stage(
        &self,
        name: &Spanned<toml::de::DeString>,
        value: &Spanned<DeValue>,
    ) -> Result<Stage, SpanError> {
        let stage_name = name.get_ref().to_string();
        if !is_valid_name(&stage_name) {
            return Err(self
                .src
                .error(
                    name.span(),
                    format!("stage name `{}` is not valid", shorten(&stage_name)),
                )
                .with_help(format!(
                    "stage names use only a-z, 0-9, `_` and `-`, at most {MAX_NAME_LEN} of them"
                )));
        }
        let table = value.get_ref().as_table().ok_or_else(|| {
            self.src.error(
                value.span(),
                format!("stage `{stage_name}` must be a table"),
            )
        })?;
        let info = self.kind_of(&stage_name, name.span(), table)?;
        let allowed: Vec<&str> = keys_of::<CommonStageKeys>()
            .iter()
            .chain((info.keys)())
            .copied()
            .collect();
        self.check_keys(
            table,
            &allowed,
            &format!("in stage `{stage_name}` (kind `{}`)", info.name),
        )?;
        let common: CommonStageKeys = self.deserialize(&common_keys_of(table, value.span()))?;
        self.check_env(table)?;
        let kind = (info.parse)(
            &Parser {
                stage: &stage_name,
                ..*self
            },
            value,
        )?;
        let device_declared = common.device.is_some();
        let device = match &common.device {
            Some(device) => Device::parse(device.get_ref()).ok_or_else(|| {
                self.src
                    .error(
                        device.span(),
                        format!("invalid device `{}`", device.get_ref()),
                    )
                    .with_help("use \"cpu\", \"cuda\" (any GPU) or \"cuda:N\" (GPU number N)")
            })?,
            None => kind.requirements().default_device,
        };
        Ok(Stage {
            name: stage_name,
            span: self.src.shift(name.span()),
            kind,
            needs: common
                .needs
                .into_iter()
                .map(|need| Located {
                    span: self.src.shift(need.span()),
                    value: need.into_inner(),
                })
                .collect(),
            device,
            device_declared,
            resources: self.stage_resources(common.resources, table)?,
            env: common.env,
            cache: common.cache,
            placement: self.placement(common.executor, common.gpu, common.platform, device)?,
            matrix: None,
        })
    }

    /// `executor`, `gpu` and `platform`, checked: a known executor, `gpu` only on a `cuda`
    /// stage, no property pochi sets itself.
    fn placement(
        &self,
        executor: Option<Spanned<String>>,
        gpu: Option<Spanned<String>>,
        platform: Option<Spanned<BTreeMap<String, String>>>,
        device: Device,
    ) -> Result<Placement, SpanError> {
        let executor = match &executor {
            None => ExecutorChoice::Auto,
            Some(choice) => ExecutorChoice::parse(choice.get_ref()).ok_or_else(|| {
                self.src
                    .error(
                        choice.span(),
                        format!("unknown executor `{}`", choice.get_ref()),
                    )
                    .with_help("use \"auto\" (the default), \"local\" or \"remote\"")
            })?,
        };
        if let Some(gpu) = &gpu
            && !matches!(device, Device::Cuda(_))
        {
            return Err(self
                .src
                .error(gpu.span(), "`gpu` names the GPU model of a `cuda` stage")
                .with_help("set `device = \"cuda\"` on the stage, or remove `gpu`"));
        }
        let reserved = platform.as_ref().and_then(|platform| {
            let name = platform
                .get_ref()
                .keys()
                .find(|n| is_reserved_property(n))?;
            Some((name.clone(), platform.span()))
        });
        if let Some((reserved, span)) = reserved {
            return Err(self
                .src
                .error(span, format!("platform property `{reserved}` is set by pochi"))
                .with_help(
                    "name the GPU model with the stage's `gpu` key; OSFamily, ISA, cuda, compute_capability and pochi-toolchain come from the machine and the toolchain",
                ));
        }
        Ok(Placement {
            executor,
            gpu: gpu.map(|g| gpu_model(g.get_ref())),
            platform: platform.map(Spanned::into_inner).unwrap_or_default(),
        })
    }

    /// Environment variable names must be non-empty and hold no `=` or NUL; values no NUL.
    fn check_env(&self, table: &DeTable) -> Result<(), SpanError> {
        let Some(env) = table.get("env").and_then(|v| v.get_ref().as_table()) else {
            return Ok(());
        };
        for (key, value) in env.iter() {
            let name = key.get_ref();
            if name.is_empty() || name.contains('=') {
                return Err(self
                    .src
                    .error(key.span(), format!("`{name}` is not a valid environment variable name"))
                    .with_label("invalid name")
                    .with_help("a variable name is not empty and holds no `=`; write `env = { NAME = \"value\" }`"));
            }
            self.check_no_nul(
                name,
                key.span(),
                &format!("environment variable name `{name}`"),
            )?;
            if let Some(text) = value.get_ref().as_str() {
                self.check_no_nul(
                    text,
                    value.span(),
                    &format!("environment variable `{name}`"),
                )?;
            }
        }
        Ok(())
    }

    fn kind_of(
        &self,
        stage: &str,
        name_span: Range<usize>,
        table: &DeTable,
    ) -> Result<&'static KindInfo, SpanError> {
        let Some(kind) = table.get("kind") else {
            return Err(self
                .src
                .error(name_span, format!("stage `{stage}` has no `kind`"))
                .with_help("add `kind = \"command\"` (or another kind) to the stage"));
        };
        let Some(kind_name) = kind.get_ref().as_str() else {
            return Err(self.src.error(kind.span(), "`kind` must be a string"));
        };
        super::kind::lookup(self.kinds, kind_name).map_err(|error| {
            let help = miette::Diagnostic::help(&error).map(|help| help.to_string());
            self.src
                .error(kind.span(), error.to_string())
                .with_label("unknown kind")
                .with_help(help.unwrap_or_default())
        })
    }

    fn stage_resources(
        &self,
        section: Option<Spanned<StageResourcesSection>>,
        table: &DeTable,
    ) -> Result<StageResources, SpanError> {
        if let Some(resources) = table.get("resources").and_then(|v| v.get_ref().as_table()) {
            self.check_keys(
                resources,
                keys_of::<StageResourcesSection>(),
                "in a stage's `resources`",
            )?;
        }
        let Some(section) = section else {
            return Ok(StageResources {
                cpu: 1,
                memory: ByteSize(0),
            });
        };
        let span = section.span();
        let section = section.into_inner();
        if section.cpu == Some(0) {
            return Err(self
                .src
                .error(span, "a stage needs at least 1 cpu slot")
                .with_help("remove `cpu` or set it to 1 or more"));
        }
        Ok(StageResources {
            cpu: section.cpu.unwrap_or(1),
            memory: section.memory.unwrap_or(ByteSize(0)),
        })
    }
}

/// The stage table with only its common keys: deserializing these must not clone the
/// kind's (often much larger) `run`, `inputs` and `outputs` (a tenth of parsing a 10,000
/// stage pipeline).
fn common_keys_of<'i>(table: &DeTable<'i>, span: Range<usize>) -> Spanned<DeValue<'i>> {
    let common_keys = keys_of::<CommonStageKeys>();
    let mut common = DeTable::new();
    for (key, value) in table.iter() {
        if common_keys.contains(&key.get_ref().as_ref()) {
            common.insert(key.clone(), value.clone());
        }
    }
    Spanned::new(span, DeValue::Table(common))
}
