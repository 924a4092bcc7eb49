//! Consumers: who an authentication plugin says a request comes from.

use crate::chain::Chain;

/// A consumer as the request path needs it: its name, its group and the plugins that apply
/// to its requests (its own over its group's), compiled with the configuration.
#[derive(Default)]
pub struct Consumer {
    username: String,
    group_id: Option<String>,
    plugins: Chain,
}

impl Consumer {
    pub fn new(username: String, group_id: Option<String>, plugins: Chain) -> Consumer {
        Consumer {
            username,
            group_id,
            plugins,
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn group_id(&self) -> Option<&str> {
        self.group_id.as_deref()
    }

    /// The consumer's plugins (merged with its group's); they replace the route's plugins of
    /// the same name once the consumer is known.
    pub fn plugins(&self) -> &Chain {
        &self.plugins
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("username", &self.username)
            .field("group_id", &self.group_id)
            .finish_non_exhaustive()
    }
}
