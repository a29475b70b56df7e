//! Helpers shared by the integration tests: privilege gating, test files, the reference sender
//! and receiver as child processes, and looking a child up in zctrace's figures.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::OnceLock,
    thread::sleep,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use zctrace::{
    accounting::{per_process, ProcessFigures},
    check::bracketed::{measured_without_missed_runs, wait_until_blocked_in, BracketedSend, MissedRuns},
    probes::{ProbeOptions, Tracer},
    procfs,
};
use zctrace_common::ProcessKey;

pub const HEADER_LEN: u64 = zctrace::sender::HEADER_LEN as u64;
pub const MIB: u64 = 1 << 20;

/// Whether sys_exit attached the way this kernel should: as `cargo xtask vmtest` says for each
/// kernel of its matrix, else by either of its ways (which one is the kernel's to decide).
pub fn sys_exit_mode_expected(mode: &str) -> bool {
    match std::env::var("ZCTRACE_EXPECT_SYS_EXIT") {
        Ok(expected) => mode == expected,
        Err(_) => mode == "tp_btf" || mode == "tracepoint",
    }
}

/// True when the test may run. Without root it prints one line and returns false, unless
/// `ZCTRACE_REQUIRE_PRIVILEGED=1` (set by CI), where a skip is a failure.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("ZCTRACE_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "{test}: needs root to load eBPF programs, and ZCTRACE_REQUIRE_PRIVILEGED=1 forbids skipping"
    );
    eprintln!("skipping {test}: needs root (or CAP_BPF + CAP_PERFMON) to load eBPF programs");
    false
}

/// Polls `check` every 200 ms until it gives a value. After `within`, panics naming `what` and
/// showing what `check` last saw instead.
pub fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what} never happened; last seen:\n{last}"
            ),
        }
        sleep(Duration::from_millis(200));
    }
}

/// The zctrace binary: cargo's, or `ZCTRACE_BIN` where the tests run away from the build tree
/// (`cargo xtask vmtest` boots them in other kernels).
pub fn zctrace_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| std::env::var("ZCTRACE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_zctrace").into()))
}

/// A tracer with the default probes, whose sys_exit (every test's ground) attached.
pub fn load_tracer() -> Tracer {
    // `{:#}`, not the Debug form: that carries a backtrace long enough to hide the cause in a log.
    let tracer =
        Tracer::load(&ProbeOptions::default()).unwrap_or_else(|e| panic!("loading zctrace's probes: {e:#}"));
    let statuses = tracer.statuses();
    assert!(
        statuses
            .iter()
            .any(|s| s.probe == "sys_exit" && s.mode.is_attached()),
        "sys_exit did not attach: {statuses:?}"
    );
    tracer
}

/// A file of `size` pseudo-random bytes, created once per size and test binary.
pub fn test_file(size: u64) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let path = dir.path().join(format!("payload-{size}"));
    if !path.exists() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ size;
        let bytes: Vec<u8> = (0..size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        // Tests run in parallel: each writer gets its own temporary name, and rename is atomic.
        static WRITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let writer = WRITERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tmp = path.with_extension(format!("tmp{writer}"));
        std::fs::write(&tmp, bytes).expect("writing test file");
        std::fs::rename(&tmp, &path).expect("renaming test file");
    }
    path
}

pub fn scratch_path(name: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
        .join(name)
}

/// A file of this repository, by its path from the root.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// zctrace's programs loaded now, as `bpftool prog list` would show them, counted by one program
/// of each zctrace and asking the kernel directly (the VMs of `cargo xtask vmtest` have no
/// bpftool).
pub fn loaded_zctrace_programs() -> usize {
    loaded_zctrace_program_ids().len()
}

/// The kernel's ids of the programs `loaded_zctrace_programs` counts: a test that must leave
/// nothing behind compares ids, since an earlier test's programs may be freed meanwhile.
pub fn loaded_zctrace_program_ids() -> std::collections::BTreeSet<u32> {
    // sys_exit's program by either way: tp_btf, or the classic tracepoint's, whose name the
    // kernel cuts to 15 bytes.
    let names = [Some("sys_exit"), Some("sys_exit_tracep")];
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| names.contains(&p.name_as_str()))
        .map(|p| p.id())
        .collect()
}

