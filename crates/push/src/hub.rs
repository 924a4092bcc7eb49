//! A node's hub: the devices connected to this node, and the delivery to them.
//!
//! Device connections run on the proxy's workers; each has a [`Device`] with an outbox that
//! the hub fills and the connection drains. Everything else runs on the hub's own thread:
//! reading this node's inbox and the broadcast stream from Redis, catching up a device that
//! (re)connects with what waits for it, spreading broadcasts and an app's messages over time
//! at their rates, and writing acknowledgements, cursors and counts back in batches. No
//! connection waits for Redis, and an idle connection holds nothing but its [`Device`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use pylon_redis::{Error, Settings};
use tokio::sync::mpsc;

use crate::bucket::Bucket;
use crate::config::{AppRates, Delivery as DeliveryConfig, Heartbeat};
use crate::message::{now_ms, Message, Priority, Target};
use crate::store::{Attached, CountDelta, Counts, DeviceKey, InboxEntry, Reader, Store, StreamPos};
use crate::tags::TagExpr;

/// How often the hub spreads queued sends and writes its batches.
const TICK: Duration = Duration::from_millis(10);
/// How often the hub looks for devices that missed their heartbeats.
const SWEEP_SILENT: Duration = Duration::from_secs(1);
/// How often batched acknowledgements, cursors and counts go to Redis.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How long a stream read waits for entries.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// How long the hub waits before trying Redis again after a failure.
const RETRY: Duration = Duration::from_secs(1);
/// How often the node tells the others it is alive, and looks for expired messages.
const HEARTBEAT: Duration = Duration::from_secs(3);
/// Broadcasts read per step of a device's catch-up.
const CATCH_UP_BATCH: usize = 500;

/// One message as a device's connection sends it.
#[derive(Debug)]
pub struct Delivery {
    pub id: Box<str>,
    /// The `push` frame's body.
    pub body: Bytes,
    pub priority: Priority,
    /// Its place in the broadcast stream, for a message to a tag or to all.
    pub broadcast: Option<StreamPos>,
}

impl Delivery {
    fn of(message: &Message, broadcast: Option<StreamPos>) -> Arc<Delivery> {
        Arc::new(Delivery {
            id: message.id.as_str().into(),
            body: message.frame_body(),
            priority: message.priority,
            broadcast,
        })
    }
}

/// What a connection is to write.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Push(Arc<Delivery>),
    /// Tell the device to come back after this many milliseconds, and close.
    Reconnect(u64),
    /// Send an `error` saying why, and close.
    Close(Close),
}

/// Why the hub closes a device's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Another connection of the device took its place.
    Replaced,
    /// It missed its heartbeats.
    Silent,
}

impl Close {
    /// The `error` frame's text.
    pub fn text(self) -> &'static str {
        match self {
            Close::Replaced => "replaced",
            Close::Silent => "heartbeat missed",
        }
    }
}

/// A connected device, shared by its connection and the hub.
pub struct Device {
    pub key: DeviceKey,
    /// This node's number for the connection: a replaced connection's does not match.
    pub conn: u64,
    /// When it connected, in milliseconds since the Unix epoch: a new device is sent the
    /// broadcasts made since.
    connected_ms: u64,
    tags: Box<[Box<str>]>,
    outbox: Mutex<VecDeque<Outgoing>>,
    /// The connection's task, woken when something is queued.
    waker: AtomicWaker,
    /// When it is closed unless it sends something, in milliseconds of [`clock`].
    silent_until: AtomicU64,
}

impl Device {
    pub fn new(key: DeviceKey, conn: u64, tags: Vec<String>) -> Device {
        Device {
            key,
            conn,
            connected_ms: now_ms(),
            tags: tags.into_iter().map(String::into_boxed_str).collect(),
            outbox: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            silent_until: AtomicU64::new(u64::MAX),
        }
    }

    /// The device may stay silent until `deadline`; the hub closes it after.
    pub fn silent_until(&self, deadline: Instant) {
        self.silent_until.store(clock(deadline), Ordering::Relaxed);
    }

    /// Queues `out` for the connection: high-priority messages and closes go first.
    fn send(&self, out: Outgoing) {
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        let urgent = match &out {
            Outgoing::Push(d) => d.priority == Priority::High,
            Outgoing::Reconnect(_) | Outgoing::Close(_) => true,
        };
        if urgent {
            outbox.push_front(out);
        } else {
            outbox.push_back(out);
        }
        drop(outbox);
        self.waker.wake();
    }

