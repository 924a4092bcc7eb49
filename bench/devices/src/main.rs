//! `pylon-devices`: many devices of one app held on a push gateway, for benchmarks.
//!
//! ```text
//! pylon-devices --addr HOST:PORT [--addr HOST:PORT ...] --app APP --count N [--prefix dev-]
//!               --token TOKEN [--tags a,b] [--network wifi] [--concurrency 256] [--ws PATH]
//!               [--expect-id ID [--timeout-secs 60] | --count-pushes SECS | --hold-secs S]
//!               [--report FILE]
//! ```
//!
//! Connects N devices (device ids PREFIX0 .. PREFIX{N-1}, spread over the addresses round
//! robin, `--concurrency` at a time; a device sent `reconnect` connects again to the next
//! address; with `--ws PATH` they speak WebSocket to `ws://HOST:PORT{PATH}` instead of frames
//! over TCP), then prints one JSON line:
//!
//! `{"connected": N, "failed": F, "seconds": S}`: devices authenticated, devices that were not
//! (the first failure's reason goes to stderr), seconds it took.
//!
//! Then, with
//! - `--expect-id ID`: waits until every connected device has received a push with id ID
//!   (at most `--timeout-secs`), prints
//!   `{"id": ID, "first_ms": F, "last_ms": L, "received": R, "expected": E}` and exits, with
//!   status 1 if some device did not receive it. The times are milliseconds from the moment
//!   a line `go` was read on stdin (write it right before the push is sent) to the first and
//!   the last device's arrival; null when nothing arrived or no `go` was read.
//! - `--count-pushes SECS`: counts pushes received by all devices together, printing
//!   `{"second": I, "pushes": P}` after each second, then
//!   `{"pushes": TOTAL, "seconds": SECS, "per_second": TOTAL / SECS}` and exits.
//! - `--hold-secs S`: holds the connections S seconds and exits.
//! - none of them: holds the connections until killed.
//!
//! `--report FILE` writes one JSON line per device: `{"device": ID, "connected": true}` or
//! `{"device": ID, "connected": false, "error": "why"}`, with `--expect-id` also `"ms"`: when
//! it received the id (null if it did not).

