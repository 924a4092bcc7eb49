//! APISIX's standalone `apisix.yaml`: every resource kind as a top-level list, `#END` optional.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::config::Resource;
use crate::error::{FieldError, ValidationErrors};
use crate::key::{Key, Kind};

/// A standalone document, parsed.
pub struct Standalone {
    /// The store entries it makes.
    pub entries: BTreeMap<Key, serde_json::Value>,
    /// The configuration those entries make.
    pub config: Config,
    /// Where in the document each resource is: `routes[3]`.
    pub locations: BTreeMap<Key, String>,
}

/// Parses a standalone YAML document into store entries and the configuration they make.
///
/// Resources without an id get their 1-based position as id, as APISIX does. Error paths are
/// positions in the document: `routes[3].upstream.nodes[0].port`.
pub fn parse_standalone(
    text: &str,
) -> Result<(BTreeMap<Key, serde_json::Value>, Config), ValidationErrors> {
    parse_standalone_document(text).map(|doc| (doc.entries, doc.config))
}

/// As [`parse_standalone`], with where each resource stands in the document.
pub fn parse_standalone_document(text: &str) -> Result<Standalone, ValidationErrors> {
    let doc: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| FieldError::new("", format!("not valid YAML: {e}")))?
    };
    let doc = match doc {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => Default::default(),
        _ => return Err(FieldError::new("", "must be a map of resource kinds").into()),
    };

    let mut entries = BTreeMap::new();
    let mut locations = BTreeMap::new();
    let mut config = Config::default();
    let mut errors = Vec::new();
    for (kind_name, items) in &doc {
        let Some(kind) = Kind::parse(kind_name) else {
            errors.push(FieldError::new(
                kind_name.clone(),
                format!("unknown resource kind; expected one of {}", kind_names()),
            ));
            continue;
        };
        let items = match items {
            serde_json::Value::Array(items) => items.as_slice(),
            serde_json::Value::Null => &[],
            _ => {
                errors.push(FieldError::new(kind_name.clone(), "must be a list"));
                continue;
            }
        };
        for (i, item) in items.iter().enumerate() {
            let location = format!("{kind_name}[{i}]");
            let id = match item.get(kind.id_field()) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                Some(serde_json::Value::Number(n)) if n.is_u64() => n.to_string(),
                None => (i + 1).to_string(),
                Some(_) => {
                    errors.push(FieldError::new(
                        format!("{location}.{}", kind.id_field()),
                        "must be a non-empty string or a non-negative integer",
                    ));
                    continue;
                }
            };
            let key = Key::new(kind, id);
            if let Some(first) = locations.get(&key) {
                errors.push(FieldError::new(
                    location,
                    format!(
                        "duplicate {} `{}` (first at {first})",
                        kind.id_field(),
                        key.id
                    ),
                ));
                continue;
            }
            match Resource::from_json(kind, item) {
                Ok(resource) => config.insert(&key, resource),
                Err(e) => errors.extend(e.0.into_iter().map(|e| e.within(&location))),
            }
            entries.insert(key.clone(), item.clone());
            locations.insert(key, location);
        }
    }
    errors.extend(config.check_references(|key| locations[key].clone()));
    if errors.is_empty() {
        Ok(Standalone {
            entries,
            config,
            locations,
        })
    } else {
        Err(ValidationErrors(errors))
    }
}

