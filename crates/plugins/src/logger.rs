//! What the loggers that send in batches share (`http-logger`, `tcp-logger`, `udp-logger`,
//! `syslog`): a configuration in three parts (the logger's own fields, the record's, the
//! batch processor's), their `plugin_metadata`, and the plugin, which renders each selected
//! request's record in the log phase and hands it to its destination's queue.

use std::io;
use std::sync::{Arc, OnceLock};

use pylon_model::FieldError;
use pylon_plugin::{LogCtx, Phases, Plugin};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::batch::{BatchConfig, BatchSettings, Counts, Queue, DEFAULT_MAX_PENDING_ENTRIES};
use crate::config::{merged_schema, parse, schema_of, split_fields};
use crate::descriptor::{BuildEnv, Metadata, MetadataSpec};
use crate::log_record::{
    parse_metadata, LoggerMetadata, LoggerMetadataConfig, RecordConfig, Records,
};

/// The `plugin_metadata` of a logger that sends in batches: `log_format`,
/// `max_pending_entries`.
pub(crate) const METADATA: MetadataSpec = MetadataSpec {
    schema: schema_of::<LoggerMetadataConfig>,
    parse: |metadata| Ok(Arc::new(parse_metadata(metadata, true)?) as Metadata),
};

/// The schema of a logger whose own fields are `T`'s.
pub(crate) fn schema<T: JsonSchema>() -> Value {
    merged_schema(&[
        schema_of::<T>(),
        schema_of::<RecordConfig>(),
        schema_of::<BatchConfig>(),
    ])
}

/// A logger's configuration, parsed: its own fields, what it records, and how its batches
/// go (named `default_name` unless the configuration names them).
pub(crate) fn parse_config<T: DeserializeOwned>(
    config: &Value,
    env: &BuildEnv<'_>,
    default_name: &str,
) -> Result<(T, Records, BatchSettings), FieldError> {
    let (record, rest) = split_fields(config, RecordConfig::FIELDS);
    let (batch, own) = split_fields(&rest, BatchConfig::FIELDS);
    let own = parse(&own)?;
    let metadata = env.metadata::<LoggerMetadata>();
    let records = Records::new(parse(&record)?, metadata)?;
    let pending = metadata
        .and_then(|m| m.max_pending_entries)
        .unwrap_or(DEFAULT_MAX_PENDING_ENTRIES);
    let batch = parse::<BatchConfig>(&batch)?.settings(default_name, pending)?;
    Ok((own, records, batch))
}

/// Opens (or joins) the queue to a logger's destination.
pub(crate) type Open = Box<dyn Fn() -> io::Result<Arc<Queue>> + Send + Sync>;

/// A logger plugin.
pub(crate) struct Logger {
    pub name: &'static str,
    pub records: Records,
    /// A record as its destination takes it.
    pub encode: fn(&Value) -> Vec<u8>,
    pub counts: &'static Counts,
    /// Called by the first request logged: a configuration only checked (by the Admin API),
    /// or compiled on a node that serves no traffic, starts no thread.
    pub open: Open,
    pub queue: OnceLock<Arc<Queue>>,
}

impl Logger {
    fn queue(&self) -> io::Result<&Arc<Queue>> {
        if let Some(queue) = self.queue.get() {
            return Ok(queue);
        }
        let queue = (self.open)()?;
        Ok(self.queue.get_or_init(|| queue))
    }
}

impl Plugin for Logger {
    fn name(&self) -> &'static str {
        self.name
    }

    fn phases(&self) -> Phases {
        Phases::LOG
    }

    fn log(&self, ctx: &LogCtx<'_, '_>) {
        let Some(record) = self.records.record(ctx) else {
            return;
        };
        match self.queue() {
            Ok(queue) => queue.push((self.encode)(&record)),
            Err(e) => {
                tracing::warn!(plugin = self.name, error = %e, "a record was lost: its sender did not start");
                self.counts.lost(1);
            }
        }
    }
}

/// A record as one JSON text.
pub(crate) fn json(record: &Value) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

/// Entries that are each one JSON text, as one JSON array.
pub(crate) fn json_array(batch: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(batch.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, entry) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(entry);
    }
    body.push(b']');
    body
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn entries_join_into_a_json_array() {
        let batch = [json(&json!({"a": 1})), json(&json!("b"))];
        assert_eq!(json_array(&batch), br#"[{"a":1},"b"]"#);
        assert_eq!(json_array(&[]), b"[]");
    }
}
