//! `file-logger`: appends one JSON line per request to a file: the record of
//! [`crate::log_record`], for the requests `match` selects.
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
use std::time::Duration;

use pylon_model::FieldError;
use pylon_plugin::{LogCtx, Phases, Plugin};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{merged_schema, parse, schema_of, split_fields};
use crate::descriptor::{BuildEnv, Descriptor, Metadata, MetadataSpec};
use crate::log_record::{
    parse_metadata, LoggerMetadata, LoggerMetadataConfig, RecordConfig, Records,
};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "file-logger",
    priority: 399,
    schema,
    build,
    credential: None,
    metadata: Some(MetadataSpec {
        schema: schema_of::<LoggerMetadataConfig>,
        parse: |metadata| Ok(Arc::new(parse_metadata(metadata, false)?) as Metadata),
    }),
};

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
}

/// The configuration's schema: its own fields and those of the record.
fn schema() -> Value {
    merged_schema(&[schema_of::<FileLoggerConfig>(), schema_of::<RecordConfig>()])
}

struct FileLogger {
    records: Records,
    path: PathBuf,
    /// The queue to the path's writer, started by the first request logged: a configuration
    /// only checked (by the Admin API) or compiled on a node that serves no traffic starts
    /// no thread.
    lines: OnceLock<Arc<Lines>>,
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let (record, own) = split_fields(config, RecordConfig::FIELDS);
    let records = Records::new(parse(&record)?, env.metadata::<LoggerMetadata>())?;
    Ok(Arc::new(FileLogger::new(parse(&own)?, records)?))
}

impl FileLogger {
    fn new(config: FileLoggerConfig, records: Records) -> Result<FileLogger, FieldError> {
        let path = PathBuf::from(config.path);
        // Building is validating: a path that cannot be written is refused here.
        open(&path)
            .map_err(|e| FieldError::new("path", format!("cannot open {}: {e}", path.display())))?;
        Ok(FileLogger {
            records,
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
        let Some(record) = self.records.record(ctx) else {
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

#[cfg(test)]
mod tests {
    use pylon_plugin::RequestCtx;
    use serde_json::json;

    use super::*;
    use crate::log_record::tests::log_ctx;
    use crate::testing::{build_with_metadata, refusal, TestRequest};

    /// `config` with `path` set to `file.log` in `dir`.
    fn at(dir: &tempfile::TempDir, mut config: Value) -> Value {
        config["path"] = json!(dir.path().join("file.log"));
        config
    }

    fn logger(dir: &tempfile::TempDir, config: Value) -> FileLogger {
        let (record, own) = split_fields(&at(dir, config), RecordConfig::FIELDS);
        let records = Records::new(parse(&record).unwrap(), None).unwrap();
        FileLogger::new(parse(&own).unwrap(), records).unwrap()
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
            (at(&dir, json!({"log_format": ["$uri"]})), "log_format"),
            (
                at(&dir, json!({"match": [[["uri", "~~", "("]]]})),
                "match[0]",
            ),
            (at(&dir, json!({"batch_max_size": 1})), ""),
        ];
        for (config, field) in cases {
            let error = refusal(&DESCRIPTOR, config.clone());
            assert!(error.path.starts_with(field), "{config}: {error:?}");
        }
        let error = refusal(&DESCRIPTOR, json!({}));
        assert!(error.message.contains("`path`"), "{error:?}");
        let error = build_with_metadata(
            &DESCRIPTOR,
            at(&dir, json!({})),
            json!({"max_pending_entries": 10}),
        )
        .err()
        .unwrap();
        assert_eq!(error.path, "max_pending_entries");
    }

    #[test]
    fn the_schema_has_the_record_fields() {
        let schema = schema();
        for field in ["path", "log_format", "match", "include_req_body"] {
            assert!(schema["properties"].get(field).is_some(), "{field}");
        }
        assert_eq!(schema["required"], json!(["path"]));
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
