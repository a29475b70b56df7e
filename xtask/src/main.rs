//! Developer and CI entry points: `cargo xtask setup | run | test | fmt | image | vmtest | bench |
//! load`.
mod apt;
mod apt_sources;
mod arch;
mod bench;
mod image;
mod load;
mod setup;
mod vmtest;

use std::process::{Command, ExitCode};

use anyhow::{bail, ensure, Context as _, Result};
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
    /// Format the workspace: rustfmt, with imports grouped std / external / crate (a nightly
    /// rustfmt option, which `test` checks).
    Fmt,
    /// Set up, then run formatting and lint checks and the whole test suite (privileged tests
    /// included when run as root), on this kernel and on every kernel of `vmtest`.
    Test,
    /// Set up, then boot each kernel of the matrix under qemu and run the privileged suite in it.
    Vmtest {
        /// Boot only this kernel of the matrix.
        #[arg(long)]
        kernel: Option<String>,
        /// Run only this test binary of the suite (kernel_matrix, bench_doctor, ...).
        #[arg(long)]
        test: Option<String>,
    },
    /// Set up, then measure tracing overhead and the sender's methods (a report, never a failure).
    Bench {
        /// Traced/untraced pairs per workload.
        #[arg(long, default_value_t = 15)]
        pairs: u32,
        /// Payload per transfer, in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Run only the daemon scrape (`scrape`), the whole workloads against their floors
        /// (`whole`), `attach --stacks` against `attach` (`stacks`), the daemon with and
        /// without `--profiles` (`profiles`), or the per-program A/B of the programs whose
        /// label contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Set up, then build the container images the DaemonSet runs (static binaries, from scratch),
    /// for x86_64 and arm64 under one manifest list.
    Image,
    /// Set up, then build zctrace as a static binary for an architecture (cross-compiled for
    /// aarch64), and print its path.
    Build {
        #[arg(long, value_enum, default_value = "x86_64")]
        target: arch::Arch,
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
        Task::Fmt => {
            setup::ensure()?;
            check(rustfmt(false))
        }
        Task::Run { args } => {
            setup::ensure()?;
            let args = if args.is_empty() {
                vec!["daemon".to_string()]
            } else {
                args
            };
            cargo(&["build", "--release", "--package", "zctrace"])?;
            let status = Command::new(target_dir().join("release/zctrace"))
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
            vmtest::run(None, None)?;
            nothing_built_in_the_checkout_when_the_target_dir_is_elsewhere()
        }
        Task::Vmtest { kernel, test } => {
            setup::ensure()?;
            vmtest::run(kernel.as_deref(), test.as_deref())
        }
        Task::Bench {
            pairs,
            size_mib,
            only,
        } => {
            setup::ensure()?;
            cargo(&[
                "build",
                "--release",
                "--package",
                "zctrace",
                "--features",
                "instruments",
            ])?;
            match only {
                Some(only) => bench::only(pairs, size_mib, &only),
                None => bench::run(pairs, size_mib),
            }
        }
        Task::Image => {
            setup::ensure()?;
            image::build()
        }
        Task::Build { target } => {
            setup::ensure()?;
            println!("{}", arch::static_binary(target)?.display());
            Ok(())
        }
        Task::Load { processes, seconds } => {
            setup::ensure()?;
            cargo(&["build", "--release", "--package", "zctrace"])?;
            load::run(processes, seconds)
        }
    }
}

fn test() -> Result<()> {
    check(rustfmt(true)).context("formatting or import grouping differs: run `cargo xtask fmt`")?;
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
    // The tests turn the `instruments` feature on; the released build, linted here, has it off.
    cargo(&["clippy", "--package", "zctrace", "--", "-D", "warnings"])?;
    for arch in arch::Arch::ALL {
        clippy_ebpf(arch)?;
    }
    // The arm64 build, cross-compiled, must link and be an arm64 executable.
    arch::static_binary(arch::Arch::Aarch64)?;
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let mut command = cargo_command(&["test", "--workspace", "--exclude", "zctrace-ebpf"]);
    if in_ci {
        // CI runs as root: a privileged test that skips there is a failure.
        command.env("ZCTRACE_REQUIRE_PRIVILEGED", "1");
    }
    // The container test runs the image the DaemonSet names, as it names it; it needs root.
    if procfs::process::Process::myself()?.uid()? == 0 {
        image::build()?;
    }
    released_build_has_no_instruments()?;
    if in_ci {
        // A one-off run keeps no build it is done with: the tests link next, on a disk of
        // unknown size.
        for done in [
            "ebpf-clippy",
            "x86_64-unknown-linux-musl",
            "aarch64-unknown-linux-musl",
        ] {
            let _ = std::fs::remove_dir_all(target_dir().join(done));
        }
    }
    check(command)
}

