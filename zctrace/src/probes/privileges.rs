//! What loading needs, said up front; and giving it all back once the probes are attached.
use anyhow::{bail, Result};
use caps::{CapSet, Capability};

/// Fails with what is missing when this process cannot load and attach the programs.
pub fn require() -> Result<()> {
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    if has(Capability::CAP_SYS_ADMIN) || (has(Capability::CAP_BPF) && has(Capability::CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (Capability::CAP_BPF, "CAP_BPF"),
        (Capability::CAP_PERFMON, "CAP_PERFMON"),
    ]
    .into_iter()
    .filter(|(cap, _)| !has(*cap))
    .map(|(_, name)| name)
    .collect();
    bail!(
        "zctrace needs root, or CAP_BPF and CAP_PERFMON, to load its eBPF programs; missing: {}. \
         Run it with sudo, or grant them: setcap cap_bpf,cap_perfmon+ep $(which zctrace)",
        missing.join(", ")
    )
}

/// Drops every capability: attached programs and open map descriptors keep working without any.
/// Returns how many effective capabilities were given up.
pub fn drop_all() -> Result<usize> {
    let held = caps::read(None, CapSet::Effective)?.len();
    for set in [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
    ] {
        caps::clear(None, set)?;
    }
    Ok(held)
}
