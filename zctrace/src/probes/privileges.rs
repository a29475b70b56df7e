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

/// What [`drop_all_but_map_reads`] gave up.
pub struct Dropped {
    /// Effective capabilities given up.
    pub count: usize,
    /// CAP_BPF was kept: this kernel refuses every bpf() command, map reads included, to a
    /// process without it (before 5.19, with unprivileged BPF disabled, as distributions ship).
    pub kept_bpf: bool,
}

/// Drops every capability that reading the maps does not need, but `also`: attached programs and
/// open map descriptors keep working without any on current kernels, and with CAP_BPF alone on
/// older ones. Which it is, is found by trying: a thread of its own (capabilities are per thread)
/// drops everything and calls `read_map`.
pub fn drop_all_but_map_reads(
    read_map: impl FnOnce() -> bool + Send,
    also: &[Capability],
) -> Result<Dropped> {
    let reads_without_any = std::thread::scope(|scope| {
        scope
            .spawn(move || caps::clear(None, CapSet::Effective).is_ok() && read_map())
            .join()
            .unwrap_or(false)
    });
    let held = caps::read(None, CapSet::Effective)?;
    let kept_bpf = !reads_without_any && held.contains(&Capability::CAP_BPF);
    let keep: caps::CapsHashSet = also
        .iter()
        .copied()
        .chain(kept_bpf.then_some(Capability::CAP_BPF))
        .filter(|cap| held.contains(cap))
        .collect();
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &keep)?;
    }
    for set in [CapSet::Inheritable, CapSet::Ambient] {
        caps::clear(None, set)?;
    }
    Ok(Dropped {
        count: held.len() - keep.len(),
        kept_bpf,
    })
}
