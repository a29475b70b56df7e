//! Idempotent installation of the build and test toolchain: each step checks first, says what
//! it found or did, and installs only what is missing.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{apt, apt_sources, arch::Arch, check, target_dir};

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
    // `go tool pprof`, the reader of the daemon's copy profiles that the tests check them with.
    "golang-go",
    "openssl",
    "qemu-system-x86",
    "qemu-system-arm",
    "busybox-static",
    "cpio",
    "podman",
    "buildah",
    "runc",
    "musl-tools",
    "gcc-aarch64-linux-gnu",
    // Only recommended by the cross compiler, yet its C builds (ring's) need the arm64 headers.
    "libc6-dev-arm64-cross",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Python tools the tests use: Kubernetes manifest validation against bundled schemas.
const PYPI_PACKAGES: &[(&str, &str)] = &[("kubernetes-validate", "kubernetes_validate")];

pub fn ensure() -> Result<()> {
    foreign_architectures()?;
    debian_packages()?;
    python_tools()?;
    nightly_rust_src()?;
    musl_targets()?;
    bpf_linker()?;
    nginx_with_frame_pointers()
}

/// nginx's upstream source as Debian 12 ships it, and its SHA-256: apt checks what it downloads
/// against the archive's signed index, this checks that the archive still serves the source the
/// tests were written against.
const NGINX_ORIG: &str = "nginx_1.22.1.orig.tar.gz";
const NGINX_SHA256: &str = "9ebb333a9e82b952acd3e2b4aeb1d4ff6406f72491bab6cd9fe69f0dea737f31";

/// The nginx that setup builds with frame pointers.
pub fn nginx_binary() -> PathBuf {
    target_dir().join("nginx-fp/sbin/nginx")
}

/// nginx built with frame pointers, for the `attach --stacks` test on a real server: Debian's own
/// nginx has none, so the kernel cannot unwind its stacks (README, "Where the copies happen").
/// Built without the modules that need PCRE or zlib; about 15 s.
fn nginx_with_frame_pointers() -> Result<()> {
    let prefix = target_dir().join("nginx-fp");
    if nginx_binary().exists() {
        say(&format!(
            "present: nginx with frame pointers ({})",
            prefix.display()
        ));
        return Ok(());
    }
    say(&format!(
        "building nginx with frame pointers into {}",
        prefix.display()
    ));
    let build = target_dir().join("nginx-build");
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build)?;
    debian_source("nginx", &build)?;
    let mut verify = Command::new("sh");
    verify
        .arg("-c")
        .arg(format!(
            "echo '{NGINX_SHA256}  {NGINX_ORIG}' | sha256sum -c --quiet"
        ))
        .current_dir(&build);
    check(verify)
        .with_context(|| format!("Debian's nginx source is not {NGINX_ORIG} with SHA-256 {NGINX_SHA256}"))?;
    let mut unpack = Command::new("tar");
    unpack
        .args(["xzf", NGINX_ORIG, "--strip-components=1"])
        .current_dir(&build);
    check(unpack)?;
    let mut configure = Command::new("./configure");
    configure
        .arg(format!("--prefix={}", prefix.display()))
        .args([
            "--with-cc-opt=-O2 -fno-omit-frame-pointer",
            "--without-http_rewrite_module",
            "--without-http_gzip_module",
        ])
        .stdout(Stdio::null())
        .current_dir(&build);
    check(configure)?;
    let mut make = Command::new("make");
    make.args(["-j2", "install"])
        .stdout(Stdio::null())
        .current_dir(&build);
    check(make)
}

/// Downloads `package`'s Debian source files into `dir`, through apt, from the source
/// counterparts of the machine's own Debian archives (an apt of its own under `dir`).
fn debian_source(package: &str, dir: &Path) -> Result<()> {
    let codename = apt::codename()?;
    let stanzas = apt_sources::source_stanzas(&apt::machine_sources(), &codename);
    ensure!(
        !stanzas.is_empty(),
        "no apt source of this machine serves Debian {codename}: cannot fetch {package}'s source"
    );
    let apt = apt::PrivateApt::new(&dir.join("apt"), &stanzas)?;
    check(apt.get(&["update", "-q"]))?;
    // The newest version the index lists may not be served yet (or any more): take the next.
    let versions = source_versions(&apt, package)?;
    for version in &versions {
        let wanted = format!("{package}={version}");
        let mut download = apt.get(&["source", "-q", "--download-only", &wanted]);
        if download.current_dir(dir).status().is_ok_and(|s| s.success()) {
            say(&format!("downloaded Debian's source of {wanted}"));
            return Ok(());
        }
        say(&format!(
            "Debian's source of {wanted} did not download; trying an older one"
        ));
    }
    bail!("none of {package}'s source versions {versions:?} downloaded through apt")
}

/// The versions of source package `package` that `apt` lists, newest first.
fn source_versions(apt: &apt::PrivateApt, package: &str) -> Result<Vec<String>> {
    let output = apt
        .cache(&["showsrc", "--only-source", package])
        .output()
        .context("apt-cache showsrc")?;
    let mut versions: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .map(str::to_string)
        .collect();
    versions.sort_by(|a, b| apt::version_order(b, a));
    versions.dedup();
    ensure!(!versions.is_empty(), "apt lists no source package {package}");
    Ok(versions)
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

/// dpkg's other architectures, whose packages `vmtest` downloads (never installs): arm64's
/// kernel and busybox.
fn foreign_architectures() -> Result<()> {
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let wanted = Arch::Aarch64.debian();
    if foreign.lines().any(|a| a == wanted) {
        say(&format!("present: dpkg architecture {wanted}"));
        return Ok(());
    }
    say(&format!(
        "adding dpkg architecture {wanted} (the arm64 VM's kernel and busybox)"
    ));
    let mut add = Command::new("dpkg");
    add.args(["--add-architecture", wanted]);
    check(add)?;
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    check(update)
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

/// The static targets zctrace's released binaries are built for (the container image's among
/// them).
fn musl_targets() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for arch in Arch::ALL {
        let triple = arch.triple();
        if installed.lines().any(|l| l == triple) {
            say(&format!("present: rust target {triple}"));
            continue;
        }
        say(&format!(
            "installing: rust target {triple} (a static release binary)"
        ));
        let mut add = Command::new("rustup");
        add.args(["target", "add", triple]);
        check(add)?;
    }
    Ok(())
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
    if !Path::new(LLVM_PREFIX).exists() {
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