    /// Waits until something is queued (at once if something is). A pointer in size: it
    /// sits in every idle connection's task.
    pub fn ready(&self) -> Ready<'_> {
        Ready(self)
    }

    /// What is queued, oldest first (but high priority first), emptying the outbox.
    pub fn take(&self) -> VecDeque<Outgoing> {
        std::mem::take(&mut *self.outbox.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Whom a broadcast reaches, read once for all the devices it is matched against.
enum Audience<'m> {
    All { app: &'m str },
    Tagged { app: &'m str, expr: TagExpr },
}

impl<'m> Audience<'m> {
    /// The audience of a message to a tag or to all; `None` for one to listed devices (and
    /// for an expression the push API would have refused).
    fn of(message: &'m Message) -> Option<Audience<'m>> {
        let app = message.app_id.as_str();
        match &message.target {
            Target::All => Some(Audience::All { app }),
            Target::Tag(expr) => TagExpr::parse(expr)
                .ok()
                .map(|expr| Audience::Tagged { app, expr }),
            Target::Devices(_) => None,
        }
    }

    fn includes(&self, device: &Device) -> bool {
        match self {
            Audience::All { app } => *device.key.app == **app,
            Audience::Tagged { app, expr } => {
                *device.key.app == **app && expr.matches(&device.tags)
            }
        }
    }
}

/// Why device connections end, as the metrics and the access log name it: the device
/// closed it, or the failure.
pub const CLOSE_REASONS: [&str; 9] = [
    "closed",
    "connection_broken",
    "client_timeout",
    "unauthorized",
    "bad_frame",
    "idle_timeout",
    "write_timeout",
    "replaced",
    "reconnect",
];

/// Milliseconds from the first call in this process to `at`: deadlines that fit an atomic.
fn clock(at: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start).as_millis() as u64
}

/// The future of [`Device::ready`].
pub struct Ready<'d>(&'d Device);

impl Future for Ready<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let device = self.0;
        // Registered before looking: a send after the look wakes this task.
        device.waker.register(cx.waker());
        let outbox = device.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        if outbox.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// The node's counts, for the metrics.
#[derive(Debug, Default)]
pub struct HubCounters {
    pub connected: AtomicU64,
    /// Messages handed to connections (every send, resends included).
    pub sent: AtomicU64,
    /// First acknowledgements of messages to devices, and of broadcasts.
    pub delivered: AtomicU64,
    /// Messages whose TTL passed before their device had them, as this node found them.
    pub expired: AtomicU64,
    /// Redis calls that failed.
    pub redis_failures: AtomicU64,
    /// Device connections ended, by the index of [`CLOSE_REASONS`].
    closes: [AtomicU64; CLOSE_REASONS.len()],
}

impl HubCounters {
    /// Counts a device connection that ended for `reason`, one of [`CLOSE_REASONS`].
    pub fn closed(&self, reason: &str) {
        if let Some(at) = CLOSE_REASONS.iter().position(|r| *r == reason) {
            self.closes[at].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One hub's counts at a moment, for a scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubTotals {
    /// The push gateway's stream route.
    pub route: String,
    pub connected: u64,
    pub sent: u64,
    pub delivered: u64,
    pub expired: u64,
    pub redis_failures: u64,
    /// By the index of [`CLOSE_REASONS`].
    pub closes: [u64; CLOSE_REASONS.len()],
}

/// The counts of every hub of this process, by route.
pub fn totals() -> Vec<HubTotals> {
    let hubs = HUBS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut totals: Vec<HubTotals> = (hubs.iter().flatten())
        .filter_map(|((route, ..), hub)| Some((route, hub.upgrade()?)))
        .map(|(route, hub)| {
            let c = &hub.counters;
            let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
            HubTotals {
                route: route.clone(),
                connected: read(&c.connected),
                sent: read(&c.sent),
                delivered: read(&c.delivered),
                expired: read(&c.expired),
                redis_failures: read(&c.redis_failures),
                closes: std::array::from_fn(|i| read(&c.closes[i])),
            }
        })
        .collect();
    totals.sort_by(|a, b| a.route.cmp(&b.route));
    totals
}

/// The rates and heartbeat a hub's gateway is configured with; a new configuration
/// replaces them in place.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    pub delivery: DeliveryConfig,
    pub apps: std::collections::BTreeMap<String, AppRates>,
    pub heartbeat: Heartbeat,
}

impl Rates {
    fn app_rate(&self, app: &str) -> u64 {
        self.apps
            .get(app)
            .and_then(|a| a.rate)
            .unwrap_or(self.delivery.rate)
    }

    fn broadcast_rate(&self, app: &str) -> u64 {
        (self.apps.get(app))
            .and_then(|a| a.broadcast_rate)
            .unwrap_or(self.delivery.broadcast_rate)
    }
}

enum Event {
    Attach(Arc<Device>),
    Detach(Arc<Device>),
    Ack {
        device: Arc<Device>,
        id: Box<str>,
        broadcast: Option<StreamPos>,
    },
    Drain(Duration),
}

/// What the hub's own tasks report back to its loop.
enum Internal {
    Attached(Arc<Device>, Attached),
    CaughtUp(Arc<Device>, Vec<(StreamPos, Option<Message>)>),
    Inbox(Vec<InboxEntry>),
    Broadcasts(Vec<(StreamPos, Option<Message>)>),
    Nodes(u64),
}

/// The hubs in use, by what makes one: the route, the Redis, the key prefix and the node.
type HubKey = (String, Settings, String, String);
static HUBS: Mutex<Option<HashMap<HubKey, Weak<Hub>>>> = Mutex::new(None);

pub struct Hub {
    node: Arc<str>,
    store: Arc<Store>,
    rates: Arc<Mutex<Rates>>,
    events: mpsc::UnboundedSender<Event>,
    next_conn: AtomicU64,
    counters: Arc<HubCounters>,
    draining: AtomicBool,
}

impl Hub {
    /// The hub of push route `route` on this node, shared by every compiled version of the
    /// route with the same Redis: its devices stay connected across configuration changes.
    /// A hub starts its thread when made, and the thread ends with the last holder.
    pub fn shared(
        route: &str,
        redis: Arc<pylon_redis::Redis>,
        prefix: &str,
        node: &str,
        rates: Rates,
    ) -> Arc<Hub> {
        let key = (
            route.to_owned(),
            redis.settings().clone(),
            prefix.to_owned(),
            node.to_owned(),
        );
        let mut hubs = HUBS.lock().unwrap_or_else(PoisonError::into_inner);
        let hubs = hubs.get_or_insert_with(HashMap::new);
        if let Some(hub) = hubs.get(&key).and_then(Weak::upgrade) {
            *hub.rates.lock().unwrap_or_else(PoisonError::into_inner) = rates;
            return hub;
        }
        hubs.retain(|_, hub| hub.strong_count() > 0);
        let hub = Hub::start(Store::new(redis, prefix.to_owned()), node, rates);
        hubs.insert(key, Arc::downgrade(&hub));
        hub
    }

    fn start(store: Store, node: &str, rates: Rates) -> Arc<Hub> {
        let (events, receiver) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            node: node.into(),
            store: Arc::new(store),
            rates: Arc::new(Mutex::new(rates)),
            events,
            next_conn: AtomicU64::new(fastrand::u64(1..u64::MAX / 2)),
            counters: Arc::default(),
            draining: AtomicBool::new(false),
        });
        let engine = Engine {
            node: hub.node.clone(),
            store: hub.store.clone(),
            rates: hub.rates.clone(),
            counters: hub.counters.clone(),
            devices: HashMap::new(),
            counts: HashMap::new(),
            acks: Vec::new(),
            cursors: HashMap::new(),
            fanouts: VecDeque::new(),
            apps: HashMap::new(),
            nodes: 1,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("push-{node}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let tasks = tokio::task::LocalSet::new();
                        tasks.block_on(&runtime, engine.run(receiver));
                    }
                    Err(e) => tracing::error!("push hub: cannot start its runtime: {e}"),
                }
            });
        if let Err(e) = spawned {
            tracing::error!("push hub: cannot start its thread: {e}");
        }
        hub
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn counters(&self) -> &HubCounters {
        &self.counters
    }

    /// The delivery settings now.
    pub fn delivery(&self) -> DeliveryConfig {
        self.rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .delivery
            .clone()
    }

    /// The ping interval, in seconds, the settings give a device on `network` now.
    pub fn interval_for(&self, network: Option<&str>) -> u64 {
        self.heartbeat(|heartbeat| heartbeat.interval_for(network))
    }

    /// How long a device pinging every `interval` seconds may stay silent, now.
    pub fn silence_allowed(&self, interval: u64) -> Duration {
        self.heartbeat(|heartbeat| heartbeat.silence_allowed(interval))
    }

    /// Reads the heartbeat settings in place: every device frame asks, so they are not
    /// copied.
    fn heartbeat<T>(&self, read: impl FnOnce(&Heartbeat) -> T) -> T {
        read(
            &self
                .rates
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .heartbeat,
        )
    }

    /// A connection number no other connection of this node has.
    pub fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A device connected: it replaces any other connection of the same device, and is sent
    /// what waits for it.
    pub fn attach(&self, device: Arc<Device>) {
        self.counters.connected.fetch_add(1, Ordering::Relaxed);
        let _ = self.events.send(Event::Attach(device));
    }

    /// A device's connection ended.
    pub fn detach(&self, device: Arc<Device>) {
        self.counters.connected.fetch_sub(1, Ordering::Relaxed);
        let _ = self.events.send(Event::Detach(device));
    }

    /// The device acknowledged message `id`; `broadcast`: its place in the broadcast stream,
    /// when it came from there.
    pub fn acknowledge(&self, device: Arc<Device>, id: Box<str>, broadcast: Option<StreamPos>) {
        let _ = self.events.send(Event::Ack {
            device,
            id,
            broadcast,
        });
    }

    /// Tells every device of this node to reconnect, each after a delay spread over
    /// `spread`: a stopping node's devices move to the others without a stampede. Once:
    /// every worker of a stopping node asks.
    pub fn drain(&self, spread: Duration) {
        if !self.draining.swap(true, Ordering::Relaxed) {
            let _ = self.events.send(Event::Drain(spread));
        }
    }

    /// Accepts a message from the push API: saved, then queued for its devices or appended
    /// to the broadcast stream. `Ok(false)`: its id is taken.
    pub async fn push(&self, message: Message) -> Result<bool, Error> {
        let retention = self
            .rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .delivery
            .retention
            * 1000;
        if !self.store.save(&message, retention).await? {
            return Ok(false);
        }
        match &message.target {
            Target::Devices(devices) => {
                let devices = devices.clone();
                self.store
                    .send_to_devices(&Arc::new(message), &devices, now_ms())
                    .await?;
            }
            Target::Tag(_) | Target::All => self.store.broadcast(&message).await?,
        }
        Ok(true)
    }

    /// A message and its counts, for the push API.
    pub async fn message(&self, id: &str) -> Result<Option<(Message, Counts)>, Error> {
        self.store.message(id).await
    }
}

