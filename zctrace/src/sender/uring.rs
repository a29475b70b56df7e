//! io_uring SPLICE: file -> pipe -> socket as two linked requests per chunk, one syscall each.
use std::{
    fs::File,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use anyhow::{anyhow, bail, Context as _, Result};
use io_uring::{opcode, squeue, types::Fd, IoUring};
use nix::errno::Errno;

use super::{
    sys::{explain, pipe_for},
    Tally,
};

const INTO_PIPE: u64 = 1;
const OUT_OF_PIPE: u64 = 2;

pub(crate) fn send(
    file: &File,
    size: u64,
    out: &OwnedFd,
    chunk: usize,
    progress: Option<&dyn Fn(u64)>,
) -> Result<Tally> {
    let mut ring =
        IoUring::new(8).context("io_uring_setup (is io_uring disabled by kernel.io_uring_disabled?)")?;
    let (reader, writer, capacity) = pipe_for(chunk)?;
    let step = chunk.min(capacity).min(u32::MAX as usize) as u32;
    let mut tally = Tally::default();
    while tally.bytes < size {
        let len = (size - tally.bytes).min(step as u64) as u32;
        let into_pipe = opcode::Splice::new(
            Fd(file.as_raw_fd()),
            tally.bytes as i64,
            Fd(writer.as_raw_fd()),
            -1,
            len,
        )
        .flags(libc::SPLICE_F_MOVE)
        .build()
        .flags(squeue::Flags::IO_LINK)
        .user_data(INTO_PIPE);
        let out_of_pipe = splice_out(&reader, out, len);
        let (moved_in, moved_out) = submit(&mut ring, &[into_pipe, out_of_pipe], &mut tally)?;
        let moved_in = result("io_uring splice into pipe", moved_in)?;
        if moved_in == 0 {
            break;
        }
        let mut pending = moved_in - result("io_uring splice to socket", moved_out)?;
        while pending > 0 {
            let (sent, _) = submit(&mut ring, &[splice_out(&reader, out, pending)], &mut tally)?;
            pending -= result("io_uring splice to socket", sent)?.min(pending);
        }
        tally.bytes += u64::from(moved_in);
        if let Some(progress) = progress {
            progress(tally.bytes);
        }
    }
    Ok(tally)
}

fn splice_out(reader: &OwnedFd, out: &OwnedFd, len: u32) -> squeue::Entry {
    let (from, to): (RawFd, RawFd) = (reader.as_raw_fd(), out.as_raw_fd());
    opcode::Splice::new(Fd(from), -1, Fd(to), -1, len)
        .flags(libc::SPLICE_F_MOVE)
        .build()
        .user_data(OUT_OF_PIPE)
}

/// Submits `entries` with one io_uring_enter and returns the results of the into-pipe and
/// out-of-pipe requests (0 where absent).
fn submit(ring: &mut IoUring, entries: &[squeue::Entry], tally: &mut Tally) -> Result<(i32, i32)> {
    // SAFETY: every fd an entry names stays open until its completion is reaped below.
    unsafe { ring.submission().push_multiple(entries) }
        .map_err(|_| anyhow!("io_uring submission queue full"))?;
    loop {
        match ring.submit_and_wait(entries.len()) {
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e).context("io_uring_enter"),
        }
    }
    tally.syscalls += 1;
    let (mut moved_in, mut moved_out) = (0, 0);
    for completion in ring.completion() {
        match completion.user_data() {
            INTO_PIPE => moved_in = completion.result(),
            _ => moved_out = completion.result(),
        }
    }
    Ok((moved_in, moved_out))
}

fn result(what: &str, value: i32) -> Result<u32> {
    if value < 0 {
        let errno = Errno::from_raw(-value);
        if errno == Errno::ECANCELED {
            bail!("{what}: cancelled because the linked request before it failed");
        }
        return Err(explain(what, errno));
    }
    Ok(value as u32)
}
