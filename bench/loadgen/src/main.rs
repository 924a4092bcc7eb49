//! `pylon-loadgen`: the load side of `bench/protocols.sh`, where the existing tools cannot
//! saturate one server core from one client core.
//!
//! - `tls ADDR`: many concurrent connections, each doing a TLS handshake, one small HTTP/1.1
//!   request with `Connection: close`, and reading to the end; reports handshakes per second,
//!   full or resumed. The client skips certificate and signature verification, so that a
//!   handshake costs it less than it costs the server (a full TLS 1.3 handshake costs the
//!   server an X25519 exchange and an ECDSA signature, the client only the X25519 exchange).
//! - `ws ADDR`: WebSocket connections, each sending a small binary message and waiting for its
//!   echo, over and over; reports messages per second.
//! - `ws-echo ADDR`: the WebSocket echo upstream for `ws`.
//! - `grpc-echo ADDR`: a gRPC upstream (h2c) that answers each call with its own message.
//! - `tcp ADDR`: raw TCP connections, each sending a small message and waiting for its echo,
//!   over and over (or, with `--reconnect`, each exchange on a new connection); `tcp-echo
//!   ADDR` is its upstream.
//! - `frames ADDR`: framed-protocol connections, each keeping `--inflight` frames in flight;
//!   reports answers per second.
//! - `propagation ADMIN_ADDR PROXY_ADDR`: routes written one after the other through an Admin
//!   API; reports how long each took to be served through a proxy, and the writes' own time.
//! - `churn ADMIN_ADDR`: one route changed at a steady rate, as background for other loads.
//!
//! Everything runs on one thread (pin it with `taskset`). Each load prints one line of
//! `key=value`; `tls` and `ws` run a warm-up, then count what completes within the measured
//! window.

#![forbid(unsafe_code)]

mod args;
mod frames;
mod grpc_echo;
mod handshakes;
mod http1;
mod propagation;
mod sha1;
mod tcp;
mod window;
mod ws_echo;
mod ws_frame;
mod ws_load;

use std::process::ExitCode;

use args::Args;

const USAGE: &str = "usage:
  pylon-loadgen tls ADDR [--sni NAME] [--tls 1.2|1.3] [--resume] [--suites browser|rustls]
                         [--conns N] [--path P] [--duration S] [--warmup S]
  pylon-loadgen ws ADDR [--path P] [--conns N] [--size BYTES] [--duration S] [--warmup S]
  pylon-loadgen ws-echo ADDR
  pylon-loadgen grpc-echo ADDR
  pylon-loadgen tcp ADDR [--conns N] [--size BYTES] [--reconnect] [--duration S] [--warmup S]
  pylon-loadgen tcp-echo ADDR
  pylon-loadgen frames ADDR [--conns N] [--inflight K] [--size BYTES] [--command C]
                       [--duration S] [--warmup S]
  pylon-loadgen propagation ADMIN_ADDR PROXY_ADDR --key K [--count N] [--deadline S]
                            [--upstream ID] [--run NAME]
  pylon-loadgen churn ADMIN_ADDR --key K [--interval S] [--duration S] [--deadline S]
                      [--upstream ID] [--run NAME]";

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let (Some(mode), Some(addr)) = (argv.next(), argv.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    // `propagation` writes through one address and reads through another.
    let mut argv = argv.peekable();
    let second = match mode.as_str() {
        "propagation" => argv.next_if(|a| !a.starts_with("--")),
        _ => None,
    };
    let args = match Args::parse(argv) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("pylon-loadgen: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pylon-loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match mode.as_str() {
            "tls" => handshakes::run(&addr, &args).await,
            "ws" => ws_load::run(&addr, &args).await,
            "ws-echo" => ws_echo::serve(&addr).await,
            "grpc-echo" => grpc_echo::serve(&addr).await,
            "tcp" => tcp::run(&addr, &args).await,
            "tcp-echo" => tcp::echo_server(&addr).await,
            "frames" => frames::run(&addr, &args).await,
            "propagation" => match &second {
                Some(proxy) => propagation::propagation(&addr, proxy, &args).await,
                None => Err("propagation needs ADMIN_ADDR and PROXY_ADDR".to_owned()),
            },
            "churn" => propagation::churn(&addr, &args).await,
            other => Err(format!("unknown mode `{other}`")),
        }
    });
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pylon-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