/// A connected device as the hub tracks it.
struct Local {
    device: Arc<Device>,
    broadcasts: Track,
}

/// Where a device's connection is in the broadcast stream. A broadcast can reach it twice
/// over, by the catch-up when it attaches and by the fan-out of the broadcast as it is read;
/// what this holds sends it once. All of it is empty while the device is idle.
#[derive(Default)]
struct Track {
    /// Its cursor was read from Redis: until then nothing moves it.
    attached: bool,
    /// Broadcasts sent and not acknowledged.
    unacked: BTreeSet<StreamPos>,
    /// Broadcasts acknowledged past the cursor (an earlier one is not yet).
    acked: BTreeSet<StreamPos>,
    /// Broadcasts a fan-out under way is to send it.
    pending: BTreeSet<StreamPos>,
    /// The last broadcast sent to it, or read and passed over for it.
    seen: StreamPos,
    /// The cursor Redis has: every broadcast up to it is done.
    written: StreamPos,
}

impl Track {
    /// Whether broadcast `pos` was sent on this connection, or is on its way. Not whether
    /// it is before the cursor: a new device's cursor starts at the stream's end, which may
    /// be past a broadcast the fan-out is still to send it; and the catch-up reads only what
    /// is after the cursor.
    fn has(&self, pos: StreamPos) -> bool {
        self.unacked.contains(&pos) || self.acked.contains(&pos) || self.pending.contains(&pos)
    }

