//! One device connection: a task on the fleet's runtime that authenticates, pings at the
//! gateway's interval, acknowledges pushes and records everything it receives; with
//! `follow_reconnect`, it also obeys `reconnect` by connecting again after the delay.
//!
//! A connection keeps little of its own besides its transport (`wire`): the session's
//! counters, and a link through which the fleet closes it or injects raw bytes.

use std::mem;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::fleet::Shared;
use crate::frame::command;
use crate::state::{CloseReason, DeviceSpec, Outcome, Received};
use crate::wire::Wire;

/// What the fleet asks of a running connection.
pub(crate) enum Control {
    Close,
    Raw(Vec<u8>),
}

/// The fleet's side of one connection.
#[derive(Default)]
pub(crate) struct Link {
    notify: Notify,
    inbox: Mutex<Vec<Control>>,
}

impl Link {
    pub fn send(&self, control: Control) {
        self.inbox.lock().expect("link poisoned").push(control);
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<Control> {
        mem::take(&mut *self.inbox.lock().expect("link poisoned"))
    }
}

/// Reports how the first connection attempt ended; holds a slot of the connect concurrency
/// until then.
pub(crate) struct Reporter {
    pub outcome: oneshot::Sender<Outcome>,
    /// Released with the report, letting the next device connect.
    pub _slot: OwnedSemaphorePermit,
}

impl Reporter {
    fn report(self, outcome: Outcome) {
        // The caller may have stopped waiting (the fleet is shutting down).
        let _ = self.outcome.send(outcome);
    }
}

/// Runs connections of one device until one ends other than by a `reconnect` it follows.
pub(crate) async fn run(
    shared: Arc<Shared>,
    spec: Arc<DeviceSpec>,
    mut addr: SocketAddr,
    mut reporter: Option<Reporter>,
) {
    loop {
        let (number, link) = shared.open_connection(&spec);
        let mut session = Session {
            shared: &shared,
            spec: &spec,
            number,
            sequence: 1,
            ping_every: None,
            last_ping: Instant::now(),
        };
        let end = session.run(addr, &link, &mut reporter).await;
        shared.record_close(&spec, number, end.clone());
        if let Some(reporter) = reporter.take() {
            reporter.report(Outcome::Failed(end.clone()));
        }
        match end {
            CloseReason::Reconnect { after_ms } if shared.options.follow_reconnect => {
                sleep(Duration::from_millis(after_ms)).await;
                addr = shared.next_address(addr);
            }
            _ => return,
        }
    }
}

/// What a received command asks of the connection.
enum Step {
    Continue,
    /// Send this command with this body.
    Reply(u8, Value),
    Authenticated(Value),
    End(CloseReason),
}

struct Session<'a> {
    shared: &'a Shared,
    spec: &'a DeviceSpec,
    number: u32,
    /// The sequence number of the last frame sent; the `auth` frame is 1.
    sequence: u32,
    ping_every: Option<Duration>,
    /// When the last ping went, or `auth_ok` came: the next ping is due one interval later,
    /// the interval the gateway gave last.
    last_ping: Instant,
}

