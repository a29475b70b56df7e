//! System-call helpers every method shares: retrying, explaining a failure, sizing a pipe.
use std::os::fd::OwnedFd;

use anyhow::{anyhow, Result};
use nix::{
    errno::Errno,
    fcntl::{fcntl, FcntlArg, OFlag},
    unistd::pipe2,
};

/// Repeats a call interrupted by a signal or refused for now.
pub(crate) fn retry<T>(mut call: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match call() {
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            result => return result,
        }
    }
}

/// A syscall failure in words a user can act on.
pub(crate) fn explain(what: &str, errno: Errno) -> anyhow::Error {
    match errno {
        Errno::EPIPE | Errno::ECONNRESET => {
            anyhow!("{what}: the receiver closed the connection early ({errno})")
        }
        Errno::EFAULT => anyhow!("{what}: the source file was truncated while mapped ({errno})"),
        _ => anyhow!("{what}: {errno} ({})", errno.desc()),
    }
}

/// A pipe whose capacity is at least `chunk` where the kernel allows it; returns its capacity.
pub(crate) fn pipe_for(chunk: usize) -> Result<(OwnedFd, OwnedFd, usize)> {
    let (reader, writer) = pipe2(OFlag::O_CLOEXEC).map_err(|e| explain("pipe", e))?;
    let _ = fcntl(
        &writer,
        FcntlArg::F_SETPIPE_SZ(chunk.min(i32::MAX as usize) as i32),
    );
    let capacity = fcntl(&writer, FcntlArg::F_GETPIPE_SZ).map_err(|e| explain("F_GETPIPE_SZ", e))?;
    Ok((reader, writer, capacity as usize))
}
