//! The `protos` of one configuration version, each compiled once per version of its content
//! and shared by every plugin that reads it (`grpc-transcode`, `grpc-web`).

use std::collections::BTreeMap;
use std::sync::Arc;

use pylon_model::{Config, FieldError, Kind};
use pylon_protobuf::{CompileError, Schema};
use serde_json::Value;

/// Compiled protos by id; one that does not compile keeps its error, for the plugins that
/// name it to report.
#[derive(Debug, Default)]
pub struct Protos(BTreeMap<String, Compiled>);

#[derive(Debug)]
struct Compiled {
    content: String,
    schema: Result<Arc<Schema>, CompileError>,
}

impl Protos {
    /// No protos: what a configuration is checked against when it names none.
    pub fn none() -> &'static Protos {
        static NONE: Protos = Protos(BTreeMap::new());
        &NONE
    }

    /// The protos of `config`; those whose content is as in `previous` are taken from it,
    /// not compiled again.
    pub fn compile(config: &Config, previous: &Protos) -> Protos {
        let entries = config
            .others
            .iter()
            .filter(|(key, _)| key.kind == Kind::Protos)
            .filter_map(|(key, value)| Some((key.id.as_str(), content(value)?)));
        Protos::from_entries(entries, previous)
    }

    /// Protos from `(id, content)` pairs, reusing what `previous` compiled.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
        previous: &Protos,
    ) -> Protos {
        let compiled = entries.into_iter().map(|(id, content)| {
            let schema = match previous.0.get(id).filter(|p| p.content == content) {
                Some(known) => known.schema.clone(),
                None => Schema::compile(&file_name(id), content),
            };
            let compiled = Compiled {
                content: content.to_owned(),
                schema,
            };
            (id.to_owned(), compiled)
        });
        Protos(compiled.collect())
    }

    /// The schema of proto `id`, as a plugin's field `field` names it.
    pub fn schema(&self, id: &str, field: &str) -> Result<&Arc<Schema>, FieldError> {
        match self.0.get(id).map(|p| &p.schema) {
            Some(Ok(schema)) => Ok(schema),
            Some(Err(e)) => Err(FieldError::new(
                field,
                format!("proto `{id}` does not compile: {e}"),
            )),
            None => Err(FieldError::new(
                field,
                format!("proto `{id}` does not exist"),
            )),
        }
    }
}

/// A `protos` resource's content, checked: it must compile. The error is at `content`.
pub fn check_proto(resource: &Value) -> Vec<FieldError> {
    let (Some(content), id) = (content(resource), resource.get("id")) else {
        return Vec::new();
    };
    let id = id.map_or_else(|| "proto".to_owned(), id_text);
    match Schema::compile(&file_name(&id), content) {
        Ok(_) => Vec::new(),
        Err(e) => vec![FieldError::new("content", e.to_string())],
    }
}

/// The name a proto's compile errors are located in.
fn file_name(id: &str) -> String {
    format!("{id}.proto")
}

fn content(resource: &Value) -> Option<&str> {
    resource.get("content").and_then(Value::as_str)
}

/// An id written as a string or an integer.
pub(crate) fn id_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
