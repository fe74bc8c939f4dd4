//! `sd_notify` without a library: one datagram to `$NOTIFY_SOCKET`.

/// Tell systemd (when it started us with `Type=notify`) about our state. Silent otherwise.
pub(super) fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    use std::os::unix::net::UnixDatagram;
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = socket.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
            None => sock.send_to(state.as_bytes(), &socket),
        }
    });
    if let Err(e) = sent {
        log::warn!("could not notify systemd: {e}");
    }
}
