//! Own test binary: cargo runs test binaries one at a time, so no other test's programs are
//! loaded while this one checks that the daemon leaves none behind.
mod common;

use std::{
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use common::*;

fn loaded_zctrace_maps() -> usize {
    aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| m.name_as_str() == Some("PROCESSES"))
        .count()
}

/// The tests here count loaded programs, so they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The kernel frees programs and maps shortly after their last descriptor closes, not at once.
fn settles_at(expected: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while (loaded_zctrace_programs(), loaded_zctrace_maps()) != (expected, expected) {
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(100));
    }
    true
}

#[test]
fn sigterm_detaches_every_program() {
    if !privileged("sigterm_detaches_every_program") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert!(settles_at(0), "programs of an earlier test are still loaded");
    let daemon = Daemon::start(&[]);
    assert_eq!(loaded_zctrace_programs(), 1, "the daemon's programs are loaded");
    let status = daemon.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(settles_at(0), "programs left loaded after SIGTERM");
}

#[test]
fn sigterm_exits_cleanly_even_when_nobody_reads_the_log() {
    if !privileged("sigterm_exits_cleanly_even_when_nobody_reads_the_log") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use std::io::BufRead as _;
    let mut child = Command::new(zctrace_bin())
        .args(["daemon", "--web.listen-address", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("serving metrics") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the daemon exited before serving"
        );
    }
    drop(stderr);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon ignored SIGTERM with its log pipe closed"
        );
        sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(settles_at(0));
}

#[test]
fn kill_9_leaves_nothing_loaded() {
    if !privileged("kill_9_leaves_nothing_loaded") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert!(settles_at(0), "programs of an earlier test are still loaded");
    let mut daemon = Daemon::start(&[]);
    assert_eq!(loaded_zctrace_programs(), 1);
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    assert!(settles_at(0), "programs or maps left loaded after kill -9");
}
