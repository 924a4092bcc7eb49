//! The fleet: device connections as tasks on one current-thread tokio runtime that runs on its
//! own thread, driven through a blocking API so that tests can be plain `#[test]` functions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Handle};
use tokio::sync::{oneshot, Semaphore};

use crate::connection::{self, Control, Link, Reporter};
use crate::state::{
    CloseReason, Device, DeviceSpec, DeviceState, Devices, Outcome, Received, View,
};

/// How the fleet's devices behave.
#[derive(Debug, Clone)]
pub struct Options {
    /// Speak WebSocket to `ws://ADDR{path}` instead of frames over TCP.
    pub websocket: Option<String>,
    /// Ping at this interval instead of the gateway's `heartbeat` (tests shorten it).
    pub ping_every: Option<Duration>,
    /// On `reconnect {after_ms}`: close, wait `after_ms`, connect again with the same spec to
    /// the next address of `fallback` (round robin over the fleet), or to the same address
    /// when `fallback` is empty. While it waits, the device has no connection to
    /// `disconnect`.
    pub follow_reconnect: bool,
    pub fallback: Vec<SocketAddr>,
    /// Connections being opened and authenticated at once by `connect`: a bound, so that
    /// thousands of devices do not overflow the gateway's accept backlog.
    pub concurrency: usize,
    /// How long opening a connection, and then its `auth_ok`, may take each.
    pub auth_timeout: Duration,
    /// The longest frame body a device reads; a longer one ends its connection.
    pub max_body: usize,
    /// Whether devices acknowledge pushes, unless `Fleet::set_ack` says otherwise for one.
    pub ack: bool,
    /// Whether each push is kept (`received`, `ids`); when false, pushes are only counted
    /// (`total_received`, `DeviceState::pushes`), for long benchmarks.
    pub record_pushes: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            websocket: None,
            ping_every: None,
            follow_reconnect: false,
            fallback: Vec::new(),
            concurrency: 256,
            auth_timeout: Duration::from_secs(10),
            max_body: 1 << 20,
            ack: true,
            record_pushes: true,
        }
    }
}

/// What the connection tasks and the blocking API share.
pub(crate) struct Shared {
    pub options: Options,
    devices: Mutex<Devices>,
    next_fallback: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Devices> {
        self.devices.lock().expect("fleet state poisoned")
    }

    /// Registers a new connection of the device: returns its number and its control link.
    pub fn open_connection(&self, spec: &Arc<DeviceSpec>) -> (u32, Arc<Link>) {
        let link = Arc::new(Link::default());
        let mut devices = self.lock();
        let device = devices
            .apps
            .entry(spec.app_id.clone())
            .or_default()
            .entry(spec.device_id.clone())
            .or_insert_with(|| Device {
                spec: spec.clone(),
                state: DeviceState {
                    ack: self.options.ack,
                    ..DeviceState::default()
                },
                received: Vec::new(),
                link: None,
            });
        device.spec = spec.clone();
        device.state.connections += 1;
        device.state.open = false;
        device.state.authenticated = false;
        device.state.close_reason = None;
        device.link = Some(link.clone());
        (device.state.connections, link)
    }

    /// Changes the device's record (known: it has a connection).
    pub fn update(&self, spec: &DeviceSpec, change: impl FnOnce(&mut Device)) {
        if let Some(device) = self.lock().get_mut(&spec.app_id, &spec.device_id) {
            change(device);
        }
    }

    /// Marks connection `number` established, if it is still the device's current one.
    pub fn mark_open(&self, spec: &DeviceSpec, number: u32) {
        self.update(spec, |device| {
            if device.state.connections == number {
                device.state.open = true;
            }
        });
    }

