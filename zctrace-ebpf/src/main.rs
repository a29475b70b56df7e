//! zctrace's kernel side: thin tracepoint hooks that count, per process, what the data path did.
//!
//! Every hook is a BTF tracepoint: this project's target kernels may lack kprobes and fentry, and
//! BTF tracepoints are the cheapest hook that still runs everywhere BTF exists.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod copy_observer;
mod floor;
mod kernel;
mod maps;
mod sched;
mod syscalls;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
