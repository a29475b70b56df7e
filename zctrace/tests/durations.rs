//! Every duration flag takes what timeout(1) and bcc's tools take (bare seconds) and units too.
mod common;

use std::process::Command;

use common::*;

#[test]
fn every_duration_flag_takes_bare_seconds_or_units() {
    if !privileged("every_duration_flag_takes_bare_seconds_or_units") {
        return;
    }
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id().to_string();
    for duration in ["1", "1s", "0.5"] {
        let attach = Command::new(zctrace_bin())
            .args([
                "attach",
                "--json",
                "--pid",
                &pid,
                "--duration",
                duration,
                "--interval",
                duration,
            ])
            .output()
            .unwrap();
        assert!(
            attach.status.success(),
            "attach --duration {duration}: {}",
            String::from_utf8_lossy(&attach.stderr)
        );
        let top = Command::new(zctrace_bin())
            .args(["top", "--plain", "--duration", duration, "--interval", duration])
            .output()
            .unwrap();
        assert!(
            top.status.success(),
            "top --duration {duration}: {}",
            String::from_utf8_lossy(&top.stderr)
        );
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    for grace in ["30", "30s", "1m"] {
        let daemon = Daemon::start(&["--series.grace-period", grace]);
        assert_eq!(daemon.stop().code(), Some(0), "--series.grace-period {grace}");
    }
    fails_with(&["top", "--duration", "-5"], "0 or more seconds");
}
