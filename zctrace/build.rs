//! Builds the eBPF programs in `zctrace-ebpf` with the nightly toolchain and bpf-linker.
use std::path::PathBuf;

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../zctrace-ebpf").canonicalize()?;
    let root_dir = ebpf_dir.to_str().expect("zctrace-ebpf path is not UTF-8");
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../zctrace-common/src").display()
    );
    // aya-build echoes each line of the nested cargo's stderr as a `cargo:warning`, so every
    // build printed ~90 "warning: zctrace@..." lines of progress. Quiet leaves only compiler
    // diagnostics, which it forwards from cargo's JSON messages: real warnings still show.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    let instruments = std::env::var_os("CARGO_FEATURE_INSTRUMENTS").is_some();
    aya_build::build_ebpf(
        [Package {
            name: "zctrace-ebpf",
            root_dir,
            features: if instruments { &["instruments"] } else { &[] },
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
