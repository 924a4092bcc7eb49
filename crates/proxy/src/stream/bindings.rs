//! The frames connections of the node bound to a key, so that a backend can push a frame to
//! a client by that key (`frames-push`).
//!
//! A call's 2xx answer carrying `X-Frame-Connection-Key` binds the connection that made it
//! (a TCP frames connection or a bridged WebSocket) to that key, within its stream route:
//! a later binding moves the connection to its new key, and a second connection bound to
//! the same key takes it from the first (the newest wins; the first stays open, unreachable
//! by the key). The binding ends with the connection.
//!
//! One registry serves every worker of the node. It is sharded by key, and a shard's lock is
//! held for one map operation only: binding and pushing take it, the frame path never does.
//! A pushed frame goes into the connection's bounded queue without waiting: a full queue is
//! the pusher's to retry, never a reason to block.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pylon_frames::{EncodeError, Frame, Layout};
use tokio::sync::mpsc;

/// Frames waiting for one client before pushes to it are refused.
pub(crate) const PUSH_QUEUE: usize = 64;
/// Shards of the registry: enough that workers binding and pushing rarely meet on a lock.
const SHARDS: usize = 32;

/// The bound connections of the node, by stream route and key.
#[derive(Debug)]
pub(crate) struct Bindings {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Keys bound now, over every shard.
    bound: AtomicU64,
    /// The id the next connection gets.
    next_connection: AtomicU64,
}

/// By stream route id, then by key.
type Shard = HashMap<Arc<str>, HashMap<Box<str>, Arc<Pusher>>>;

/// One connection's end of its push queue.
#[derive(Debug)]
struct Pusher {
    connection: u64,
    queue: mpsc::Sender<Frame>,
    /// The sequence id of the next frame pushed to it.
    next_sequence: AtomicU64,
}

/// What became of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// In the connection's queue, with this sequence id.
    Queued(u64),
    /// No connection of the route is bound to the key on this node.
    NotBound,
    /// The connection's queue is full: its client does not read fast enough.
    Full,
}

impl Default for Bindings {
    fn default() -> Self {
        Bindings {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            bound: AtomicU64::new(0),
            next_connection: AtomicU64::new(1),
        }
    }
}

impl Bindings {
    /// A connection of stream route `route` that may be bound, and the queue of the frames
    /// pushed to it.
    pub(crate) fn connection(
        self: &Arc<Self>,
        route: Arc<str>,
    ) -> (Binding, mpsc::Receiver<Frame>) {
        let (queue, pushes) = mpsc::channel(PUSH_QUEUE);
        let pusher = Arc::new(Pusher {
            connection: self.next_connection.fetch_add(1, Ordering::Relaxed),
            queue,
            next_sequence: AtomicU64::new(1),
        });
        let binding = Binding {
            bindings: self.clone(),
            route,
            pusher,
            key: std::cell::RefCell::default(),
        };
        (binding, pushes)
    }

