//! `zctrace attach --stacks` and the daemon's copy profiles on a real server: nginx, built with
//! frame pointers by `cargo xtask setup`, serving a file over loopback with `sendfile off` and
//! then `sendfile on`.
mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use common::*;
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

const BODY: u64 = 4 * MIB;
const REQUESTS: u64 = 8;

/// `cargo xtask setup`'s nginx (in cargo's target directory, wherever `CARGO_TARGET_DIR` puts
/// it), or the one `cargo xtask vmtest` carries into its VMs.
fn nginx_binary() -> PathBuf {
    let setup_built = || Path::new(env!("CARGO_TARGET_TMPDIR")).join("../nginx-fp/sbin/nginx");
    let path = std::env::var("ZCTRACE_NGINX").map_or_else(|_| setup_built(), PathBuf::from);
    assert!(
        path.exists(),
        "{}: missing; `cargo xtask setup` builds nginx with frame pointers",
        path.display()
    );
    path
}

/// One nginx process (no master) on a free loopback port, serving `BODY` bytes at /body.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(sendfile: bool) -> Nginx {
        let dir = scratch_path(if sendfile {
            "nginx-sendfile-on"
        } else {
            "nginx-sendfile-off"
        });
        // logs/: nginx opens its default error log before it reads the configuration.
        for sub in ["www", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::copy(test_file(BODY), dir.join("www/body")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;
             error_log {d}/error.log; events {{ worker_connections 64; }}
             http {{ access_log off; sendfile {}; client_body_temp_path {d}/body;
                    proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
                    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
                    server {{ listen 127.0.0.1:{port}; root {d}/www; }} }}",
            if sendfile { "on" } else { "off" }
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .spawn()
            .expect("starting nginx");
        let nginx = Nginx { child, port };
        eventually("nginx listening", std::time::Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        nginx
    }

    /// GET /body over HTTP/1.0; the bytes of the response.
    fn get(&self) -> u64 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .write_all(b"GET /body HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        response.len() as u64
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Traces `nginx` with `--stacks KIND` while it serves `REQUESTS` responses; the folded stacks, by
/// `weight`, as (frames, weight).
fn serve_traced(nginx: &Nginx, kind: &str, weight: &str, out: &Path) -> Vec<(String, u64)> {
    let mut attach = Command::new(zctrace_bin())
        .args([
            "attach",
            "--plain",
            "--interval",
            "200ms",
            "--duration",
            "120s",
            "--stacks",
            kind,
        ])
        .args(["--stack-weight", weight, "--stacks-out"])
        .arg(out)
        .args(["--pid", &nginx.child.id().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("zctrace attach");
    // The live view's first frame: the probes are attached.
    let mut lines = BufReader::new(attach.stdout.take().unwrap()).lines();
    lines.next().expect("a first frame").unwrap();
    for _ in 0..REQUESTS {
        assert!(nginx.get() > BODY);
    }
    kill(Pid::from_raw(attach.id() as i32), Signal::SIGINT).unwrap();
    lines.for_each(drop);
    assert!(attach.wait().unwrap().success());
    read_folded(out)
}

#[test]
fn nginx_without_sendfile_copies_from_its_event_loop_down_to_pread_and_writev() {
    if !privileged("nginx_without_sendfile_copies_from_its_event_loop_down_to_pread_and_writev") {
        return;
    }
    let nginx = Nginx::start(false);
    let folded = serve_traced(&nginx, "user", "copied", &scratch_path("nginx-off.folded"));
    let total: u64 = folded.iter().map(|(_, w)| w).sum();
    // The body is copied twice: pread into nginx's buffer, writev out of it.
    assert!(total >= 2 * REQUESTS * BODY, "{total} copied bytes: {folded:#?}");
    // Each wrapper's caller too, which libc's frameless wrappers hide from a frame-pointer walk.
    for (leaf, caller) in [
        ("[pread64 file->user]", "ngx_read_file"),
        ("[writev user->tcp]", "ngx_writev"),
    ] {
        let (frames, _) = folded
            .iter()
            .filter(|(frames, _)| frames.ends_with(leaf))
            .max_by_key(|(_, w)| *w)
            .unwrap_or_else(|| panic!("no {leaf} stack: {folded:#?}"));
        for frame in [
            "ngx_process_events_and_timers",
            "ngx_http_static_handler",
            "ngx_output_chain",
            caller,
        ] {
            assert!(has_frame(frames, frame), "{frame} missing from {frames}");
        }
    }
}

#[test]
fn nginx_with_sendfile_copies_only_its_headers() {
    if !privileged("nginx_with_sendfile_copies_only_its_headers") {
        return;
    }
    let nginx = Nginx::start(true);
    let copied = serve_traced(&nginx, "user", "copied", &scratch_path("nginx-on-copied.folded"));
    let copied_total: u64 = copied.iter().map(|(_, w)| w).sum();
    // What is left is the request read and the response headers: a few hundred bytes a request.
    assert!(
        copied_total < REQUESTS * 1024,
        "{copied_total} copied bytes for {REQUESTS} responses: {copied:#?}"
    );
    assert!(
        copied.iter().all(|(frames, _)| !frames.contains("pread")),
        "{copied:#?}"
    );
    drop(nginx);
    let nginx = Nginx::start(true);
    let moved = serve_traced(&nginx, "user", "moved", &scratch_path("nginx-on-moved.folded"));
    let sent: u64 = moved
        .iter()
        .filter(|(frames, _)| frames.ends_with("[sendfile file->tcp]"))
        .map(|(_, w)| w)
        .sum();
    assert_eq!(sent, REQUESTS * BODY, "{moved:#?}");
}

/// The heaviest folded line ending in `[COPIER copy]` for any of `copiers`, and the weight of
/// all of them.
/// The daemon's copy profile of nginx with `sendfile off`, read by `go tool pprof` (on the host:
/// the VMs carry no Go): its two heaviest functions are the libc wrappers nginx reads the body in
/// with and writes it out with, each within a tenth of the bytes its responses carried, and the
/// functions the `attach --stacks` tests find above them are in it too.
#[test]
fn go_tool_pprof_reads_the_daemons_copy_profile_of_nginx() {
    if !privileged("go_tool_pprof_reads_the_daemons_copy_profile_of_nginx") {
        return;
    }
    let daemon = Daemon::start(&["--profiles", "--profiles.period", "16384"]);
    let nginx = Nginx::start(false);
    for _ in 0..REQUESTS {
        assert!(nginx.get() > BODY);
    }
    let top = pprof_top(
        &daemon.profile("/debug/pprof/copies", "nginx-off.pb.gz"),
        nginx.child.id(),
    );
    let served = REQUESTS * BODY;
    for (wrapper, (flat, function)) in ["pread", "writev"].iter().zip(sorted_by_name(&top[..2])) {
        assert!(function.contains(wrapper), "{top:?}");
        assert!(
            flat.abs_diff(served) * 10 < served,
            "{function}: {flat} bytes estimated, {served} served: {top:?}"
        );
    }
    for frame in [
        "ngx_process_events_and_timers",
        "ngx_http_static_handler",
        "ngx_output_chain",
    ] {
        assert!(top.iter().any(|(_, f)| f == frame), "{frame} missing: {top:?}");
    }
}

/// `rows`, the one whose function names pread first.
fn sorted_by_name(rows: &[(u64, String)]) -> Vec<(u64, String)> {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|(_, function)| !function.contains("pread"));
    rows
}

fn heaviest_copy<'a>(folded: &'a [(String, u64)], copiers: &[&str]) -> Option<(&'a str, u64)> {
    let lines: Vec<&(String, u64)> = copiers.iter().flat_map(|c| copied_by(folded, c)).collect();
    let total = lines.iter().map(|(_, w)| w).sum();
    lines
        .into_iter()
        .max_by_key(|(_, w)| *w)
        .map(|(frames, _)| (frames.as_str(), total))
}

fn has_frames(frames: &str, wanted: &[&str]) -> bool {
    wanted.iter().all(|w| has_frame(frames, w))
}

#[test]
fn nginx_without_sendfile_shows_each_copy_from_its_event_loop_into_the_kernel() {
    if !privileged("nginx_without_sendfile_shows_each_copy_from_its_event_loop_into_the_kernel") {
        return;
    }
    let nginx = Nginx::start(false);
    let folded = serve_traced(&nginx, "both", "copied", &scratch_path("nginx-off-both.folded"));
    // The TCP send copies are observed on every kernel.
    let (frames, sent) = heaviest_copy(&folded, &["tcp_sendmsg_locked"])
        .unwrap_or_else(|| panic!("no send copy: {folded:#?}"));
    assert!(
        sent >= REQUESTS * BODY,
        "{sent} bytes copied by sends: {folded:#?}"
    );
    assert!(
        has_frames(
            frames,
            &["ngx_output_chain", "ngx_linux_sendfile_chain", "sock_write_iter"]
        ),
        "{frames}"
    );
    // The file reads are observed where kprobes or trampolines reach the copy routines.
    let reads = heaviest_copy(&folded, &["filemap_read", "shmem_file_read_iter"]);
    if Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        let (frames, read) = reads.unwrap_or_else(|| panic!("no file read copy: {folded:#?}"));
        assert!(
            read >= REQUESTS * BODY,
            "{read} bytes copied by reads: {folded:#?}"
        );
        assert!(has_frames(frames, &["ngx_output_chain", "vfs_read"]), "{frames}");
    } else {
        assert_eq!(reads, None, "{folded:#?}");
    }
}