/// A running child whose process key is known.
pub struct Traced {
    pub child: Child,
    pub key: ProcessKey,
}

impl Traced {
    pub fn spawn(command: &mut Command) -> Traced {
        let child = command.spawn().expect("spawning child");
        let key = key_of(child.id());
        Traced { child, key }
    }

    /// Waits for exit, asserting success; the key stays valid for the maps.
    pub fn wait_ok(mut self) -> ProcessKey {
        let status = self.child.wait().expect("waiting for child");
        assert!(status.success(), "child {:?} failed: {status}", self.key);
        self.key
    }
}

/// The process key of a live (or zombie) child, as the probes compute it.
pub fn key_of(pid: u32) -> ProcessKey {
    let ticks = procfs::read_start_ticks(pid).expect("child's /proc/PID/stat");
    ProcessKey {
        tgid: pid,
        reserved: 0,
        start_boottime_ns: ticks * 10_000_000,
    }
}

/// True when two keys name one process: the probes' start time and /proc's differ below a tick.
pub fn same_process(a: &ProcessKey, b: &ProcessKey) -> bool {
    a.tgid == b.tgid && procfs::start_ticks(a) == procfs::start_ticks(b)
}

/// Finds the figures of `key` (start time compared at /proc's tick resolution).
pub fn figures_of(tracer: &Tracer, key: &ProcessKey) -> ProcessFigures {
    let snapshot = tracer.snapshot().expect("reading maps");
    per_process(&snapshot, tracer.copies_observed())
        .into_iter()
        .find(|f| same_process(&f.key, key))
        .unwrap_or_else(|| panic!("no figures for process {key:?}"))
}

/// `zctrace serve --once` on a free loopback port.
pub struct Receiver {
    pub traced: Traced,
    pub addr: String,
    stdout: BufReader<ChildStdout>,
}