    fn sent(&mut self, pos: StreamPos) {
        self.unacked.insert(pos);
        self.seen = self.seen.max(pos);
    }

    /// The cursor to write, when it can move: through everything before the first broadcast
    /// not yet acknowledged or not yet sent.
    fn advance(&mut self) -> Option<StreamPos> {
        if !self.attached {
            return None;
        }
        let first = [self.unacked.first(), self.pending.first()]
            .into_iter()
            .flatten()
            .min();
        let cursor = first.map_or(self.seen, |first| first.before());
        if cursor <= self.written {
            return None;
        }
        self.written = cursor;
        self.acked.retain(|pos| *pos > cursor);
        Some(cursor)
    }
}

/// A broadcast going out to this node's devices at its rate.
struct FanOut {
    delivery: Arc<Delivery>,
    expires_at: u64,
    devices: Vec<Arc<Device>>,
    next: usize,
    bucket: Bucket,
}

/// An app's messages waiting for its rate.
struct AppQueue {
    bucket: Bucket,
    rate: u64,
    waiting: VecDeque<(Arc<Device>, Arc<Delivery>)>,
}

/// The hub's loop and its state, on the hub's thread.
struct Engine {
    node: Arc<str>,
    store: Arc<Store>,
    rates: Arc<Mutex<Rates>>,
    counters: Arc<HubCounters>,
    devices: HashMap<DeviceKey, Local>,
    counts: HashMap<Box<str>, CountDelta>,
    acks: Vec<(DeviceKey, Box<str>)>,
    cursors: HashMap<DeviceKey, StreamPos>,
    fanouts: VecDeque<FanOut>,
    apps: HashMap<Arc<str>, AppQueue>,
    /// Nodes alive: a broadcast's rate is shared among them.
    nodes: u64,
}

