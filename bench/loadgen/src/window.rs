//! The measured window: a warm-up, then a fixed duration. Operations are counted when they
//! complete inside the window; connections keep going until it closes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::args::Args;

#[derive(Clone)]
pub struct Window {
    start: Instant,
    end: Instant,
    counts: Arc<Counts>,
}

#[derive(Default)]
pub struct Counts {
    pub done: AtomicU64,
    pub errors: AtomicU64,
    /// For handshakes: how many of `done` were resumed sessions.
    pub resumed: AtomicU64,
}

impl Window {
    pub fn from_args(args: &Args) -> Result<Window, String> {
        let warmup = args.seconds("warmup", 1.0)?;
        let duration = args.seconds("duration", 8.0)?;
        let start = Instant::now() + warmup;
        Ok(Window {
            start,
            end: start + duration,
            counts: Arc::default(),
        })
    }

    pub fn open(&self) -> bool {
        Instant::now() < self.end
    }

    /// Counts one completed operation, if it completed inside the window.
    pub fn done(&self, resumed: bool) {
        let now = Instant::now();
        if now >= self.start && now < self.end {
            self.counts.done.fetch_add(1, Ordering::Relaxed);
            if resumed {
                self.counts.resumed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn error(&self) {
        self.counts.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for the window to close; then the counts are final.
    pub async fn close(&self) -> &Counts {
        tokio::time::sleep_until(self.end).await;
        &self.counts
    }

    pub fn duration(&self) -> Duration {
        self.end - self.start
    }

    /// Operations per second over the window.
    pub fn rate(&self) -> f64 {
        self.counts.done.load(Ordering::Relaxed) as f64 / self.duration().as_secs_f64()
    }

    /// Waits for the window to close, then reports on it and on `tasks`, the connections
    /// (each ends with its failure, if any): `rate=.. done=.. errors=.. first_error=..`.
    pub async fn report(&self, mut tasks: tokio::task::JoinSet<Option<String>>) -> String {
        let counts = self.close().await;
        let first_error = std::iter::from_fn(|| tasks.try_join_next())
            .find_map(|r| r.ok().flatten())
            .unwrap_or_else(|| "none".to_owned());
        format!(
            "rate={:.1} done={} errors={} first_error={first_error:?}",
            self.rate(),
            counts.done.load(Ordering::Relaxed),
            counts.errors.load(Ordering::Relaxed),
        )
    }
}
