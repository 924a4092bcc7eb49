//! The batch processor (APISIX's): what the loggers and the span exporter send gathers into
//! batches, each sent to its destination off the workers, and retried with backoff.
//!
//! A worker only hands an entry to a bounded queue ([`Queue::push`]): it never waits on a
//! destination. One thread per destination, started by its first entry, runs a
//! current-thread runtime that gathers a batch (until `batch_max_size` entries, no new entry
//! for `inactive_timeout`, or the oldest entry is `buffer_duration` old) and sends it; a
//! failed send is tried again `max_retry_count` times, waiting `retry_delay` and then twice
//! as long each time. Meanwhile entries wait in the queue; an entry that finds it full is
//! dropped and counted. Instances configured alike share the destination's thread; it ends
//! once no instance holds it, after sending what it had.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pylon_model::FieldError;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The longest wait between two tries, unless `retry_delay` itself is longer.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The batch processor's fields of a logger's configuration, with APISIX's defaults.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchConfig {
    /// The name the logger's warnings are under. Default: the plugin's (`http logger`).
    name: Option<String>,
    /// The most entries one batch sends.
    #[serde(default = "default_batch_max_size")]
    #[schemars(range(min = 1))]
    batch_max_size: usize,
    /// A batch is sent once no entry joined it for this many seconds.
    #[serde(default = "default_inactive_timeout")]
    #[schemars(range(min = 1))]
    inactive_timeout: u64,
    /// A batch is sent once its oldest entry is this many seconds old.
    #[serde(default = "default_buffer_duration")]
    #[schemars(range(min = 1))]
    buffer_duration: u64,
    /// How many times a failed batch is tried again before it is given up.
    #[serde(default)]
    max_retry_count: u32,
    /// Seconds before the first retry; each further retry waits twice as long as the one
    /// before, up to a minute.
    #[serde(default = "default_retry_delay")]
    retry_delay: u64,
}

fn default_batch_max_size() -> usize {
    1000
}

fn default_inactive_timeout() -> u64 {
    5
}

fn default_buffer_duration() -> u64 {
    60
}

fn default_retry_delay() -> u64 {
    1
}

/// Entries waiting for a destination at most, unless the plugin's metadata says otherwise
/// (APISIX's `max_pending_entries`).
pub(crate) const DEFAULT_MAX_PENDING_ENTRIES: usize = 8192;

impl BatchConfig {
    /// The names of its fields, to tell them from a logger's own.
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "name",
        "batch_max_size",
        "inactive_timeout",
        "buffer_duration",
        "max_retry_count",
        "retry_delay",
    ];

    /// The settings, named `default_name` unless `name` is set, with a queue of
    /// `max_pending_entries`.
    pub(crate) fn settings(
        self,
        default_name: &str,
        max_pending_entries: usize,
    ) -> Result<BatchSettings, FieldError> {
        for (field, value) in [
            ("batch_max_size", self.batch_max_size as u64),
            ("inactive_timeout", self.inactive_timeout),
            ("buffer_duration", self.buffer_duration),
        ] {
            if value == 0 {
                return Err(FieldError::new(field, "must be at least 1"));
            }
        }
        Ok(BatchSettings {
            name: self.name.unwrap_or_else(|| default_name.to_owned()),
            max_entries: self.batch_max_size,
            max_bytes: None,
            inactive_timeout: Duration::from_secs(self.inactive_timeout),
            buffer_duration: Duration::from_secs(self.buffer_duration),
            max_retry_count: self.max_retry_count,
            retry_delay: Duration::from_secs(self.retry_delay),
            max_pending_entries,
            max_pending_bytes: None,
        })
    }
}

/// How a destination's entries are gathered, sent and bounded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BatchSettings {
    pub name: String,
    pub max_entries: usize,
    /// A batch is sent once its entries add up to this many bytes (syslog's `flush_limit`).
    pub max_bytes: Option<usize>,
    pub inactive_timeout: Duration,
    pub buffer_duration: Duration,
    pub max_retry_count: u32,
    pub retry_delay: Duration,
    pub max_pending_entries: usize,
    /// Past this many bytes waiting, entries are dropped (syslog's `drop_limit`).
    pub max_pending_bytes: Option<usize>,
}

/// What became of one plugin's entries since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ShipCounts {
    /// Delivered to their destination.
    pub sent: u64,
    /// Left out because their destination's queue was full.
    pub dropped: u64,
    /// Given up after every try failed.
    pub failed: u64,
    /// Tries that failed and were tried again.
    pub retried: u64,
}

