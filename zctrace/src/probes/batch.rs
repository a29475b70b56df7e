//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH`: a few syscalls per map instead of two per entry
//! (aya 0.14 walks hash maps key by key), which is most of a 10,000-series scrape otherwise.
use std::{
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsFd, AsRawFd},
};

/// `BPF_MAP_LOOKUP_BATCH` from `enum bpf_cmd` (linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per syscall; doubled when one hash bucket holds more.
const FIRST_CHUNK: usize = 1024;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of the hash map behind `map`. `K` and `V` must be the map's own key and
/// value types (plain data, as `aya::Pod` promises).
pub fn lookup_all<K: aya::Pod, V: aya::Pod>(map: impl AsFd) -> io::Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    let mut chunk = FIRST_CHUNK;
    // Hash maps page by bucket index: the kernel reads `in_batch` and writes the next one.
    let (mut next_bucket, mut resume): (u32, Option<u32>) = (0, None);
    loop {
        let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(chunk);
        let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(chunk);
        let mut attr = BatchAttr {
            in_batch: resume.as_ref().map_or(0, |b| b as *const u32 as u64),
            out_batch: &raw mut next_bucket as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `chunk` keys and values that outlive the call; the
        // kernel writes at most `count` of each and updates `count` and `next_bucket`.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (result < 0).then(io::Error::last_os_error);
        let filled = attr.count as usize;
        // SAFETY: the kernel initialised the first `filled` keys and values.
        unsafe {
            keys.set_len(filled);
            values.set_len(filled);
        }
        entries.extend(
            keys.into_iter()
                .zip(values)
                // SAFETY: initialised above.
                .map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) }),
        );
        match error.and_then(|e| e.raw_os_error()) {
            None => resume = Some(next_bucket),
            Some(libc::ENOENT) => return Ok(entries),
            Some(libc::ENOSPC) if filled == 0 => chunk *= 2,
            Some(libc::ENOSPC) => resume = Some(next_bucket),
            Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}