impl Receiver {
    pub fn start(extra: &[&str]) -> Receiver {
        let mut command = Command::new(zctrace_bin());
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--once"])
            .args(extra)
            .stdout(Stdio::piped());
        let mut traced = Traced::spawn(&mut command);
        let mut stdout = BufReader::new(traced.child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("receiver's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_string();
        Receiver { traced, addr, stdout }
    }

    /// Waits for the verdict; returns the receiver's key and its JSON report.
    pub fn finish(mut self) -> (ProcessKey, serde_json::Value) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("receiver report");
        let key = self.traced.wait_ok();
        (key, serde_json::from_str(&line).expect("receiver JSON"))
    }
}

/// Runs a `zctrace bracketed-send` and returns what zctrace saw of the transfer alone
/// (start-up excluded) and the sender's own report; again where the kernel skipped runs of
/// zctrace's programs during it.
pub fn send(
    tracer: &Tracer,
    method: &str,
    file: &Path,
    to: &[&str],
    chunk: u64,
) -> (ProcessFigures, serde_json::Value) {
    measured_without_missed_runs(|| send_once(tracer, method, file, to, chunk))
        .unwrap_or_else(|e| panic!("{method}: {e:#}"))
}

fn send_once(
    tracer: &Tracer,
    method: &str,
    file: &Path,
    to: &[&str],
    chunk: u64,
) -> anyhow::Result<(ProcessFigures, serde_json::Value)> {
    let mut args: Vec<String> = ["--method", method, "--file"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(file.display().to_string());
    args.extend(to.iter().map(|s| s.to_string()));
    args.extend(["--chunk".to_string(), chunk.to_string()]);
    let (during, report) = BracketedSend::spawn(Path::new(zctrace_bin()), &args)?.run(tracer)?;
    Ok((during, serde_json::to_value(report)?))
}

/// Sends `file` to a fresh receiver; returns the sender's transfer figures, its report, and the
/// receiver's key. A transfer during which the kernel skipped runs is made again, whole.
pub fn transfer(
    tracer: &Tracer,
    method: &str,
    file: &Path,
    chunk: u64,
) -> (ProcessFigures, serde_json::Value, ProcessKey) {
    measured_without_missed_runs(|| {
        let receiver = Receiver::start(&[]);
        let addr = receiver.addr.clone();
        let sent = send_once(tracer, method, file, &["--to", &addr], chunk);
        // Only a transfer that ran to its end has a receiver's verdict to wait for.
        if let Err(e) = &sent {
            assert!(e.downcast_ref::<MissedRuns>().is_some(), "{method}: {e:#}");
        }
        let (receiver, verdict) = receiver.finish();
        let (sender, report) = sent?;
        assert_eq!(
            verdict["bytes"], report["bytes"],
            "receiver verified a different length"
        );
        Ok((sender, report, receiver))
    })
    .unwrap_or_else(|e| panic!("{method}: {e:#}"))
}

/// A `zctrace workload ...` child, stopped at its "ready" line.
pub struct Workload {
    pub traced: Traced,
    stdin: Option<ChildStdin>,
}

impl Workload {
    pub fn run(args: &[&str]) -> Workload {
        let mut command = Command::new(zctrace_bin());
        command
            .arg("workload")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut traced = Traced::spawn(&mut command);
        let mut line = String::new();
        BufReader::new(traced.child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready");
        wait_until_blocked_in(traced.child.id(), libc::SYS_read).expect("the workload waits on stdin");
        let stdin = traced.child.stdin.take();
        Workload { traced, stdin }
    }

    pub fn finish(mut self) -> ProcessKey {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        self.traced.wait_ok()
    }
}

/// The folded stacks `attach --stacks-out` wrote, as (frames, weight).
pub fn read_folded(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .expect("folded stacks")
        .lines()
        .map(|line| {
            let (frames, weight) = line.rsplit_once(' ').expect("a weight");
            (frames.to_string(), weight.parse().expect("a number"))
        })
        .collect()
}

/// Whether a folded line's frames include `frame` whole (`__libc_start_main` is not `main`).
pub fn has_frame(frames: &str, frame: &str) -> bool {
    frames.split(';').any(|f| f == frame)
}

/// The folded lines of kernel stacks whose leaf is the copier `copier` (`[COPIER copy]`).
pub fn copied_by<'a>(folded: &'a [(String, u64)], copier: &str) -> Vec<&'a (String, u64)> {
    let leaf = format!(";[{copier} copy]");
    folded
        .iter()
        .filter(|(frames, _)| frames.ends_with(&leaf))
        .collect()
}

/// Runs `zctrace attach --json ...` to its end and returns its report, the last line of stdout.
pub fn attach_report(attach: &mut Command) -> serde_json::Value {
    report_of(attach.output().expect("zctrace attach"))
}

/// Runs `attempt` until its attach report tells of no skipped program runs, at most three times.
/// On kernels whose syscall tracepoints run preemptibly (7.2 on), a program preempted on a CPU
/// makes the kernel skip it for every other task there until it resumes: events lost to that run,
/// which the report tells (`missed_runs`). Exact figures are checked on a run without any.
pub fn without_missed_runs(test: &str, mut attempt: impl FnMut() -> serde_json::Value) -> serde_json::Value {
    for _ in 1..3 {
        let report = attempt();
        match report.get("missed_runs") {
            None => return report,
            Some(missed) => {
                eprintln!("{test}: the kernel skipped runs of zctrace's programs ({missed}); running again")
            }
        }
    }
    attempt()
}

/// Each process's row adds up to the report's totals.
pub fn check_rows_add_up(report: &serde_json::Value) {
    let rows = report["processes"].as_array().expect("a row per process");
    for figure in ["bytes", "delivered_bytes", "cpu_copy_bytes", "syscalls"] {
        let sum: u64 = rows.iter().map(|r| r[figure].as_u64().unwrap()).sum();
        assert_eq!(
            sum,
            report["totals"][figure].as_u64().unwrap(),
            "{figure}: the rows add up to the total\n{report:#}"
        );
    }
}

/// Starts `zctrace attach --json ARGS` and returns once its probes are attached, with the rest
/// of its log (kept open, so that zctrace can go on writing it).
pub fn attach_started(args: &[&str]) -> (Child, impl Iterator<Item = std::io::Result<String>>) {
    let mut attach = Command::new(zctrace_bin())
        .args(["--log.level", "info", "attach", "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(attach.stderr.take().unwrap()).lines();
    assert!(
        log.any(|line| line.unwrap().contains("probes attached; tracing")),
        "attach never started tracing"
    );
    (attach, log)
}

/// The report of a finished `zctrace attach --json`, which must have succeeded.
pub fn report_of(output: std::process::Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "attach failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("a report")).expect("report JSON")
}

/// A `zctrace daemon` on a free loopback port, stopped (SIGTERM) when dropped.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_at("127.0.0.1:0", extra)
    }

    pub fn start_at(listen: &str, extra: &[&str]) -> Daemon {
        Daemon::start_configured(listen, extra, |_| {})
    }

    /// Starts the daemon after `configure` has had its say on the command (limits, environment).
    pub fn start_configured(listen: &str, extra: &[&str], configure: impl FnOnce(&mut Command)) -> Daemon {
        let mut command = Command::new(zctrace_bin());
        command
            .args(["daemon", "--web.listen-address", listen, "--log.level", "info"])
            .args(extra)
            .stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().expect("starting the daemon");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(addr) = line.split("address=").nth(1) {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or_default().to_string());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("daemon did not start serving:\n{}", log.lock().unwrap()));
        Daemon { child, addr, log }
    }

