//! cc-relay: an edge relay for the Anthropic Messages API that makes many API keys behave as one
//! endpoint. See `ARCHITECTURE.md` in the shared docs and the README for the shape.
//!
//! Dependency direction: `proxy → pool, providers, usage, config`; `pool` and `usage` depend on
//! nothing of ours, so they can be unit-tested and benchmarked without a server.

pub mod config;
pub mod lifecycle;
pub mod pool;
pub mod providers;
pub mod proxy;
pub mod usage;