impl Engine {
    async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) {
        // The streams' ends are taken before any device is attached: whatever is sent to a
        // device after its node is recorded is read.
        let reader = loop {
            match self.store.reader(&self.node, READ_BLOCK).await {
                Ok(reader) => break reader,
                Err(e) => failed(&self.counters, "find the streams' ends", &e),
            }
            if events.is_closed() {
                return;
            }
            tokio::time::sleep(RETRY).await;
        };
        let (internal, mut reports) = mpsc::unbounded_channel();
        tokio::task::spawn_local(read_streams(
            reader,
            internal.clone(),
            self.counters.clone(),
        ));
        tokio::task::spawn_local(keep_alive(
            self.store.clone(),
            self.node.clone(),
            internal.clone(),
            self.counters.clone(),
        ));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flushed = Instant::now();
        let mut swept = Instant::now();
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_event(event, &internal),
                    None => break,
                },
                Some(report) = reports.recv() => self.on_report(report, &internal),
                _ = tick.tick() => {
                    if swept.elapsed() >= SWEEP_SILENT {
                        self.close_silent(Instant::now());
                        swept = Instant::now();
                    }
                    self.spread(Instant::now());
                    if flushed.elapsed() >= FLUSH_EVERY {
                        self.flush();
                        flushed = Instant::now();
                    }
                }
            }
        }
        self.flush();
    }

    fn on_event(&mut self, event: Event, internal: &mpsc::UnboundedSender<Internal>) {
        match event {
            Event::Attach(device) => {
                let local = Local {
                    device: device.clone(),
                    broadcasts: Track::default(),
                };
                if let Some(old) = self.devices.insert(device.key.clone(), local) {
                    old.device.send(Outgoing::Close(Close::Replaced));
                }
                let (store, node, internal) =
                    (self.store.clone(), self.node.clone(), internal.clone());
                let counters = self.counters.clone();
                tokio::task::spawn_local(async move {
                    match store
                        .attach(
                            &device.key,
                            &node,
                            device.conn,
                            device.connected_ms,
                            now_ms(),
                        )
                        .await
                    {
                        Ok(attached) => {
                            if let Some((other, conn)) = &attached.previous {
                                if **other != *node {
                                    if let Err(e) = store.kick(other, &device.key, *conn).await {
                                        failed(&counters, "kick", &e);
                                    }
                                }
                            }
                            let _ = internal.send(Internal::Attached(device, attached));
                        }
                        Err(e) => {
                            failed(&counters, "attach", &e);
                            // Nothing can be delivered without Redis: the device tries again
                            // later, maybe on another node.
                            device.send(Outgoing::Reconnect(fastrand::u64(1000..5000)));
                        }
                    }
                });
            }
            Event::Detach(device) => {
                let current = self
                    .devices
                    .get(&device.key)
                    .is_some_and(|l| l.device.conn == device.conn);
                if current {
                    if let Some(mut local) = self.devices.remove(&device.key) {
                        if let Some(cursor) = local.broadcasts.advance() {
                            self.cursors.insert(device.key.clone(), cursor);
                        }
                    }
                    let store = self.store.clone();
                    let counters = self.counters.clone();
                    tokio::task::spawn_local(async move {
                        if let Err(e) = store.detach(&device.key, device.conn).await {
                            failed(&counters, "detach", &e);
                        }
                    });
                }
            }
            Event::Ack {
                device,
                id,
                broadcast,
            } => match broadcast {
                Some(pos) => {
                    let Some(local) = self.devices.get_mut(&device.key) else {
                        return;
                    };
                    let track = &mut local.broadcasts;
                    if local.device.conn != device.conn || !track.unacked.remove(&pos) {
                        return;
                    }
                    track.acked.insert(pos);
                    self.counts.entry(id).or_default().delivered += 1;
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(cursor) = track.advance() {
                        self.cursors.insert(device.key.clone(), cursor);
                    }
                }
                None => self.acks.push((device.key.clone(), id)),
            },
            Event::Drain(spread) => {
                let spread_ms = spread.as_millis() as u64;
                for local in self.devices.values() {
                    local
                        .device
                        .send(Outgoing::Reconnect(fastrand::u64(0..=spread_ms)));
                }
            }
        }
    }

    fn on_report(&mut self, report: Internal, internal: &mpsc::UnboundedSender<Internal>) {
        match report {
            Internal::Attached(device, attached) => {
                let Some(local) = self.devices.get_mut(&device.key) else {
                    return;
                };
                if local.device.conn != device.conn {
                    return;
                }
                let track = &mut local.broadcasts;
                track.attached = true;
                track.written = attached.cursor;
                track.seen = track.seen.max(attached.cursor);
                track.acked.retain(|pos| *pos > attached.cursor);
                (self.counters.expired).fetch_add(attached.expired, Ordering::Relaxed);
                for message in &attached.pending {
                    self.send_now(&device, Delivery::of(message, None));
                }
                self.catch_up(device, attached.cursor, internal);
            }
            Internal::CaughtUp(device, entries) => {
                let more = entries.len() == CATCH_UP_BATCH;
                let last_read = entries.last().map(|(pos, _)| *pos);
                let now = now_ms();
                let Some(local) = self.devices.get_mut(&device.key) else {
                    return;
                };
                if local.device.conn != device.conn {
                    return;
                }
                let track = &mut local.broadcasts;
                let mut sends = Vec::new();
                for (pos, message) in entries {
                    if track.has(pos) {
                        continue;
                    }
                    track.seen = track.seen.max(pos);
                    let Some(message) = message else { continue };
                    if !Audience::of(&message).is_some_and(|a| a.includes(&device)) {
                        continue;
                    }
                    if message.expired(now) {
                        self.counters.expired.fetch_add(1, Ordering::Relaxed);
                        self.counts
                            .entry(message.id.as_str().into())
                            .or_default()
                            .expired += 1;
                        continue;
                    }
                    track.sent(pos);
                    sends.push(Delivery::of(&message, Some(pos)));
                }
                if let Some(cursor) = track.advance() {
                    self.cursors.insert(device.key.clone(), cursor);
                }
                let last = last_read.unwrap_or(track.seen);
                for delivery in sends {
                    self.counts.entry(delivery.id.clone()).or_default().targets += 1;
                    self.send_now(&device, delivery);
                }
                if more {
                    self.catch_up(device, last, internal);
                }
            }
            Internal::Inbox(entries) => {
                for entry in entries {
                    match entry {
                        InboxEntry::Deliver { device, message } => self.deliver(&device, &message),
                        InboxEntry::Kick { device, conn } => {
                            if let Some(local) =
                                self.devices.get(&device).filter(|l| l.device.conn == conn)
                            {
                                local.device.send(Outgoing::Close(Close::Replaced));
                            }
                        }
                    }
                }
            }
            Internal::Broadcasts(entries) => {
                for (pos, message) in entries {
                    if let Some(message) = message {
                        self.start_fanout(pos, &message);
                    }
                }
            }
            Internal::Nodes(nodes) => self.nodes = nodes.max(1),
        }
    }

    /// Closes the devices that missed their heartbeats.
    fn close_silent(&mut self, now: Instant) {
        let now = clock(now);
        for local in self.devices.values() {
            let device = &local.device;
            if device.silent_until.load(Ordering::Relaxed) < now {
                // Once: the connection closes, and detaches.
                device.silent_until.store(u64::MAX, Ordering::Relaxed);
                device.send(Outgoing::Close(Close::Silent));
            }
        }
    }

    /// Reads the broadcasts after `cursor` for a device that just attached.
    fn catch_up(
        &self,
        device: Arc<Device>,
        cursor: StreamPos,
        internal: &mpsc::UnboundedSender<Internal>,
    ) {
        let (store, internal, counters) =
            (self.store.clone(), internal.clone(), self.counters.clone());
        tokio::task::spawn_local(async move {
            match store.broadcasts_after(cursor, CATCH_UP_BATCH).await {
                Ok(entries) => drop(internal.send(Internal::CaughtUp(device, entries))),
                Err(e) => failed(&counters, "catch up", &e),
            }
        });
    }

    /// A message from the inbox to a device of this node, now or at its app's rate.
    fn deliver(&mut self, key: &DeviceKey, message: &Message) {
        let Some(local) = self.devices.get(key) else {
            return;
        };
        if message.expired(now_ms()) {
            return;
        }
        let device = local.device.clone();
        let delivery = Delivery::of(message, None);
        let rate = self
            .rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .app_rate(&message.app_id);
        if rate == 0 || message.priority == Priority::High {
            return self.send_now(&device, delivery);
        }
        let queue = self
            .apps
            .entry(key.app.clone())
            .or_insert_with(|| AppQueue {
                bucket: Bucket::new(rate, Instant::now()),
                rate,
                waiting: VecDeque::new(),
            });
        if queue.rate != rate {
            queue.bucket = Bucket::new(rate, Instant::now());
            queue.rate = rate;
        }
        queue.waiting.push_back((device, delivery));
    }

    fn send_now(&mut self, device: &Device, delivery: Arc<Delivery>) {
        self.counts.entry(delivery.id.clone()).or_default().sent += 1;
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        device.send(Outgoing::Push(delivery));
    }

    /// A broadcast read from the stream: to this node's matching devices, at its rate.
    fn start_fanout(&mut self, pos: StreamPos, message: &Message) {
        let Some(audience) = Audience::of(message) else {
            return;
        };
        let devices: Vec<Arc<Device>> = (self.devices.values_mut())
            .filter(|l| audience.includes(&l.device) && !l.broadcasts.has(pos))
            .map(|l| {
                l.broadcasts.pending.insert(pos);
                l.device.clone()
            })
            .collect();
        if devices.is_empty() {
            return;
        }
        let rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        let rate = message
            .rate
            .unwrap_or_else(|| rates.broadcast_rate(&message.app_id));
        drop(rates);
        self.counts
            .entry(message.id.as_str().into())
            .or_default()
            .targets += devices.len() as u64;
        self.fanouts.push_back(FanOut {
            delivery: Delivery::of(message, Some(pos)),
            expires_at: message.expires_at,
            devices,
            next: 0,
            bucket: Bucket::new((rate / self.nodes).max(1), Instant::now()),
        });
    }

    /// Sends what the rates allow now: broadcasts in turn, then each app's queue.
    fn spread(&mut self, now: Instant) {
        let now_ms = now_ms();
        let mut fanouts = std::mem::take(&mut self.fanouts);
        fanouts.retain_mut(|fanout| {
            let pos = fanout.delivery.broadcast.unwrap_or_default();
            let expired = now_ms >= fanout.expires_at;
            let allowed = match expired {
                // Not sent: the devices left are no longer waiting for it.
                true => fanout.devices.len() - fanout.next,
                false => fanout.bucket.take(fanout.devices.len() - fanout.next, now),
            };
            for device in &fanout.devices[fanout.next..fanout.next + allowed] {
                let Some(local) = self.devices.get_mut(&device.key) else {
                    continue;
                };
                if local.device.conn != device.conn {
                    continue;
                }
                let track = &mut local.broadcasts;
                track.pending.remove(&pos);
                if expired || track.has(pos) {
                    continue;
                }
                track.sent(pos);
                self.counts
                    .entry(fanout.delivery.id.clone())
                    .or_default()
                    .sent += 1;
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                device.send(Outgoing::Push(fanout.delivery.clone()));
            }
            fanout.next += allowed;
            fanout.next < fanout.devices.len()
        });
        self.fanouts = fanouts;
        let mut sends = Vec::new();
        for queue in self.apps.values_mut() {
            let allowed = queue.bucket.take(queue.waiting.len(), now);
            sends.extend(queue.waiting.drain(..allowed));
        }
        self.apps.retain(|_, queue| !queue.waiting.is_empty());
        for (device, delivery) in sends {
            self.send_now(&device, delivery);
        }
    }

    /// Writes the batched acknowledgements, cursors and counts.
    fn flush(&mut self) {
        if self.acks.is_empty() && self.cursors.is_empty() && self.counts.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut self.acks);
        let cursors = std::mem::take(&mut self.cursors);
        let counts = std::mem::take(&mut self.counts);
        let (store, counters) = (self.store.clone(), self.counters.clone());
        tokio::task::spawn_local(async move {
            let acknowledged = store.acknowledge(&acks).await;
            let mut counts = counts;
            for ((_, id), first) in acks.iter().zip(acknowledged) {
                match first {
                    Ok(true) => {
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                        counts.entry(id.clone()).or_default().delivered += 1;
                    }
                    Ok(false) => {}
                    Err(e) => failed(&counters, "acknowledge", &e),
                }
            }
            let written = futures_util::future::join_all(
                cursors
                    .iter()
                    .map(|(device, cursor)| store.set_cursor(device, *cursor)),
            )
            .await;
            let counted = futures_util::future::join_all(
                counts.iter().map(|(id, delta)| store.count(id, *delta)),
            )
            .await;
            for result in written.into_iter().chain(counted) {
                if let Err(e) = result {
                    failed(&counters, "write", &e);
                }
            }
        });
    }
}

