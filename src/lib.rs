//! cc-relay: an edge relay for the Anthropic Messages API that makes many API keys behave as one
//! endpoint. `docs/ARCHITECTURE.md` describes the layout: a request's path, the modules, the
//! attempt, and the files a new provider kind touches.
//!
//! Dependency direction: `proxy → providers, pool, usage, config`; `admin → proxy`; `pool` and
//! `usage` depend on nothing of ours, so they can be unit-tested and benchmarked without a
//! server.

pub mod admin;
pub mod clients;
pub mod config;
pub mod lifecycle;
pub mod pool;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod shared;
pub mod telemetry;
pub mod usage;
