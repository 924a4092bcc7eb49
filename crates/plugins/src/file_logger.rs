//! `file-logger`: appends one JSON line per request to a file, with the fields `log_format`
//! names or a default record, for the requests `match` selects.
//!
//! A worker never touches the file. The log phase renders the line and hands it to a bounded
//! queue; one writer thread per path, started by the first line, appends what gathered, in
//! batches. The writer is shared
//! by every instance that writes that path, so rebuilding a configuration reuses it, and it
//! ends once no instance holds it. A line that finds the queue full is dropped and counted
//! ([`file_log_counts`]). Before each batch the writer checks that the path still names the
//! file it holds, and reopens it when not: `logrotate`'s move-and-create is followed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pylon_model::expr::Expr;
use pylon_model::FieldError;
use pylon_plugin::{LogCtx, Phases, Plugin, Template};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "file-logger",
    priority: 399,
    schema: schema_of::<FileLoggerConfig>,
    build,
    credential: None,
    metadata: None,
};

/// The most `match` alternatives (APISIX's `maxItems`).
const MAX_MATCH: usize = 20;

/// Lines waiting for a file's writer at most; past them, lines are dropped.
const QUEUE_LINES: usize = 4096;

/// How long the writer lets lines gather while traffic flows.
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

static WRITTEN: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// What became of the lines `file-logger` made since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLogCounts {
    /// Appended to their file.
    pub written: u64,
    /// Left out because their file's writer had fallen behind.
    pub dropped: u64,
    /// Lost to an error opening or writing their file.
    pub failed: u64,
}

