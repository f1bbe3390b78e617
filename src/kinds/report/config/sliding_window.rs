//! `sliding_window = { ... }`: MONAI's `sliding_window_inference` arguments, checked, with
//! its defaults filled in.

use toml::Spanned;
use toml::de::DeValue;

use super::keys::{PerAxis, SlidingWindowKeys};
use super::{one_of, positive};
use crate::kinds::report::sliding_window::{Blend, Padding, Settings};
use crate::pipeline::SpanError;
use crate::pipeline::parse_api::Parser;

/// `sliding_window = { ... }`, checked, with MONAI's defaults filled in.
pub(super) fn parse(
    parser: &Parser,
    keys: &SlidingWindowKeys,
    stage: &Spanned<DeValue>,
) -> Result<Settings, SpanError> {
    let src = parser.src;
    let roi = keys
        .roi
        .get_ref()
        .iter()
        .map(|&r| positive(r))
        .collect::<Option<Vec<usize>>>()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            src.error(
                keys.roi.span(),
                "`sliding_window.roi` needs one size of 1 or more per spatial axis",
            )
            .with_help("e.g. roi = [96, 96, 96], the model's input size")
        })?;
    let overlap = PerAxisRule::OVERLAP.parse(parser, &roi, keys.overlap.as_ref())?;
    let sigma_scale = PerAxisRule::SIGMA_SCALE.parse(parser, &roi, keys.sigma_scale.as_ref())?;
    let mode = match &keys.mode {
        None => Blend::Constant,
        Some(mode) => one_of(parser, mode, "sliding-window mode", Blend::CHOICES)?,
    };
    let padding_mode = match &keys.padding_mode {
        None => Padding::Constant,
        Some(mode) => one_of(parser, mode, "padding_mode", Padding::CHOICES)?,
    };
    let sw_batch_size = match &keys.sw_batch_size {
        None => 1,
        Some(b) => positive(*b.get_ref()).ok_or_else(|| {
            src.error(
                b.span(),
                format!(
                    "`sliding_window.sw_batch_size = {}`: at least 1 window per run",
                    b.get_ref()
                ),
            )
            .with_help("e.g. sw_batch_size = 4")
        })?,
    };
    let cval = keys.cval.unwrap_or(0.0);
    if !cval.is_finite() {
        return Err(src.error(
            stage.span(),
            "`sliding_window.cval` must be a finite number",
        ));
    }
    Ok(Settings {
        roi,
        overlap,
        mode,
        sigma_scale,
        sw_batch_size,
        padding_mode,
        cval,
    })
}

/// A key with one value per axis of `roi`: its name, default and the rule each value
/// must pass.
struct PerAxisRule {
    name: &'static str,
    default: f64,
    ok: fn(f64) -> bool,
    /// The rule, as the error says it.
    rule: &'static str,
}

impl PerAxisRule {
    const OVERLAP: PerAxisRule = PerAxisRule {
        name: "overlap",
        default: 0.25,
        ok: |o| (0.0..1.0).contains(&o),
        rule: "it must be >= 0 and < 1 (as in MONAI)",
    };
    const SIGMA_SCALE: PerAxisRule = PerAxisRule {
        name: "sigma_scale",
        default: 0.125,
        ok: |s| s > 0.0 && s.is_finite(),
        rule: "it must be above 0",
    };

    /// A value per axis of `roi` (one value applies to every axis), each passing the rule.
    fn parse(
        &self,
        parser: &Parser,
        roi: &[usize],
        given: Option<&Spanned<PerAxis>>,
    ) -> Result<Vec<f64>, SpanError> {
        let (name, axes) = (self.name, roi.len());
        let Some(given) = given else {
            return Ok(vec![self.default; axes]);
        };
        let values = match given.get_ref() {
            PerAxis::One(v) => vec![*v; axes],
            PerAxis::Each(list) => list.clone(),
        };
        if values.len() != axes {
            return Err(parser
                .src
                .error(
                    given.span(),
                    format!(
                        "`sliding_window.{name}` has {} values for the {axes} axes of `roi`",
                        values.len()
                    ),
                )
                .with_help(format!("give one value, or one per axis of roi = {roi:?}")));
        }
        match values.iter().find(|v| !(self.ok)(**v)) {
            Some(bad) => Err(parser.src.error(
                given.span(),
                format!("`sliding_window.{name}` = {bad}: {}", self.rule),
            )),
            None => Ok(values),
        }
    }
}
