//! Placeholder until the expression language lands.
use serde::{Deserialize, Serialize};
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expr(pub serde_json::Value);