    pub fn get(&self, path: &str, accept: Option<&str>) -> (u16, String, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut request = agent.get(&format!("http://{}{path}", self.addr));
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        let mut response = request.call().expect("HTTP request to the daemon");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (
            response.status().as_u16(),
            content_type,
            response.body_mut().read_to_string().expect("body"),
        )
    }

    /// A response body as bytes (a gzipped profile), with the status.
    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .get(&format!("http://{}{path}", self.addr))
            .call()
            .unwrap_or_else(|e| {
                panic!(
                    "HTTP request to the daemon: {e}; its log:\n{}",
                    self.log.lock().unwrap()
                )
            });
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_vec().expect("body");
        (status, body)
    }

    /// The copy profile (`--profiles`) since the daemon started, saved as `name`.
    /// The profile at `path`, saved as `name`.
    pub fn profile(&self, path: &str, name: &str) -> PathBuf {
        let (status, body) = self.get_bytes(path);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let path = scratch_path(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    pub fn metrics(&self) -> String {
        let (status, _, body) = self.get("/metrics", None);
        assert_eq!(status, 200, "{body}");
        body
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        self.child.wait().expect("daemon exit")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// The value of the sample whose labels include every `name="value"` pair given.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            labels
                .iter()
                .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse().ok())?
        })
}

/// A copy of the zctrace binary under another name, so its processes get that comm.
pub fn renamed_zctrace(name: &str) -> PathBuf {
    let path = scratch_path(name);
    if !path.exists() {
        // Tests run in parallel: each copier gets its own temporary name, and rename is atomic.
        static COPIERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let copier = COPIERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let copy = path.with_extension(format!("copy{copier}"));
        std::fs::copy(zctrace_bin(), &copy).expect("copying zctrace");
        wait_until_executable(&copy);
        std::fs::rename(&copy, &path).expect("renaming the copy of zctrace");
    }
    path
}

/// Waits out `ETXTBSY` on a binary just written: a child another test thread forked while the
/// copy was open holds its write descriptor until that child execs. Once one exec succeeds no
/// writer is left, so every later spawn of the binary is safe.
fn wait_until_executable(binary: &Path) {
    eventually(
        "the copied binary to be executable",
        Duration::from_secs(10),
        || match Command::new(binary)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => panic!("{} --version failed: {status}", binary.display()),
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => Err(e.to_string()),
            Err(e) => panic!("running {}: {e}", binary.display()),
        },
    );
}

/// A link to `target` under another name: its processes get that comm.
pub fn named_link(target: &str, name: &str) -> PathBuf {
    let link = scratch_path(name);
    if !link.exists() {
        std::os::unix::fs::symlink(target, &link).expect("symlinking");
    }
    link
}

