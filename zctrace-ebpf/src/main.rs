//! zctrace's kernel side: thin hooks that count, per process, what the data path did.
//!
//! BTF tracepoints come first: some target kernels lack kprobes and fentry, and they are the
//! cheapest hook that runs everywhere BTF exists. Where a kernel lacks a tracepoint, fexit or
//! kprobe twins of the program stand in; user space attaches the first that works.
#![no_std]
#![no_main]
#![feature(core_intrinsics, asm_experimental_arch)]
#![allow(internal_features)]

mod copies;
#[cfg(feature = "instruments")]
mod floor;
mod kernel;
mod maps;
mod preemption;
mod relay;
mod sched;
mod stacks;
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
