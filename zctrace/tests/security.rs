//! The metrics endpoint behind TLS and basic auth, and clients that misbehave.
mod common;

use std::{io::Write as _, net::TcpStream, os::unix::fs::PermissionsExt as _, process::Command};

use common::*;
use zctrace::exporter::connections::IDLE_TIMEOUT;

/// (HTTP status, body) of a curl request; status 0 when no HTTP response came back.
fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A self-signed certificate for 127.0.0.1 and a web config with TLS and one bcrypt user, in a
/// directory of the caller's own (tests run in parallel).
fn tls_web_config(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = scratch_path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl")
        .status;
    assert!(status.success());
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let config = dir.join("web.yml");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  min_version: TLS12\nbasic_auth_users:\n  alice: {hash}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    (config, cert)
}

#[test]
fn tls_and_basic_auth_guard_the_metrics() {
    if !privileged("tls_and_basic_auth_guard_the_metrics") {
        return;
    }
    let (config, cert) = tls_web_config("tls-guard");
    let daemon = Daemon::start(&["--web.config.file", config.to_str().unwrap()]);
    let url = format!("https://{}/metrics", daemon.addr);
    let cacert = cert.to_str().unwrap();
    let (status, body) = curl(&["--cacert", cacert, "-u", "alice:s3cret", &url]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("zctrace_build_info"));
    assert_eq!(
        curl(&["--cacert", cacert, "-u", "alice:wrong", &url]).0,
        401,
        "wrong password"
    );
    assert_eq!(
        curl(&["--cacert", cacert, "-u", "mallory:s3cret", &url]).0,
        401,
        "unknown user"
    );
    assert_eq!(curl(&["--cacert", cacert, &url]).0, 401, "no credentials");
    sessions_idle_after_the_handshake_are_closed(&daemon.addr, cacert);
    let (plain, _) = curl(&[&format!("http://{}/metrics", daemon.addr)]);
    assert_ne!(plain, 200, "plain HTTP to the TLS port must not be served");
    assert_eq!(
        curl(&["--cacert", cacert, "--tls-max", "1.1", "-u", "alice:s3cret", &url]).0,
        0,
        "TLS 1.1 is refused"
    );
}

#[test]
fn the_copy_profiles_are_behind_the_same_tls_and_basic_auth() {
    if !privileged("the_copy_profiles_are_behind_the_same_tls_and_basic_auth") {
        return;
    }
    let (config, cert) = tls_web_config("tls-profiles");
    let daemon = Daemon::start(&["--web.config.file", config.to_str().unwrap(), "--profiles"]);
    let cacert = cert.to_str().unwrap();
    for profile in ["copies", "kernel_copies"] {
        let url = format!("https://{}/debug/pprof/{profile}", daemon.addr);
        let (status, body) = curl(&["--cacert", cacert, &url]);
        assert_eq!(status, 401, "{profile}, no credentials: {body}");
        assert_eq!(curl(&["--cacert", cacert, "-u", "alice:wrong", &url]).0, 401);
        assert_eq!(curl(&["--cacert", cacert, "-u", "alice:s3cret", &url]).0, 200);
    }
    let url = format!("https://{}/debug/pprof/copies", daemon.addr);
    let window = format!("{url}?seconds=1");
    assert_eq!(curl(&["--cacert", cacert, "-u", "alice:s3cret", &window]).0, 200);
    let (status, body) = curl(&[
        "--cacert",
        cacert,
        "-u",
        "alice:s3cret",
        &format!("{url}?seconds=0"),
    ]);
    assert_eq!(
        (status, body.trim()),
        (400, "seconds=0: give a whole number of seconds from 1 to 300")
    );
}

/// TLS clients that finish the handshake and then send nothing are closed after the daemon's
/// idle deadline.
fn sessions_idle_after_the_handshake_are_closed(addr: &str, cacert: &str) {
    let started = std::time::Instant::now();
    let mut sessions: Vec<std::process::Child> = (0..5)
        .map(|_| {
            Command::new("openssl")
                .args([
                    "s_client",
                    "-quiet",
                    "-verify_return_error",
                    "-CAfile",
                    cacert,
                    "-connect",
                    addr,
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl s_client")
        })
        .collect();
    eventually(
        "idle TLS sessions closed by the daemon",
        IDLE_TIMEOUT + std::time::Duration::from_secs(5),
        || {
            let open = sessions
                .iter_mut()
                .filter_map(|s| s.try_wait().unwrap().is_none().then_some(()))
                .count();
            (open == 0)
                .then_some(())
                .ok_or(format!("{open} sessions still open"))
        },
    );
    let took = started.elapsed();
    assert!(
        took >= IDLE_TIMEOUT - std::time::Duration::from_secs(1),
        "closed after {took:?}: before the deadline, so not for idleness"
    );
}

#[test]
fn world_writable_web_config_is_refused() {
    let (config, _) = tls_web_config("tls-open");
    let open = scratch_path("open-web.yml");
    std::fs::copy(&config, &open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = Command::new(zctrace_bin())
        .args([
            "daemon",
            "--web.listen-address",
            "127.0.0.1:0",
            "--web.config.file",
            open.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("world-writable"));
}

#[test]
fn slow_clients_do_not_block_scrapes() {
    if !privileged("slow_clients_do_not_block_scrapes") {
        return;
    }
    let daemon = Daemon::start(&[]);
    // Connections that never finish their request headers.
    let stalled: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(&daemon.addr).unwrap();
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
            stream
        })
        .collect();
    let (status, body) = curl(&[&format!("http://{}/metrics", daemon.addr)]);
    assert_eq!(status, 200, "a scrape beside 20 stalled clients: {body}");
    drop(stalled);
}