impl Session<'_> {
    async fn run(
        &mut self,
        addr: SocketAddr,
        link: &Link,
        reporter: &mut Option<Reporter>,
    ) -> CloseReason {
        let options = &self.shared.options;
        let websocket = options.websocket.as_deref();
        let mut wire = match timeout(options.auth_timeout, Wire::open(addr, websocket)).await {
            Err(_) => return CloseReason::ConnectFailed("timed out".to_owned()),
            Ok(Err(reason)) => return reason,
            Ok(Ok(wire)) => wire,
        };
        self.shared.mark_open(self.spec, self.number);
        if let Err(reason) = wire
            .send(command::AUTH, self.sequence, &self.spec.auth_body())
            .await
        {
            return reason;
        }
        let auth_deadline = Instant::now() + options.auth_timeout;
        let mut authenticated = false;
        loop {
            tokio::select! {
                received = wire.receive(options.max_body) => {
                    let received = match received {
                        Ok(received) => received,
                        Err(reason) => return reason,
                    };
                    match self.on_command(received.command, received.sequence, received.body) {
                        Step::Continue => {}
                        Step::End(reason) => return reason,
                        Step::Reply(command, body) => {
                            self.sequence = self.sequence.wrapping_add(1);
                            if let Err(reason) = wire.send(command, self.sequence, &body).await {
                                return reason;
                            }
                        }
                        Step::Authenticated(body) => {
                            authenticated = true;
                            if self.ping_every.is_none() {
                                self.ping_every = options.ping_every;
                            }
                            self.last_ping = Instant::now();
                            if let Some(reporter) = reporter.take() {
                                reporter.report(Outcome::Authenticated(body));
                            }
                        }
                    }
                }
                () = link.notify.notified() => {
                    for control in link.take() {
                        let sent = match control {
                            Control::Close => return CloseReason::Local,
                            Control::Raw(bytes) => wire.send_raw(bytes).await,
                        };
                        if let Err(reason) = sent {
                            return reason;
                        }
                    }
                }
                () = sleep_until(self.last_ping + self.ping_every.unwrap_or_default()),
                    if authenticated && self.ping_every.is_some() => {
                    self.sequence = self.sequence.wrapping_add(1);
                    if let Err(reason) = wire.send(command::PING, self.sequence, &Value::Null).await {
                        return reason;
                    }
                    self.last_ping = Instant::now();
                    self.shared.update(self.spec, |device| device.state.pings_sent += 1);
                }
                () = sleep_until(auth_deadline), if !authenticated => return CloseReason::AuthTimeout,
            }
        }
    }

    fn on_command(&mut self, command: u8, sequence: u32, body: Value) -> Step {
        match command {
            command::AUTH_OK => {
                self.set_heartbeat(&body);
                let recorded = body.clone();
                self.shared.update(self.spec, |device| {
                    device.state.authenticated = true;
                    device.state.auth_oks.push(recorded);
                });
                Step::Authenticated(body)
            }
            command::PONG => {
                self.set_heartbeat(&body);
                self.shared
                    .update(self.spec, |device| device.state.pongs += 1);
                Step::Continue
            }
            command::PUSH => self.on_push(sequence, body),
            command::RECONNECT => {
                let after_ms = body["after_ms"].as_u64().unwrap_or(0);
                let number = self.number;
                self.shared.update(self.spec, |device| {
                    device.state.reconnects.push((number, after_ms))
                });
                Step::End(CloseReason::Reconnect { after_ms })
            }
            command::ERROR => {
                let error = match &body["error"] {
                    Value::String(error) => error.clone(),
                    _ => body.to_string(),
                };
                let (number, recorded) = (self.number, error.clone());
                self.shared.update(self.spec, |device| {
                    device.state.errors.push((number, recorded))
                });
                Step::End(CloseReason::Error(error))
            }
            other => Step::End(CloseReason::Protocol(format!("unexpected command {other}"))),
        }
    }

    fn on_push(&mut self, sequence: u32, body: Value) -> Step {
        let at = std::time::Instant::now();
        let Some(id) = body["id"].as_str().map(str::to_owned) else {
            return Step::End(CloseReason::Protocol(format!("push without an id: {body}")));
        };
        let text = |field: &str| body[field].as_str().map(str::to_owned);
        let record = self.shared.options.record_pushes;
        let number = self.number;
        let push = Received {
            id: id.clone(),
            priority: text("priority"),
            collapse_key: text("collapse_key"),
            data: if record {
                body["data"].clone()
            } else {
                Value::Null
            },
            sequence,
            at,
            connection: number,
        };
        let ack = self.shared.record_push(self.spec, push);
        if !ack {
            return Step::Continue;
        }
        Step::Reply(command::ACK, json!({ "id": id }))
    }

    /// The ping interval: the fleet's override, else the `heartbeat` seconds the gateway gave.
    fn set_heartbeat(&mut self, body: &Value) {
        let Some(seconds) = body["heartbeat"].as_f64().filter(|s| *s > 0.0) else {
            return;
        };
        let heartbeat = Duration::from_secs_f64(seconds);
        self.shared
            .update(self.spec, |device| device.state.heartbeat = Some(heartbeat));
        self.ping_every = Some(self.shared.options.ping_every.unwrap_or(heartbeat));
    }
}