    /// Queues `frame` for the connection of `route` bound to `key`, with the connection's
    /// next sequence id (counted from 1, wrapping within the layout's sequence field), once
    /// `layout` can write it.
    pub(crate) fn push(
        &self,
        route: &str,
        key: &str,
        mut frame: Frame,
        layout: &Layout,
    ) -> Result<Pushed, EncodeError> {
        let pusher = self
            .shard(route, key)
            .get(route)
            .and_then(|keys| keys.get(key))
            .cloned();
        let Some(pusher) = pusher else {
            return Ok(Pushed::NotBound);
        };
        let permit = match pusher.queue.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => return Ok(Pushed::Full),
            // The connection is closing: it takes no more frames.
            Err(mpsc::error::TrySendError::Closed(())) => return Ok(Pushed::NotBound),
        };
        // Checked before it takes an id (which fits: it wraps), so that ids have no gaps.
        frame.sequence = 0;
        layout.check(&frame)?;
        let count = pusher.next_sequence.fetch_add(1, Ordering::Relaxed);
        frame.sequence = match layout.max_sequence().checked_add(1) {
            Some(ids) => count % ids,
            None => count,
        };
        let sequence = frame.sequence;
        permit.send(frame);
        Ok(Pushed::Queued(sequence))
    }

    /// Keys bound now.
    pub(crate) fn bound(&self) -> u64 {
        self.bound.load(Ordering::Relaxed)
    }

    fn shard(&self, route: &str, key: &str) -> MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one((route, key)) as usize % self.shards.len();
        // A panic while the lock is held leaves a map that is still whole.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Binds `key` of `route` to `pusher`, in place of any other connection.
    fn insert(&self, route: &Arc<str>, key: &str, pusher: &Arc<Pusher>) {
        let replaced = self
            .shard(route, key)
            .entry(route.clone())
            .or_default()
            .insert(key.into(), pusher.clone());
        if replaced.is_none() {
            self.bound.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Unbinds `key` of `route` if `connection` still holds it.
    fn remove(&self, route: &str, key: &str, connection: u64) {
        let mut shard = self.shard(route, key);
        let Some(keys) = shard.get_mut(route) else {
            return;
        };
        if keys.get(key).is_some_and(|p| p.connection == connection) {
            keys.remove(key);
            self.bound.fetch_sub(1, Ordering::Relaxed);
            if keys.is_empty() {
                shard.remove(route);
            }
        }
    }
}

/// A connection's place in the registry: the key it is bound to, if any, released when the
/// connection ends (when this is dropped).
#[derive(Debug)]
pub(crate) struct Binding {
    bindings: Arc<Bindings>,
    route: Arc<str>,
    pusher: Arc<Pusher>,
    key: std::cell::RefCell<Option<Box<str>>>,
}

impl Binding {
    /// Binds the connection to `key`, in place of its key before, if any.
    pub(crate) fn bind(&self, key: &str) {
        let previous = self.key.replace(Some(key.into()));
        if let Some(previous) = previous.filter(|previous| **previous != *key) {
            self.bindings
                .remove(&self.route, &previous, self.pusher.connection);
        }
        self.bindings.insert(&self.route, key, &self.pusher);
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        if let Some(key) = self.key.get_mut().take() {
            self.bindings
                .remove(&self.route, &key, self.pusher.connection);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pylon_frames::LayoutConfig;

    /// A 1-byte command and sequence id.
    fn layout() -> Layout {
        let config: LayoutConfig = serde_json::from_value(serde_json::json!({
            "header_length": 3,
            "body_length": {"offset": 0, "width": 1},
            "command": {"offset": 1, "width": 1},
            "sequence": {"offset": 2, "width": 1},
        }))
        .unwrap();
        Layout::new(&config, 100).unwrap()
    }

    fn frame(command: u64) -> Frame {
        Frame {
            command,
            body: Bytes::from_static(b"hi"),
            ..Frame::default()
        }
    }

    fn push(bindings: &Bindings, key: &str) -> Pushed {
        bindings.push("im", key, frame(7), &layout()).unwrap()
    }

    #[test]
    fn a_bound_connection_gets_frames_with_their_own_sequence_ids() {
        let bindings = Arc::new(Bindings::default());
        let (binding, mut pushes) = bindings.connection("im".into());
        assert_eq!(push(&bindings, "u1"), Pushed::NotBound);
        binding.bind("u1");
        assert_eq!(bindings.bound(), 1);
        assert_eq!(push(&bindings, "u1"), Pushed::Queued(1));
        assert_eq!(push(&bindings, "u1"), Pushed::Queued(2));
        let pushed = pushes.try_recv().unwrap();
        assert_eq!((pushed.command, pushed.sequence), (7, 1));
        assert_eq!(&pushed.body[..], b"hi");
        let other_route = bindings.push("chat", "u1", frame(7), &layout());
        assert_eq!(other_route, Ok(Pushed::NotBound));
    }

    #[test]
    fn the_newest_binding_of_a_key_wins_and_ends_with_its_connection() {
        let bindings = Arc::new(Bindings::default());
        let (first, mut first_pushes) = bindings.connection("im".into());
        let (second, mut second_pushes) = bindings.connection("im".into());
        first.bind("u1");
        second.bind("u1");
        assert_eq!(bindings.bound(), 1);
        assert_eq!(push(&bindings, "u1"), Pushed::Queued(1));
        assert!(first_pushes.try_recv().is_err());
        assert!(second_pushes.try_recv().is_ok());
        // The first connection's end leaves the second's binding alone.
        drop(first);
        assert_eq!(push(&bindings, "u1"), Pushed::Queued(2));
        drop(second);
        assert_eq!(bindings.bound(), 0);
        assert_eq!(push(&bindings, "u1"), Pushed::NotBound);
    }

    #[test]
    fn a_later_binding_moves_the_connection_to_its_new_key() {
        let bindings = Arc::new(Bindings::default());
        let (binding, _pushes) = bindings.connection("im".into());
        binding.bind("u1");
        binding.bind("u2");
        assert_eq!(bindings.bound(), 1);
        assert_eq!(push(&bindings, "u1"), Pushed::NotBound);
        assert_eq!(push(&bindings, "u2"), Pushed::Queued(1));
    }

    #[test]
    fn sequence_ids_wrap_within_their_field() {
        let bindings = Arc::new(Bindings::default());
        let (binding, mut pushes) = bindings.connection("im".into());
        binding.bind("u1");
        for expected in (1..=255).chain([0, 1]) {
            assert_eq!(push(&bindings, "u1"), Pushed::Queued(expected));
            pushes.try_recv().unwrap();
        }
    }

    #[test]
    fn a_full_queue_refuses_without_waiting_and_a_bad_frame_is_not_queued() {
        let bindings = Arc::new(Bindings::default());
        let (binding, mut pushes) = bindings.connection("im".into());
        binding.bind("u1");
        let refused = bindings
            .push("im", "u1", frame(256), &layout())
            .unwrap_err();
        assert_eq!(refused.to_string(), "command 256 does not fit in 1 bytes");
        assert!(pushes.try_recv().is_err());
        for _ in 0..PUSH_QUEUE {
            assert!(matches!(push(&bindings, "u1"), Pushed::Queued(_)));
        }
        assert_eq!(push(&bindings, "u1"), Pushed::Full);
    }
}
