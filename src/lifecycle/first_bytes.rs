//! The guard waits for a new connection's first bytes before it builds anything for it. A
//! connection that says nothing then holds only Pingora's task and the guard's small future:
//! no rustls connection (a 4 KiB read buffer and its handshake state), no boxed handshake
//! future, no HTTP session. Issue 26 measured 4,096 silent connections at about 24 KiB each
//! when the handshake started at once; a half-sent ClientHello cost the same.

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

/// A TLS record's header: content type, version, length.
const RECORD_HEADER: usize = 5;
/// The content type of a handshake record (RFC 8446 §5.1), which a ClientHello travels in.
const HANDSHAKE: u8 = 22;
/// The longest record rustls reads (2^14 bytes of payload and 2,048 of expansion): the wait
/// does not hold more for a client than the handshake would.
const MAX_RECORD: usize = (1 << 14) + 2048;

/// The connection's first byte, waiting for it without a buffer. `None` when the client
/// closed first or the read failed.
pub(super) async fn first_byte(stream: &mut Stream) -> Option<u8> {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Ok(1) => Some(byte[0]),
        _ => None,
    }
}

/// Read the client's first TLS record (its ClientHello) whole, then put it back for the
/// handshake to read. A record claiming more than a TLS record may hold, or one that is not a
/// handshake record, is put back at its header: the handshake fails on it as it did before.
/// The record's bytes are held as they arrive, no more.
pub(super) async fn first_tls_record(tcp: &mut L4Stream) -> std::io::Result<()> {
    let mut header = [0u8; RECORD_HEADER];
    tcp.read_exact(&mut header).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::new(e.kind(), "the client closed before its ClientHello")
        } else {
            e
        }
    })?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let mut record = header.to_vec();
    if header[0] == HANDSHAKE && len <= MAX_RECORD {
        // The client closing part way leaves a short record: the handshake reports it.
        (&mut *tcp)
            .take(len as u64)
            .read_to_end(&mut record)
            .await?;
    }
    tcp.rewind(&record);
    Ok(())
}