/// One plugin's counts, kept as they happen.
pub(crate) struct Counts {
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
}

impl Counts {
    pub(crate) const fn new() -> Counts {
        Counts {
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        }
    }

    pub(crate) fn snapshot(&self) -> ShipCounts {
        ShipCounts {
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
        }
    }

    /// Counts `n` entries as failed that never reached a queue.
    pub(crate) fn lost(&self, n: usize) {
        Counts::add(&self.failed, n);
    }

    fn add(count: &AtomicU64, n: usize) {
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Where batches go: one connection, socket or client, owned by the destination's thread.
pub(crate) trait Sink: Send + 'static {
    /// Delivers one batch, bounded by the destination's timeout. An error fails the try.
    fn send(&mut self, batch: &[Vec<u8>]) -> impl Future<Output = io::Result<()>>;
}

/// The workers' end of a destination's queue. The destination's thread ends once it is
/// dropped.
pub(crate) struct Queue {
    entries: mpsc::Sender<Vec<u8>>,
    /// Bytes of the entries queued or in the batch being gathered or sent.
    pending_bytes: Arc<AtomicUsize>,
    max_pending_bytes: Option<usize>,
    counts: &'static Counts,
}

impl Queue {
    /// Hands `entry` to the destination's thread, or drops (and counts) it when the queue is
    /// full. Never waits.
    pub(crate) fn push(&self, entry: Vec<u8>) {
        let len = entry.len();
        let before = self.pending_bytes.fetch_add(len, Ordering::Relaxed);
        let over = self.max_pending_bytes.is_some_and(|max| before + len > max);
        if over || self.entries.try_send(entry).is_err() {
            self.pending_bytes.fetch_sub(len, Ordering::Relaxed);
            Counts::add(&self.counts.dropped, 1);
        }
    }
}

/// The running destinations of one plugin, by what tells them apart (`K`: an address, a
/// URI, ...) and their settings.
pub(crate) struct Destinations<K> {
    running: Mutex<Vec<(K, BatchSettings, Weak<Queue>)>>,
}

impl<K: PartialEq> Destinations<K> {
    pub(crate) const fn new() -> Destinations<K> {
        Destinations {
            running: Mutex::new(Vec::new()),
        }
    }

    /// The queue to destination `key`: the running one with these settings, or a new one
    /// that sends through `sink()`.
    pub(crate) fn queue<S: Sink>(
        &self,
        key: K,
        settings: &BatchSettings,
        counts: &'static Counts,
        sink: impl FnOnce() -> S,
    ) -> io::Result<Arc<Queue>> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|(_, _, queue)| queue.strong_count() > 0);
        let found = running
            .iter()
            .find(|(k, s, _)| *k == key && s == settings)
            .and_then(|(_, _, queue)| queue.upgrade());
        if let Some(queue) = found {
            return Ok(queue);
        }
        let queue = start(settings.clone(), counts, sink())?;
        running.push((key, settings.clone(), Arc::downgrade(&queue)));
        Ok(queue)
    }
}

/// Starts a destination's thread, sending through `sink`.
fn start<S: Sink>(
    settings: BatchSettings,
    counts: &'static Counts,
    sink: S,
) -> io::Result<Arc<Queue>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::channel(settings.max_pending_entries.max(1));
    let pending_bytes = Arc::new(AtomicUsize::new(0));
    let queue = Arc::new(Queue {
        entries: tx,
        pending_bytes: pending_bytes.clone(),
        max_pending_bytes: settings.max_pending_bytes,
        counts,
    });
    let mut processor = Processor {
        settings,
        counts,
        pending_bytes,
        sink,
    };
    std::thread::Builder::new()
        .name("pylon-batch".into())
        .spawn(move || runtime.block_on(processor.run(rx)))?;
    Ok(queue)
}

/// A destination's thread: gathers batches from the queue and sends them.
struct Processor<S> {
    settings: BatchSettings,
    counts: &'static Counts,
    pending_bytes: Arc<AtomicUsize>,
    sink: S,
}

