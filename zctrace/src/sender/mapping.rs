//! A read-only shared mapping of a file, and protection from the SIGBUS a truncation causes.
use std::{ffi::c_void, fs::File, num::NonZeroUsize, ptr::NonNull};

use anyhow::{Context as _, Result};
use nix::sys::{
    mman::{mmap, munmap, MapFlags, ProtFlags},
    signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal},
};

pub struct Mapping {
    ptr: NonNull<c_void>,
    len: usize,
}

impl Mapping {
    /// Maps `size` bytes of `file`; `None` for an empty file (mmap refuses length 0).
    pub fn of(file: &File, size: u64) -> Result<Option<Mapping>> {
        let Some(len) = NonZeroUsize::new(size as usize) else {
            return Ok(None);
        };
        // SAFETY: a fresh private view of the file; the pointer lives as long as `Mapping`.
        let ptr = unsafe { mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, file, 0) }
            .context("mmap of the source file")?;
        Ok(Some(Mapping { ptr, len: len.get() }))
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is PROT_READ and `len` bytes long for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len) }
    }

    /// While the guard lives, a SIGBUS (the file was truncated under the mapping) ends the
    /// process with a clear message and exit code 3 instead of a crash.
    pub fn guard_sigbus(&self) -> SigbusGuard {
        let action = SigAction::new(SigHandler::Handler(on_sigbus), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler only calls async-signal-safe functions (write, _exit).
        let previous = unsafe { sigaction(Signal::SIGBUS, &action) }.ok();
        SigbusGuard { previous }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from mmap and nothing borrows the mapping any more.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

pub struct SigbusGuard {
    previous: Option<SigAction>,
}

impl Drop for SigbusGuard {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            // SAFETY: restores the action that was in place before.
            let _ = unsafe { sigaction(Signal::SIGBUS, previous) };
        }
    }
}

extern "C" fn on_sigbus(_: libc::c_int) {
    const MESSAGE: &[u8] =
        b"error: the source file was truncated while mapped (SIGBUS); nothing more can be sent\n";
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
        libc::_exit(3);
    }
}
