//! zctrace: per-process accounting of bytes moved, CPU copies, mode switches and context switches.
pub mod accounting;
pub mod attach;
pub mod check;
pub mod duration;
pub mod exporter;
#[cfg(test)]
mod fuzz_tests;
pub mod probes;
pub mod procfs;
pub mod sender;
pub mod stacks;
pub mod workload;
