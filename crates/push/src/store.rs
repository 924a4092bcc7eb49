//! The push gateway's state in Redis, shared by every node, so that a node that dies loses
//! nothing: its devices reconnect elsewhere and find there what they have not acknowledged.
//!
//! Keys start with the configured prefix `P`. A device's keys share its hash slot
//! (`{app:device}`), so each step on one device is one script on one Redis Cluster node:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{app:dev}:s` | hash | `node` and `conn` holding it now, `bc` its broadcast cursor |
//! | `P:{app:dev}:q` | sorted set | ids of messages to it not yet acknowledged, by age |
//! | `P:{app:dev}:c` | hash | collapse key → the message id that holds it |
//! | `P:msg:<id>` | hash | `m` the message (JSON), counts `targets` `sent` `delivered` `expired` |
//! | `P:inbox:<node>` | stream | what a node is to deliver to its devices, or close |
//! | `P:bc` | stream | every message to a tag or to all, in order |
//! | `P:exp` | sorted set | `id|app:dev` by expiry: queued messages to count as expired |
//! | `P:nodes` | sorted set | nodes by their last heartbeat |

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join, join_all};
use pylon_redis::{
    cmd, Dedicated, Error, Redis, Script, StreamId, StreamRangeReply, StreamReadReply, Value,
};
use serde::Serialize;

use crate::message::{Message, Target};

/// Entries a node inbox or the broadcast stream keeps at most.
const STREAM_CAP: u64 = 100_000;
/// How long a node's heartbeat counts it as alive.
pub const NODE_ALIVE: Duration = Duration::from_secs(15);
/// How long a device's keys outlive its last connection or message.
const DEVICE_RETENTION_MS: u64 = 30 * 86_400_000;
/// How far before a new device connected its broadcast cursor starts: room for the
/// difference between this node's clock and Redis's, which numbers the stream.
pub const NEW_DEVICE_MARGIN_MS: u64 = 1000;
/// The most queued messages a reconnecting device is sent.
const MAX_PENDING: i64 = 1000;

/// A position in a Redis stream (`ms-seq`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamPos(pub u64, pub u64);

impl StreamPos {
    pub fn parse(text: &str) -> Option<StreamPos> {
        let (ms, seq) = text.split_once('-')?;
        Some(StreamPos(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The position just before this one: a cursor "done through" it.
    pub fn before(self) -> StreamPos {
        match self {
            StreamPos(ms, 0) => StreamPos(ms.saturating_sub(1), u64::MAX),
            StreamPos(ms, seq) => StreamPos(ms, seq - 1),
        }
    }
}

impl fmt::Display for StreamPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A device: its app and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    pub app: Arc<str>,
    pub device: Box<str>,
}

impl DeviceKey {
    /// `app:device`, as the keys and inbox entries name it.
    pub fn joined(&self) -> String {
        format!("{}:{}", self.app, self.device)
    }

    pub fn parse(joined: &str) -> Option<DeviceKey> {
        let (app, device) = joined.split_once(':')?;
        Some(DeviceKey {
            app: app.into(),
            device: device.into(),
        })
    }
}

/// What a node's inbox asks of it.
#[derive(Debug, Clone)]
pub enum InboxEntry {
    /// Deliver the message to the device, if connected here.
    Deliver {
        device: DeviceKey,
        message: Arc<Message>,
    },
    /// Close the device's connection `conn`: it connected again elsewhere.
    Kick { device: DeviceKey, conn: u64 },
}

/// What a device found when it was attached to a node.
#[derive(Debug)]
pub struct Attached {
    /// The node and connection that held it before, if another.
    pub previous: Option<(String, u64)>,
    /// The messages waiting for it, oldest first (expired ones already taken out).
    pub pending: Vec<Arc<Message>>,
    /// The expired ones taken out and counted.
    pub expired: u64,
    /// Its broadcast cursor: every broadcast at or before it is done.
    pub cursor: StreamPos,
}

/// A message's counts, for the push API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub targets: u64,
    pub sent: u64,
    pub delivered: u64,
    pub expired: u64,
}

/// Changes to a message's counts, gathered and written together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountDelta {
    pub targets: u64,
    pub sent: u64,
    pub delivered: u64,
    pub expired: u64,
}

pub struct Store {
    redis: Arc<Redis>,
    prefix: String,
    enqueue: Script,
    attach: Script,
    detach: Script,
    save: Script,
    count: Script,
}

