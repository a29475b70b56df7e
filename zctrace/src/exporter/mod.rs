//! The daemon: Prometheus metrics of every process's copy behaviour, read from the BPF maps at
//! scrape time.
pub mod daemon;
pub mod http;
pub mod scrape;
pub mod series;
pub mod webconfig;

use std::{collections::HashSet, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context as _, Result};
use axum::http::{HeaderName, HeaderValue};
use hyper_util::rt::TokioTimer;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::{
    probes::{
        args::{log_statuses, parse_probe_name, ProbeArgs},
        privileges, ProbeOptions, Tracer,
    },
    procfs,
};
use daemon::{Daemon, SWEEP_INTERVAL};
use series::SeriesBook;
use webconfig::{BasicAuth, WebConfig};

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
    /// How long the series of exited processes stay exported.
    #[arg(long = "series.grace-period", default_value = "5m", allow_hyphen_values = true, value_parser = crate::duration::parse)]
    pub grace_period: Duration,
    /// Attach only these probes, comma-separated (default: every counting probe and copy
    /// observer); the rest are exported as zctrace_probe_attached{mode="off"} 0.
    #[arg(long = "probes", value_delimiter = ',', value_parser = parse_probe_name)]
    pub probes: Option<Vec<String>>,
}

fn parse_telemetry_path(path: &str) -> Result<String, String> {
    match path {
        p if !p.starts_with('/') => Err(format!("{p:?} must start with '/'")),
        "/" => Err("\"/\" is the landing page; pick another path such as /metrics".into()),
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
    privileges::require()?;
    let tracer = Tracer::load(&ProbeOptions {
        only: args.probes.clone(),
        ..probe.options()
    })?;
    log_statuses(tracer.statuses());
    let dropped = privileges::drop_all().context("dropping capabilities")?;
    tracing::info!(
        "probes attached; dropped all {dropped} capabilities (open map and program descriptors need none)"
    );
    let book = SeriesBook::new(args.top, args.grace_period, args.comm.clone());
    let labels = daemon::Labels {
        pids: args.pids.iter().copied().collect::<HashSet<_>>(),
        cgroup: args.cgroup_label,
    };
    let daemon = Arc::new(Daemon::new(tracer, book, labels));
    let auth = BasicAuth::new(web_config.basic_auth_users.clone());
    let router = http::router(daemon.clone(), &args.telemetry_path, auth, headers);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(listener, tls, router, daemon))
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

async fn serve(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    daemon: Arc<Daemon>,
) -> Result<()> {
    let address = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    tokio::spawn(sweep_forever(daemon));
    // Registered before "serving metrics" is logged, so no SIGTERM can arrive unhandled after it.
    let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(shutdown_on_signal(handle.clone(), term, int));
    let service = router.into_make_service();
    tracing::info!(%address, tls = tls.is_some(), "serving metrics");
    match tls {
        Some(config) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
            let mut server = axum_server::from_tcp_rustls(listener, config)?.handle(handle);
            limit_header_reads(server.http_builder());
            server.serve(service).await?;
        }
        None => {
            let mut server = axum_server::from_tcp(listener)?.handle(handle);
            limit_header_reads(server.http_builder());
            server.serve(service).await?;
        }
    }
    tracing::info!("stopped; programs detached and maps freed");
    Ok(())
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
        match tokio::task::spawn_blocking(move || daemon.sweep()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(freed)) => tracing::debug!(freed, "folded exited processes"),
            Ok(Err(e)) => tracing::warn!("sweep failed: {e:#}"),
            Err(e) => tracing::warn!("sweep panicked: {e}"),
        }
    }
}

async fn shutdown_on_signal(handle: axum_server::Handle<SocketAddr>, mut term: Signal, mut int: Signal) {
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    // Shut down before logging: a log write must never stand between a signal and the exit.
    handle.graceful_shutdown(Some(Duration::from_secs(5)));
    tracing::info!("{name}: shutting down");
}
