//! The services of one discovery type that are being watched, their current nodes, and the
//! trait every provider implements to keep them current.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::{DiscoveryError, Node};

/// One service's nodes: `None` until the provider first answers.
pub(crate) type Nodes = Option<Arc<[Node]>>;

pub(crate) trait Provider: Send + Sync + 'static {
    /// The service's name in the book (normalised), or why `name` names no service.
    fn service(&self, name: &str) -> Result<String, DiscoveryError>;

    /// Starts keeping a newly watched service's nodes current through `publisher`. Returns the
    /// task that follows it, aborted when the last watch of the service is dropped; a provider
    /// that follows all its services at once publishes what it knows and returns `None`.
    /// Called under the book's lock: it must take no lock that is held while calling the book.
    fn follow(&self, service: &str, publisher: Publisher) -> Option<AbortHandle>;

    /// The dump body: `services` and `config`.
    fn dump(&self, book: &Book) -> Value;
}

pub(crate) struct Book {
    kind: &'static str,
    services: Mutex<HashMap<String, Slot>>,
    changed: Arc<watch::Sender<u64>>,
}

struct Slot {
    nodes: watch::Sender<Nodes>,
    watchers: usize,
    task: Option<AbortHandle>,
}

impl Book {
    pub fn new(kind: &'static str, changed: Arc<watch::Sender<u64>>) -> Book {
        Book {
            kind,
            services: Mutex::default(),
            changed,
        }
    }

    /// A watch of `service`; the first one starts following it with `follow`.
    pub fn subscribe(
        self: &Arc<Self>,
        service: &str,
        follow: impl FnOnce(Publisher) -> Option<AbortHandle>,
    ) -> ServiceWatch {
        let mut services = self.lock();
        let slot = match services.entry(service.to_owned()) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(vacant) => {
                let nodes = watch::Sender::new(None);
                let task = follow(self.publisher(&nodes));
                vacant.insert(Slot {
                    nodes,
                    watchers: 0,
                    task,
                })
            }
        };
        slot.watchers += 1;
        ServiceWatch {
            nodes: slot.nodes.subscribe(),
            _lease: Arc::new(Lease {
                book: self.clone(),
                service: service.to_owned(),
            }),
        }
    }

    /// The watched services' publishers, for providers that follow every service at once.
    pub fn publishers(&self) -> Vec<(String, Publisher)> {
        self.lock()
            .iter()
            .map(|(service, slot)| (service.clone(), self.publisher(&slot.nodes)))
            .collect()
    }

    fn publisher(&self, nodes: &watch::Sender<Nodes>) -> Publisher {
        Publisher {
            nodes: nodes.clone(),
            changed: self.changed.clone(),
        }
    }

    /// The watched services and their current nodes, as a dump shows them.
    pub fn services(&self) -> Value {
        let services = self.lock();
        let services: serde_json::Map<String, Value> = services
            .iter()
            .map(|(service, slot)| (service.clone(), json!(slot.nodes.borrow().as_deref())))
            .collect();
        Value::Object(services)
    }

    fn release(&self, service: &str) {
        let mut services = self.lock();
        let Some(slot) = services.get_mut(service) else {
            return;
        };
        slot.watchers -= 1;
        if slot.watchers == 0 {
            if let Some(task) = slot.task.take() {
                task.abort();
            }
            services.remove(service);
            tracing::debug!(kind = self.kind, service, "no longer watched");
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // A poisoned map only means a panic elsewhere while it was held; its slots are whole.
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a provider puts one service's nodes.
#[derive(Clone)]
pub(crate) struct Publisher {
    nodes: watch::Sender<Nodes>,
    changed: Arc<watch::Sender<u64>>,
}

impl Publisher {
    /// Makes `nodes` the service's nodes; the registry's counter moves on only if they differ
    /// from the last ones (in any order).
    pub fn publish(&self, mut nodes: Vec<Node>) {
        nodes.sort_by(|a, b| {
            (&a.host, a.port, a.priority, a.weight).cmp(&(&b.host, b.port, b.priority, b.weight))
        });
        nodes.dedup();
        let modified = self.nodes.send_if_modified(|current| {
            if current.as_deref() == Some(nodes.as_slice()) {
                return false;
            }
            *current = Some(nodes.into());
            true
        });
        if modified {
            self.changed.send_modify(|count| *count += 1);
        }
    }
}

/// A watched service. Cloning shares the watch; the service stays watched while any clone is
/// alive.
#[derive(Clone)]
pub struct ServiceWatch {
    nodes: watch::Receiver<Nodes>,
    /// Held, never read: dropping the last one releases the service.
    _lease: Arc<Lease>,
}

impl ServiceWatch {
    /// The service's nodes now: `None` until the provider first answers, empty when the
    /// service has no instances (or does not exist).
    pub fn current(&self) -> Option<Arc<[Node]>> {
        self.nodes.borrow().clone()
    }

    /// Waits until the nodes change (the first time: until the provider has answered, unless
    /// it already has), and returns them.
    pub async fn changed(&mut self) -> Option<Arc<[Node]>> {
        // The sender lives in the book for as long as this lease does, so this cannot fail.
        let _ = self.nodes.changed().await;
        self.nodes.borrow_and_update().clone()
    }
}

/// Keeps a service watched; the last one dropped stops following it.
struct Lease {
    book: Arc<Book>,
    service: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.book.release(&self.service);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str) -> Node {
        Node::new(host.to_owned(), 80, 1)
    }

    #[tokio::test]
    async fn watches_of_a_service_share_one_follower_which_stops_with_the_last() {
        let changed = Arc::new(watch::Sender::new(0));
        let book = Arc::new(Book::new("test", changed.clone()));
        let mut follows = 0;
        let mut task = None;
        let mut first = book.subscribe("web", |publisher| {
            follows += 1;
            let follower = tokio::spawn(async move {
                publisher.publish(vec![node("10.0.0.2"), node("10.0.0.1")]);
                std::future::pending::<()>().await
            });
            task = Some(follower);
            task.as_ref().map(|t| t.abort_handle())
        });
        let second = book.subscribe("web", |_| unreachable!("already followed"));
        assert_eq!(follows, 1);

        let nodes = first.changed().await.expect("published");
        assert_eq!(nodes[0].host, "10.0.0.1", "nodes are kept in order");
        assert_eq!(second.current(), Some(nodes));
        assert_eq!(*changed.borrow(), 1);

        drop(first);
        let task = task.unwrap();
        assert!(!task.is_finished(), "one watch is left");
        drop(second);
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(book.services(), json!({}));
    }

    #[test]
    fn publishing_the_same_nodes_again_changes_nothing() {
        let changed = Arc::new(watch::Sender::new(0));
        let book = Arc::new(Book::new("test", changed.clone()));
        let watch = book.subscribe("web", |_| None);
        let (_, publisher) = book.publishers().pop().unwrap();
        publisher.publish(vec![node("10.0.0.1"), node("10.0.0.2")]);
        publisher.publish(vec![node("10.0.0.2"), node("10.0.0.1")]);
        assert_eq!(*changed.borrow(), 1);
        publisher.publish(Vec::new());
        assert_eq!(*changed.borrow(), 2);
        assert_eq!(watch.current().as_deref(), Some(&[][..]));
    }
}