#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use pylon_devices::{DeviceSpec, Fleet, Options, Outcome};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Many push-gateway devices of one app, for benchmarks")]
struct Args {
    /// A gateway listener, HOST:PORT; devices are spread over all of them.
    #[arg(long = "addr", required = true)]
    addrs: Vec<String>,
    #[arg(long)]
    app: String,
    #[arg(long)]
    count: usize,
    #[arg(long, default_value = "dev-")]
    prefix: String,
    #[arg(long)]
    token: String,
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    #[arg(long)]
    network: Option<String>,
    /// Speak WebSocket to ws://ADDR{PATH} instead of frames over TCP.
    #[arg(long = "ws", value_name = "PATH")]
    websocket: Option<String>,
    /// Connections being opened and authenticated at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    #[arg(long, conflicts_with_all = ["count_pushes", "hold_secs"])]
    expect_id: Option<String>,
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    #[arg(long, conflicts_with = "hold_secs")]
    count_pushes: Option<u64>,
    #[arg(long)]
    hold_secs: Option<u64>,
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pylon-devices: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let addrs = resolve(&args.addrs)?;
    let go = watch_for_go();
    let options = Options {
        websocket: args.websocket.clone(),
        follow_reconnect: true,
        fallback: addrs.clone(),
        concurrency: args.concurrency,
        record_pushes: args.expect_id.is_some(),
        ..Options::default()
    };
    let fleet = Fleet::with_options(addrs[0], options);
    let ids: Vec<String> = (0..args.count)
        .map(|i| format!("{}{i}", args.prefix))
        .collect();
    let tags: Vec<&str> = args.tags.iter().map(String::as_str).collect();
    let specs = ids
        .iter()
        .map(|id| {
            let spec = DeviceSpec::new(&args.app, id, &args.token).with_tags(&tags);
            match &args.network {
                Some(network) => spec.with_network(network),
                None => spec,
            }
        })
        .collect();
    let started = Instant::now();
    let outcomes = fleet.connect_spread(specs, &addrs);
    let failed = outcomes.iter().filter(|o| !o.is_authenticated()).count();
    if let Some(Outcome::Failed(reason)) = outcomes.iter().find(|o| !o.is_authenticated()) {
        eprintln!("pylon-devices: first failure: {reason:?}");
    }
    // Pushes count from here: a script may push as soon as it reads the line below.
    let counted_from = (Instant::now(), fleet.total_received());
    print_line(&json!({
        "connected": args.count - failed,
        "failed": failed,
        "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    }));

    let mut code = ExitCode::SUCCESS;
    let mut arrivals = None;
    if let Some(id) = &args.expect_id {
        let (line, times) = expect(&fleet, args, &ids, &outcomes, id, go);
        if line["received"] != line["expected"] {
            code = ExitCode::FAILURE;
        }
        print_line(&line);
        arrivals = Some(times);
    } else if let Some(seconds) = args.count_pushes {
        count_pushes(&fleet, counted_from, seconds);
    } else if let Some(seconds) = args.hold_secs {
        thread::sleep(Duration::from_secs(seconds));
    } else {
        loop {
            thread::park();
        }
    }
    if let Some(path) = &args.report {
        write_report(path, &ids, &outcomes, arrivals.as_deref())?;
    }
    Ok(code)
}

fn resolve(addrs: &[String]) -> Result<Vec<SocketAddr>, String> {
    addrs
        .iter()
        .map(|addr| {
            addr.to_socket_addrs()
                .map_err(|e| format!("--addr {addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("--addr {addr}: no address"))
        })
        .collect()
}

/// The instant a line `go` is read on stdin, once it is.
fn watch_for_go() -> Arc<OnceLock<Instant>> {
    let go = Arc::new(OnceLock::new());
    let set = go.clone();
    thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(line) if line.trim() == "go" => {
                    let _ = set.set(Instant::now());
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    go
}

/// Waits for `id` on every connected device; returns the summary line and each device's
/// arrival (milliseconds from `go`, in the order of `ids`).
fn expect(
    fleet: &Fleet,
    args: &Args,
    ids: &[String],
    outcomes: &[Outcome],
    id: &str,
    go: Arc<OnceLock<Instant>>,
) -> (Value, Vec<Option<f64>>) {
    let connected: Vec<&String> = ids
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| outcome.is_authenticated())
        .map(|(device, _)| device)
        .collect();
    let expected = connected.len();
    fleet.wait_until(Duration::from_secs(args.timeout_secs), |view| {
        go.get().is_some()
            && view.total_received() >= expected as u64
            && connected
                .iter()
                .all(|device| view.has(&args.app, device, id))
    });
    let arrivals: Vec<Option<Instant>> = fleet.view(|view| {
        ids.iter()
            .map(|device| {
                let received = view.received(&args.app, device);
                received
                    .iter()
                    .find(|push| push.id == id)
                    .map(|push| push.at)
            })
            .collect()
    });
    let times: Vec<Option<f64>> = arrivals
        .iter()
        .map(|at| Some(millis_since(*go.get()?, (*at)?)))
        .collect();
    let known = times.iter().flatten().copied();
    let first = known.clone().reduce(f64::min);
    let last = known.reduce(f64::max);
    let line = json!({
        "id": id,
        "first_ms": first,
        "last_ms": last,
        "received": arrivals.iter().flatten().count(),
        "expected": expected,
    });
    (line, times)
}

/// Milliseconds from `start` to `at` to the microsecond, negative when `at` came first.
fn millis_since(start: Instant, at: Instant) -> f64 {
    let millis = match at.checked_duration_since(start) {
        Some(after) => after.as_secs_f64() * 1000.0,
        None => -(start - at).as_secs_f64() * 1000.0,
    };
    (millis * 1000.0).round() / 1000.0
}

/// Prints the pushes received each second for `seconds` seconds from `start`, when the
/// devices had received `first` in all, then the total.
fn count_pushes(fleet: &Fleet, (start, first): (Instant, u64), seconds: u64) {
    let mut before = first;
    for second in 1..=seconds {
        let due = start + Duration::from_secs(second);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let now = fleet.total_received();
        print_line(&json!({ "second": second, "pushes": now - before }));
        before = now;
    }
    let total = before - first;
    print_line(&json!({
        "pushes": total,
        "seconds": seconds,
        "per_second": total as f64 / seconds.max(1) as f64,
    }));
}

fn write_report(
    path: &std::path::Path,
    ids: &[String],
    outcomes: &[Outcome],
    arrivals: Option<&[Option<f64>]>,
) -> Result<(), String> {
    let mut out = String::new();
    for (i, (device, outcome)) in ids.iter().zip(outcomes).enumerate() {
        let mut line = json!({ "device": device, "connected": outcome.is_authenticated() });
        if let Outcome::Failed(reason) = outcome {
            line["error"] = json!(format!("{reason:?}"));
        }
        if let Some(arrivals) = arrivals {
            line["ms"] = json!(arrivals[i]);
        }
        out.push_str(&line.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| format!("--report {}: {e}", path.display()))
}

fn print_line(line: &Value) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout only loses the report; the devices carry on.
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
