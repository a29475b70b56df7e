//! Command-line knobs over how probes attach, shared by every command that loads them.
use super::{catalog::Mode, probe_names, ProbeMode, ProbeOptions, ProbeStatus, Role};

#[derive(Clone, Debug, Default, clap::Args)]
pub struct ProbeArgs {
    /// PROBE=TARGET: attach a probe at another tracepoint or function (tests attach failures;
    /// the overhead bench moves the empty `floor` probe with it).
    #[cfg(feature = "instruments")]
    #[arg(long = "probe.hook", hide = true, global = true, value_parser = parse_retarget)]
    pub retarget: Vec<(String, String)>,
    /// MODE: do not try this way of attaching (tp_btf, fentry, fexit, tracepoint, kprobe), as if
    /// the kernel refused it, to check the next way down each probe's chain.
    #[arg(long = "probe.without", hide = true, global = true, value_delimiter = ',', value_parser = parse_mode)]
    pub without: Vec<Mode>,
}

impl ProbeArgs {
    pub fn options(&self) -> ProbeOptions {
        ProbeOptions {
            #[cfg(feature = "instruments")]
            retarget: self.retarget.clone(),
            without: self.without.clone(),
            ..ProbeOptions::default()
        }
    }
}

pub fn parse_probe_name(name: &str) -> Result<String, String> {
    match probe_names().find(|known| *known == name) {
        Some(known) => Ok(known.to_string()),
        None => Err(format!(
            "no probe named {name:?}; probes are: {}",
            probe_names().collect::<Vec<_>>().join(", ")
        )),
    }
}

#[cfg(feature = "instruments")]
fn parse_retarget(spec: &str) -> Result<(String, String), String> {
    let (probe, hook) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?} is not PROBE=TARGET"))?;
    if hook.is_empty() {
        return Err(format!("{spec:?} names no target"));
    }
    Ok((parse_probe_name(probe)?, hook.to_string()))
}

fn parse_mode(label: &str) -> Result<Mode, String> {
    Mode::from_label(label).ok_or_else(|| {
        let modes: Vec<&str> = Mode::ALL.iter().map(|m| m.label()).collect();
        format!("no mode named {label:?}; modes are: {}", modes.join(", "))
    })
}

/// Logs how each probe attached. A counting probe that could not is a warning; a copy routine
/// that cannot be observed only means copies stay modelled, which is said once, at info.
pub fn log_statuses(statuses: &[ProbeStatus]) {
    for status in statuses {
        let (probe, hooks, mode) = (status.probe, status.hooks.as_str(), status.mode.label());
        match &status.mode {
            ProbeMode::Unavailable(reason) if status.role == Role::Counting => {
                tracing::warn!(
                    probe,
                    hooks,
                    mode,
                    reason,
                    "probe not attached; the others count on"
                )
            }
            ProbeMode::Unavailable(reason) => {
                tracing::info!(probe, hooks, mode, reason, "copy routine not observable here")
            }
            _ => tracing::info!(probe, hooks, mode, "probe"),
        }
    }
}
