//! Why a set of routes could not be compiled, naming the route and the field.

use std::fmt;

/// One bad field of one route: `route 3: remote_addrs[1]: `10.0.0.300` is not an IP address or CIDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterError {
    route: usize,
    field: String,
    message: String,
}

impl RouterError {
    pub(crate) fn new(route: usize, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            route,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The index of the route in the list given to [`Router::new`](crate::Router::new).
    pub fn route_index(&self) -> usize {
        self.route
    }

    /// The field, with its element index: `uris[0]`, `hosts[2]`.
    pub fn field(&self) -> &str {
        &self.field
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {}: {}: {}", self.route, self.field, self.message)
    }
}

impl std::error::Error for RouterError {}
