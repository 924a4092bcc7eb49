//! Other proxies' configuration as Pylon's standalone document (APISIX's `apisix.yaml`).
//!
//! Only nginx for now: [`nginx::load`] reads a configuration with its `include`s into a tree
//! whose directives know their file and line, and [`nginx::convert`] turns it into routes and
//! upstreams, listing what it cannot convert instead of dropping it.
#![forbid(unsafe_code)]

pub mod nginx;