fn kind_names() -> String {
    Kind::ALL.map(Kind::as_str).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_apisix_standalone_files_as_they_are() {
        let (entries, config) = parse_standalone(
            r#"
routes:
  -
    uri: /hello
    upstream:
        nodes:
            "127.0.0.1:1980": 1
        type: roundrobin
  - id: api
    uris: ["/api/*"]
    hosts: ["*.example.com"]
    methods: [GET, POST]
    upstream_id: 1
upstreams:
  - id: 1
    nodes:
      - host: 127.0.0.1
        port: 1981
        weight: 1
        priority: -1
#END
"#,
        )
        .unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(config.routes["1"].uri.as_deref(), Some("/hello"));
        assert_eq!(config.routes["api"].upstream_id.as_deref(), Some("1"));
        assert!(config.upstreams.contains_key("1"));
    }

    #[test]
    fn reports_every_error_with_its_document_path() {
        let errors = parse_standalone(
            r#"
routes:
  - uri: /a
    upstream: {nodes: {"127.0.0.1:80": 1}}
  - uri: /b
    upstream_id: missing
  - uri: b
    methods: [FETCH]
    upstream:
      nodes:
        - {host: 127.0.0.1, port: 70000, weight: 1}
  - uri: /d
    upsteam: {}
"#,
        )
        .unwrap_err();
        let got: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        assert!(
            got.contains(&"routes[2].uri: must start with `/`".to_owned()),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|e| e.starts_with("routes[2].methods[0]: `FETCH`")),
            "{got:?}"
        );
        assert!(
            got.contains(&"routes[2].upstream.nodes[0].port: must be 1..65535".to_owned()),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|e| e.starts_with("routes[3]") && e.contains("upsteam")),
            "{got:?}"
        );
        assert!(
            got.contains(&"routes[1].upstream_id: upstream `missing` does not exist".to_owned()),
            "{got:?}"
        );
    }

    #[test]
    fn refuses_duplicate_ids_and_unknown_kinds() {
        let errors = parse_standalone(
            "routes:\n  - {id: 1, uri: /a, upstream_id: u}\n  - {id: 1, uri: /b, upstream_id: u}\nupstreams:\n  - {id: u, nodes: {\"a:1\": 1}}\nroutez: []\n",
        )
        .unwrap_err();
        let got: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        assert!(
            got.iter()
                .any(|e| e.starts_with("routes[1]: duplicate id `1` (first at routes[0])")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|e| e.starts_with("routez: unknown resource kind")),
            "{got:?}"
        );
    }

    #[test]
    fn ssls_are_read_like_every_other_kind() {
        let pem = crate::test_certs::ecdsa(&["a.test"]);
        let other = crate::test_certs::ecdsa(&["a.test"]);
        // YAML takes JSON flow syntax, which spares indenting the PEM blocks.
        let ssl = |id: &str, key: &str| serde_json::json!({"id": id, "cert": pem.cert, "key": key, "snis": ["a.test"]});
        let (entries, config) =
            parse_standalone(&format!("ssls:\n  - {}\n", ssl("s1", &pem.key))).unwrap();
        assert!(entries.contains_key(&Key::new(Kind::Ssls, "s1")));
        assert_eq!(config.ssls["s1"].key_pairs().unwrap().len(), 1);
        assert!(config.others.is_empty());

        let errors = parse_standalone(&format!(
            "ssls:\n  - {}\n  - {}\n",
            ssl("s1", &pem.key),
            ssl("s2", &other.key)
        ))
        .unwrap_err();
        assert_eq!(
            errors.to_string(),
            "ssls[1].key: does not match the certificate"
        );
    }

    #[test]
    fn ids_inside_plugins_and_protocols_must_name_resources_of_the_file() {
        let file = |protos: &str| {
            format!(
                r#"
protos:{protos}
stream_routes:
  - id: im
    protocol: {{name: pylon-frames, conf: {{commands: {{"4097": {{uri: /send, proto_id: p2}}}}}}}}
routes:
  - id: r
    uri: /r
    plugins:
      grpc-transcode: {{proto_id: p1, service: s.S, method: M}}
      websocket-frames: {{stream_route_id: im}}
consumers:
  - username: jack
    plugins:
      frames-push: {{stream_route_id: chat}}
"#
            )
        };
        let errors = parse_standalone(&file(" []")).unwrap_err();
        let got: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "routes[0].plugins.grpc-transcode.proto_id: proto `p1` does not exist",
                "stream_routes[0].protocol.conf.commands.4097.proto_id: proto `p2` does not exist",
                "consumers[0].plugins.frames-push.stream_route_id: stream route `chat` does not exist",
            ]
        );
        let protos = "\n  - {id: p1, content: x}\n  - {id: p2, content: y}";
        let errors = parse_standalone(&file(protos)).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "consumers[0].plugins.frames-push.stream_route_id: stream route `chat` does not exist"
        );
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        let (entries, config) = parse_standalone("#END\n").unwrap();
        assert!(entries.is_empty());
        assert!(config.routes.is_empty());
    }
}
