//! The I/O style and the advice `attach` gives small programs of one style each
//! (`tests/programs/styles.py`): each style named right, and no advice that names a call that
//! cannot work for the program's endpoints. Python is on the host only, so these run there.
mod common;

use std::{
    io::Read as _,
    net::{TcpListener, UdpSocket},
    path::PathBuf,
    process::Command,
    thread::JoinHandle,
};

use common::*;

const SIZE: u64 = 8 * MIB;

fn styles_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/programs/styles.py")
}

/// `zctrace attach --json -- python3 styles.py ARGS`.
fn attach_styles(args: &[&str]) -> serde_json::Value {
    attach_report(
        Command::new(zctrace_bin())
            .args(["attach", "--json", "--", "python3"])
            .arg(styles_py())
            .args(args),
    )
}

/// A loopback TCP sink: its address, and the bytes its one connection brought.
fn sink() -> (String, JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let drained = std::thread::spawn(move || {
        let (mut connection, _) = listener.accept().unwrap();
        let mut buffer = vec![0; 1 << 16];
        let mut total = 0;
        loop {
            match connection.read(&mut buffer).unwrap() {
                0 => return total,
                n => total += n as u64,
            }
        }
    });
    (addr, drained)
}

fn advice(report: &serde_json::Value) -> Vec<String> {
    report["advice"]
        .as_array()
        .expect("advice")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn flow_bytes(report: &serde_json::Value, syscall: &str, src: &str, dst: &str, figure: &str) -> u64 {
    report["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["syscall"] == syscall && f["src"] == src && f["dst"] == dst)
        .map(|f| f[figure].as_u64().unwrap_or(0))
        .sum()
}

/// No line of advice names a call that cannot work here: sendfile() reads only files, splice()
/// needs a socket or file at one end, and neither helps data made in memory.
fn names_only_what_works(report: &serde_json::Value, reads_files: bool, relays: bool) {
    for line in advice(report) {
        if line.contains("sendfile()") && !line.contains("sendfile() cannot") {
            assert!(reads_files, "sendfile without a file to read: {line}\n{report:#}");
        }
        if line.contains("splice()") {
            assert!(relays, "splice without bytes to pass on: {line}\n{report:#}");
        }
        assert!(
            !line.contains("if that memory maps a file"),
            "no program here maps a file: {line}"
        );
    }
}

#[test]
fn a_file_to_socket_relay_is_told_about_sendfile() {
    if !privileged("a_file_to_socket_relay_is_told_about_sendfile") {
        return;
    }
    let report = without_missed_runs("file-relay", || {
        let (to, drained) = sink();
        let file = test_file(SIZE);
        let report = attach_styles(&["file-relay", file.to_str().unwrap(), &to]);
        assert_eq!(drained.join().unwrap(), SIZE);
        report
    });
    assert_eq!(report["io_style"], "read_write_relay", "{report:#}");
    assert_eq!(
        flow_bytes(&report, "sendto", "user", "tcp", "bytes"),
        SIZE,
        "{report:#}"
    );
    let relayed = flow_bytes(&report, "sendto", "user", "tcp", "relayed_bytes");
    assert!((SIZE / 2..=SIZE).contains(&relayed), "{report:#}");
    assert!(advice(&report)[0].contains("sendfile()"), "{report:#}");
    names_only_what_works(&report, true, true);
}

#[test]
fn a_socket_to_socket_relay_is_told_about_splice_and_not_sendfile() {
    if !privileged("a_socket_to_socket_relay_is_told_about_splice_and_not_sendfile") {
        return;
    }
    let report = without_missed_runs("socket-relay", || {
        let (to, drained) = sink();
        let report = attach_styles(&["socket-relay", &to, &SIZE.to_string()]);
        assert_eq!(drained.join().unwrap(), SIZE);
        report
    });
    assert_eq!(report["io_style"], "read_write_relay", "{report:#}");
    assert_eq!(
        flow_bytes(&report, "recvfrom", "tcp", "user", "bytes"),
        SIZE,
        "{report:#}"
    );
    assert_eq!(
        flow_bytes(&report, "sendto", "user", "tcp", "bytes"),
        SIZE,
        "{report:#}"
    );
    assert!(
        advice(&report)[0].contains("splice() through a pipe"),
        "{report:#}"
    );
    names_only_what_works(&report, false, true);
}

/// The Redis case: requests read and replies sent in about equal volume, but the replies come
/// from memory, not from what was read.
#[test]
fn a_server_answering_from_memory_is_no_relay_and_is_told_about_batching() {
    if !privileged("a_server_answering_from_memory_is_no_relay_and_is_told_about_batching") {
        return;
    }
    let report = without_missed_runs("kv-server", || attach_styles(&["kv-server", "4000"]));
    assert_eq!(report["io_style"], "send_from_memory", "{report:#}");
    let replies = flow_bytes(&report, "sendto", "user", "tcp", "bytes");
    assert_eq!(replies, 2000 * 1024 + 2000 * 3, "{report:#}");
    assert_eq!(
        flow_bytes(&report, "sendto", "user", "tcp", "relayed_bytes"),
        0,
        "{report:#}"
    );
    assert!(
        advice(&report).iter().any(|a| a.contains("batching replies")),
        "{report:#}"
    );
    names_only_what_works(&report, false, false);
}

#[test]
fn a_datagram_sender_is_told_about_segmentation_offload_not_buffers() {
    if !privileged("a_datagram_sender_is_told_about_segmentation_offload_not_buffers") {
        return;
    }
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = sink.local_addr().unwrap().to_string();
    let report = without_missed_runs("udp-sender", || attach_styles(&["udp-sender", &to, "5000"]));
    assert_eq!(report["io_style"], "send_from_memory", "{report:#}");
    assert_eq!(
        flow_bytes(&report, "sendto", "user", "udp", "bytes"),
        5000 * 1400,
        "{report:#}"
    );
    let advice = advice(&report);
    assert!(advice.iter().any(|a| a.contains("UDP_SEGMENT")), "{report:#}");
    assert!(!advice.iter().any(|a| a.contains("larger buffers")), "{report:#}");
    names_only_what_works(&report, false, false);
}

#[test]
fn a_file_reader_is_a_file_reader() {
    if !privileged("a_file_reader_is_a_file_reader") {
        return;
    }
    let file = test_file(SIZE);
    let report = without_missed_runs("file-reader", || {
        attach_styles(&["file-reader", file.to_str().unwrap()])
    });
    assert_eq!(report["io_style"], "file_reader", "{report:#}");
    assert!(
        flow_bytes(&report, "read", "file", "user", "bytes") >= SIZE,
        "{report:#}"
    );
    names_only_what_works(&report, true, false);
}
