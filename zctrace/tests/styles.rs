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

/// A loopback TCP sink: its address, and the bytes its `connections` brought, drained one at a
/// time as they come.
fn sink(connections: usize) -> (String, JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let drained = std::thread::spawn(move || {
        let drains: Vec<JoinHandle<u64>> = (0..connections)
            .map(|_| {
                let (mut connection, _) = listener.accept().unwrap();
                std::thread::spawn(move || {
                    let mut buffer = vec![0; 1 << 16];
                    let mut total = 0;
                    loop {
                        match connection.read(&mut buffer).unwrap() {
                            0 => return total,
                            n => total += n as u64,
                        }
                    }
                })
            })
            .collect();
        drains.into_iter().map(|d| d.join().unwrap()).sum()
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
        let (to, drained) = sink(1);
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
        let (to, drained) = sink(1);
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

#[test]
fn a_socket_to_file_writer_is_told_about_splice() {
    if !privileged("a_socket_to_file_writer_is_told_about_splice") {
        return;
    }
    let report = without_missed_runs("socket-to-file", || {
        let out = scratch_path("socket-to-file.out");
        let _ = std::fs::remove_file(&out);
        let report = attach_styles(&["socket-to-file", out.to_str().unwrap(), &SIZE.to_string()]);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), SIZE);
        std::fs::remove_file(&out).unwrap();
        report
    });
    assert_eq!(report["io_style"], "file_writer", "{report:#}");
    assert_eq!(
        flow_bytes(&report, "write", "user", "file", "bytes"),
        SIZE,
        "{report:#}"
    );
    assert!(
        advice(&report)[0].contains("splice() from the socket into a pipe"),
        "{report:#}"
    );
    names_only_what_works(&report, false, true);
}

/// `attach --follow --pid LISTENER` on a server that forks a child per connection: the
/// children's relaying is the tree's, exactly, and the rows add up.
#[test]
fn a_forking_relay_is_followed_from_its_listener() {
    if !privileged("a_forking_relay_is_followed_from_its_listener") {
        return;
    }
    use std::io::{BufRead as _, Write as _};
    let report = without_missed_runs("forking-relay", || {
        let (to, drained) = sink(2);
        let mut listener = Command::new("python3")
            .arg(styles_py())
            .args(["forking-relay", &to, "2"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(listener.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("its address")
            .to_string();
        let (attach, _log) = attach_started(&["--follow", "--pid", &listener.id().to_string()]);
        let block = vec![7u8; 1 << 16];
        for _ in 0..2 {
            let mut feed = std::net::TcpStream::connect(&addr).unwrap();
            for _ in 0..SIZE / block.len() as u64 {
                feed.write_all(&block).unwrap();
            }
        }
        assert!(listener.wait().unwrap().success());
        let report = report_of(attach.wait_with_output().unwrap());
        assert_eq!(drained.join().unwrap(), 2 * SIZE);
        report
    });
    assert_eq!(
        flow_bytes(&report, "recvfrom", "tcp", "user", "bytes"),
        2 * SIZE,
        "{report:#}"
    );
    assert_eq!(
        flow_bytes(&report, "sendto", "user", "tcp", "bytes"),
        2 * SIZE,
        "{report:#}"
    );
    // Each relayed byte copied twice, once in and once out, as the children's flows say.
    for (syscall, src, dst) in [("recvfrom", "tcp", "user"), ("sendto", "user", "tcp")] {
        let copied = flow_bytes(&report, syscall, src, dst, "cpu_copy_bytes");
        assert_eq!(copied, 2 * SIZE, "{syscall}: {report:#}");
    }
    assert_eq!(report["io_style"], "read_write_relay", "{report:#}");
    assert!(
        advice(&report)[0].contains("splice() through a pipe"),
        "{report:#}"
    );
    names_only_what_works(&report, false, true);
    let rows = report["processes"].as_array().expect("a row per process");
    assert_eq!(rows.len(), 3, "the listener and its two children: {report:#}");
    check_rows_add_up(&report);
}
