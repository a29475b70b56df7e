//! The reference sender: every method delivers every size intact; hazards end in clear errors.
mod common;

use std::{
    io::Read as _,
    net::TcpListener,
    process::{Command, Output, Stdio},
    thread::sleep,
    time::Duration,
};

use common::*;

const METHODS: [&str; 8] = [
    "read-write",
    "mmap-write",
    "sendfile",
    "splice",
    "vmsplice",
    "tee",
    "io-uring",
    "zerocopy",
];
const CHUNK: u64 = 64 * 1024;

fn send_raw(method: &str, file: &std::path::Path, to: &str) -> Output {
    Command::new(zctrace_bin())
        .args(["send", "--method", method, "--file"])
        .arg(file)
        .args(["--to", to, "--chunk", &CHUNK.to_string()])
        .output()
        .expect("sender")
}

#[test]
fn every_method_delivers_every_size_intact() {
    for size in [0, 1, CHUNK + 1, 64 * MIB] {
        let file = test_file(size);
        let expected = crc32fast::hash(&std::fs::read(&file).unwrap());
        for method in METHODS {
            let receiver = Receiver::start(&[]);
            let output = send_raw(method, &file, &receiver.addr.clone());
            assert!(
                output.status.success(),
                "{method} {size}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let (_, verdict) = receiver.finish();
            assert_eq!(verdict["bytes"], size, "{method} {size}");
            assert_eq!(verdict["checksum"], expected, "{method} {size}: checksum");
            let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(report["bytes"], size);
            assert_eq!(
                report["checksum"], expected,
                "the sender announced the file's CRC-32"
            );
        }
    }
}

#[test]
fn truncating_the_file_under_mmap_write_is_an_error_not_a_crash() {
    let file = scratch_path("truncate-me");
    std::fs::copy(test_file(64 * MIB), &file).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sender = Command::new(zctrace_bin())
        .args(["send", "--method", "mmap-write", "--file"])
        .arg(&file)
        .args(["--to", &addr])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    // Let the socket buffers fill so the sender is blocked mid-file, then cut the file short.
    sleep(Duration::from_millis(500));
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    let output = sender.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "an error exit, not a signal: {:?} {stderr}",
        output.status
    );
    assert!(stderr.contains("truncated"), "{stderr}");
    assert!((sink.len() as u64) < 64 * MIB);
}

#[test]
fn a_receiver_that_closes_early_gives_the_sender_a_clear_error() {
    let file = test_file(64 * MIB);
    for method in ["read-write", "sendfile", "splice", "zerocopy"] {
        let receiver = Receiver::start(&["--close-after", "100000"]);
        let output = send_raw(method, &file, &receiver.addr.clone());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{method}: {stderr}");
        assert!(
            stderr.contains("the receiver closed the connection early"),
            "{method}: {stderr}"
        );
    }
}

#[test]
fn bad_send_arguments_are_refused() {
    let file = test_file(1);
    let file = file.to_str().unwrap();
    fails_with(
        &[
            "send",
            "--method",
            "carrier-pigeon",
            "--file",
            file,
            "--to",
            "127.0.0.1:1",
        ],
        "invalid value 'carrier-pigeon'",
    );
    fails_with(
        &[
            "send",
            "--method",
            "sendfile",
            "--file",
            "/nonexistent",
            "--to",
            "127.0.0.1:1",
        ],
        "opening /nonexistent",
    );
    fails_with(
        &[
            "send",
            "--method",
            "sendfile",
            "--file",
            "/tmp",
            "--to",
            "127.0.0.1:1",
        ],
        "not a regular file",
    );
    fails_with(
        &[
            "send",
            "--method",
            "sendfile",
            "--file",
            file,
            "--to",
            "127.0.0.1:1",
        ],
        "connecting to 127.0.0.1:1",
    );
    fails_with(
        &[
            "send",
            "--method",
            "sendfile",
            "--file",
            file,
            "--to",
            "127.0.0.1:9",
            "--chunk",
            "0",
        ],
        "--chunk",
    );
    fails_with(
        &[
            "send",
            "--method",
            "zerocopy",
            "--file",
            file,
            "--to-file",
            "/tmp/x",
        ],
        "needs a socket",
    );
    fails_with(&["send", "--method", "sendfile", "--file", file], "--to");
    fails_with(&["serve", "--listen", "256.0.0.1:80"], "--listen");
}

#[test]
fn sending_a_file_onto_itself_is_refused_and_leaves_it_whole() {
    let original = std::fs::read(test_file(MIB)).unwrap();
    let file = scratch_path("self-send");
    std::fs::write(&file, &original).unwrap();
    let link = scratch_path("self-send-symlink");
    let hard = scratch_path("self-send-hardlink");
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_file(&hard);
    std::os::unix::fs::symlink(&file, &link).unwrap();
    std::fs::hard_link(&file, &hard).unwrap();
    for method in ["read-write", "sendfile", "splice"] {
        for to in [&file, &link, &hard] {
            fails_with(
                &[
                    "send",
                    "--method",
                    method,
                    "--file",
                    file.to_str().unwrap(),
                    "--to-file",
                    to.to_str().unwrap(),
                ],
                "is the file being sent",
            );
            assert_eq!(
                std::fs::read(&file).unwrap(),
                original,
                "{method} onto {}",
                to.display()
            );
        }
    }
}

#[test]
fn a_bench_killed_at_any_moment_leaves_no_payload_and_no_sender_behind() {
    if !privileged("a_bench_killed_at_any_moment_leaves_no_payload_and_no_sender_behind") {
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for round in 0..5u64 {
        let tmp = tempfile::tempdir().unwrap();
        let mut bench = Command::new(zctrace_bin())
            .args([
                "bench",
                "--size",
                &(256 * MIB).to_string(),
                "--methods",
                "read-write,sendfile",
            ])
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = Duration::from_millis(50 + (seed + round * 337) % 1450);
        sleep(at);
        bench.kill().unwrap();
        bench.wait().unwrap();
        let own_fds = format!("/proc/{}/fd/", bench.id());
        eventually(
            "the bench's senders dying with it",
            Duration::from_secs(5),
            || {
                let senders: Vec<String> = std::fs::read_dir("/proc")
                    .unwrap()
                    .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .filter(|c| c.contains(&own_fds))
                    .collect();
                senders.is_empty().then_some(()).ok_or(format!("{senders:?}"))
            },
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "killed after {at:?}, the bench left {left:?}");
    }
}