fn failed(counters: &HubCounters, what: &str, error: &Error) {
    counters.redis_failures.fetch_add(1, Ordering::Relaxed);
    tracing::warn!("push: {what} failed in Redis: {error}");
}

/// Reads this node's inbox and the broadcast stream, each on its own connection, for as
/// long as the hub runs; a failed read is tried again after a pause, from where it was.
async fn read_streams(
    reader: Reader,
    internal: mpsc::UnboundedSender<Internal>,
    counters: Arc<HubCounters>,
) {
    let Reader {
        mut inbox,
        mut broadcasts,
    } = reader;
    let inbox_loop = async {
        loop {
            match inbox.next_inbox().await {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => {
                    if internal.send(Internal::Inbox(entries)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    failed(&counters, "read the inbox", &e);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    };
    let broadcast_loop = async {
        loop {
            match broadcasts.next_broadcasts().await {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => {
                    if internal.send(Internal::Broadcasts(entries)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    failed(&counters, "read the broadcasts", &e);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    };
    tokio::join!(inbox_loop, broadcast_loop);
}

/// Tells the other nodes this one is alive (and learns how many are), and counts the
/// messages that expired in devices' queues.
async fn keep_alive(
    store: Arc<Store>,
    node: Arc<str>,
    internal: mpsc::UnboundedSender<Internal>,
    counters: Arc<HubCounters>,
) {
    loop {
        match store.heartbeat(&node, now_ms()).await {
            Ok(nodes) => {
                if internal.send(Internal::Nodes(nodes)).is_err() {
                    return;
                }
            }
            Err(e) => failed(&counters, "heartbeat", &e),
        }
        match store.sweep_expired(now_ms(), 1000).await {
            Ok(expired) => drop(
                counters
                    .expired
                    .fetch_add(expired as u64, Ordering::Relaxed),
            ),
            Err(e) => failed(&counters, "expiry sweep", &e),
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(n: u64) -> StreamPos {
        StreamPos(n, 0)
    }

    #[test]
    fn a_cursor_moves_only_through_what_is_acknowledged_and_never_past_what_is_on_its_way() {
        let mut track = Track::default();
        track.sent(pos(5));
        // Nothing moves before the cursor is read from Redis.
        assert_eq!(track.advance(), None);
        track.attached = true;
        track.written = pos(1);
        track.pending.insert(pos(3));
        track.sent(pos(7));
        assert!(track.unacked.remove(&pos(7)));
        track.acked.insert(pos(7));
        // 3 is on its way and 5 unacknowledged: the cursor stays before 3.
        assert_eq!(track.advance(), Some(pos(3).before()));
        track.pending.remove(&pos(3));
        track.sent(pos(3));
        track.unacked.remove(&pos(3));
        track.acked.insert(pos(3));
        assert_eq!(track.advance(), Some(pos(5).before()));
        track.unacked.remove(&pos(5));
        track.acked.insert(pos(5));
        // All acknowledged: through the last seen, and nothing is held any more.
        assert_eq!(track.advance(), Some(pos(7)));
        assert!(track.acked.is_empty() && track.unacked.is_empty() && track.pending.is_empty());
        assert_eq!(track.advance(), None);
    }

    #[test]
    fn a_broadcast_sent_or_on_its_way_is_not_sent_again() {
        let mut track = Track {
            attached: true,
            written: pos(10),
            ..Track::default()
        };
        assert!(
            !track.has(pos(9)),
            "before the cursor, yet not sent on this connection"
        );
        assert!(!track.has(pos(11)));
        track.pending.insert(pos(11));
        assert!(track.has(pos(11)), "a fan-out is to send it");
        track.sent(pos(12));
        assert!(track.has(pos(12)), "sent, not acknowledged");
        track.unacked.remove(&pos(12));
        track.acked.insert(pos(12));
        assert!(track.has(pos(12)), "acknowledged past the cursor");
    }

    #[test]
    fn high_priority_messages_and_closes_go_first() {
        let device = Device::new(
            DeviceKey {
                app: "a".into(),
                device: "d".into(),
            },
            1,
            vec!["t".into()],
        );
        let delivery = |id: &str, priority| {
            Outgoing::Push(Arc::new(Delivery {
                id: id.into(),
                body: Bytes::new(),
                priority,
                broadcast: None,
            }))
        };
        device.send(delivery("normal", Priority::Normal));
        device.send(delivery("high", Priority::High));
        device.send(Outgoing::Close(Close::Replaced));
        let order: Vec<String> = (device.take().into_iter())
            .map(|out| match out {
                Outgoing::Push(d) => d.id.to_string(),
                Outgoing::Reconnect(_) => "reconnect".into(),
                Outgoing::Close(why) => why.text().into(),
            })
            .collect();
        assert_eq!(order, ["replaced", "high", "normal"]);
        assert!(device.take().is_empty());
        let message = |target| Message {
            id: "m".into(),
            app_id: "a".into(),
            target,
            data: serde_json::Value::Null,
            priority: Priority::Normal,
            collapse_key: None,
            expires_at: u64::MAX,
            rate: None,
        };
        let includes = |target| Audience::of(&message(target)).is_some_and(|a| a.includes(&device));
        assert!(includes(Target::Tag("t AND NOT u".into())));
        assert!(!includes(Target::Tag("u".into())));
        assert!(includes(Target::All));
        assert!(
            !includes(Target::Devices(vec!["d".into()])),
            "not a broadcast"
        );
    }
}
