//! Checking zctrace against ground truth: which probes attach here, the bench that drives the
//! reference sender under the tracer, the bracketed send it times, and `doctor`, which runs both.
pub mod bench;
pub mod bracketed;
#[cfg(feature = "instruments")]
pub mod workload;

use anyhow::Result;
use bench::BenchArgs;

use crate::{
    probes::{args::ProbeArgs, ProbeMode, Role, Tracer},
    sender::Method,
};

/// Every probe with the way it attached here, or each way's refusal; then what that means for
/// the CPU copy figures.
pub fn probes(probe: &ProbeArgs) -> Result<()> {
    let tracer = Tracer::load(&probe.options())?;
    println!("{:<26} {:<12} hooks", "probe", "mode");
    for status in tracer.statuses() {
        println!(
            "{:<26} {:<12} {}",
            status.probe,
            status.mode.label(),
            status.hooks
        );
        if let ProbeMode::Unavailable(reasons) = &status.mode {
            println!("    {reasons}");
        }
    }
    let hidden: Vec<&str> = tracer
        .statuses()
        .iter()
        .filter(|s| s.role == Role::CopyObserver && !s.mode.is_attached())
        .map(|s| s.probe)
        .collect();
    if hidden.is_empty() {
        println!("cpu copies: modelled, and observed beside the model at every copy routine");
    } else {
        println!(
            "cpu copies: modelled only; this kernel does not let zctrace observe {}",
            hidden.join(", ")
        );
    }
    Ok(())
}

/// Which probes attach here, then 8 MiB by every method with zctrace's counts against the
/// sender's; fails when any method disagrees.
pub fn doctor(probe: &ProbeArgs) -> Result<()> {
    probes(probe)?;
    println!(
        "
self-check: 8 MiB by every method, zctrace's counts against the sender's"
    );
    let args = BenchArgs {
        size: 8 << 20,
        methods: Method::ALL.to_vec(),
        chunk: 128 * 1024,
        json: false,
        plot: None,
    };
    let rows = bench::run(&args, probe)?;
    print!("{}", bench::table(&rows));
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.disagreement.is_some())
        .map(|r| r.method)
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "zctrace disagrees with the sender for: {}",
        failed.join(", ")
    );
    println!("all methods agree");
    Ok(())
}
