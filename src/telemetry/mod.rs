//! The write side of what the relay tells its operator: for now, log lines for conditions that
//! repeat (a failed TLS handshake, an unwritable file, an unresolvable host) written once and
//! then as a periodic summary with a count, so one misbehaving client or a broken disk cannot
//! fill the log.

mod repeated;

pub use repeated::Repeated;
