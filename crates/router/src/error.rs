//! Why a route could not be compiled, naming the field; and, for a list of routes, which one.

use std::fmt;

/// One bad field of one route: `remote_addrs[1]: `10.0.0.300` is not an IP address or CIDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    field: String,
    message: String,
}

impl RouteError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field, with its element index: `uris[0]`, `hosts[2]`.
    pub fn field(&self) -> &str {
        &self.field
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for RouteError {}

/// A bad route in a list given to [`Router::new`](crate::Router::new):
/// `route 3: remote_addrs[1]: `10.0.0.300` is not an IP address or CIDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterError {
    route: usize,
    error: RouteError,
}

impl RouterError {
    pub(crate) fn new(route: usize, error: RouteError) -> Self {
        Self { route, error }
    }

    /// The index of the route in the list.
    pub fn route_index(&self) -> usize {
        self.route
    }

    pub fn field(&self) -> &str {
        self.error.field()
    }

    pub fn message(&self) -> &str {
        self.error.message()
    }
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {}: {}", self.route, self.error)
    }
}

impl std::error::Error for RouterError {}