pub fn file_log_counts() -> FileLogCounts {
    FileLogCounts {
        written: WRITTEN.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileLoggerConfig {
    /// The file the lines are appended to, created if missing. A relative path is from the
    /// gateway's working directory.
    #[schemars(length(min = 1))]
    path: String,
    /// The record's fields: a string starting with `$` is that request variable (left out
    /// when the request has none), a string with `$var`s in it is rendered, anything else is
    /// written as given. Unset: a default record.
    log_format: Option<Map<String, Value>>,
    /// Not supported yet: only `false`.
    #[serde(default)]
    include_req_body: bool,
    /// Not supported yet: only `false`.
    #[serde(default)]
    include_resp_body: bool,
    /// `vars` expressions: only requests that match one of them are logged. An empty list
    /// matches no request.
    #[serde(rename = "match")]
    #[schemars(with = "Option<Vec<Vec<Value>>>", length(max = 20))]
    matches: Option<Vec<Value>>,
}

struct FileLogger {
    /// `None`: the default record.
    format: Option<Vec<(String, Field)>>,
    /// Alternatives: a request that matches any one is logged. `None`: every request.
    matches: Option<Vec<Expr>>,
    path: PathBuf,
    /// The queue to the path's writer, started by the first request logged: a configuration
    /// only checked (by the Admin API) or compiled on a node that serves no traffic starts
    /// no thread.
    lines: OnceLock<Arc<Lines>>,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    Ok(Arc::new(FileLogger::new(parse(config)?)?))
}

impl FileLogger {
    fn new(config: FileLoggerConfig) -> Result<FileLogger, FieldError> {
        for (field, set) in [
            ("include_req_body", config.include_req_body),
            ("include_resp_body", config.include_resp_body),
        ] {
            if set {
                return Err(FieldError::new(
                    field,
                    "logging bodies is not supported yet",
                ));
            }
        }
        let matches = match config.matches {
            Some(matches) if matches.len() > MAX_MATCH => {
                return Err(FieldError::new(
                    "match",
                    format!("must have at most {MAX_MATCH} expressions"),
                ));
            }
            Some(matches) => Some(
                matches
                    .iter()
                    .enumerate()
                    .map(|(i, expr)| {
                        Expr::parse(expr).map_err(|e| e.within(&format!("match[{i}]")))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            None => None,
        };
        let format = config.log_format.map(|format| {
            format
                .into_iter()
                .map(|(name, value)| (name, Field::parse(value)))
                .collect()
        });
        let path = PathBuf::from(config.path);
        // Building is validating: a path that cannot be written is refused here.
        open(&path)
            .map_err(|e| FieldError::new("path", format!("cannot open {}: {e}", path.display())))?;
        Ok(FileLogger {
            format,
            matches,
            path,
            lines: OnceLock::new(),
        })
    }

    /// The queue to the path's writer, started on the first call.
    fn lines(&self) -> io::Result<&Arc<Lines>> {
        if let Some(lines) = self.lines.get() {
            return Ok(lines);
        }
        let lines = writer(&self.path)?;
        Ok(self.lines.get_or_init(|| lines))
    }

    /// The record of a request, `None` when `match` leaves it out.
    fn record(&self, ctx: &LogCtx<'_, '_>) -> Option<Value> {
        let vars = LogVars(ctx);
        let selected = self.matches.as_ref().is_none_or(|alternatives| {
            alternatives
                .iter()
                .any(|expr| pylon_router::eval_vars(expr, &vars))
        });
        if !selected {
            return None;
        }
        Some(match &self.format {
            Some(format) => Value::Object(
                format
                    .iter()
                    .filter_map(|(name, field)| Some((name.clone(), field.render(&vars)?)))
                    .collect(),
            ),
            None => default_record(ctx),
        })
    }
}

/// One field of `log_format`.
enum Field {
    Value(Value),
    /// `$name`: the variable's value, the field left out without one (as APISIX's).
    Var(String),
    Text(Template),
}

impl Field {
    fn parse(value: Value) -> Field {
        let Value::String(text) = value else {
            return Field::Value(value);
        };
        if let Some(name) = text.strip_prefix('$').filter(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }) {
            return Field::Var(name.to_owned());
        }
        let template = Template::parse(&text);
        if template.is_literal() {
            Field::Value(Value::String(text))
        } else {
            Field::Text(template)
        }
    }

    fn render(&self, vars: &LogVars<'_, '_, '_>) -> Option<Value> {
        match self {
            Field::Value(value) => Some(value.clone()),
            Field::Var(name) => vars.var(name).map(|v| Value::String(v.into_owned())),
            Field::Text(template) => Some(Value::String(template.render(vars).into_owned())),
        }
    }
}

/// The queue to a file's writer thread. The thread ends when the last one is dropped.
type Lines = SyncSender<Vec<u8>>;

/// Every file's writer, by path, while an instance holds it.
static WRITERS: Mutex<BTreeMap<PathBuf, Weak<Lines>>> = Mutex::new(BTreeMap::new());

/// The queue to `path`'s writer: the running one, or a new one on the file.
fn writer(path: &Path) -> io::Result<Arc<Lines>> {
    let mut writers = WRITERS.lock().unwrap_or_else(|e| e.into_inner());
    writers.retain(|_, lines| lines.strong_count() > 0);
    if let Some(lines) = writers.get(path).and_then(Weak::upgrade) {
        return Ok(lines);
    }
    let file = open(path)?;
    let (tx, rx) = sync_channel(QUEUE_LINES);
    let mut out = Output {
        path: path.to_owned(),
        file: Some(file),
    };
    std::thread::Builder::new()
        .name("pylon-file-logger".into())
        .spawn(move || out.run(rx))?;
    let lines = Arc::new(tx);
    writers.insert(path.to_owned(), Arc::downgrade(&lines));
    Ok(lines)
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A writer thread's file.
struct Output {
    path: PathBuf,
    /// `None` after an error: the next batch opens the path again.
    file: Option<File>,
}

impl Output {
    /// Blocks only while the log is idle. While lines flow it wakes every `BATCH_INTERVAL`
    /// and takes what gathered, so that a worker's send need not wake it.
    fn run(&mut self, rx: Receiver<Vec<u8>>) {
        let mut batch = Vec::new();
        while let Ok(first) = rx.recv() {
            batch.extend_from_slice(&first);
            let mut lines = 1;
            loop {
                while let Ok(line) = rx.try_recv() {
                    batch.extend_from_slice(&line);
                    lines += 1;
                }
                if lines == 0 {
                    break;
                }
                self.write(&batch, lines);
                batch.clear();
                lines = 0;
                std::thread::sleep(BATCH_INTERVAL);
            }
        }
    }

    fn write(&mut self, batch: &[u8], lines: u64) {
        match self.append(batch) {
            Ok(()) => WRITTEN.fetch_add(lines, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), lines, error = %e, "file-logger lost lines");
                FAILED.fetch_add(lines, Ordering::Relaxed)
            }
        };
    }

    /// One `write` of the whole batch, so that lines stay whole even beside another writer
    /// of the file (an old configuration's, finishing its queue).
    fn append(&mut self, batch: &[u8]) -> io::Result<()> {
        let mut file = match self.file.take().filter(|f| names(&self.path, f)) {
            Some(file) => file,
            None => open(&self.path)?,
        };
        file.write_all(batch)?;
        self.file = Some(file);
        Ok(())
    }
}

/// Whether `path` still names `file`: not when it was moved or removed (rotated).
fn names(path: &Path, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(named), Ok(held)) => named.dev() == held.dev() && named.ino() == held.ino(),
        _ => false,
    }
}

impl Plugin for FileLogger {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::LOG
    }

    fn log(&self, ctx: &LogCtx<'_, '_>) {
        let Some(record) = self.record(ctx) else {
            return;
        };
        let Ok(mut line) = serde_json::to_vec(&record) else {
            return;
        };
        line.push(b'\n');
        match self.lines() {
            Ok(lines) => {
                if lines.try_send(line).is_err() {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "file-logger lost a line");
                FAILED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// APISIX's essentials, from what the log phase knows.
fn default_record(ctx: &LogCtx<'_, '_>) -> Value {
    let request = ctx.request;
    let var = |name| request.var(name).map(|v| v.into_owned());
    let mut headers = Map::new();
    request.for_each_header(&mut |name, value| {
        let name = name.to_ascii_lowercase();
        let value = Value::String(String::from_utf8_lossy(value).into_owned());
        // A repeated header is a list of its values, as APISIX's.
        match headers.get_mut(&name) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => {
                headers.insert(name, value);
            }
        }
    });
    let uri = var("request_uri");
    let url = match (var("scheme"), request.host(), &uri) {
        (Some(scheme), Some(host), Some(uri)) => Some(match var("server_port") {
            Some(port) => format!("{scheme}://{host}:{port}{uri}"),
            None => format!("{scheme}://{host}{uri}"),
        }),
        _ => None,
    };
    let start = SystemTime::now()
        .checked_sub(ctx.latency)
        .and_then(|start| start.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    let mut record = json!({
        "request": {
            "method": request.method(),
            "uri": uri,
            "url": url,
            "headers": headers,
        },
        "response": {"status": ctx.status, "size": ctx.bytes_sent},
        "client_ip": request.client_ip().to_string(),
        "route_id": request.route_id(),
        "start_time": start.as_millis() as u64,
        "latency": millis(ctx.latency),
    });
    let more = [
        ("upstream_status", ctx.upstream_status.map(Value::from)),
        ("service_id", request.service_id().map(Value::from)),
        (
            "consumer",
            request
                .consumer()
                .map(|c| json!({"username": c.username()})),
        ),
    ];
    for (name, value) in more {
        if let Some(value) = value {
            record[name] = value;
        }
    }
    record
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The request's variables, and those of its answer that nginx's log phase has: `status`,
/// `upstream_status`, `bytes_sent`, `request_time` (seconds).
struct LogVars<'c, 'a, 'r>(&'c LogCtx<'a, 'r>);

impl RequestView for LogVars<'_, '_, '_> {
    fn path(&self) -> &str {
        self.0.request.path()
    }

    fn host(&self) -> Option<&str> {
        self.0.request.host()
    }

    fn method(&self) -> &str {
        self.0.request.method()
    }

    fn remote_addr(&self) -> std::net::IpAddr {
        self.0.request.client_ip()
    }

    fn for_each_header(&self, each: &mut dyn FnMut(&str, &[u8])) {
        self.0.request.for_each_header(each);
    }

    fn var(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let ctx = self.0;
        let value = match name {
            "status" => ctx.status.to_string(),
            "upstream_status" => ctx.upstream_status?.to_string(),
            "bytes_sent" => ctx.bytes_sent.to_string(),
            "request_time" => format!("{:.3}", ctx.latency.as_secs_f64()),
            _ => return ctx.request.var(name),
        };
        Some(value.into())
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin::RequestCtx;
    use serde_json::json;

    use super::*;
    use crate::testing::{refusal, TestRequest};

    fn log_ctx<'a, 'r>(request: &'a RequestCtx<'r>, status: u16) -> LogCtx<'a, 'r> {
        LogCtx {
            request,
            status,
            upstream_status: Some(status),
            bytes_sent: 321,
            latency: Duration::from_micros(12_345),
            metrics: Default::default(),
        }
    }

    /// `config` with `path` set to `file.log` in `dir`.
    fn at(dir: &tempfile::TempDir, mut config: Value) -> Value {
        config["path"] = json!(dir.path().join("file.log"));
        config
    }

    fn logger(dir: &tempfile::TempDir, config: Value) -> FileLogger {
        FileLogger::new(parse(&at(dir, config)).unwrap()).unwrap()
    }

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (json!({"path": ""}), "path"),
            (json!({"path": dir.path().join("missing/file.log")}), "path"),
            (json!({"path": dir.path()}), "path"),
            (
                at(&dir, json!({"include_req_body": true})),
                "include_req_body",
            ),
            (
                at(&dir, json!({"include_resp_body": true})),
                "include_resp_body",
            ),
            (at(&dir, json!({"log_format": ["$uri"]})), "log_format"),
            (at(&dir, json!({"match": {}})), "match"),
            (
                at(&dir, json!({"match": [[["uri", "~~", "("]]]})),
                "match[0]",
            ),
            (at(&dir, json!({"match": vec![json!([]); 21]})), "match"),
        ];
        for (config, field) in cases {
            let error = refusal(&DESCRIPTOR, config.clone());
            assert!(error.path.starts_with(field), "{config}: {error:?}");
        }
        let error = refusal(&DESCRIPTOR, json!({}));
        assert!(error.message.contains("`path`"), "{error:?}");
        let error = refusal(&DESCRIPTOR, at(&dir, json!({"include_resp_body": true})));
        assert!(error.message.contains("not supported yet"), "{error:?}");
    }

    #[test]
    fn log_format_renders_variables_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let logger = logger(
            &dir,
            json!({"log_format": {
                "host": "$host",
                "client": "$remote_addr",
                "status": "$status",
                "time": "$request_time",
                "who": "user ${http_x_user} from $remote_addr",
                "missing": "$http_x_absent",
                "price": "5 $",
                "fixed": 7,
                "nested": {"a": "$host"}
            }}),
        );
        let request = TestRequest::get("/p?q=1").header("X-User", "ann");
        let ctx = RequestCtx::new(&request, "r1", None);
        assert_eq!(
            logger.record(&log_ctx(&ctx, 201)),
            Some(json!({
                "host": "example.com",
                "client": "192.0.2.7",
                "status": "201",
                "time": "0.012",
                "who": "user ann from 192.0.2.7",
                "price": "5 $",
                "fixed": 7,
                "nested": {"a": "$host"}
            }))
        );
    }

    #[test]
    fn the_default_record_has_the_essentials() {
        let dir = tempfile::tempdir().unwrap();
        let logger = logger(&dir, json!({}));
        let request = TestRequest::get("/p?q=1")
            .header("Accept", "a")
            .header("accept", "b");
        let ctx = RequestCtx::new(&request, "r1", Some("s1"));
        let record = logger.record(&log_ctx(&ctx, 200)).unwrap();
        assert_eq!(record["request"]["method"], "GET");
        assert_eq!(record["request"]["uri"], "/p?q=1");
        assert_eq!(record["request"]["url"], "http://example.com/p?q=1");
        assert_eq!(record["request"]["headers"]["accept"], json!(["a", "b"]));
        assert_eq!(record["response"], json!({"status": 200, "size": 321}));
        assert_eq!(record["upstream_status"], 200);
        assert_eq!(record["client_ip"], "192.0.2.7");
        assert_eq!(
            (&record["route_id"], &record["service_id"]),
            (&json!("r1"), &json!("s1"))
        );
        assert_eq!(record["latency"], 12.345);
        assert!(record["start_time"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(record.get("consumer").is_none());
    }

    #[test]
    fn match_logs_only_the_requests_one_alternative_selects() {
        let dir = tempfile::tempdir().unwrap();
        let logger = logger(
            &dir,
            json!({"match": [
                [["arg_name", "==", "jack"]],
                [["status", ">=", 500], ["uri", "~~", "^/api/"]]
            ]}),
        );
        let cases = [
            ("/x?name=jack", 200, true),
            ("/x?name=jill", 200, false),
            ("/api/a", 502, true),
            ("/api/a", 200, false),
            ("/other", 502, false),
        ];
        for (target, status, logged) in cases {
            let request = TestRequest::get(target);
            let ctx = RequestCtx::new(&request, "r1", None);
            assert_eq!(
                logger.record(&log_ctx(&ctx, status)).is_some(),
                logged,
                "{target} {status}"
            );
        }
        let none = self::logger(&dir, json!({"match": []}));
        let request = TestRequest::get("/");
        let ctx = RequestCtx::new(&request, "r1", None);
        assert!(
            none.record(&log_ctx(&ctx, 200)).is_none(),
            "an empty match selects nothing"
        );
    }

    #[test]
    fn instances_on_one_path_share_a_writer_that_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.log");
        let first = logger(&dir, json!({"log_format": {"n": "$arg_n"}}));
        let second = logger(&dir, json!({}));
        assert!(
            first.lines.get().is_none(),
            "no writer before a line is logged"
        );
        assert!(Arc::ptr_eq(first.lines().unwrap(), second.lines().unwrap()));
        drop(second);

        let request = TestRequest::get("/?n=1");
        let ctx = RequestCtx::new(&request, "r1", None);
        first.log(&log_ctx(&ctx, 200));
        wait_for(&path, "{\"n\":\"1\"}\n");

        let rotated = dir.path().join("file.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        let request = TestRequest::get("/?n=2");
        let ctx = RequestCtx::new(&request, "r1", None);
        first.log(&log_ctx(&ctx, 200));
        wait_for(&path, "{\"n\":\"2\"}\n");
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "{\"n\":\"1\"}\n"
        );

        // Once no instance holds it, its queue closes and the writer thread ends.
        let lines = Arc::downgrade(first.lines().unwrap());
        drop(first);
        assert!(lines.upgrade().is_none());
    }

    /// Waits (boundedly) for `path` to hold `text`.
    fn wait_for(path: &Path, text: &str) {
        for _ in 0..500 {
            if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} never held {text:?}", path.display());
    }
}