/// Queues a message for a device (dropping the one its collapse key held) and names the
/// node holding the device. KEYS: q s c; ARGV: id, score, collapse key or "", expiry (ms).
const ENQUEUE: &str = r"
if ARGV[3] ~= '' then
  local old = redis.call('HGET', KEYS[3], ARGV[3])
  if old and old ~= ARGV[1] then redis.call('ZREM', KEYS[1], old) end
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
  redis.call('PEXPIREAT', KEYS[3], ARGV[4])
end
redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return redis.call('HMGET', KEYS[2], 'node', 'conn')
";

/// Records that a node holds the device now; answers who held it before, its cursor and
/// the ids waiting for it. KEYS: s q; ARGV: node, conn, expiry (ms), most ids.
const ATTACH: &str = r"
local before = redis.call('HMGET', KEYS[1], 'node', 'conn', 'bc')
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'conn', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
local pending = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[4]) - 1)
return {before[1], before[2], before[3], pending}
";

/// Forgets the node of a device if this connection still holds it. KEYS: s; ARGV: conn.
const DETACH: &str = r"
if redis.call('HGET', KEYS[1], 'conn') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'node', 'conn')
end
return 1
";

/// Saves a message with its expiry and its count of target devices (when named), unless
/// its id is taken (0). KEYS: msg; ARGV: JSON, expiry (ms), targets.
const SAVE: &str = r"
if redis.call('HSETNX', KEYS[1], 'm', ARGV[1]) == 0 then return 0 end
if ARGV[3] ~= '0' then redis.call('HSET', KEYS[1], 'targets', ARGV[3]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
";

/// Adds to a message's counts. KEYS: msg; ARGV: field, increment, field, increment...
const COUNT: &str = r"
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
";

impl Store {
    pub fn new(redis: Arc<Redis>, prefix: String) -> Store {
        Store {
            redis,
            prefix,
            enqueue: Script::new(ENQUEUE),
            attach: Script::new(ATTACH),
            detach: Script::new(DETACH),
            save: Script::new(SAVE),
            count: Script::new(COUNT),
        }
    }

    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    fn device_key(&self, device: &DeviceKey, part: &str) -> String {
        format!(
            "{}:{{{}:{}}}:{part}",
            self.prefix, device.app, device.device
        )
    }

    fn message_key(&self, id: &str) -> String {
        format!("{}:msg:{id}", self.prefix)
    }

    fn inbox_key(&self, node: &str) -> String {
        format!("{}:inbox:{node}", self.prefix)
    }

    fn broadcast_key(&self) -> String {
        format!("{}:bc", self.prefix)
    }

    fn expiry_key(&self) -> String {
        format!("{}:exp", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Saves a message, kept `retention_ms` past its expiry for its counts, with as many
    /// targets as it names devices. A message id already taken is refused: `false`.
    pub async fn save(&self, message: &Message, retention_ms: u64) -> Result<bool, Error> {
        let json = serde_json::to_string(message).unwrap_or_default();
        let targets = match &message.target {
            Target::Devices(devices) => devices.len(),
            Target::Tag(_) | Target::All => 0,
        };
        let mut invocation = self.save.key(self.message_key(&message.id));
        invocation
            .arg(json)
            .arg(message.expires_at + retention_ms)
            .arg(targets);
        let saved: i64 = self.redis.invoke(&invocation).await?;
        Ok(saved == 1)
    }

    /// Queues a saved `message` for each of `devices` and sends it to the inboxes of the
    /// nodes that hold them now. The queues and the expiry index are written at once; the
    /// inboxes then, as the queues name the nodes.
    pub async fn send_to_devices(
        &self,
        message: &Arc<Message>,
        devices: &[String],
        now_ms: u64,
    ) -> Result<(), Error> {
        let json = serde_json::to_string(&**message).unwrap_or_default();
        let keys: Vec<DeviceKey> = devices
            .iter()
            .map(|d| DeviceKey {
                app: message.app_id.as_str().into(),
                device: d.as_str().into(),
            })
            .collect();
        let expiry = message.expires_at.max(now_ms + DEVICE_RETENTION_MS);
        let queued = join_all(keys.iter().map(|device| {
            let mut invocation = self.enqueue.key(self.device_key(device, "q"));
            invocation
                .key(self.device_key(device, "s"))
                .key(self.device_key(device, "c"))
                .arg(&message.id)
                .arg(now_ms)
                .arg(message.collapse_key.as_deref().unwrap_or(""))
                .arg(expiry);
            async move {
                let held: (Option<String>, Option<u64>) = self.redis.invoke(&invocation).await?;
                Ok::<_, Error>(held.0)
            }
        }));
        let mut expiries = cmd("ZADD");
        expiries.arg(self.expiry_key());
        for device in &keys {
            expiries
                .arg(message.expires_at)
                .arg(format!("{}|{}", message.id, device.joined()));
        }
        let (holders, indexed) = join(queued, self.redis.query::<i64>(&expiries)).await;
        indexed?;
        let mut sends = Vec::new();
        for (device, holder) in keys.iter().zip(holders) {
            if let Some(node) = holder? {
                let mut add = self.inbox_entry(&node, device);
                add.arg("m").arg(&json);
                sends.push(add);
            }
        }
        for result in join_all(sends.iter().map(|add| self.redis.query::<Value>(add))).await {
            result?;
        }
        Ok(())
    }

    /// Appends a message to a tag or to all to the broadcast stream every node reads.
    pub async fn broadcast(&self, message: &Message) -> Result<(), Error> {
        let json = serde_json::to_string(message).unwrap_or_default();
        let mut add = cmd("XADD");
        add.arg(self.broadcast_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_CAP)
            .arg("*")
            .arg("m")
            .arg(json);
        self.redis.query::<String>(&add).await.map(drop)
    }

    /// Records that `node` holds the device on connection `conn`, and reads what waits for
    /// it. A device never seen before starts its broadcast cursor where the stream was when it
    /// connected (`connected_ms`), less [`NEW_DEVICE_MARGIN_MS`]: the broadcasts made since
    /// are its, however late this runs (a hub waiting for Redis attaches its devices late).
    pub async fn attach(
        &self,
        device: &DeviceKey,
        node: &str,
        conn: u64,
        connected_ms: u64,
        now_ms: u64,
    ) -> Result<Attached, Error> {
        let mut invocation = self.attach.key(self.device_key(device, "s"));
        invocation
            .key(self.device_key(device, "q"))
            .arg(node)
            .arg(conn)
            .arg(now_ms + DEVICE_RETENTION_MS)
            .arg(MAX_PENDING);
        let (before_node, before_conn, cursor, ids): (
            Option<String>,
            Option<u64>,
            Option<String>,
            Vec<String>,
        ) = self.redis.invoke(&invocation).await?;
        let previous = before_node
            .zip(before_conn)
            .filter(|(n, c)| !(n == node && *c == conn));
        let cursor = match cursor.as_deref().and_then(StreamPos::parse) {
            Some(cursor) => cursor,
            None => {
                // Stream positions are Redis's milliseconds.
                let start = StreamPos(connected_ms.saturating_sub(NEW_DEVICE_MARGIN_MS), 0);
                self.set_cursor(device, start).await?;
                start
            }
        };
        let messages = join_all(ids.iter().map(|id| async move {
            let mut get = cmd("HGET");
            get.arg(self.message_key(id)).arg("m");
            self.redis.query::<Option<String>>(&get).await
        }))
        .await;
        let mut pending = Vec::new();
        let mut expired = 0;
        for (id, json) in ids.iter().zip(messages) {
            let message = json?.and_then(|j| serde_json::from_str::<Message>(&j).ok());
            match message {
                Some(message) if !message.expired(now_ms) => pending.push(Arc::new(message)),
                Some(_) => expired += u64::from(self.expire(id, device).await?),
                // Gone past its retention: nothing to count.
                None => self
                    .redis
                    .query::<i64>(cmd("ZREM").arg(self.device_key(device, "q")).arg(id))
                    .await
                    .map(drop)?,
            }
        }
        Ok(Attached {
            previous,
            pending,
            expired,
            cursor,
        })
    }

    /// Forgets which node holds the device, if `conn` still does.
    pub async fn detach(&self, device: &DeviceKey, conn: u64) -> Result<(), Error> {
        let mut invocation = self.detach.key(self.device_key(device, "s"));
        invocation.arg(conn);
        self.redis.invoke::<i64>(&invocation).await.map(drop)
    }

    /// Sends a node's inbox a request to close `conn` of the device.
    pub async fn kick(&self, node: &str, device: &DeviceKey, conn: u64) -> Result<(), Error> {
        let mut add = self.inbox_entry(node, device);
        add.arg("kick").arg(conn);
        self.redis.query::<String>(&add).await.map(drop)
    }

    /// An `XADD` to `node`'s inbox of an entry about `device`, for the caller to finish
    /// with what the entry says.
    fn inbox_entry(&self, node: &str, device: &DeviceKey) -> pylon_redis::Cmd {
        let mut add = cmd("XADD");
        add.arg(self.inbox_key(node))
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_CAP)
            .arg("*")
            .arg("d")
            .arg(device.joined());
        add
    }

    /// Takes acknowledged messages off their devices' queues: for each, `true` if it was
    /// there (the first acknowledgement, which counts as delivered). The queues and the
    /// expiry index are written at once; an entry already gone from either stays gone.
    pub async fn acknowledge(&self, acks: &[(DeviceKey, Box<str>)]) -> Vec<Result<bool, Error>> {
        if acks.is_empty() {
            return Vec::new();
        }
        let removed = join_all(acks.iter().map(|(device, id)| async move {
            let removed: i64 = self
                .redis
                .query(cmd("ZREM").arg(self.device_key(device, "q")).arg(&**id))
                .await?;
            Ok(removed == 1)
        }));
        let mut unindex = cmd("ZREM");
        unindex.arg(self.expiry_key());
        for (device, id) in acks {
            unindex.arg(format!("{id}|{}", device.joined()));
        }
        // An index entry left behind by a failed write is harmless: the expiry sweep finds
        // its message off the queue and counts nothing.
        let (removed, _) = join(removed, self.redis.query::<i64>(&unindex)).await;
        removed
    }

    /// Moves the device's broadcast cursor.
    pub async fn set_cursor(&self, device: &DeviceKey, cursor: StreamPos) -> Result<(), Error> {
        self.redis
            .query::<i64>(
                cmd("HSET")
                    .arg(self.device_key(device, "s"))
                    .arg("bc")
                    .arg(cursor.to_string()),
            )
            .await
            .map(drop)
    }

    /// Takes an expired message off the device's queue, counting it if it was there:
    /// whether it was.
    async fn expire(&self, id: &str, device: &DeviceKey) -> Result<bool, Error> {
        let removed: i64 = self
            .redis
            .query(cmd("ZREM").arg(self.device_key(device, "q")).arg(id))
            .await?;
        if removed == 1 {
            self.count(
                id,
                CountDelta {
                    expired: 1,
                    ..Default::default()
                },
            )
            .await?;
        }
        Ok(removed == 1)
    }

    /// Counts as expired the queued messages whose time has passed (at most `limit` of
    /// them), each taken by one node only: how many this call counted.
    pub async fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, Error> {
        let due: Vec<String> = self
            .redis
            .query(
                cmd("ZRANGEBYSCORE")
                    .arg(self.expiry_key())
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        let mut expired = 0;
        for member in &due {
            let taken: i64 = self
                .redis
                .query(cmd("ZREM").arg(self.expiry_key()).arg(member))
                .await?;
            let Some((id, device)) = member.split_once('|') else {
                continue;
            };
            if let (1, Some(device)) = (taken, DeviceKey::parse(device)) {
                expired += usize::from(self.expire(id, &device).await?);
            }
        }
        Ok(expired)
    }

    /// Adds to a message's counts, in one call.
    pub async fn count(&self, id: &str, delta: CountDelta) -> Result<(), Error> {
        if delta == CountDelta::default() {
            return Ok(());
        }
        let mut invocation = self.count.key(self.message_key(id));
        let fields = [
            ("targets", delta.targets),
            ("sent", delta.sent),
            ("delivered", delta.delivered),
            ("expired", delta.expired),
        ];
        for (field, n) in fields.into_iter().filter(|(_, n)| *n > 0) {
            invocation.arg(field).arg(n);
        }
        self.redis.invoke::<i64>(&invocation).await.map(drop)
    }

    /// A message and its counts; `None` once it is gone (past its retention) or never was.
    pub async fn message(&self, id: &str) -> Result<Option<(Message, Counts)>, Error> {
        let fields: HashMap<String, String> = self
            .redis
            .query(cmd("HGETALL").arg(self.message_key(id)))
            .await?;
        let Some(message) = fields.get("m").and_then(|m| serde_json::from_str(m).ok()) else {
            return Ok(None);
        };
        let count = |field: &str| fields.get(field).and_then(|v| v.parse().ok()).unwrap_or(0);
        let counts = Counts {
            targets: count("targets"),
            sent: count("sent"),
            delivered: count("delivered"),
            expired: count("expired"),
        };
        Ok(Some((message, counts)))
    }

    /// Records that `node` is alive now; answers how many nodes are.
    pub async fn heartbeat(&self, node: &str, now_ms: u64) -> Result<u64, Error> {
        let key = self.nodes_key();
        let alive_since = now_ms.saturating_sub(NODE_ALIVE.as_millis() as u64);
        self.redis
            .query::<i64>(cmd("ZADD").arg(&key).arg(now_ms).arg(node))
            .await?;
        self.redis
            .query::<i64>(
                cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(format!("({alive_since}")),
            )
            .await?;
        self.redis.query(cmd("ZCARD").arg(&key)).await
    }

    /// Broadcasts after `cursor`, up to `count` of them, for a device catching up.
    pub async fn broadcasts_after(
        &self,
        cursor: StreamPos,
        count: usize,
    ) -> Result<Vec<(StreamPos, Option<Message>)>, Error> {
        let reply: StreamRangeReply = self
            .redis
            .query(
                cmd("XRANGE")
                    .arg(self.broadcast_key())
                    .arg(format!("({cursor}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        Ok(reply.ids.iter().filter_map(broadcast_entry).collect())
    }

    /// A reader of this node's inbox and of the broadcast stream, from their ends now:
    /// every entry added after this returns is read, across reconnections.
    pub async fn reader(&self, node: &str, block: Duration) -> Result<Reader, Error> {
        let inbox = self.inbox_key(node);
        let broadcasts = self.broadcast_key();
        Ok(Reader {
            inbox: Tail::new(self.redis.clone(), self.end_of(&inbox).await?, inbox, block),
            broadcasts: Tail::new(
                self.redis.clone(),
                self.end_of(&broadcasts).await?,
                broadcasts,
                block,
            ),
        })
    }

    /// The last position of stream `key` (`0-0` when it is empty or absent).
    async fn end_of(&self, key: &str) -> Result<StreamPos, Error> {
        let last: StreamRangeReply = self
            .redis
            .query(
                cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        Ok(last
            .ids
            .first()
            .and_then(|e| StreamPos::parse(&e.id))
            .unwrap_or_default())
    }
}

/// A broadcast stream entry: its position and message (`None` if unreadable).
fn broadcast_entry(entry: &StreamId) -> Option<(StreamPos, Option<Message>)> {
    let pos = StreamPos::parse(&entry.id)?;
    let message = text(entry.map.get("m")).and_then(|m| serde_json::from_str(&m).ok());
    Some((pos, message))
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Reads a node's two streams, each on its own connection (their keys may live on different
/// nodes of a Redis Cluster).
pub struct Reader {
    pub inbox: Tail,
    pub broadcasts: Tail,
}

/// New entries of one stream, read from where the last read ended, on a connection of its
/// own (made again after a failure, from the same place).
pub struct Tail {
    redis: Arc<Redis>,
    connection: Option<Dedicated>,
    key: String,
    block: Duration,
    last: StreamPos,
}

impl Tail {
    fn new(redis: Arc<Redis>, last: StreamPos, key: String, block: Duration) -> Tail {
        Tail {
            redis,
            connection: None,
            key,
            block,
            last,
        }
    }

    /// The entries after the last read, waiting up to `block` for some.
    async fn next(&mut self) -> Result<Vec<StreamId>, Error> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self
                .connection
                .insert(self.redis.dedicated(self.block).await?),
        };
        let mut read = cmd("XREAD");
        read.arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(self.last.to_string());
        let reply: Option<StreamReadReply> = match connection.query(&read).await {
            Ok(reply) => reply,
            Err(e) => {
                self.connection = None;
                return Err(e);
            }
        };
        let entries: Vec<StreamId> = (reply.into_iter())
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect();
        if let Some(last) = entries.last().and_then(|e| StreamPos::parse(&e.id)) {
            self.last = last;
        }
        Ok(entries)
    }

    /// The inbox's next entries.
    pub async fn next_inbox(&mut self) -> Result<Vec<InboxEntry>, Error> {
        let entries = self.next().await?;
        Ok(entries
            .iter()
            .filter_map(|entry| {
                let device = DeviceKey::parse(&text(entry.map.get("d"))?)?;
                if let Some(conn) = text(entry.map.get("kick")).and_then(|c| c.parse().ok()) {
                    return Some(InboxEntry::Kick { device, conn });
                }
                let message = serde_json::from_str(&text(entry.map.get("m"))?).ok()?;
                Some(InboxEntry::Deliver {
                    device,
                    message: Arc::new(message),
                })
            })
            .collect())
    }

    /// The broadcast stream's next entries.
    pub async fn next_broadcasts(&mut self) -> Result<Vec<(StreamPos, Option<Message>)>, Error> {
        let entries = self.next().await?;
        Ok(entries.iter().filter_map(broadcast_entry).collect())
    }
}
