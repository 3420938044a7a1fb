//! The gateway's configuration: `parlance.toml` (providers, the model catalog, routing,
//! image fetching, accounts) and the catalog built from it (each model a pool of
//! deployments, presets, fallbacks, routes). The server and the binary read it; it
//! knows no HTTP and no wire format of a front door.

// An index out of range is a panic; outside tests, use `get` or a pattern.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod accounts;
pub mod catalog;
pub mod config;
