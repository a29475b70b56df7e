//! Idempotent installation of the build and test toolchain: each step checks first, says what
//! it found or did, and installs only what is missing.
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

use crate::check;

/// Debian packages: LLVM 22 for bpf-linker, the real programs the tests and bench run, and what
/// `vmtest` boots other kernels with.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "prometheus",
    "bpftool",
    "bpftrace",
    "systemd",
    "curl",
    "openssl",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "podman",
    "buildah",
    "runc",
    "musl-tools",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Python tools the tests use: Kubernetes manifest validation against bundled schemas.
const PYPI_PACKAGES: &[(&str, &str)] = &[("kubernetes-validate", "kubernetes_validate")];

pub fn ensure() -> Result<()> {
    debian_packages()?;
    python_tools()?;
    nightly_rust_src()?;
    musl_target()?;
    bpf_linker()
}

fn python_tools() -> Result<()> {
    for (package, module) in PYPI_PACKAGES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status();
        if present.is_ok_and(|s| s.success()) {
            say(&format!("present: PyPI package {package}"));
            continue;
        }
        say(&format!("installing PyPI package {package}"));
        let mut install = Command::new("python3");
        install.args(["-m", "pip", "install", "--quiet", package]);
        check(install)?;
    }
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        say(&format!("present: Debian packages {}", DEBIAN_PACKAGES.join(" ")));
        return Ok(());
    }
    say(&format!("installing Debian packages: {}", missing.join(" ")));
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    check(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    check(install)
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Nightly with rust-src (build-std=core for the BPF target) and rustfmt (import grouping).
fn nightly_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output();
    let listed = match installed {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => {
            say("installing: nightly toolchain");
            let mut toolchain = Command::new("rustup");
            toolchain.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
            check(toolchain)?;
            String::new()
        }
    };
    for component in ["rust-src", "rustfmt"] {
        if listed.lines().any(|l| l.starts_with(component)) {
            say(&format!("present: nightly {component}"));
            continue;
        }
        say(&format!("installing: {component} for nightly"));
        let mut add = Command::new("rustup");
        add.args(["component", "add", component, "--toolchain", "nightly"]);
        check(add)?;
    }
    Ok(())
}

/// The static target the container image's binary is built for.
fn musl_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if installed.lines().any(|l| l == "x86_64-unknown-linux-musl") {
        say("present: rust target x86_64-unknown-linux-musl");
        return Ok(());
    }
    say("installing: rust target x86_64-unknown-linux-musl (the container image's static binary)");
    let mut add = Command::new("rustup");
    add.args(["target", "add", "x86_64-unknown-linux-musl"]);
    check(add)
}

fn bpf_linker() -> Result<()> {
    let found = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if found.is_ok_and(|s| s.success()) {
        say("present: bpf-linker");
        return Ok(());
    }
    if !std::path::Path::new(LLVM_PREFIX).exists() {
        bail!("{LLVM_PREFIX} is missing: install llvm-22-dev first");
    }
    say("installing: bpf-linker built against LLVM 22 (about a minute)");
    let path = format!("{LLVM_PREFIX}/bin:{}", std::env::var("PATH").unwrap_or_default());
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", path)
        .env("LLVM_PREFIX", LLVM_PREFIX);
    check(install)
}

fn say(message: &str) {
    eprintln!("setup: {message}");
}
