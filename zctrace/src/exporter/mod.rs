//! The daemon: Prometheus metrics of every process's copy behaviour, read from the BPF maps at
//! scrape time.
pub mod connections;
pub mod daemon;
pub mod http;
pub mod profiles;
pub mod scrape;
pub mod series;
pub mod webconfig;

use std::{collections::HashSet, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context as _, Result};
use axum::http::{HeaderName, HeaderValue};
use caps::{CapSet, Capability};
use daemon::{Daemon, NAMING_INTERVAL, SWEEP_INTERVAL};
use hyper_util::rt::TokioTimer;
use series::SeriesBook;
use tokio::signal::unix::{signal, Signal, SignalKind};
use webconfig::{BasicAuth, WebConfig};
use zctrace_common::StackMode;

use crate::{
    probes::{
        args::{log_statuses, parse_probe_name, ProbeArgs},
        privileges, ProbeOptions, Tracer,
    },
    procfs,
    stacks::kallsyms::KernelSymbols,
    workload::cgroups::CgroupNames,
};

#[derive(Clone, Debug, clap::Args)]
pub struct DaemonArgs {
    /// Address to listen on for HTTP (metrics and the landing page).
    #[arg(long = "web.listen-address", default_value = "0.0.0.0:9470")]
    pub listen_address: SocketAddr,
    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", default_value = "/metrics", value_parser = parse_telemetry_path)]
    pub telemetry_path: String,
    /// TLS and basic auth, in prometheus/exporter-toolkit's web config YAML.
    #[arg(long = "web.config.file")]
    pub web_config_file: Option<PathBuf>,
    /// Also label this process's series with its pid (repeatable).
    #[arg(long = "pid", allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
    /// Only comms matching this regex get series of their own; the rest are summed in comm="other".
    #[arg(long = "comm", value_parser = parse_regex)]
    pub comm: Option<regex::Regex>,
    /// Most per-process series; later label sets are summed in comm="other".
    #[arg(long, default_value_t = 500, allow_negative_numbers = true)]
    pub top: usize,
    /// Add each process's cgroup (container) path as a `cgroup` label.
    #[arg(long = "cgroup-label")]
    pub cgroup_label: bool,
    /// Add the workload each process's cgroup names: `container_id` and `pod_uid` (Kubernetes,
    /// containerd, CRI-O, Docker, podman) or `systemd_unit` (a host service).
    #[arg(long = "workload-labels")]
    pub workload_labels: bool,
    /// Where the host's cgroup v2 hierarchy is mounted (default: where this process sees cgroup2).
    /// In a pod, which sees only its own cgroup, mount the host's /sys/fs/cgroup read-only and
    /// name it here.
    #[arg(long = "cgroup-root")]
    pub cgroup_root: Option<PathBuf>,
    /// How long the series of exited processes stay exported.
    #[arg(long = "series.grace-period", default_value = "5m", allow_hyphen_values = true, value_parser = crate::duration::parse)]
    pub grace_period: Duration,
    /// Attach only these probes, comma-separated (default: every counting probe and copy
    /// observer); the rest are exported as zctrace_probe_attached{mode="off"} 0.
    #[arg(long = "probes", value_delimiter = ',', value_parser = parse_probe_name)]
    pub probes: Option<Vec<String>>,
    /// Serve every process's copy profiles (pprof): at /debug/pprof/copies the user stacks of its
    /// data-path syscalls, sampled by bytes moved and weighted by CPU-copied bytes (modelled); at
    /// /debug/pprof/kernel_copies the kernel and user stacks of the copies the kernel was seen
    /// making for it, sampled by bytes copied (observed).
    #[arg(long)]
    pub profiles: bool,
    /// With --profiles: take a stack about once per this many bytes moved (or copied), on average.
    #[arg(long = "profiles.period", value_name = "BYTES", default_value_t = DEFAULT_PROFILE_PERIOD, requires = "profiles", value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    pub profile_period: u64,
}

/// Bytes moved per stack the daemon's profiles take, on average.
pub const DEFAULT_PROFILE_PERIOD: u64 = 1 << 20;
/// Distinct stacks the daemon's profiles hold (about 1 KiB of kernel memory each): every
/// process's, so twice `attach --stacks`'s, which makes a stack refused because another holds its
/// bucket rarer.
pub const PROFILE_STACKS: u32 = 8192;

