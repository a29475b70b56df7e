//! What must hold on every kernel of the matrix: the host's, and each one `cargo xtask vmtest`
//! boots. Each kernel offers different hooks; zctrace must pick the best one and stay exact.
mod common;

use std::process::Command;

use common::*;

/// `zctrace probes`: (probe, hook, mode, reason) per line, and the closing summary.
fn probes() -> (Vec<(String, String, String, String)>, String) {
    let output = Command::new(zctrace_bin()).arg("probes").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = stdout
        .lines()
        .filter(|l| !l.starts_with("cpu copy figures"))
        .map(|l| {
            let mut words = l.splitn(4, char::is_whitespace).filter(|w| !w.is_empty());
            let mut next = || words.next().unwrap_or_default().trim().to_string();
            (next(), next(), next(), next())
        })
        .collect();
    (rows, stdout)
}

#[test]
fn every_counting_probe_attaches() {
    if !privileged("every_counting_probe_attaches") {
        return;
    }
    let (rows, stdout) = probes();
    println!("{stdout}");
    for (probe, _, mode, _) in rows.iter().filter(|(p, ..)| !p.starts_with("copy_")) {
        assert_ne!(mode, "unavailable", "{probe} on this kernel:\n{stdout}");
    }
}
