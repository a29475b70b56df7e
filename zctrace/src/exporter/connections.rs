//! Accepted connections: a cap on how many are open, below the descriptor limit, and deadlines
//! on idleness, so idle clients can neither hold the daemon's descriptors nor its memory.
use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum_server::accept::Accept;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_io_timeout::TimeoutStream;

/// Why a request or connection was turned away; each is counted and exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong or missing credentials (401).
    Unauthorized,
    /// Too many failed checks from the address (429).
    Throttled,
    /// Not answered within [`REQUEST_TIMEOUT`] (503).
    Timeout,
    /// Past the cap on open connections: closed at once.
    ConnectionLimit,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::Unauthorized,
        Refusal::Throttled,
        Refusal::Timeout,
        Refusal::ConnectionLimit,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Throttled => "throttled",
            Refusal::Timeout => "timeout",
            Refusal::ConnectionLimit => "connection_limit",
        }
    }
}

/// Counts the HTTP side keeps for the self-health metrics.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub open_connections: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl HttpStats {
    pub fn refuse(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|why| (why.label(), self.refused[*why as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// A connection whose reads (a client that sends nothing, or stays idle after TLS or between
/// requests) or writes (one that stops reading its response) make no progress for this long is
/// closed; not while the daemon owes it an answer. Prometheus reconnects for its next scrape.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once, at most; fewer when the descriptor limit is lower.
pub const MAX_CONNECTIONS: u64 = 4096;
/// Descriptors kept for what is not a client connection: maps, programs, BTF, logs, the listener.
const RESERVED_DESCRIPTORS: u64 = 256;

/// The cap on open connections under descriptor limit `nofile`, so that the daemon never runs
/// out of descriptors and connections past the cap are refused rather than failing elsewhere.
pub fn cap_for(nofile: u64) -> u64 {
    nofile
        .saturating_sub(RESERVED_DESCRIPTORS)
        .clamp(1, MAX_CONNECTIONS)
}

/// Raises this process's soft descriptor limit to its hard one, and returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

#[derive(Clone)]
pub struct Limited {
    stats: Arc<HttpStats>,
    cap: u64,
}

impl Limited {
    pub fn new(stats: Arc<HttpStats>, cap: u64) -> Limited {
        Limited { stats, cap }
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for Limited {
    type Stream = Tracked;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Tracked, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let open = self.stats.open_connections.fetch_add(1, Ordering::Relaxed) + 1;
        let tracked = Tracked {
            stream: Box::pin(with_deadlines(stream)),
            stats: self.stats.clone(),
            owed: false,
        };
        if open > self.cap {
            self.stats.refuse(Refusal::ConnectionLimit);
            return std::future::ready(Err(io::Error::other("connection limit reached")));
        }
        std::future::ready(Ok((tracked, service)))
    }
}

fn with_deadlines(stream: TcpStream) -> TimeoutStream<TcpStream> {
    let mut stream = TimeoutStream::new(stream);
    stream.set_read_timeout(Some(IDLE_TIMEOUT));
    stream.set_write_timeout(Some(IDLE_TIMEOUT));
    stream
}

/// A connection counted as open until dropped.
pub struct Tracked {
    stream: Pin<Box<TimeoutStream<TcpStream>>>,
    stats: Arc<HttpStats>,
    /// The client sent something the daemon has not answered yet. Serving a request is not the
    /// client's idleness (a profile over N seconds takes N seconds), so the read clock stops
    /// until the daemon writes; a client that sends only part of a request meets the header or
    /// TLS handshake deadline instead.
    owed: bool,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.stats.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.stream.as_mut().poll_read(cx, buf);
        if !self.owed && matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.owed = true;
            self.stream.as_mut().set_read_timeout_pinned(None);
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = self.stream.as_mut().poll_write(cx, buf);
        if self.owed && matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.owed = false;
            self.stream.as_mut().set_read_timeout_pinned(Some(IDLE_TIMEOUT));
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_daemons_own_descriptors() {
        assert_eq!(cap_for(1024), 768);
        assert_eq!(cap_for(8192), MAX_CONNECTIONS);
        assert_eq!(cap_for(100), 1, "a tiny limit still serves one scrape");
    }
}
