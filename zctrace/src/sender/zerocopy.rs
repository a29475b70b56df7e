//! MSG_ZEROCOPY sends: user pages are pinned instead of copied, and the kernel later reports each
//! send complete on the socket's error queue, flagging the ones it had to copy after all.
use std::{
    io::IoSliceMut,
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{bail, Result};
use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::socket::{recvmsg, send as send_on, ControlMessageOwned, MsgFlags, SockaddrStorage},
};

use super::{mapping::Mapping, sys::explain, Tally};

const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;
/// How long to wait for the last completions before giving up.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn send(
    file: &std::fs::File,
    size: u64,
    out: &OwnedFd,
    chunk: usize,
    progress: Option<&dyn Fn(u64)>,
) -> Result<Tally> {
    enable_zerocopy(out)?;
    let mut tally = Tally::default();
    let Some(mapping) = Mapping::of(file, size)? else {
        return Ok(tally);
    };
    let mut sends = 0u64;
    for piece in mapping.bytes().chunks(chunk) {
        let mut offset = 0;
        while offset < piece.len() {
            match send_on(
                out.as_raw_fd(),
                &piece[offset..],
                MsgFlags::from_bits_retain(libc::MSG_ZEROCOPY),
            ) {
                Ok(n) => {
                    tally.syscalls += 1;
                    sends += 1;
                    offset += n;
                }
                // Too many pages pinned: wait for the kernel to release some.
                Err(Errno::ENOBUFS) => wait_for_completions(out, &mut tally, Duration::from_millis(100))?,
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(e) => return Err(explain("send(MSG_ZEROCOPY)", e)),
            }
            reap(out, &mut tally)?;
        }
        tally.bytes += piece.len() as u64;
        if let Some(progress) = progress {
            progress(tally.bytes);
        }
    }
    let deadline = std::time::Instant::now() + COMPLETION_TIMEOUT;
    while tally.zerocopy_completions < sends {
        if std::time::Instant::now() > deadline {
            bail!(
                "the kernel reported {} of {sends} zerocopy sends complete",
                tally.zerocopy_completions
            );
        }
        wait_for_completions(out, &mut tally, Duration::from_millis(100))?;
    }
    // Every send is complete, so every segment is acknowledged: the count is final.
    tally.zerocopy_resent_bytes = resent_bytes(out)?;
    Ok(tally)
}

/// Bytes TCP sent again on `socket` (`tcpi_bytes_retrans`, 4.19 on). A zerocopy segment that
/// reaches a local receiver is copied there, and so is each of its retransmissions.
fn resent_bytes(socket: &OwnedFd) -> Result<u64> {
    // SAFETY: tcp_info is plain integers, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of `len` bytes that outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(explain("getsockopt(TCP_INFO)", Errno::last()));
    }
    Ok(info.tcpi_bytes_retrans)
}

fn enable_zerocopy(socket: &OwnedFd) -> Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a pointer to an int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(explain("setsockopt(SO_ZEROCOPY)", Errno::last()));
    }
    Ok(())
}

fn wait_for_completions(socket: &OwnedFd, tally: &mut Tally, timeout: Duration) -> Result<()> {
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(socket), PollFlags::empty())];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(_) | Err(Errno::EINTR) => reap(socket, tally),
        Err(e) => Err(explain("poll", e)),
    }
}

/// Reads every completion waiting on the error queue.
fn reap(socket: &OwnedFd, tally: &mut Tally) -> Result<()> {
    loop {
        let mut control = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
        let mut iov: [IoSliceMut; 0] = [];
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let message =
            match recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(&mut control), flags) {
                Ok(message) => message,
                Err(Errno::EAGAIN | Errno::EINTR) => return Ok(()),
                Err(e) => return Err(explain("reading zerocopy completions", e)),
            };
        for cmsg in message.cmsgs()? {
            let error = match cmsg {
                ControlMessageOwned::Ipv4RecvErr(error, _) | ControlMessageOwned::Ipv6RecvErr(error, _) => {
                    error
                }
                _ => continue,
            };
            if error.ee_origin != SO_EE_ORIGIN_ZEROCOPY {
                continue;
            }
            // ee_info..=ee_data is the range of send calls this notification completes.
            let completed = u64::from(error.ee_data.wrapping_sub(error.ee_info)) + 1;
            tally.zerocopy_completions += completed;
            if error.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0 {
                tally.zerocopy_copied += completed;
            }
        }
    }
}