    /// Records a push; returns whether to acknowledge it.
    pub fn record_push(&self, spec: &DeviceSpec, push: Received) -> bool {
        let mut devices = self.lock();
        devices.total_received += 1;
        let record = self.options.record_pushes;
        let Some(device) = devices.get_mut(&spec.app_id, &spec.device_id) else {
            return self.options.ack;
        };
        device.state.pushes += 1;
        if record {
            device.received.push(push);
        }
        device.state.ack
    }

    /// Records how connection `number` ended; the device's current state only follows its
    /// current connection (an older one may end after a newer one opened).
    pub fn record_close(&self, spec: &DeviceSpec, number: u32, reason: CloseReason) {
        self.update(spec, |device| {
            device.state.closes.push((number, reason.clone()));
            if device.state.connections == number {
                device.state.open = false;
                device.state.authenticated = false;
                device.state.close_reason = Some(reason);
                device.link = None;
            }
        });
    }

    /// Where a device following `reconnect` goes next.
    pub fn next_address(&self, current: SocketAddr) -> SocketAddr {
        let fallback = &self.options.fallback;
        if fallback.is_empty() {
            return current;
        }
        fallback[self.next_fallback.fetch_add(1, Ordering::Relaxed) % fallback.len()]
    }
}

/// Many device connections from one process. Dropping the fleet closes them all.
///
/// Its methods block: call them from plain threads (a `#[test]` function), not from inside a
/// tokio runtime (there, through `spawn_blocking`).
pub struct Fleet {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Fleet {
    /// A fleet whose devices connect to `addr`, with the default options.
    pub fn start(addr: SocketAddr) -> Fleet {
        Fleet::with_options(addr, Options::default())
    }

