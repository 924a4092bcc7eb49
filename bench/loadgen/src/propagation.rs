//! How long a change written through the Admin API takes to be served.
//!
//! - `propagation ADMIN PROXY`: `--count` times, one after the other, PUTs a new route
//!   `/prop-<run>-<i>` through the Admin API at ADMIN and, from the instant before the PUT is
//!   sent, GETs that path through the proxy at PROXY, back to back on one kept-alive
//!   connection, until it answers 200 instead of 404. Reports percentiles of that delay and of
//!   the PUT's own time (to its answer). A route not served within `--deadline` is a failure:
//!   counted, left out of the percentiles; three in a row end the run.
//! - `churn ADMIN`: a steady stream of changes to one route, one PUT every `--interval` for
//!   `--duration`: the background for measuring requests while the configuration changes.
//!
//! The routes go to the upstream `--upstream` (an id), which must exist.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{timeout, Instant, MissedTickBehavior};

use crate::args::Args;
use crate::http1::Client;

/// Deadline misses in a row after which the proxy is taken not to follow the writes at all.
const GIVE_UP_AFTER: u32 = 3;

pub async fn propagation(admin: &str, proxy: &str, args: &Args) -> Result<String, String> {
    let writes = Writes::from_args(admin, args)?;
    let proxy: SocketAddr = proxy.parse().map_err(|e| format!("{proxy}: {e}"))?;
    let count: usize = args.num("count", 500)?;
    let mut admin = writes.client();
    let mut probe = Client::new(proxy, "bench.test", "");
    let (mut delays, mut puts) = (Vec::with_capacity(count), Vec::with_capacity(count));
    let (mut polls, mut missed, mut in_a_row) = (0u64, 0usize, 0);
    for i in 0..count {
        let id = format!("prop-{}-{i}", writes.run);
        let path = format!("/{id}");
        let body = writes.route(&path);
        let mut polled = 0;
        let sent = Instant::now();
        let write = async {
            writes.put(&mut admin, &id, &body).await?;
            Ok::<_, String>(sent.elapsed())
        };
        let serve = async {
            loop {
                let status = probe.request("GET", &path, b"").await?.status;
                polled += 1;
                match status {
                    200 => return Ok::<_, String>(sent.elapsed()),
                    404 => {}
                    other => return Err(format!("GET {path} answered {other}")),
                }
            }
        };
        let outcome = timeout(writes.deadline, async { tokio::try_join!(write, serve) }).await;
        match outcome {
            Ok(Ok((put, delay))) => {
                puts.push(put);
                delays.push(delay);
                polls += polled;
                in_a_row = 0;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                // Both requests may have been cut off halfway.
                admin.reset();
                probe.reset();
                missed += 1;
                in_a_row += 1;
                if in_a_row == GIVE_UP_AFTER {
                    return Err(format!(
                        "{GIVE_UP_AFTER} routes in a row not served within {:?} \
                         ({} served before)",
                        writes.deadline,
                        delays.len()
                    ));
                }
            }
        }
    }
    // The probe's resolution: the mean time one GET took while waiting for a served route.
    let poll_us = delays.iter().sum::<Duration>().as_secs_f64() * 1e6 / polls.max(1) as f64;
    Ok(format!(
        "writes={count} missed={missed} {} {} poll_us={poll_us:.0}",
        percentiles("delay", &mut delays),
        percentiles("put", &mut puts),
    ))
}

pub async fn churn(admin: &str, args: &Args) -> Result<String, String> {
    let writes = Writes::from_args(admin, args)?;
    let interval = args.seconds("interval", 0.1)?;
    if interval.is_zero() {
        return Err("--interval: must be more than 0".to_owned());
    }
    let end = Instant::now() + args.seconds("duration", 10.0)?;
    let mut admin = writes.client();
    let id = format!("churn-{}", writes.run);
    let mut ticks = tokio::time::interval(interval);
    // A slow write delays the next one rather than bunching the ones after it.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut puts, mut failures, mut first_error) = (Vec::new(), 0, None);
    for i in 0u64.. {
        ticks.tick().await;
        if Instant::now() >= end {
            break;
        }
        // The same route each time, with a new path: a change, not a growing configuration.
        let body = writes.route(&format!("/{id}-{i}"));
        let started = Instant::now();
        match timeout(writes.deadline, writes.put(&mut admin, &id, &body)).await {
            Ok(Ok(())) => puts.push(started.elapsed()),
            outcome => {
                admin.reset();
                failures += 1;
                first_error.get_or_insert(match outcome {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {:?}", writes.deadline),
                });
            }
        }
    }
    Ok(format!(
        "writes={} failures={failures} first_error={:?} {}",
        puts.len() + failures,
        first_error.as_deref().unwrap_or("none"),
        percentiles("put", &mut puts),
    ))
}

/// What both modes need to write routes.
struct Writes {
    admin: SocketAddr,
    key: String,
    upstream: String,
    /// Makes this run's route ids and paths its own, so that runs can follow one another on
    /// one configuration.
    run: String,
    deadline: Duration,
}

impl Writes {
    fn from_args(admin: &str, args: &Args) -> Result<Writes, String> {
        let admin = admin.parse().map_err(|e| format!("{admin}: {e}"))?;
        let key = args.str("key", "");
        if key.is_empty() {
            return Err("--key: the Admin API key is needed".to_owned());
        }
        let default_run = format!("{:x}", std::process::id());
        let (run, upstream) = (args.str("run", &default_run), args.str("upstream", "bench"));
        // Both go into paths and JSON strings as they are.
        for (name, value) in [("run", run), ("upstream", upstream)] {
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "--{name}: `{value}` is not letters, digits, - and _"
                ));
            }
        }
        Ok(Writes {
            admin,
            key: key.to_owned(),
            upstream: upstream.to_owned(),
            run: run.to_owned(),
            deadline: args.seconds("deadline", 5.0)?,
        })
    }

    fn client(&self) -> Client {
        Client::new(
            self.admin,
            &self.admin.to_string(),
            &format!("X-API-KEY: {}\r\n", self.key),
        )
    }

    fn route(&self, path: &str) -> Vec<u8> {
        format!(r#"{{"uri":"{path}","upstream_id":"{}"}}"#, self.upstream).into_bytes()
    }

    async fn put(&self, admin: &mut Client, id: &str, body: &[u8]) -> Result<(), String> {
        let path = format!("/apisix/admin/routes/{id}");
        let response = admin.request("PUT", &path, body).await?;
        match response.status {
            200 | 201 => Ok(()),
            status => Err(format!(
                "PUT {path} answered {status}: {}",
                String::from_utf8_lossy(&response.body).trim()
            )),
        }
    }
}

/// `NAME_p50_ms=… NAME_p90_ms=… NAME_p99_ms=… NAME_max_ms=…`, nearest rank.
fn percentiles(name: &str, samples: &mut [Duration]) -> String {
    samples.sort_unstable();
    let at = |q: f64| {
        let rank = (q * samples.len() as f64).ceil() as usize;
        samples
            .get(rank.max(1) - 1)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    format!(
        "{name}_p50_ms={:.3} {name}_p90_ms={:.3} {name}_p99_ms={:.3} {name}_max_ms={:.3}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}