/// A literal path: the router would read `{x}`, `{*rest}` or a segment starting with ':' or '*'
/// as a pattern (matching any path) or refuse it by panicking.
fn parse_telemetry_path(path: &str) -> Result<String, String> {
    let pattern = path.contains(['{', '}'])
        || path
            .split('/')
            .any(|segment| segment.starts_with(':') || segment.starts_with('*'));
    match path {
        p if !p.starts_with('/') => Err(format!("{p:?} must start with '/'")),
        "/" => Err("\"/\" is the landing page; pick another path such as /metrics".into()),
        p if pattern => Err(format!(
            "{p:?} is a route pattern, not a path: '{{', '}}' and segments starting with ':' or '*' are not allowed"
        )),
        p if p.chars().any(|c| c.is_control() || c.is_whitespace()) => {
            Err(format!("{p:?} has spaces or control characters"))
        }
        p => Ok(p.to_string()),
    }
}

fn parse_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(pattern).map_err(|e| format!("invalid regex: {e}"))
}

pub fn run(args: DaemonArgs, probe: &ProbeArgs) -> Result<()> {
    for pid in &args.pids {
        if procfs::read_start_ticks(*pid).is_none() {
            bail!("--pid {pid}: no such process");
        }
    }
    let web_config = match &args.web_config_file {
        Some(path) => WebConfig::load(path)?,
        None => WebConfig::default(),
    };
    let tls = web_config.tls_config()?;
    let headers = response_headers(&web_config)?;
    let listener = std::net::TcpListener::bind(args.listen_address)
        .with_context(|| format!("--web.listen-address {}: cannot listen", args.listen_address))?;
    listener.set_nonblocking(true)?;
    let nofile = connections::raise_descriptor_limit().context("raising the descriptor limit")?;
    let cap = connections::cap_for(nofile);
    tracing::info!(descriptors = nofile, connections = cap, "connection cap");
    let cgroups = CgroupNames::new(
        args.cgroup_root.clone(),
        args.cgroup_label || args.workload_labels,
    )?;
    privileges::require()?;
    let tracer = Tracer::load(&ProbeOptions {
        only: args.probes.clone(),
        stacks: args.profiles.then_some(StackMode::Profiles),
        sample_period: args.profiles.then_some(args.profile_period),
        map_capacity: if args.profiles {
            vec![("STACKS", PROFILE_STACKS)]
        } else {
            Vec::new()
        },
        ..probe.options()
    })?;
    log_statuses(tracer.statuses());
    // Naming a profile's frames reads other processes' mappings and files, through /proc.
    let naming: &[Capability] = if args.profiles {
        &[Capability::CAP_SYS_PTRACE]
    } else {
        &[]
    };
    // Read now: once its capabilities are dropped, the daemon sees every kernel address as 0.
    let kernel_symbols = if args.profiles {
        KernelSymbols::read()
            .inspect_err(|e| tracing::warn!("kernel frames in profiles stay unnamed: {e:#}"))
            .ok()
    } else {
        None
    };
    let dropped = privileges::drop_all_but_map_reads(|| tracer.update_errors().is_ok(), naming)
        .context("dropping capabilities")?;
    let kept_ptrace = caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_PTRACE).unwrap_or(false);
    if args.profiles {
        if !kept_ptrace {
            tracing::warn!(
                "without CAP_SYS_PTRACE the profiles cannot name the frames of other users' and more privileged \
                 processes (grant it: the DaemonSet's profiles.yaml does)"
            );
        }
        tracing::info!(
            period = args.profile_period,
            copy_site_callers = tracer.copy_site_callers(),
            "profiles at /debug/pprof/copies and kernel_copies"
        );
    }
    let kept: Vec<&str> = [
        (
            dropped.kept_bpf,
            "CAP_BPF, without which this kernel refuses map reads",
        ),
        (
            kept_ptrace,
            "CAP_SYS_PTRACE, to name other processes' frames in profiles",
        ),
    ]
    .into_iter()
    .filter_map(|(kept, why)| kept.then_some(why))
    .collect();
    if kept.is_empty() {
        tracing::info!(
            "probes attached; dropped all {} capabilities (open map and program descriptors need none)",
            dropped.count
        );
    } else {
        tracing::info!(
            "probes attached; dropped {} capabilities and kept {}",
            dropped.count,
            kept.join(", and ")
        );
    }
    let book = SeriesBook::new(args.top, args.grace_period, args.comm.clone());
    let labels = daemon::Labels {
        pids: args.pids.iter().copied().collect::<HashSet<_>>(),
        cgroup: args.cgroup_label,
        workload: args.workload_labels,
    };
    let stats = Arc::new(connections::HttpStats::default());
    let profiles = args
        .profiles
        .then(|| profiles::Profiles::new(args.profile_period, kernel_symbols));
    let daemon = Arc::new(Daemon::new(
        tracer,
        book,
        labels,
        cgroups,
        stats.clone(),
        profiles,
    ));
    let auth = BasicAuth::new(web_config.basic_auth_users.clone())?;
    let router = http::router(daemon.clone(), &args.telemetry_path, auth, headers, stats.clone());
    // Blocking work is scrapes, bcrypt checks and sweeps, each with limits of its own: a few
    // threads suffice, and an idle one's stack is memory given back.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    let acceptor = connections::Limited::new(stats, cap);
    let stopped_by = runtime.block_on(serve(listener, tls, router, daemon, acceptor))?;
    tracing::info!("{stopped_by}: shutting down");
    // The sweep task holds the last reference to the probes: dropping the runtime detaches them.
    drop(runtime);
    tracing::info!("stopped; programs detached and maps freed");
    Ok(())
}