/// `BINARY send ...` to a fresh receiver, to completion.
pub fn send_as(binary: &Path, method: &str, file: &Path, chunk: u64) {
    let receiver = Receiver::start(&[]);
    let status = Command::new(binary)
        .args(["send", "--method", method, "--file"])
        .arg(file)
        .args(["--to", &receiver.addr, "--chunk", &chunk.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("sender");
    assert!(status.success(), "{method} sender failed");
    receiver.finish();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Prometheus server (Debian's package) on a free loopback port, scraping `target` every
/// second; stopped when dropped.
pub struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target: &str, rules: Option<&Path>) -> Prometheus {
        Prometheus::start_jobs(&[("zctrace", target)], rules)
    }

    /// Scraping each (job, target) every second.
    pub fn start_jobs(jobs: &[(&str, &str)], rules: Option<&Path>) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rule_files = rules
            .map(|r| format!("rule_files: [\"{}\"]\n", r.display()))
            .unwrap_or_default();
        let scrape_configs: String = jobs
            .iter()
            .map(|(job, target)| {
                format!("  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n")
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}scrape_configs:\n{scrape_configs}"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package; `cargo xtask setup` installs it)");
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        eventually("prometheus getting ready", Duration::from_secs(30), || {
            ureq::get(&format!("http://{}/-/ready", prometheus.addr))
                .call()
                .map(drop)
                .map_err(|e| e.to_string())
        });
        prometheus
    }

    /// The `result` array of an instant query.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let body = ureq::get(&format!("http://{}/api/v1/query", self.addr))
            .query("query", promql)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "success", "{promql}: {body}");
        json["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs zctrace with `args` and asserts it fails with `expected` in its error output.
pub fn fails_with(args: &[&str], expected: &str) {
    let output = Command::new(zctrace_bin())
        .args(args)
        .output()
        .expect("running zctrace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} succeeded");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in:\n{stderr}"
    );
}

/// Cgroups of the v2 hierarchy under one made for a test, all removed after it.
pub struct TestCgroups {
    /// Where the hierarchy is mounted.
    mount: PathBuf,
    base: String,
}

impl TestCgroups {
    pub fn new(test: &str) -> TestCgroups {
        let mount = procfs::cgroup2_mount().expect("a cgroup2 mount");
        let base = format!("/zctrace-{test}-{}", std::process::id());
        std::fs::create_dir(mount.join(&base[1..])).expect("making a cgroup");
        TestCgroups { mount, base }
    }

    /// Makes `path` (with its parents) under the base; returns its path in the hierarchy.
    pub fn make(&self, path: &str) -> String {
        let path = format!("{}{path}", self.base);
        std::fs::create_dir_all(self.dir(&path)).expect("making a cgroup");
        path
    }

    pub fn dir(&self, path: &str) -> PathBuf {
        self.mount.join(&path[1..])
    }

    pub fn procs(&self, path: &str) -> PathBuf {
        self.dir(path).join("cgroup.procs")
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        let mut dirs = vec![self.dir(&self.base)];
        let mut index = 0;
        while index < dirs.len() {
            if let Ok(entries) = std::fs::read_dir(&dirs[index]) {
                dirs.extend(entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
            index += 1;
        }
        // Children first; the kernel frees a cgroup's last process a moment after it is reaped.
        for dir in dirs.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `zctrace send --method METHOD` of `file` as a process named `comm`, moved into the cgroup
/// whose `cgroup.procs` is `procs` before it execs, to a fresh receiver.
pub fn send_from_cgroup(comm: &str, procs: &Path, method: &str, file: &Path, chunk: u64) {
    let receiver = Receiver::start(&[]);
    let script = format!(
        "echo $$ > {procs} && exec {zctrace} send --method {method} --file {file} --to {to} --chunk {chunk}",
        procs = procs.display(),
        zctrace = renamed_zctrace(comm).display(),
        file = file.display(),
        to = receiver.addr,
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{comm} failed");
    receiver.finish();
}

/// Serves `body` as `/metrics` on a loopback port, to every request, for the life of the test
/// process; returns the address.
pub fn serve_exposition(body: String) -> String {
    use std::io::Write as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// How `tests/programs/stack_relay.c` is built.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    FramePointers,
    NoFramePointers,
    /// With frame pointers, its syscalls made through libc's wrappers, which keep no frame.
    LibcWrappers,
}

impl Relay {
    /// Its name's suffix, here and in the VM (`cargo xtask vmtest` builds the same variants).
    fn variant(self) -> &'static str {
        match self {
            Relay::FramePointers => "fp",
            Relay::NoFramePointers => "nofp",
            Relay::LibcWrappers => "libc",
        }
    }

    fn gcc_flags(self) -> &'static [&'static str] {
        match self {
            Relay::FramePointers => &["-fno-omit-frame-pointer"],
            Relay::NoFramePointers => &["-fomit-frame-pointer"],
            Relay::LibcWrappers => &["-fno-omit-frame-pointer", "-DLIBC_WRAPPERS"],
        }
    }
}

/// `tests/programs/stack_relay.c`, built once per variant: the tests run in parallel, and a
/// rebuild while another test's relay runs or has its frames named races with both.
pub fn relay_program(relay: Relay) -> PathBuf {
    static BUILT: [OnceLock<PathBuf>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    BUILT[relay as usize].get_or_init(|| build_relay(relay)).clone()
}

/// Built by gcc here, or by `cargo xtask vmtest` on the host, where the tests run in a VM without
/// a compiler.
fn build_relay(relay: Relay) -> PathBuf {
    let variant = relay.variant();
    if let Ok(prefix) = std::env::var("ZCTRACE_STACK_RELAY") {
        return PathBuf::from(format!("{prefix}-{variant}"));
    }
    let out = scratch_path(&format!("relay-{variant}"));
    let status = Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-pthread"])
        .args(relay.gcc_flags())
        .arg("-o")
        .arg(&out)
        .arg(repo("zctrace/tests/programs/stack_relay.c"))
        .status()
        .expect("gcc");
    assert!(status.success(), "building stack_relay.c");
    out
}

/// `go tool pprof -top` rows of `pid`'s samples in a copy profile: (flat CPU-copied bytes,
/// function), heaviest first.
pub fn pprof_top(profile: &Path, pid: u32) -> Vec<(u64, String)> {
    top_rows(&pprof(profile, pid, &["-top"]), 0)
}

/// The same rows by cumulative CPU-copied bytes (a function's own and its callees'), heaviest
/// first.
pub fn pprof_top_cumulative(profile: &Path, pid: u32) -> Vec<(u64, String)> {
    top_rows(&pprof(profile, pid, &["-top", "-cum"]), 3)
}

/// (the figure in `column`, function) of each row of a `-top` report.
fn top_rows(report: &str, column: usize) -> Vec<(u64, String)> {
    report
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let figure = fields.get(column)?.trim_end_matches('B').parse().ok()?;
            Some((figure, fields[5..].join(" ")))
        })
        .collect()
}

/// `go tool pprof -tags` of `pid`'s samples in a copy profile: each label and its values.
pub fn pprof_tags(profile: &Path, pid: u32) -> String {
    pprof(profile, pid, &["-tags"])
}

/// `go tool pprof -raw` of a copy profile: its samples, locations and mappings as stored.
pub fn pprof_raw(profile: &Path) -> String {
    let output = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(profile)
        .env("PPROF_TMPDIR", scratch_path("pprof-tmp"))
        .output()
        .expect("go tool pprof (`cargo xtask setup` installs golang-go)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The GNU build ID of the ELF at `path`, in hex, as `readelf -n` prints it.
pub fn build_id(path: &Path) -> String {
    let notes = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .expect("readelf");
    let text = String::from_utf8_lossy(&notes.stdout);
    text.split("Build ID: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no build ID in {}: {text}", path.display()))
        .to_string()
}

/// What `go tool pprof REPORT` prints of `pid`'s samples, by CPU-copied bytes.
fn pprof(profile: &Path, pid: u32, report: &[&str]) -> String {
    let output = Command::new("go")
        .args(["tool", "pprof"])
        .args(report)
        .args(["-unit=B", "-sample_index=copied_bytes"])
        .arg(format!("-tagfocus=pid={pid}"))
        .arg(profile)
        .env("PPROF_TMPDIR", scratch_path("pprof-tmp"))
        .output()
        .expect("go tool pprof (`cargo xtask setup` installs golang-go)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
