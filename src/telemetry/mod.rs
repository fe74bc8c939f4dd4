//! The write side of what the relay tells its operator: each listener's connection counts
//! (connections.rs), and log lines for conditions that
//! repeat (a failed TLS handshake, an unwritable file, an unresolvable host) written once and
//! then as a periodic summary with a count, so one misbehaving client or a broken disk cannot
//! fill the log.

pub mod connections;
mod repeated;

pub use connections::Connections;
pub use repeated::Repeated;
