//! Which requests' spans are recorded: APISIX's samplers (`sampler` in the plugin's
//! configuration).

use pylon_model::FieldError;
use schemars::JsonSchema;
use serde::Deserialize;

use super::trace_context::TraceId;

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SamplerConfig {
    #[serde(default)]
    name: SamplerName,
    #[serde(default)]
    options: SamplerOptions,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum SamplerName {
    AlwaysOn,
    #[default]
    AlwaysOff,
    /// `options.fraction` of the traces, decided by the trace id (so every hop that samples
    /// by the same ratio decides alike).
    TraceIdRatio,
    /// The caller's decision when the request has a `traceparent`, else `options.root`'s.
    ParentBase,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SamplerOptions {
    /// For `trace_id_ratio`: 0 to 1.
    #[serde(default)]
    fraction: f64,
    /// For `parent_base`: the sampler of the requests that come without a parent.
    #[serde(default)]
    root: RootSamplerConfig,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RootSamplerConfig {
    #[serde(default)]
    name: RootSamplerName,
    #[serde(default)]
    options: RootSamplerOptions,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum RootSamplerName {
    AlwaysOn,
    #[default]
    AlwaysOff,
    TraceIdRatio,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RootSamplerOptions {
    /// For `trace_id_ratio`: 0 to 1.
    #[serde(default)]
    fraction: f64,
}

/// A sampler that decides without a parent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Root {
    AlwaysOn,
    AlwaysOff,
    /// Sampled when the trace id's last 63 bits are below this.
    Ratio(u64),
}

impl Root {
    fn ratio(fraction: f64, field: &str) -> Result<Root, FieldError> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(FieldError::new(field, "must be 0 to 1"));
        }
        Ok(if fraction == 1.0 {
            Root::AlwaysOn
        } else if fraction == 0.0 {
            Root::AlwaysOff
        } else {
            Root::Ratio((fraction * (1u64 << 63) as f64) as u64)
        })
    }

    fn samples(self, trace_id: &TraceId) -> bool {
        match self {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::Ratio(threshold) => {
                let low: [u8; 8] = trace_id[8..].try_into().unwrap_or_default();
                u64::from_be_bytes(low) >> 1 < threshold
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Sampler {
    Root(Root),
    ParentBased(Root),
}

impl Sampler {
    pub(super) fn new(config: &SamplerConfig) -> Result<Sampler, FieldError> {
        let fraction = "sampler.options.fraction";
        Ok(match config.name {
            SamplerName::AlwaysOn => Sampler::Root(Root::AlwaysOn),
            SamplerName::AlwaysOff => Sampler::Root(Root::AlwaysOff),
            SamplerName::TraceIdRatio => {
                Sampler::Root(Root::ratio(config.options.fraction, fraction)?)
            }
            SamplerName::ParentBase => {
                let root = &config.options.root;
                Sampler::ParentBased(match root.name {
                    RootSamplerName::AlwaysOn => Root::AlwaysOn,
                    RootSamplerName::AlwaysOff => Root::AlwaysOff,
                    RootSamplerName::TraceIdRatio => Root::ratio(
                        root.options.fraction,
                        "sampler.options.root.options.fraction",
                    )?,
                })
            }
        })
    }

    /// Whether the span of a request in `trace_id` is recorded; `parent`: whether the
    /// caller sampled it, for a request that came with a `traceparent`.
    pub(super) fn samples(self, trace_id: &TraceId, parent: Option<bool>) -> bool {
        match self {
            Sampler::Root(root) => root.samples(trace_id),
            Sampler::ParentBased(root) => parent.unwrap_or_else(|| root.samples(trace_id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::config::parse;

    #[test]
    fn samplers_decide_as_configured() {
        let id = |low: u64| {
            let mut id = [0xab; 16];
            id[8..].copy_from_slice(&low.to_be_bytes());
            id
        };
        let sampler =
            |config: Value| Sampler::new(&parse::<SamplerConfig>(&config).unwrap()).unwrap();
        let on = sampler(json!({"name": "always_on"}));
        let off = sampler(json!({}));
        assert!(on.samples(&id(1), Some(false)));
        assert!(!off.samples(&id(1), Some(true)));

        let half = sampler(json!({"name": "trace_id_ratio", "options": {"fraction": 0.5}}));
        assert!(half.samples(&id(0), None));
        assert!(half.samples(&id(u64::MAX / 2 - 2), None));
        assert!(!half.samples(&id(u64::MAX / 2 + 2), None));
        assert!(!half.samples(&id(u64::MAX), None));
        let all = sampler(json!({"name": "trace_id_ratio", "options": {"fraction": 1}}));
        assert!(all.samples(&id(u64::MAX), None));
        let none = sampler(json!({"name": "trace_id_ratio", "options": {"fraction": 0}}));
        assert!(!none.samples(&id(0), None));

        let parent = sampler(json!({"name": "parent_base",
            "options": {"root": {"name": "always_on"}}}));
        assert!(!parent.samples(&id(0), Some(false)));
        assert!(parent.samples(&id(0), Some(true)));
        assert!(parent.samples(&id(0), None), "the root decides");

        // Over many random trace ids, a ratio samples about its fraction.
        let quarter = sampler(json!({"name": "trace_id_ratio", "options": {"fraction": 0.25}}));
        let sampled = (0..10_000)
            .filter(|_| quarter.samples(&fastrand::u128(..).to_be_bytes(), None))
            .count();
        assert!((2_000..3_000).contains(&sampled), "{sampled}");
    }
}
