//! The daemon and the CLI against a hostile client on loopback: password guessers from many
//! addresses, timing probes for user names, idle connections, scrape bursts, memory afterwards,
//! and signals. Run with `--nocapture` to see the figures the README quotes.
mod common;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use common::*;
use nix::sys::{
    signal::{kill, Signal},
    socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn},
};
use zctrace::exporter::connections::{raise_descriptor_limit, IDLE_TIMEOUT};

/// The tests take turns: each one's timings are its own, not its neighbours' load.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A web config with basic auth only: user alice, password s3cret, hashed at bcrypt `cost`.
fn auth_config(name: &str, cost: u32) -> PathBuf {
    let path = scratch_path(name);
    let hash = bcrypt::hash("s3cret", cost).unwrap();
    std::fs::write(&path, format!("basic_auth_users:\n  alice: {hash}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A TCP connection to `to` from loopback address `from`: the daemon tells clients apart by it.
fn connect_from(from: Ipv4Addr, to: &str) -> TcpStream {
    let to: SocketAddrV4 = to.parse().unwrap();
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    use std::os::fd::AsRawFd as _;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(from, 0))).unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    TcpStream::from(fd)
}

/// One GET of the metrics on a fresh connection from `from`, with basic auth when given:
/// (status, time taken).
fn get_from(from: Ipv4Addr, to: &str, credentials: Option<&str>) -> (u16, Duration) {
    let (status, time, _) = exchange(from, to, credentials);
    (status, time)
}

/// The metrics' body, fetched from 127.0.0.1.
fn metrics_body(to: &str, credentials: Option<&str>) -> String {
    let (status, _, body) = exchange(Ipv4Addr::LOCALHOST, to, credentials);
    assert_eq!(status, 200, "{body}");
    body
}

fn exchange(from: Ipv4Addr, to: &str, credentials: Option<&str>) -> (u16, Duration, String) {
    use base64::Engine as _;
    let start = Instant::now();
    let mut stream = connect_from(from, to);
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = credentials
        .map(|c| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
        })
        .unwrap_or_default();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: zctrace\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let took = start.elapsed();
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, took, body)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The daemon's resident memory in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