fn response_headers(config: &WebConfig) -> Result<Vec<(HeaderName, HeaderValue)>> {
    let Some(http) = &config.http_server_config else {
        return Ok(Vec::new());
    };
    http.headers
        .iter()
        .map(|(name, value)| {
            Ok((
                HeaderName::try_from(name.as_str())
                    .with_context(|| format!("http_server_config.headers: bad name {name:?}"))?,
                HeaderValue::try_from(value.as_str())
                    .with_context(|| format!("http_server_config.headers.{name}: bad value"))?,
            ))
        })
        .collect()
}

/// Serves until SIGTERM or SIGINT, and returns which one.
async fn serve(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    daemon: Arc<Daemon>,
    acceptor: connections::Limited,
) -> Result<&'static str> {
    let address = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    if daemon.profiles_on() {
        tokio::spawn(name_forever(daemon.clone()));
    }
    tokio::spawn(sweep_forever(daemon));
    // Registered before "serving metrics" is logged, so no SIGTERM can arrive unhandled after it.
    let signals = Signals {
        term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
    };
    let stopped_by = tokio::spawn(shutdown_on_signal(handle.clone(), signals));
    // Client addresses are what failed logins are throttled by.
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    tracing::info!(%address, tls = tls.is_some(), "serving metrics");
    match tls {
        Some(config) => {
            use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
            // TLS runs over the limited stream, so an idle handshake or session meets its deadline.
            let tls = RustlsAcceptor::new(RustlsConfig::from_config(config))
                .handshake_timeout(connections::IDLE_TIMEOUT)
                .acceptor(acceptor);
            let mut server = axum_server::from_tcp(listener)?.acceptor(tls).handle(handle);
            limit_header_reads(server.http_builder());
            server.serve(service).await?;
        }
        None => {
            let mut server = axum_server::from_tcp(listener)?.acceptor(acceptor).handle(handle);
            limit_header_reads(server.http_builder());
            server.serve(service).await?;
        }
    }
    Ok(stopped_by.await?)
}

/// A client that never finishes its request headers is dropped instead of holding a connection.
fn limit_header_reads(builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http::REQUEST_TIMEOUT);
}

async fn sweep_forever(daemon: Arc<Daemon>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        ticker.tick().await;
        let daemon = daemon.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let swept = daemon.sweep();
            // Connection bursts leave freed buffers in glibc's per-thread arenas: give them back,
            // so resident memory returns to its steady size.
            crate::probes::give_back_freed_memory();
            swept
        });
        match swept.await {
            Ok(Ok(0)) => {}
            Ok(Ok(freed)) => tracing::debug!(freed, "folded exited processes"),
            Ok(Err(e)) => tracing::warn!("sweep failed: {e:#}"),
            Err(e) => tracing::warn!("sweep panicked: {e}"),
        }
    }
}

/// Names the profiles' new sites more often than the sweep, so that short-lived processes are
/// named before they exit.
async fn name_forever(daemon: Arc<Daemon>) {
    let mut ticker = tokio::time::interval(NAMING_INTERVAL);
    loop {
        ticker.tick().await;
        let daemon = daemon.clone();
        match tokio::task::spawn_blocking(move || daemon.name_new_sites()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("naming profile sites failed: {e:#}"),
            Err(e) => tracing::warn!("naming profile sites panicked: {e}"),
        }
    }
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

/// Shuts the server down at SIGTERM or SIGINT and says which. SIGHUP, which would otherwise kill
/// the daemon silently, is ignored: nothing is re-read while running (restart to apply a new web
/// config).
async fn shutdown_on_signal(handle: axum_server::Handle<SocketAddr>, mut signals: Signals) -> &'static str {
    let name = loop {
        tokio::select! {
            _ = signals.term.recv() => break "SIGTERM",
            _ = signals.int.recv() => break "SIGINT",
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP ignored: nothing is reloaded while running; restart to apply a new web config");
            }
        }
    };
    // Shut down before logging anything: a log write must never stand between a signal and the
    // exit. The caller says which signal it was, once the server has stopped.
    handle.graceful_shutdown(Some(Duration::from_secs(5)));
    name
}
