//! The receiving end: reads everything, verifies the announced length and checksum.
use std::{
    io::{ErrorKind, Read},
    net::{TcpListener, TcpStream},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::header::{Header, HEADER_LEN};

const READ_BUFFER: usize = 256 * 1024;

#[derive(Clone, Debug, Serialize)]
pub struct ReceiveReport {
    pub peer: String,
    pub bytes: u64,
    pub checksum: u32,
    pub seconds: f64,
    pub bytes_per_second: f64,
}

/// Accepts one connection and receives one transfer. `close_after` stops reading (and closes the
/// connection) after that many payload bytes, to test senders against an early close.
pub fn receive_one(listener: &TcpListener, close_after: Option<u64>) -> Result<ReceiveReport> {
    let (stream, peer) = listener.accept().context("accepting a connection")?;
    receive(stream, close_after).with_context(|| format!("receiving from {peer}"))
}

/// Accepts one connection and splices its payload into /dev/null: no copy and no checksum, so a
/// benchmark measures the sender rather than the receiver. Only the length is verified.
pub fn discard_one(listener: &TcpListener) -> Result<ReceiveReport> {
    use nix::fcntl::{splice, SpliceFFlags};
    let (mut stream, peer) = listener.accept().context("accepting a connection")?;
    let mut raw = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut raw)
        .context("reading the 24-byte header")?;
    let header = Header::decode(&raw)?;
    let (reader, writer, capacity) = super::sys::pipe_for(READ_BUFFER)?;
    let sink = std::fs::File::options().write(true).open("/dev/null")?;
    let started = Instant::now();
    let mut bytes = 0u64;
    loop {
        let n = super::sys::retry(|| {
            splice(
                &stream,
                None,
                &writer,
                None,
                capacity,
                SpliceFFlags::SPLICE_F_MOVE,
            )
        })
        .map_err(|e| super::sys::explain("splice from socket", e))?;
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            left -=
                super::sys::retry(|| splice(&reader, None, &sink, None, left, SpliceFFlags::SPLICE_F_MOVE))
                    .map_err(|e| super::sys::explain("splice to /dev/null", e))?;
        }
        bytes += n as u64;
    }
    if bytes != header.len {
        bail!(
            "receiving from {peer}: the sender announced {} bytes but sent {bytes}",
            header.len
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ReceiveReport {
        peer: peer.to_string(),
        bytes,
        checksum: 0,
        seconds,
        bytes_per_second: bytes as f64 / seconds.max(1e-9),
    })
}

fn receive(mut stream: TcpStream, close_after: Option<u64>) -> Result<ReceiveReport> {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut raw = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut raw)
        .context("reading the 24-byte header")?;
    let header = Header::decode(&raw)?;
    let started = Instant::now();
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut bytes = 0u64;
    let limit = close_after.unwrap_or(u64::MAX);
    while bytes < limit {
        let want = (limit - bytes).min(READ_BUFFER as u64) as usize;
        let n = match stream.read(&mut buffer[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the payload"),
        };
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    if close_after.is_some() {
        bail!("closed the connection after {bytes} bytes, as asked");
    }
    let checksum = hasher.finalize();
    if bytes != header.len {
        bail!("the sender announced {} bytes but sent {bytes}", header.len);
    }
    if checksum != header.checksum {
        bail!(
            "checksum mismatch: announced {:08x}, received {checksum:08x}",
            header.checksum
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ReceiveReport {
        peer,
        bytes,
        checksum,
        seconds,
        bytes_per_second: bytes as f64 / seconds.max(1e-9),
    })
}