/// Checks zctrace as it is released, the static binary the image carries (built just before,
/// so no extra build): its eBPF object holds no floor program, it refuses the bench's workloads
/// and `--probe.hook`, and it answers `--version`.
fn released_build_has_no_instruments() -> Result<()> {
    let binary = arch::static_binary(arch::Arch::X86_64)?;
    let version = Command::new(&binary).arg("--version").output()?;
    ensure!(
        version.status.success() && version.stdout.starts_with(b"zctrace "),
        "{} --version failed",
        binary.display()
    );
    let bytes = std::fs::read(&binary)?;
    for program in ["counting_floor", "timing_floor", "FLOOR_COUNTS", "FLOOR_TIMES"] {
        ensure!(
            !bytes.windows(program.len()).any(|w| w == program.as_bytes()),
            "the released build carries the bench instrument {program}"
        );
    }
    for args in [
        &["workload", "getppid", "1"][..],
        &["--probe.hook", "floor=x", "probes"],
    ] {
        let output = Command::new(&binary).args(args).output()?;
        ensure!(
            !output.status.success(),
            "the released build accepts the instrument `zctrace {}`",
            args.join(" ")
        );
    }
    eprintln!("xtask: the released build carries no floor program, workload or --probe.hook");
    Ok(())
}

/// With `CARGO_TARGET_DIR` outside the checkout (as `.ci/run` sets it), every build, cache and
/// download of the run (static binaries, images, nginx, VM kernels) went there: the checkout
/// has no `target/`.
fn nothing_built_in_the_checkout_when_the_target_dir_is_elsewhere() -> Result<()> {
    if target_dir().starts_with(workspace_root()) {
        return Ok(());
    }
    let stray = workspace_root().join("target");
    ensure!(
        !stray.exists(),
        "{} exists although cargo builds in {}: something in xtask or the tests ignores CARGO_TARGET_DIR",
        stray.display(),
        target_dir().display()
    );
    eprintln!(
        "xtask: everything was built in {}, nothing in the checkout",
        target_dir().display()
    );
    Ok(())
}

/// rustfmt through the nightly toolchain (which `setup` installs), for its import grouping.
fn rustfmt(only_check: bool) -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo", "fmt", "--all"])
        .args(only_check.then_some("--check"))
        .args([
            "--",
            "--config",
            "group_imports=StdExternalCrate,imports_granularity=Crate",
        ])
        .current_dir(workspace_root());
    command
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

/// Clippy on the eBPF crate, for the BPF target, as aya-build compiles it for `arch`, instruments
/// included.
fn clippy_ebpf(arch: arch::Arch) -> Result<()> {
    let target_arch = match arch {
        arch::Arch::X86_64 => "x86_64",
        arch::Arch::Aarch64 => "aarch64",
    };
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
            "--features",
            "instruments",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir().join("ebpf-clippy"))
        .args(["--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{target_arch}\""),
        )
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

/// Where cargo puts its builds: `CARGO_TARGET_DIR` or `build.target-dir` when set (as cargo
/// resolves them), else the workspace's `target/`. Everything xtask builds or caches goes there.
pub(crate) fn target_dir() -> &'static std::path::Path {
    static TARGET_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    TARGET_DIR.get_or_init(|| {
        let metadata = cargo_command(&["metadata", "--no-deps", "--format-version", "1"])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("running cargo metadata");
        assert!(metadata.status.success(), "cargo metadata failed");
        let metadata: serde_json::Value =
            serde_json::from_slice(&metadata.stdout).expect("cargo metadata prints JSON");
        metadata["target_directory"]
            .as_str()
            .expect("cargo metadata names the target directory")
            .into()
    })
}

pub(crate) fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