#[test]
fn password_guessers_from_eight_addresses_leave_the_scraper_every_scrape() {
    if !privileged("password_guessers_from_eight_addresses_leave_the_scraper_every_scrape") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let config = auth_config("guessers-web.yml", 10);
    let daemon = Daemon::start(&["--web.config.file", config.to_str().unwrap()]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (scrapes, guesses) = std::thread::scope(|s| {
        let attackers: Vec<_> = (2..10u8)
            .map(|host| {
                let (addr, stop) = (&daemon.addr, &stop);
                s.spawn(move || {
                    let mut statuses = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let guess = format!("alice:guess{}", statuses.len());
                        statuses.push(get_from(Ipv4Addr::new(127, 0, 0, host), addr, Some(&guess)).0);
                    }
                    statuses
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        let scrapes: Vec<(u16, Duration)> = (0..12)
            .map(|_| {
                let scrape = get_from(Ipv4Addr::LOCALHOST, &daemon.addr, Some("alice:s3cret"));
                std::thread::sleep(Duration::from_secs(1));
                scrape
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let guesses: Vec<u16> = attackers.into_iter().flat_map(|a| a.join().unwrap()).collect();
        (scrapes, guesses)
    });
    let slowest = scrapes.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!(
        "guessers: {} wrong guesses ({} answered 401, {} throttled with 429); the scraper got {:?}, slowest {slowest:?}",
        guesses.len(),
        guesses.iter().filter(|s| **s == 401).count(),
        guesses.iter().filter(|s| **s == 429).count(),
        scrapes.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
    );
    assert!(scrapes.iter().all(|(status, _)| *status == 200), "{scrapes:?}");
    assert!(
        guesses.iter().all(|s| *s == 401 || *s == 429),
        "every guess refused"
    );
    let body = metrics_body(&daemon.addr, Some("alice:s3cret"));
    let refused = |reason| sample(&body, "zctrace_http_refusals_total", &[("reason", reason)]).unwrap();
    assert_eq!(
        refused("unauthorized") + refused("throttled"),
        guesses.len() as f64,
        "every refusal counted"
    );
    assert!(refused("throttled") > 0.0, "the guessers were throttled");
}

#[test]
fn unknown_users_and_wrong_passwords_take_the_same_time() {
    if !privileged("unknown_users_and_wrong_passwords_take_the_same_time") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let config = auth_config("timing-web.yml", 10);
    let daemon = Daemon::start(&["--web.config.file", config.to_str().unwrap()]);
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    // Alternating, each from an address of its own so no throttle answers in its place.
    for i in 0..50u8 {
        let (status, time) = get_from(Ipv4Addr::new(127, 1, i, 1), &daemon.addr, Some("mallory:guess"));
        assert_eq!(status, 401);
        unknown.push(time);
        let (status, time) = get_from(Ipv4Addr::new(127, 1, i, 2), &daemon.addr, Some("alice:guess"));
        assert_eq!(status, 401);
        wrong.push(time);
    }
    let (unknown, wrong) = (median(unknown), median(wrong));
    let gap = unknown.abs_diff(wrong).as_secs_f64() / unknown.max(wrong).as_secs_f64();
    eprintln!(
        "timing: unknown user {unknown:?}, wrong password {wrong:?} (medians of 50): {:.1}% apart",
        gap * 100.0
    );
    assert!(
        gap <= 0.2,
        "unknown user {unknown:?} against wrong password {wrong:?}"
    );
}

/// LimitNOFILE of the shipped systemd unit.
fn unit_descriptor_limit() -> u64 {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/zctrace.service"
    ))
    .unwrap();
    unit.lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("the unit sets LimitNOFILE")
        .trim()
        .parse()
        .unwrap()
}

fn timed_scrape(addr: &str) -> (u16, Duration) {
    get_from(Ipv4Addr::LOCALHOST, addr, None)
}

#[test]
fn idle_connections_are_closed_and_bursts_queue_and_memory_comes_back() {
    if !privileged("idle_connections_are_closed_and_bursts_queue_and_memory_comes_back") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let limit = unit_descriptor_limit();
    let daemon = Daemon::start_configured("127.0.0.1:0", &[], |command| {
        // SAFETY: one async-signal-safe syscall between fork and exec.
        unsafe {
            command.pre_exec(move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                    .map_err(std::io::Error::from)
            })
        };
    });
    let pid = daemon.child.id();
    let rss_at_start = rss_mib(pid);
    let own_limit = raise_descriptor_limit().unwrap();
    assert!(
        own_limit >= 2000,
        "this test needs 2000 descriptors; the hard limit is {own_limit}"
    );

    let mut idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(&daemon.addr).unwrap())
        .collect();
    let all_open = Instant::now();
    let held = eventually(
        "the daemon holding 1000 idle connections",
        Duration::from_secs(5),
        || {
            let body = metrics_body(&daemon.addr, None);
            let open = sample(&body, "zctrace_http_connections", &[]).unwrap_or(0.0);
            (open >= 1000.0).then_some(open).ok_or(format!("{open} open"))
        },
    );
    let beside_idle: Vec<(u16, Duration)> = (0..5).map(|_| timed_scrape(&daemon.addr)).collect();
    assert!(beside_idle.iter().all(|(s, _)| *s == 200), "{beside_idle:?}");
    let scrape_time = median(beside_idle.iter().map(|(_, t)| *t).collect());
    wait_all_closed(&mut idle, IDLE_TIMEOUT + Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
    let closed_after = all_open.elapsed();
    eprintln!(
        "idle: descriptor limit {limit}; {held} connections held; a scrape beside them took {scrape_time:?} (median of 5); the last closed {closed_after:?} after the last opened"
    );
    assert!(scrape_time < Duration::from_millis(100), "{beside_idle:?}");
    assert!(
        closed_after <= IDLE_TIMEOUT + Duration::from_secs(2),
        "closed only after {closed_after:?}"
    );
    drop(idle);

    for scrapers in [50, 200] {
        let results = burst(&daemon.addr, scrapers);
        let slowest = results.iter().map(|(_, t)| *t).max().unwrap();
        eprintln!(
            "burst: {scrapers} concurrent scrapers, statuses {:?}, slowest {slowest:?}",
            statuses(&results)
        );
        assert!(
            results.iter().all(|(s, _)| *s == 200),
            "{scrapers} scrapers: {:?}",
            statuses(&results)
        );
    }
    // The sweep (every 2 s) hands freed memory back to the kernel.
    let rss = eventually(
        "memory back near its steady size",
        Duration::from_secs(10),
        || {
            let rss = rss_mib(pid);
            (rss <= 40.0).then_some(rss).ok_or(format!("{rss:.1} MiB"))
        },
    );
    eprintln!("memory: {rss_at_start:.1} MiB at start, {rss:.1} MiB after the idle flood and the bursts");
}

/// Waits until the daemon has closed every connection (EOF or reset).
fn wait_all_closed(streams: &mut [TcpStream], within: Duration) -> Result<(), String> {
    let start = Instant::now();
    for (i, stream) in streams.iter_mut().enumerate() {
        let left = within
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut [0u8; 64]) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Ok(n) => return Err(format!("connection {i}: {n} unexpected bytes")),
            Err(e) => {
                return Err(format!(
                    "connection {i} still open after {:?}: {e}",
                    start.elapsed()
                ))
            }
        }
    }
    Ok(())
}

fn burst(addr: &str, scrapers: usize) -> Vec<(u16, Duration)> {
    let barrier = std::sync::Barrier::new(scrapers);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..scrapers)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    timed_scrape(addr)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

fn statuses(results: &[(u16, Duration)]) -> std::collections::BTreeMap<u16, usize> {
    let mut counts = std::collections::BTreeMap::new();
    results
        .iter()
        .for_each(|(s, _)| *counts.entry(*s).or_insert(0) += 1);
    counts
}

#[test]
fn sighup_is_logged_and_ignored_and_shutdown_logs_in_order() {
    if !privileged("sighup_is_logged_and_ignored_and_shutdown_logs_in_order") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let daemon = Daemon::start(&[]);
    let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    kill(pid, Signal::SIGHUP).unwrap();
    eventually("SIGHUP logged", Duration::from_secs(5), || {
        let log = daemon.log.lock().unwrap();
        log.contains("SIGHUP ignored").then_some(()).ok_or(log.clone())
    });
    assert_eq!(timed_scrape(&daemon.addr).0, 200, "still serving after SIGHUP");
    let log = daemon.log.clone();
    let status = daemon.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM exits cleanly");
    let log = log.lock().unwrap().clone();
    let order = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("{what:?} not in:\n{log}"))
    };
    assert!(
        order("SIGTERM: shutting down") < order("stopped; programs detached"),
        "{log}"
    );
}

#[test]
fn top_honours_its_duration_and_sigterm_whatever_the_interval() {
    if !privileged("top_honours_its_duration_and_sigterm_whatever_the_interval") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let status = Command::new(zctrace_bin())
        .args(["top", "--plain", "--interval", "60s", "--duration", "1s"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let took = start.elapsed();
    assert!(status.success());
    // Bounds far from the 60 s interval, which top would wait out if it ignored --duration or
    // SIGTERM: loading the programs alone takes seconds on a busy 2-core machine.
    assert!(took < Duration::from_secs(20), "top --duration 1s took {took:?}");

    let mut top = Command::new(zctrace_bin())
        .args(["top", "--plain", "--interval", "60s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    top.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    kill(nix::unistd::Pid::from_raw(top.id() as i32), Signal::SIGTERM).unwrap();
    let status = top.wait().unwrap();
    let stopped = signalled.elapsed();
    eprintln!("top: --duration 1s with a 60 s interval took {took:?}; SIGTERM stopped it in {stopped:?}");
    assert!(status.success(), "{status:?}");
    assert!(stopped < Duration::from_secs(20), "SIGTERM took {stopped:?}");
}
