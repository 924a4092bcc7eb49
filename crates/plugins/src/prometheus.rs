//! `prometheus`: counts the requests of the routes it is on (or of every route, on a global
//! rule) in the gateway's metrics by route, service, consumer, node and status.
//!
//! The gateway keeps the counters and serves them on its metrics listener; this plugin only
//! says, in the log phase, that a request is to be counted and how to name its route and
//! service. So `_meta` (`disable`, `filter`, `gray_ratio`) and a consumer's own `prometheus`
//! decide it as they do any plugin's.

use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{LogCtx, MetricNames, Phases, Plugin};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "prometheus",
    priority: 500,
    schema: schema_of::<PrometheusConfig>,
    build,
    credential: None,
    metadata: None,
};

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct PrometheusConfig {
    /// Label the route and service by their `name` instead of their id (a resource without a
    /// name keeps its id).
    prefer_name: bool,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: PrometheusConfig = parse(config)?;
    Ok(Arc::new(Prometheus {
        names: if config.prefer_name {
            MetricNames::Names
        } else {
            MetricNames::Ids
        },
    }))
}

struct Prometheus {
    names: MetricNames,
}

impl Plugin for Prometheus {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::LOG
    }

    fn log(&self, ctx: &LogCtx<'_, '_>) {
        ctx.metrics.set(Some(self.names));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pylon_plugin::RequestCtx;
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, TestRequest};

    fn counted_as(config: Value) -> Option<MetricNames> {
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let request = TestRequest::get("/");
        let ctx = RequestCtx::new(&request, "r1", None);
        let log = LogCtx {
            request: &ctx,
            status: 200,
            upstream_status: Some(200),
            upstream_addr: None,
            bytes_sent: 10,
            latency: Duration::from_millis(1),
            metrics: Default::default(),
        };
        plugin.log(&log);
        log.metrics.get()
    }

    #[test]
    fn a_request_is_counted_named_as_configured() {
        assert_eq!(counted_as(json!({})), Some(MetricNames::Ids));
        assert_eq!(
            counted_as(json!({"prefer_name": true})),
            Some(MetricNames::Names)
        );
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        let error = refusal(&DESCRIPTOR, json!({"prefer_name": "yes"}));
        assert!(error.to_string().starts_with("prefer_name: "), "{error}");
        let error = refusal(&DESCRIPTOR, json!({"export_uri": "/m"}));
        assert!(error.to_string().contains("unknown field"), "{error}");
    }
}
