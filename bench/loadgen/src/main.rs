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
//!
//! Everything runs on one thread (pin it with `taskset`). Each load runs a warm-up, then
//! counts what completes within the measured window, and prints one line of `key=value`.

#![forbid(unsafe_code)]

mod args;
mod handshakes;
mod sha1;
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
  pylon-loadgen ws-echo ADDR";

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let (Some(mode), Some(addr)) = (argv.next(), argv.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
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
