//! TEMPORARY scratch copy of the health check types being added on branch `model-tls`;
//! dropped when that branch lands on main.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthChecks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    #[default]
    Http,
    Https,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveCheck {
    #[serde(rename = "type")]
    pub kind: CheckType,
    pub timeout: f64,
    pub concurrency: u32,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub http_path: String,
    pub https_verify_certificate: bool,
    pub req_headers: Vec<String>,
    pub healthy: ActiveHealthy,
    pub unhealthy: ActiveUnhealthy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveHealthy {
    pub interval: f64,
    pub http_statuses: Vec<u16>,
    pub successes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveUnhealthy {
    pub interval: f64,
    pub http_statuses: Vec<u16>,
    pub http_failures: u32,
    pub tcp_failures: u32,
    pub timeouts: u32,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveCheck {
    #[serde(rename = "type")]
    pub kind: CheckType,
    pub healthy: PassiveHealthy,
    pub unhealthy: PassiveUnhealthy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthy {
    pub http_statuses: Vec<u16>,
    pub successes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveUnhealthy {
    pub http_statuses: Vec<u16>,
    pub http_failures: u32,
    pub tcp_failures: u32,
    pub timeouts: u32,
}

impl Default for ActiveCheck {
    fn default() -> Self {
        Self {
            kind: CheckType::Http,
            timeout: 1.0,
            concurrency: 10,
            host: None,
            port: None,
            http_path: "/".into(),
            https_verify_certificate: true,
            req_headers: Vec::new(),
            healthy: ActiveHealthy::default(),
            unhealthy: ActiveUnhealthy::default(),
        }
    }
}

impl Default for ActiveHealthy {
    fn default() -> Self {
        Self {
            interval: 1.0,
            http_statuses: vec![200, 302],
            successes: 2,
        }
    }
}

impl Default for ActiveUnhealthy {
    fn default() -> Self {
        Self {
            interval: 1.0,
            http_statuses: vec![429, 404, 500, 501, 502, 503, 504, 505],
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 3,
        }
    }
}

impl Default for PassiveHealthy {
    fn default() -> Self {
        Self {
            http_statuses: vec![
                200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305,
                306, 307, 308,
            ],
            successes: 5,
        }
    }
}

impl Default for PassiveUnhealthy {
    fn default() -> Self {
        Self {
            http_statuses: vec![429, 500, 503],
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 7,
        }
    }
}
