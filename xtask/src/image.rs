//! `cargo xtask image`: the OCI image the DaemonSet runs. No registry is reachable from where it
//! is built, so it starts from scratch around a static (musl) binary that carries its eBPF object.
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{
    arch::{self, Arch},
    check, workspace_root,
};

const SOURCE: &str = "https://github.com/zctrace/zctrace";

/// The image reference the DaemonSet names: the registry path with this build's version.
fn reference() -> String {
    format!("ghcr.io/zctrace/zctrace:{}", env!("CARGO_PKG_VERSION"))
}

/// podman with the settings that work on hosts like this one: the vfs storage driver (no
/// overlay needed) and runc (crun refuses hybrid cgroup layouts).
fn podman() -> Command {
    let mut command = Command::new("podman");
    command.args(["--storage-driver", "vfs", "--runtime", "runc"]);
    command
}

/// Builds the static binary and the image; prints its reference and size.
pub fn build() -> Result<()> {
    let binary = arch::static_binary(Arch::X86_64)?;
    let context = workspace_root().join("target/image");
    std::fs::create_dir_all(&context)?;
    let mut strip = Command::new(Arch::X86_64.strip());
    strip.arg("-o").arg(context.join("zctrace")).arg(&binary);
    check(strip)?;
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .context("git rev-parse")?;
    let revision = String::from_utf8_lossy(&revision.stdout).trim().to_string();
    let reference = reference();
    let mut build = podman();
    build
        .args(["build", "--format", "oci", "--tag", &reference])
        .arg("--file")
        .arg(workspace_root().join("deploy/container/Containerfile"));
    for (key, value) in [
        ("version", env!("CARGO_PKG_VERSION")),
        ("source", SOURCE),
        ("revision", &revision),
        ("title", "zctrace"),
        ("licenses", "MIT OR Apache-2.0"),
    ] {
        build.args(["--annotation", &format!("org.opencontainers.image.{key}={value}")]);
    }
    build.arg(&context);
    check(build)?;
    let size = podman()
        .args(["image", "inspect", "--format", "{{.Size}}", &reference])
        .output()
        .context("podman image inspect")?;
    let bytes: f64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    eprintln!("xtask: built {reference}, {:.1} MB", bytes / 1e6);
    Ok(())
}
