use std::{
    io::{IsTerminal as _, Write as _},
    net::{SocketAddr, TcpListener},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use zctrace::{
    attach::{self, AttachArgs, TopArgs},
    check::{self, bench::BenchArgs},
    exporter::{self, DaemonArgs},
    probes::args::ProbeArgs,
    sender::{self, receiver, SendArgs},
};

/// How many times does your service copy each byte it sends? eBPF accounting of bytes moved,
/// CPU copies, mode switches and context switches, per process.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    probe: ProbeArgs,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long = "log.level", global = true, default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every process's copy behaviour as Prometheus metrics.
    Daemon(DaemonArgs),
    /// Trace one process (or start a command) and report its copy behaviour, with advice.
    Attach(AttachArgs),
    /// Every process, ranked by CPU-copied bytes per second.
    Top(TopArgs),
    /// Show which probes attach on this kernel, and in which mode.
    Probes,
    /// Every transfer method side by side on loopback, traced, with the sender's own counts.
    Bench(BenchArgs),
    /// Which probes attach here, and a short bench that checks zctrace against the sender.
    Doctor,
    /// Send a file by one method to a `zctrace serve` receiver (or into a file).
    Send(SendArgs),
    /// Receive transfers from `zctrace send`, verifying length and checksum.
    Serve {
        #[arg(long, default_value = "127.0.0.1:9471")]
        listen: SocketAddr,
        /// Exit after one transfer (its verdict is the exit code).
        #[arg(long)]
        once: bool,
        /// Close each connection after this many payload bytes (to test senders).
        #[arg(long)]
        close_after: Option<u64>,
    },
    /// The transfer `bench` and `doctor` time: print "ready", send on SIGUSR1, then stop.
    #[command(hide = true)]
    BracketedSend(SendArgs),
    /// Run a synthetic workload with known counts (for the tests and the overhead bench).
    #[cfg(feature = "instruments")]
    #[command(hide = true, subcommand)]
    Workload(check::workload::Workload),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // Its fallback eprintln! panics when stderr is a closed pipe; a lost log line must not.
        .log_internal_errors(false)
        .init();
    match run(cli.command, &cli.probe) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, probe: &ProbeArgs) -> Result<()> {
    match command {
        Command::Daemon(args) => exporter::run(args, probe),
        Command::Attach(args) => attach::run(args, probe),
        Command::Top(args) => attach::run_top(args, probe),
        Command::Probes => check::probes(probe),
        Command::Bench(args) => check::bench::print(&args, probe),
        Command::Doctor => check::doctor(probe),
        Command::Send(args) => {
            let bar = progress_bar(&args.file);
            let progress = |sent: u64| bar.set_position(sent);
            let report = sender::send(&args.options(Some(&progress)));
            bar.finish_and_clear();
            let report = report?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Serve {
            listen,
            once,
            close_after,
        } => serve(listen, once, close_after),
        Command::BracketedSend(args) => check::bracketed::child(&args),
        #[cfg(feature = "instruments")]
        Command::Workload(workload) => check::workload::run(&workload),
    }
}

/// A progress bar on stderr for long transfers, hidden when stderr is not a terminal.
fn progress_bar(file: &std::path::Path) -> indicatif::ProgressBar {
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if !std::io::stderr().is_terminal() || size < (64 << 20) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn serve(listen: SocketAddr, once: bool, close_after: Option<u64>) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        match receiver::receive_one(&listener, close_after) {
            Ok(report) => println!("{}", serde_json::to_string(&report)?),
            Err(e) if once => return Err(e),
            Err(e) => eprintln!("error: {e:#}"),
        }
        if once {
            return Ok(());
        }
    }
}
