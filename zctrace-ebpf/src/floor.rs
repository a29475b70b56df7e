//! The overhead benchmark's yardstick: a program that does nothing.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

// Attached only on request (`--probes floor`, retargeted with `--probe.hook`): its cost at a hook
// is what the kernel charges to run any program there, the floor under every counting probe.
#[btf_tracepoint(function = "sys_exit")]
pub fn floor(_ctx: BtfTracePointContext) -> u32 {
    0
}
