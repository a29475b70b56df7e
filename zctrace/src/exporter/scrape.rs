//! One scrape's worth of figures, encoded as const metrics (read from the maps at scrape time,
//! never kept in counters), in OpenMetrics or the Prometheus text format.
use std::fmt::{self, Write as _};

use prometheus_client::{
    collector::Collector,
    encoding::{text, DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use super::series::{SeriesKey, SeriesTotals};
use crate::accounting::{kind_label, Source, OBSERVED_ROUTINES};

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
pub struct Scrape {
    pub series: Vec<(SeriesKey, SeriesTotals)>,
    /// (probe, mode, attached).
    pub probes: Vec<(String, String, bool)>,
    /// (map, entries, capacity).
    pub maps: Vec<(String, u64, u64)>,
    /// (map or slot, failed updates).
    pub update_errors: Vec<(String, u64)>,
    pub series_dropped: u64,
    /// Whether every copy routine is observed on this kernel, so observed copies are exported.
    pub copies_observed: bool,
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

    fn labels(key: &SeriesKey, extra: &[(&'static str, &str)]) -> Labels {
        let mut labels = vec![("comm", key.comm.clone())];
        if let Some(pid) = key.pid {
            labels.push(("pid", pid.to_string()));
        }
        if let Some(cgroup) = &key.cgroup {
            labels.push(("cgroup", cgroup.clone()));
        }
        labels.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        labels
    }

    /// One counter sample per series, from `value`, for the series where it is not zero.
    fn per_series(&self, value: impl Fn(&SeriesTotals) -> u64) -> Vec<(Labels, u64)> {
        self.per_series_labelled(|totals| vec![(vec![], value(totals))])
    }

    /// Counter samples per series, each with its extra labels, leaving out zeros: a series
    /// appears once its counter has something to say, and as counters never go down, stays.
    fn per_series_labelled<V: Default + PartialEq>(
        &self,
        values: impl Fn(&SeriesTotals) -> Vec<(Vec<(&'static str, &str)>, V)>,
    ) -> Vec<(Labels, V)> {
        self.series
            .iter()
            .flat_map(|(key, totals)| {
                values(totals)
                    .into_iter()
                    .filter(|(_, value)| *value != V::default())
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
        let per_path = |value: fn(&super::series::PathTotals) -> u64, source: Option<&str>| {
            self.series
                .iter()
                .flat_map(|(key, t)| {
                    // A path's series appear once it moved bytes; its copies then show even at 0.
                    t.paths
                        .iter()
                        .filter(|(_, totals)| totals.bytes > 0)
                        .map(move |(p, totals)| {
                            let mut extra = vec![
                                ("syscall", p.syscall),
                                ("src", kind_label(p.src)),
                                ("dst", kind_label(p.dst)),
                            ];
                            extra.extend(source.map(|s| ("source", s)));
                            (Self::labels(key, &extra), value(totals))
                        })
                })
                .collect::<Vec<_>>()
        };
        counters(
            encoder,
            "zctrace_bytes",
            "Bytes moved by data-path syscalls, by syscall and endpoint kinds.",
            per_path(|p| p.bytes, None),
        )?;
        counters(
            encoder,
            "zctrace_cpu_copy_bytes",
            "Bytes the CPU copied, by syscall and endpoint kinds; source=model means inferred from the copy model.",
            per_path(|p| p.cpu_copy_bytes, Some(Source::Model.label())),
        )?;
        let tcp = self.per_series_labelled(|t| {
            let s = &t.tcp_send;
            [
                ("copy", s.copy),
                ("splice", s.splice),
                ("zerocopy", s.zerocopy),
                ("unclassified", s.unclassified),
            ]
            .map(|(path, bytes)| (vec![("path", path)], bytes))
            .to_vec()
        });
        counters(
            encoder,
            "zctrace_tcp_send_bytes",
            "TCP send bytes by the path tcp_sendmsg took (observed).",
            tcp,
        )?;
        counters(
            encoder,
            "zctrace_recv_copy_bytes",
            "Socket-to-user receive copies, exact (observed).",
            self.per_series(|t| t.recv_copy_bytes),
        )?;
        let deferred = self.per_series_labelled(|t| {
            vec![(
                vec![("source", Source::Model.label())],
                t.zerocopy_deferred_copy_bytes,
            )]
        });
        counters(
            encoder,
            "zctrace_zerocopy_deferred_copy_bytes",
            "MSG_ZEROCOPY bytes sent to a loopback receiver, which copies them (model).",
            deferred,
        )?;
        if self.copies_observed {
            let observed = self.per_series_labelled(|t| {
                OBSERVED_ROUTINES
                    .iter()
                    .zip(t.observed_copies)
                    .map(|(routine, bytes)| (vec![("routine", *routine)], bytes))
                    .collect()
            });
            counters(
                encoder,
                "zctrace_observed_copy_bytes",
                "CPU-copied bytes seen at the kernel routine that copied them (observed).",
                observed,
            )?;
        }
        counters(
            encoder,
            "zctrace_mode_switches",
            "User/kernel mode switches from syscalls (two per syscall).",
            self.per_series(|t| 2 * t.syscalls_total),
        )?;
        let switches = self.per_series_labelled(|t| {
            vec![
                (vec![("kind", "voluntary")], t.voluntary_switches),
                (vec![("kind", "involuntary")], t.involuntary_switches),
            ]
        });
        counters(
            encoder,
            "zctrace_context_switches",
            "Scheduler context switches, as the kernel's nvcsw/nivcsw split them.",
            switches,
        )?;
        let offcpu = self.per_series_labelled(|t| vec![(vec![], t.offcpu_ns as f64 / 1e9)]);
        counters(
            encoder,
            "zctrace_offcpu_seconds",
            "Time threads spent switched out.",
            offcpu,
        )
    }

    fn health_families(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let build = vec![(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("kernel", self.kernel.clone()),
            ],
            1u64,
        )];
        gauges(
            encoder,
            "zctrace_build_info",
            "zctrace's version and the kernel it runs on.",
            build,
        )?;
        let started: Vec<(Labels, f64)> = vec![(vec![], self.start_time_seconds)];
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
                    vec![("probe", probe.clone()), ("mode", mode.clone())],
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
                .map(|m| (vec![("map", m.0.clone())], pick(m)))
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
        let errors = self
            .update_errors
            .iter()
            .map(|(map, n)| (vec![("map", map.clone())], *n))
            .collect();
        counters(
            encoder,
            "zctrace_map_update_errors",
            "BPF map updates that failed (a full map): events not counted.",
            errors,
        )?;
        let dropped: Vec<(Labels, u64)> = vec![(vec![], self.series_dropped)];
        counters(
            encoder,
            "zctrace_series_dropped",
            "Label sets folded into comm=\"other\" by --top or --comm.",
            dropped,
        )?;
        let seconds: Vec<(Labels, f64)> = vec![(vec![], self.collect_seconds)];
        gauges(
            encoder,
            "zctrace_scrape_duration_seconds",
            "Time spent reading the BPF maps for this scrape.",
            seconds,
        )
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.process_families(&mut encoder)?;
        self.health_families(&mut encoder)
    }
}

fn counters<V: prometheus_client::encoding::EncodeCounterValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, V)>,
) -> fmt::Result {
    family(encoder, name, help, MetricType::Counter, samples, |v, e| {
        ConstCounter::new(v).encode(e)
    })
}

fn gauges<V: prometheus_client::encoding::EncodeGaugeValue + Copy + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, V)>,
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
    samples: Vec<(Labels, V)>,
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
    for line in openmetrics.lines() {
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
    out
}

#[cfg(test)]
mod tests;