impl<S: Sink> Processor<S> {
    /// Runs until the queue is closed and empty.
    async fn run(&mut self, mut rx: mpsc::Receiver<Vec<u8>>) {
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            let oldest = Instant::now();
            let mut bytes = first.len();
            batch.push(first);
            while batch.len() < self.settings.max_entries
                && self.settings.max_bytes.is_none_or(|max| bytes < max)
            {
                let deadline = (Instant::now() + self.settings.inactive_timeout)
                    .min(oldest + self.settings.buffer_duration);
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(entry)) => {
                        bytes += entry.len();
                        batch.push(entry);
                    }
                    // Closed (sent once the loop asks again) or timed out: send what there is.
                    Ok(None) | Err(_) => break,
                }
            }
            self.deliver(&batch).await;
            self.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
            batch.clear();
        }
    }

    /// Sends `batch`, trying again with backoff as configured.
    async fn deliver(&mut self, batch: &[Vec<u8>]) {
        let mut delay = self.settings.retry_delay;
        let mut tries_left = self.settings.max_retry_count;
        loop {
            match self.sink.send(batch).await {
                Ok(()) => return Counts::add(&self.counts.sent, batch.len()),
                Err(e) if tries_left > 0 => {
                    tracing::debug!(logger = %self.settings.name, error = %e, "sending a batch failed; trying again in {delay:?}");
                    Counts::add(&self.counts.retried, 1);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF.max(self.settings.retry_delay));
                    tries_left -= 1;
                }
                Err(e) => {
                    tracing::warn!(logger = %self.settings.name, entries = batch.len(), error = %e, "a batch was given up");
                    return Counts::add(&self.counts.failed, batch.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use serde_json::json;

    use super::*;
    use crate::config::parse;

    /// Hands every batch it is sent to the test, failing the first `failures` tries.
    struct Collect {
        batches: std_mpsc::Sender<Vec<Vec<u8>>>,
        failures: u32,
        /// Until this closes, a send waits: the destination hangs.
        hold: Option<tokio::sync::oneshot::Receiver<()>>,
    }

    impl Sink for Collect {
        async fn send(&mut self, batch: &[Vec<u8>]) -> io::Result<()> {
            if let Some(hold) = self.hold.take() {
                let _ = hold.await;
            }
            if self.failures > 0 {
                self.failures -= 1;
                return Err(io::Error::other("down"));
            }
            let _ = self.batches.send(batch.to_vec());
            Ok(())
        }
    }

    fn settings(max_entries: usize) -> BatchSettings {
        BatchSettings {
            name: "test".into(),
            max_entries,
            max_bytes: None,
            inactive_timeout: Duration::from_millis(50),
            buffer_duration: Duration::from_secs(60),
            max_retry_count: 0,
            retry_delay: Duration::ZERO,
            max_pending_entries: 100,
            max_pending_bytes: None,
        }
    }

    fn counts() -> &'static Counts {
        Box::leak(Box::new(Counts::new()))
    }

    fn collect(failures: u32) -> (Collect, std_mpsc::Receiver<Vec<Vec<u8>>>) {
        let (tx, rx) = std_mpsc::channel();
        let sink = Collect {
            batches: tx,
            failures,
            hold: None,
        };
        (sink, rx)
    }

    /// Waits (boundedly) for `counts` to say `what`: they are counted once the sink returns.
    fn wait_for(counts: &Counts, what: impl Fn(ShipCounts) -> bool) {
        for _ in 0..500 {
            if what(counts.snapshot()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the counts stayed {:?}", counts.snapshot());
    }

    fn next(rx: &std_mpsc::Receiver<Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a batch in time")
    }

    #[test]
    fn the_fields_have_apisix_defaults_and_bounds() {
        let settings = parse::<BatchConfig>(&json!({}))
            .unwrap()
            .settings("http logger", 10)
            .unwrap();
        assert_eq!(
            settings,
            BatchSettings {
                name: "http logger".into(),
                max_entries: 1000,
                max_bytes: None,
                inactive_timeout: Duration::from_secs(5),
                buffer_duration: Duration::from_secs(60),
                max_retry_count: 0,
                retry_delay: Duration::from_secs(1),
                max_pending_entries: 10,
                max_pending_bytes: None,
            }
        );
        for field in ["batch_max_size", "inactive_timeout", "buffer_duration"] {
            let error = parse::<BatchConfig>(&json!({ field: 0 }))
                .unwrap()
                .settings("x", 10)
                .unwrap_err();
            assert_eq!(error.path, field);
        }
        let error = parse::<BatchConfig>(&json!({"max_retry_count": -1})).unwrap_err();
        assert_eq!(error.path, "max_retry_count");
    }

    #[test]
    fn entries_gather_into_batches_of_the_configured_size() {
        let (sink, batches) = collect(0);
        let counts = counts();
        let queue = start(settings(2), counts, sink).unwrap();
        for entry in [b"a", b"b", b"c"] {
            queue.push(entry.to_vec());
        }
        assert_eq!(next(&batches), [b"a".to_vec(), b"b".to_vec()]);
        // The third waits for a partner until the batch has been inactive long enough.
        assert_eq!(next(&batches), [b"c".to_vec()]);
        wait_for(counts, |c| c.sent == 3);
    }

    #[test]
    fn a_batch_also_ends_at_its_byte_limit() {
        let (sink, batches) = collect(0);
        let queue = start(
            BatchSettings {
                max_bytes: Some(4),
                ..settings(100)
            },
            counts(),
            sink,
        )
        .unwrap();
        for entry in [b"ab", b"cd", b"ef"] {
            queue.push(entry.to_vec());
        }
        assert_eq!(next(&batches), [b"ab".to_vec(), b"cd".to_vec()]);
        assert_eq!(next(&batches), [b"ef".to_vec()]);
    }

    #[test]
    fn a_failed_batch_is_tried_again_then_given_up() {
        let (sink, batches) = collect(2);
        let counts = counts();
        let retried = BatchSettings {
            max_retry_count: 2,
            ..settings(1)
        };
        let queue = start(retried, counts, sink).unwrap();
        queue.push(b"a".to_vec());
        assert_eq!(next(&batches), [b"a".to_vec()]);
        wait_for(counts, |c| (c.sent, c.retried, c.failed) == (1, 2, 0));

        let (sink, batches) = collect(2);
        let counts = self::counts();
        let queue = start(
            BatchSettings {
                max_retry_count: 1,
                ..settings(1)
            },
            counts,
            sink,
        )
        .unwrap();
        queue.push(b"lost".to_vec());
        queue.push(b"kept".to_vec());
        assert_eq!(next(&batches), [b"kept".to_vec()]);
        // One retry for `lost`, which failed again; then `kept` went.
        wait_for(counts, |c| (c.sent, c.retried, c.failed) == (1, 1, 1));
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (tx, batches) = std_mpsc::channel();
        let (release, hold) = tokio::sync::oneshot::channel();
        let sink = Collect {
            batches: tx,
            failures: 0,
            hold: Some(hold),
        };
        let counts = counts();
        let queue = start(
            BatchSettings {
                max_pending_entries: 2,
                ..settings(1)
            },
            counts,
            sink,
        )
        .unwrap();
        queue.push(b"0".to_vec());
        // The first entry is taken for sending (and held there), then two wait; the rest
        // find the queue full.
        let taken = || queue.entries.capacity() == 2;
        for _ in 0..500 {
            if taken() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(taken(), "the first entry was never taken");
        for i in 1..=5 {
            queue.push(vec![b'0' + i]);
        }
        assert_eq!(counts.snapshot().dropped, 3);
        drop(release);
        for expected in [b"0", b"1", b"2"] {
            assert_eq!(next(&batches), [expected.to_vec()]);
        }
        wait_for(counts, |c| c.sent == 3);
    }

    #[test]
    fn pending_bytes_past_the_limit_are_dropped() {
        let (tx, _batches) = std_mpsc::channel();
        let (_release, hold) = tokio::sync::oneshot::channel();
        let sink = Collect {
            batches: tx,
            failures: 0,
            hold: Some(hold),
        };
        let counts = counts();
        let queue = start(
            BatchSettings {
                max_pending_bytes: Some(5),
                ..settings(1)
            },
            counts,
            sink,
        )
        .unwrap();
        queue.push(b"abc".to_vec());
        queue.push(b"de".to_vec());
        queue.push(b"f".to_vec());
        assert_eq!(counts.snapshot().dropped, 1);
    }

    #[test]
    fn instances_configured_alike_share_a_destination_that_ends_with_them() {
        static PLACES: Destinations<&str> = Destinations::new();
        let counts = counts();
        let (first, _) = collect(0);
        let a = PLACES
            .queue("here", &settings(1), counts, || first)
            .unwrap();
        let b = PLACES
            .queue("here", &settings(1), counts, || -> Collect {
                panic!("started twice")
            })
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let (other, _) = collect(0);
        let c = PLACES
            .queue("there", &settings(1), counts, || other)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        let (resized, _) = collect(0);
        let d = PLACES
            .queue("here", &settings(2), counts, || resized)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &d));

        let (sink, batches) = collect(0);
        let queue = start(settings(10), counts, sink).unwrap();
        queue.push(b"last".to_vec());
        drop(queue);
        assert_eq!(
            next(&batches),
            [b"last".to_vec()],
            "sent before the thread ends"
        );
        assert!(
            batches.recv_timeout(Duration::from_secs(10)).is_err(),
            "the thread ended"
        );
    }
}
