//! Developer and CI entry points: `cargo xtask setup | run | test | vmtest | bench | load`.
mod bench;
mod load;
mod setup;
mod vmtest;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "zctrace's developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (LLVM 22, bpf-linker, nightly rust-src, test
    /// tools), skipping whatever is present.
    Setup,
    /// Set up, build in release mode and run zctrace with ARGS (default: `daemon`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run formatting and lint checks and the whole test suite (privileged tests
    /// included when run as root), on this kernel and on every kernel of `vmtest`.
    Test,
    /// Set up, then boot each kernel of the matrix under qemu and run the privileged suite in it.
    Vmtest {
        /// Boot only this kernel of the matrix.
        #[arg(long)]
        kernel: Option<String>,
    },
    /// Set up, then measure tracing overhead and the sender's methods (a report, never a failure).
    Bench {
        /// Traced/untraced pairs per workload.
        #[arg(long, default_value_t = 15)]
        pairs: u32,
        /// Payload per transfer, in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
    },
    /// Set up, then run many short-lived processes doing I/O under a daemon scraped every second,
    /// and report its memory, CPU, scrapes and series (a report, never a failure).
    Load {
        /// Processes to start, one after another, each under its own name.
        #[arg(long, default_value_t = 500)]
        processes: u32,
        /// Seconds to spread them over.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::ensure(),
        Task::Run { args } => {
            setup::ensure()?;
            cargo(&["build", "--release", "--package", "zctrace"])?;
            let args = if args.is_empty() {
                vec!["daemon".to_string()]
            } else {
                args
            };
            let status = Command::new(workspace_root().join("target/release/zctrace"))
                .args(&args)
                .status()?;
            if !status.success() {
                bail!("zctrace exited with {status}");
            }
            Ok(())
        }
        Task::Test => {
            setup::ensure()?;
            test()?;
            vmtest::run(None)
        }
        Task::Vmtest { kernel } => {
            setup::ensure()?;
            vmtest::run(kernel.as_deref())
        }
        Task::Bench { pairs, size_mib } => {
            setup::ensure()?;
            cargo(&["build", "--release", "--package", "zctrace"])?;
            bench::run(pairs, size_mib)
        }
        Task::Load { processes, seconds } => {
            setup::ensure()?;
            cargo(&["build", "--release", "--package", "zctrace"])?;
            load::run(processes, seconds)
        }
    }
}

fn test() -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    // The first build of a fresh clone runs zctrace's build script, which builds the eBPF crate:
    // its output must carry real warnings only, not the nested cargo's progress.
    without_build_script_echo(cargo_command(&[
        "clippy",
        "--workspace",
        "--exclude",
        "zctrace-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    clippy_ebpf()?;
    let mut command = cargo_command(&["test", "--workspace", "--exclude", "zctrace-ebpf"]);
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        // CI runs as root: a privileged test that skips there is a failure.
        command.env("ZCTRACE_REQUIRE_PRIVILEGED", "1");
    }
    check(command)
}

/// Runs `command`, showing its stderr as it comes, and fails if a build script echoed lines as
/// `warning: zctrace@...` (aya-build forwards the nested cargo's output that way).
fn without_build_script_echo(mut command: Command) -> Result<()> {
    use std::io::BufRead as _;
    let mut child = command.stderr(std::process::Stdio::piped()).spawn()?;
    let stderr = std::io::BufReader::new(child.stderr.take().context("stderr")?);
    let mut echoed = 0;
    for line in stderr.lines() {
        let line = line?;
        echoed += usize::from(line.starts_with("warning: zctrace@"));
        eprintln!("{line}");
    }
    if !child.wait()?.success() {
        bail!("{command:?} failed");
    }
    if echoed > 0 {
        bail!("the build printed {echoed} `warning: zctrace@` lines: the eBPF build's output is leaking as warnings");
    }
    Ok(())
}

/// Clippy on the eBPF crate, for the BPF target, as aya-build compiles it.
fn clippy_ebpf() -> Result<()> {
    let mut command = Command::new("rustup");
    command
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "zctrace-ebpf",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
        .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\"")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .current_dir(workspace_root());
    check(command)
}

pub(crate) fn cargo_command(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args).current_dir(workspace_root());
    command
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    check(cargo_command(args))
}

pub(crate) fn check(mut command: Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

pub(crate) fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
