//! Evidence that a process relays: the bytes a thread sends from the buffer its last read filled.
//! Only `attach` and `top`, which name I/O styles, ask for it: a hash lookup per one-buffer call.
//! Kept in the thread's own `THREADS` entry (made at its first switch-out), which follows it
//! across CPUs and blocking sends; a thread not yet switched out has none, so the count is a
//! lower bound.
use crate::maps::THREADS;

/// Notes that thread `tid` read `bytes` into `buffer`.
#[inline(always)]
pub fn filled(tid: u32, buffer: u64, bytes: u64) {
    if let Some(thread) = THREADS.get_ptr_mut(tid) {
        // SAFETY: the current thread's own entry, which only it writes these fields of.
        unsafe {
            (*thread).last_fill_buffer = buffer;
            (*thread).last_fill_len = bytes;
        }
    }
}

/// How many of the `bytes` thread `tid` sends from `buffer` its last read put there.
#[inline(always)]
pub fn relayed(tid: u32, buffer: u64, bytes: u64) -> u64 {
    let Some(thread) = THREADS.get_ptr(tid) else {
        return 0;
    };
    // SAFETY: as in `filled`.
    let (start, len) = unsafe { ((*thread).last_fill_buffer, (*thread).last_fill_len) };
    let end = start.saturating_add(len);
    if buffer < start || buffer >= end {
        return 0;
    }
    bytes.min(end - buffer)
}
