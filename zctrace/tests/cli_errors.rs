//! Bad input gets a message naming the problem and a non-zero exit, before anything is loaded.
mod common;

use common::*;

#[test]
fn daemon_rejects_bad_flags() {
    fails_with(
        &["daemon", "--web.listen-address", "not-an-address"],
        "invalid value 'not-an-address' for '--web.listen-address",
    );
    fails_with(
        &["daemon", "--web.listen-address", "127.0.0.1:99999"],
        "--web.listen-address",
    );
    fails_with(&["daemon", "--comm", "(unclosed"], "invalid regex");
    fails_with(&["daemon", "--pid", "0"], "--pid");
    fails_with(&["daemon", "--pid", "-3"], "--pid");
    fails_with(
        &[
            "daemon",
            "--pid",
            "4194304",
            "--web.listen-address",
            "127.0.0.1:0",
        ],
        "--pid 4194304: no such process",
    );
    fails_with(
        &["daemon", "--web.telemetry-path", "metrics"],
        "must start with '/'",
    );
    fails_with(&["daemon", "--top", "many"], "--top");
    fails_with(
        &["daemon", "--series.grace-period", "soon"],
        "--series.grace-period",
    );
}

#[test]
fn daemon_rejects_a_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    fails_with(
        &["daemon", "--web.listen-address", &addr],
        &format!("--web.listen-address {addr}: cannot listen"),
    );
}

#[test]
fn daemon_rejects_missing_or_malformed_web_config() {
    let missing = scratch_path("no-such-web.yml");
    fails_with(
        &[
            "daemon",
            "--web.config.file",
            missing.to_str().unwrap(),
            "--web.listen-address",
            "127.0.0.1:0",
        ],
        "no-such-web.yml",
    );
    let malformed = scratch_path("malformed-web.yml");
    std::fs::write(&malformed, "tls_server_config: [oops\n").unwrap();
    fails_with(
        &[
            "daemon",
            "--web.config.file",
            malformed.to_str().unwrap(),
            "--web.listen-address",
            "127.0.0.1:0",
        ],
        "invalid YAML",
    );
    let junk = scratch_path("junk-web.yml");
    std::fs::write(&junk, "basic_auth_users:\n  alice: plaintext\n").unwrap();
    fails_with(
        &[
            "daemon",
            "--web.config.file",
            junk.to_str().unwrap(),
            "--web.listen-address",
            "127.0.0.1:0",
        ],
        "bcrypt hash",
    );
    let no_cert = scratch_path("no-cert-web.yml");
    std::fs::write(
        &no_cert,
        "tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: /nonexistent/k.pem\n",
    )
    .unwrap();
    fails_with(
        &[
            "daemon",
            "--web.config.file",
            no_cert.to_str().unwrap(),
            "--web.listen-address",
            "127.0.0.1:0",
        ],
        "cert_file /nonexistent/c.pem",
    );
}

#[test]
fn without_privileges_the_daemon_names_what_is_missing() {
    if !privileged("without_privileges_the_daemon_names_what_is_missing") {
        return;
    }
    // Run as nobody, with no capabilities at all.
    let output = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(zctrace_bin())
        .args(["daemon", "--web.listen-address", "127.0.0.1:0"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("needs root, or CAP_BPF and CAP_PERFMON"),
        "{stderr}"
    );
    assert!(stderr.contains("missing: CAP_BPF, CAP_PERFMON"), "{stderr}");
}