    pub fn with_options(addr: SocketAddr, options: Options) -> Fleet {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("pylon-devices".to_owned())
            .spawn(move || {
                // Ends on `stop` or when the sender drops; the runtime's drop ends every task.
                let _ = runtime.block_on(stopped);
            })
            .expect("fleet thread");
        Fleet {
            shared: Arc::new(Shared {
                options,
                devices: Mutex::new(Devices::default()),
                next_fallback: AtomicUsize::new(0),
            }),
            addr,
            runtime: handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connects and authenticates every device, `concurrency` at a time; returns when each
    /// has received `auth_ok` or failed, one outcome per device in the order given.
    pub fn connect(&self, specs: Vec<DeviceSpec>) -> Vec<Outcome> {
        self.connect_spread(specs, &[self.addr])
    }

    /// As `connect`, spreading the devices over `addrs` round robin.
    pub fn connect_spread(&self, specs: Vec<DeviceSpec>, addrs: &[SocketAddr]) -> Vec<Outcome> {
        assert!(!addrs.is_empty(), "no address to connect to");
        let targets = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| (Arc::new(spec), addrs[i % addrs.len()]))
            .collect();
        self.connect_targets(targets)
    }

    pub fn connect_one(&self, spec: DeviceSpec) -> Outcome {
        self.only(self.connect(vec![spec]))
    }

    /// Opens a new connection for a known device with its spec, to `addr` (another node,
    /// maybe); the current connection is left to the gateway, which replaces it. `None` for
    /// a device the fleet never connected.
    pub fn reconnect(&self, app: &str, device: &str, addr: SocketAddr) -> Option<Outcome> {
        let spec = self.shared.lock().get(app, device)?.spec.clone();
        Some(self.only(self.connect_targets(vec![(spec, addr)])))
    }

    /// `reconnect` for every device the fleet knows whose current connection is closed;
    /// outcomes as (app id, device id, outcome).
    pub fn reconnect_all(&self, addr: SocketAddr) -> Vec<(String, String, Outcome)> {
        let specs: Vec<Arc<DeviceSpec>> = {
            let devices = self.shared.lock();
            devices
                .apps
                .values()
                .flat_map(|devices| devices.values())
                .filter(|device| !device.state.open)
                .map(|device| device.spec.clone())
                .collect()
        };
        let outcomes =
            self.connect_targets(specs.iter().map(|spec| (spec.clone(), addr)).collect());
        specs
            .iter()
            .zip(outcomes)
            .map(|(spec, outcome)| (spec.app_id.clone(), spec.device_id.clone(), outcome))
            .collect()
    }

    fn only(&self, outcomes: Vec<Outcome>) -> Outcome {
        outcomes.into_iter().next().expect("one outcome per device")
    }

    fn connect_targets(&self, targets: Vec<(Arc<DeviceSpec>, SocketAddr)>) -> Vec<Outcome> {
        let (done, outcomes) = oneshot::channel();
        let shared = self.shared.clone();
        self.runtime.spawn(async move {
            let slots = Arc::new(Semaphore::new(shared.options.concurrency.max(1)));
            let mut waiting = Vec::with_capacity(targets.len());
            for (spec, addr) in targets {
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let (outcome, reported) = oneshot::channel();
                let reporter = Reporter {
                    outcome,
                    _slot: permit,
                };
                tokio::spawn(connection::run(shared.clone(), spec, addr, Some(reporter)));
                waiting.push(reported);
            }
            let mut outcomes = Vec::with_capacity(waiting.len());
            for reported in waiting {
                // A task always reports, unless the runtime is shutting down.
                outcomes.push(
                    reported
                        .await
                        .unwrap_or(Outcome::Failed(CloseReason::Local)),
                );
            }
            let _ = done.send(outcomes);
        });
        outcomes.blocking_recv().expect("fleet runtime stopped")
    }

    /// Closes the device's current connection and waits (up to five seconds) until it has.
    /// False when it had none open.
    pub fn disconnect(&self, app: &str, device: &str) -> bool {
        let number = {
            let devices = self.shared.lock();
            let Some(found) = devices.get(app, device) else {
                return false;
            };
            let Some(link) = &found.link else {
                return false;
            };
            link.send(Control::Close);
            found.state.connections
        };
        self.wait_until(Duration::from_secs(5), |view| {
            view.state(app, device)
                .is_some_and(|state| state.closes.iter().any(|(n, _)| *n == number))
        })
    }

    /// Writes `bytes` as they are on the device's current connection (hostile-input tests).
    /// False when it has none running.
    pub fn send_raw(&self, app: &str, device: &str, bytes: Vec<u8>) -> bool {
        let devices = self.shared.lock();
        match devices
            .get(app, device)
            .and_then(|device| device.link.as_ref())
        {
            Some(link) => {
                link.send(Control::Raw(bytes));
                true
            }
            None => false,
        }
    }

    /// Whether the device acknowledges the pushes it receives from now on. False for a device
    /// the fleet never connected.
    pub fn set_ack(&self, app: &str, device: &str, ack: bool) -> bool {
        match self.shared.lock().get_mut(app, device) {
            Some(device) => {
                device.state.ack = ack;
                true
            }
            None => false,
        }
    }

    /// Runs `read` on a consistent view of every device's record.
    pub fn view<T>(&self, read: impl FnOnce(&View<'_>) -> T) -> T {
        let devices = self.shared.lock();
        read(&View { devices: &devices })
    }

    /// Polls `condition` every few milliseconds until it holds (true) or `timeout` passes
    /// (false).
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&View<'_>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.view(&mut condition) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn received(&self, app: &str, device: &str) -> Vec<Received> {
        self.view(|view| view.received(app, device).to_vec())
    }

    pub fn ids(&self, app: &str, device: &str) -> Vec<String> {
        self.view(|view| view.ids(app, device))
    }

    pub fn distinct_ids(&self, app: &str, device: &str) -> Vec<String> {
        self.view(|view| view.distinct_ids(app, device))
    }

    pub fn state(&self, app: &str, device: &str) -> Option<DeviceState> {
        self.view(|view| view.state(app, device).cloned())
    }

    pub fn total_received(&self) -> u64 {
        self.view(|view| view.total_received())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
