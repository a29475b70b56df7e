//! One scrape's worth of figures, encoded as const metrics (read from the maps at scrape time,
//! never kept in counters), in OpenMetrics or the Prometheus text format.
use std::{
    borrow::Cow,
    fmt::{self, Write as _},
};

use prometheus_client::{
    collector::Collector,
    encoding::{text, DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use super::series::{SeriesKey, SeriesTotals};
use crate::accounting::{kind_label, Basis, Family, Value, FAMILIES};

/// Label values borrow from the scrape: a 10,000-series scrape would otherwise copy every comm,
/// syscall and endpoint name once per sample.
type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

#[derive(Debug, Default)]
pub struct Scrape {
    pub series: Vec<(SeriesKey, SeriesTotals)>,
    /// (probe, mode, attached).
    pub probes: Vec<(String, String, bool)>,
    /// (map, entries, capacity).
    pub maps: Vec<(String, u64, u64)>,
    /// (map or slot, failed updates).
    pub update_errors: Vec<(String, u64)>,
    /// (eBPF program, runs the kernel skipped), where the kernel counts them.
    pub missed_runs: Vec<(String, u64)>,
    /// The socket kind cache's misses and, of them, evictions.
    pub socket_kind_misses: u64,
    pub socket_kind_evictions: u64,
    pub series_dropped: u64,
    /// With `--profiles`: sites of exited processes the profiles had no room to keep.
    pub profile_sites_dropped: u64,
    /// Whether the cgroup hierarchy zctrace reads is whole, so that cgroup and workload labels
    /// can name every process's.
    pub cgroup_hierarchy_visible: bool,
    /// HTTP connections open now.
    pub http_connections: u64,
    /// (reason, requests or connections refused for it).
    pub http_refused: Vec<(&'static str, u64)>,
    pub kernel: String,
    /// When the probes attached (Unix seconds): every counter counts from then.
    pub start_time_seconds: f64,
    pub collect_seconds: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the scraper asks for it, else the classic text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

impl Scrape {
    pub fn encode(self, format: Format) -> Result<String, fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut openmetrics = String::new();
        text::encode(&mut openmetrics, &registry)?;
        Ok(match format {
            Format::OpenMetrics => openmetrics,
            Format::PrometheusText => to_prometheus_text(&openmetrics),
        })
    }

    fn labels<'a>(key: &'a SeriesKey, extra: &[(&'static str, &'a str)]) -> Labels<'a> {
        let mut labels = Vec::with_capacity(3 + extra.len());
        labels.push(("comm", Cow::Borrowed(key.comm.as_str())));
        if let Some(pid) = key.pid {
            labels.push(("pid", Cow::Owned(pid.to_string())));
        }
        if let Some(cgroup) = &key.cgroup {
            labels.push(("cgroup", Cow::Borrowed(cgroup.as_str())));
        }
        let workload = &key.workload;
        for (name, value) in [
            ("container_id", &workload.container_id),
            ("pod_uid", &workload.pod_uid),
            ("systemd_unit", &workload.systemd_unit),
        ] {
            if let Some(value) = value {
                labels.push((name, Cow::Borrowed(value.as_str())));
            }
        }
        labels.extend(extra.iter().map(|(k, v)| (*k, Cow::Borrowed(*v))));
        labels
    }

    /// A family's samples per series, leaving out zeros: a series appears once its counter has
    /// something to say, and as counters never go down, stays.
    fn per_series(&self, family: &Family) -> Vec<(Labels<'_>, Value)> {
        self.series
            .iter()
            .flat_map(|(key, totals)| {
                (family.samples)(&totals.counters)
                    .into_iter()
                    .filter(|(_, value)| !value.is_zero())
                    .map(|(extra, value)| (Self::labels(key, &extra), value))
            })
            .collect()
    }

    fn process_families(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let per_syscall = |pick: fn(&SeriesTotals) -> &std::collections::BTreeMap<&'static str, u64>| {
            self.series
                .iter()
                .flat_map(|(key, t)| {
                    pick(t)
                        .iter()
                        .map(move |(name, n)| (Self::labels(key, &[("syscall", name)]), *n))
                })
                .collect::<Vec<_>>()
        };
        counters(
            encoder,
            "zctrace_syscalls",
            "Syscalls made (each one a user/kernel mode switch pair).",
            per_syscall(|t| &t.syscalls),
        )?;
        counters(
            encoder,
            "zctrace_syscall_errors",
            "Data-path syscalls that returned an error.",
            per_syscall(|t| &t.errors),
        )?;
        let per_flow = |value: fn(&super::series::FlowTotals) -> u64, basis: Option<&'static str>| {
            self.series
                .iter()
                .flat_map(|(key, t)| {
                    // A path's series appear once it moved bytes; its copies then show even at 0.
                    t.flows
                        .iter()
                        .filter(|(_, totals)| totals.bytes > 0)
                        .map(move |(p, totals)| {
                            let extra = [
                                ("syscall", p.syscall),
                                ("src", kind_label(p.src)),
                                ("dst", kind_label(p.dst)),
                                ("basis", basis.unwrap_or_default()),
                            ];
                            let labels = if basis.is_some() { &extra[..] } else { &extra[..3] };
                            (Self::labels(key, labels), value(totals))
                        })
                })
                .collect::<Vec<_>>()
        };
        counters(
            encoder,
            "zctrace_bytes",
            "Bytes moved by data-path syscalls, by syscall and endpoint kinds.",
            per_flow(|p| p.bytes, None),
        )?;
        counters(
            encoder,
            "zctrace_cpu_copy_bytes",
            "Bytes the CPU copied, by syscall and endpoint kinds; basis=model means inferred from the copy model.",
            per_flow(|p| p.cpu_copy_bytes, Some(Basis::Model.label())),
        )?;
        // Observed copies are all zero unless observed: their family is then left out whole.
        for family in FAMILIES {
            counters(encoder, family.metric, family.help, self.per_series(family))?;
        }
        Ok(())
    }

    fn health_families(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let build = vec![(
            vec![
                ("version", Cow::Borrowed(env!("CARGO_PKG_VERSION"))),
                ("kernel", Cow::Borrowed(self.kernel.as_str())),
            ],
            1u64,
        )];
        gauges(
            encoder,
            "zctrace_build_info",
            "zctrace's version and the kernel it runs on.",
            build,
        )?;
        let started: Vec<(Labels<'_>, f64)> = vec![(vec![], self.start_time_seconds)];
        gauges(
            encoder,
            "zctrace_start_time_seconds",
            "When the probes attached, in Unix seconds; counters count from then, so a new value means they restarted from zero.",
            started,
        )?;
        let probes = self
            .probes
            .iter()
            .map(|(probe, mode, attached)| {
                (
                    vec![
                        ("probe", Cow::Borrowed(probe.as_str())),
                        ("mode", Cow::Borrowed(mode.as_str())),
                    ],
                    u64::from(*attached),
                )
            })
            .collect();
        gauges(
            encoder,
            "zctrace_probe_attached",
            "1 when the probe is attached, in the mode named.",
            probes,
        )?;
        let map_gauge = |pick: fn(&(String, u64, u64)) -> u64| {
            self.maps
                .iter()
                .map(|m| (vec![("map", Cow::Borrowed(m.0.as_str()))], pick(m)))
                .collect::<Vec<_>>()
        };
        gauges(
            encoder,
            "zctrace_map_entries",
            "Entries in each bounded BPF map.",
            map_gauge(|m| m.1),
        )?;
        gauges(
            encoder,
            "zctrace_map_capacity",
            "Capacity of each bounded BPF map.",
            map_gauge(|m| m.2),
        )?;
        counters(
            encoder,
            "zctrace_map_update_errors",
            "BPF map updates that failed (a full map; for STACKS_COLLIDED and STACKS_UNWALKABLE, stacks attach --stacks could not record): events not counted.",
            by_label("map", &self.update_errors),
        )?;
        counters(
            encoder,
            "zctrace_program_missed_runs",
            "Runs of an eBPF program the kernel skipped because the program was already running on that CPU: events not counted.",
            by_label("program", &self.missed_runs),
        )?;
        counters(
            encoder,
            "zctrace_socket_kind_cache_misses",
            "Calls on a socket whose kind the SOCKET_KINDS cache did not hold, so the socket was read.",
            vec![(vec![], self.socket_kind_misses)],
        )?;
        counters(
            encoder,
            "zctrace_socket_kind_cache_evictions",
            "Misses of the SOCKET_KINDS cache that replaced another socket's slot.",
            vec![(vec![], self.socket_kind_evictions)],
        )?;
        let dropped: Vec<(Labels<'_>, u64)> = vec![(vec![], self.series_dropped)];
        counters(
            encoder,
            "zctrace_series_dropped",
            "Label sets folded into comm=\"other\" by --top or --comm.",
            dropped,
        )?;
        counters(
            encoder,
            "zctrace_profile_sites_dropped",
            "Call sites of exited processes that --profiles had no room to keep.",
            vec![(vec![], self.profile_sites_dropped)],
        )?;
        gauges(
            encoder,
            "zctrace_cgroup_hierarchy_visible",
            "1 when zctrace reads the whole cgroup v2 hierarchy; 0 when it sees a subtree or none, and cgroup and workload labels are left out.",
            vec![(vec![], u64::from(self.cgroup_hierarchy_visible))],
        )?;
        gauges(
            encoder,
            "zctrace_http_connections",
            "HTTP connections open now.",
            vec![(vec![], self.http_connections)],
        )?;
        counters(
            encoder,
            "zctrace_http_refusals",
            "Requests and connections turned away: unauthorized, throttled (too many failed logins from the address), timeout, connection_limit.",
            by_label("reason", &self.http_refused),
        )?;
        let seconds: Vec<(Labels<'_>, f64)> = vec![(vec![], self.collect_seconds)];
        gauges(
            encoder,
            "zctrace_scrape_duration_seconds",
            "Time spent reading the BPF maps for this scrape.",
            seconds,
        )
    }
}

impl prometheus_client::encoding::EncodeCounterValue for Value {
    fn encode(&self, encoder: &mut prometheus_client::encoding::CounterValueEncoder) -> fmt::Result {
        match self {
            Value::Count(n) => n.encode(encoder),
            Value::Seconds(s) => s.encode(encoder),
        }
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.process_families(&mut encoder)?;
        self.health_families(&mut encoder)
    }
}

/// One sample per `(value of label, count)`.
fn by_label<'a, S: AsRef<str>>(label: &'static str, counts: &'a [(S, u64)]) -> Vec<(Labels<'a>, u64)> {
    counts
        .iter()
        .map(|(value, n)| (vec![(label, Cow::Borrowed(value.as_ref()))], *n))
        .collect()
}

fn counters<V: prometheus_client::encoding::EncodeCounterValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels<'_>, V)>,
) -> fmt::Result {
    family(encoder, name, help, MetricType::Counter, samples, |v, e| {
        ConstCounter::new(v).encode(e)
    })
}

fn gauges<V: prometheus_client::encoding::EncodeGaugeValue + Copy + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels<'_>, V)>,
) -> fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    family(encoder, name, help, MetricType::Gauge, samples, |v, e| {
        ConstGauge::new(v).encode(e)
    })
}

fn family<V: Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: Vec<(Labels<'_>, V)>,
    encode: impl Fn(V, MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in &samples {
        encode(*value, metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// The Prometheus text format (0.0.4) from OpenMetrics text: counters are declared under their
/// `_total` sample name, and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    // Samples are most of the body and pass through unchanged: copied in runs, not line by line.
    let mut run_start = 0;
    let mut offset = 0;
    for line in openmetrics.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        if !line.starts_with('#') {
            continue;
        }
        out.push_str(&openmetrics[run_start..line_start]);
        run_start = offset;
        let line = line.trim_end_matches('\n');
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        let _ = writeln!(out, "{}", renamed.as_deref().unwrap_or(line));
    }
    out.push_str(&openmetrics[run_start..]);
    out
}

#[cfg(test)]
mod tests;
