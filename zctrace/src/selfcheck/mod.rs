//! Synthetic workloads with known counts, for checking zctrace against ground truth (`zctrace
//! doctor`, and the integration tests). Each ends by waiting for stdin to close, so the checker can
//! read `/proc` and the maps while the process is alive and idle.
use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::{
    sched::{sched_setaffinity, CpuSet},
    sys::signal::{raise, SigSet, Signal},
    unistd::{getppid, Pid},
};

use crate::{
    accounting::{per_process, ProcessFigures},
    probes::Tracer,
    sender::{self, Destination, Method, SendOptions, SendReport},
};

/// A `zctrace workload send` child, waiting at its "ready" line for the go signal.
pub struct BracketedSend {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl BracketedSend {
    /// Starts `zctrace_binary workload send ARGS...` and waits until it is ready.
    pub fn spawn(zctrace_binary: &std::path::Path, args: &[String]) -> Result<BracketedSend> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(zctrace_binary)
            .args(["workload", "send"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the sender")?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("sender stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "ready", "the sender did not get ready: {line:?}");
        Ok(BracketedSend { child, stdout })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the transfer run and returns what `tracer` saw of it alone, with the sender's report.
    pub fn run(mut self, tracer: &Tracer) -> Result<(ProcessFigures, SendReport)> {
        use nix::sys::{
            signal::kill,
            wait::{waitpid, WaitPidFlag, WaitStatus},
        };
        use std::io::BufRead as _;
        let pid = Pid::from_raw(self.pid() as i32);
        // A tracer attached after the sender got ready has seen nothing of it yet: all zeros.
        let before = figures_of(tracer, self.pid()).unwrap_or_default();
        kill(pid, Signal::SIGUSR1)?;
        let stopped = waitpid(pid, Some(WaitPidFlag::WUNTRACED))?;
        anyhow::ensure!(
            matches!(stopped, WaitStatus::Stopped(_, Signal::SIGSTOP)),
            "the sender ended early: {stopped:?}"
        );
        let during = figures_of(tracer, self.pid())?.since(&before);
        kill(pid, Signal::SIGCONT)?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the sender failed ({status})");
        let report = serde_json::from_str(&line).with_context(|| format!("sender report {line:?}"))?;
        Ok((during, report))
    }
}

impl Drop for BracketedSend {
    /// A sender left behind by a failed run would wait for its signal forever.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The figures of the newest process with this PID.
pub fn figures_of(tracer: &Tracer, pid: u32) -> Result<ProcessFigures> {
    per_process(&tracer.snapshot()?, tracer.copies_observed())
        .into_iter()
        .filter(|f| f.key.tgid == pid)
        .max_by_key(|f| f.key.start_boottime_ns)
        .with_context(|| format!("zctrace saw nothing of process {pid}"))
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum Workload {
    /// Call getppid() exactly COUNT times.
    Getppid { count: u64 },
    /// Sleep 1 ms SLEEPS times (voluntary switches), then spin SPIN_MS on CPU 0 (involuntary ones
    /// when something else runs there).
    SleepSpin {
        #[arg(long, default_value_t = 200)]
        sleeps: u32,
        #[arg(long, default_value_t = 600)]
        spin_ms: u64,
    },
    /// Spin SPIN_MS on CPU 0 and exit.
    Spin {
        #[arg(long, default_value_t = 600)]
        spin_ms: u64,
    },
    /// Time COUNT getpid() calls and print nanoseconds per call (a syscall the probes do not decode).
    GetpidLoop { count: u64 },
    /// Bounce a byte between two processes through pipes ROUNDS times; print nanoseconds per
    /// context switch (each round trip is two).
    PingPong { rounds: u64 },
    /// Bounce a byte over a loopback TCP connection between two processes on one CPU ROUNDS
    /// times; print nanoseconds per message (one send and one receive).
    TcpPingPong { rounds: u64 },
    /// Start /bin/true COUNT times, one after another; print nanoseconds per process.
    Spawn { count: u64 },
    /// `zctrace send`, bracketed so a checker sees only the transfer: print "ready", wait for
    /// SIGUSR1, send, stop with SIGSTOP, then (after SIGCONT) print the sender's report.
    Send(SendArgs),
    /// Rename itself COUNT times with prctl(PR_SET_NAME); print nanoseconds per rename.
    Rename { count: u64 },
    /// After AFTER_MS (asleep, so it switches out, or with --spin on CPU), rename itself to NAME
    /// with prctl(PR_SET_NAME) as daemons do after start-up, then send as `zctrace send` does.
    RenameThenSend {
        #[arg(long)]
        name: String,
        #[arg(long)]
        after_ms: u64,
        #[arg(long)]
        spin: bool,
        #[command(flatten)]
        send: SendArgs,
    },
    /// Write SIZE generated bytes from memory into a new file at --file, then send that file: a
    /// file writer that sends with sendfile is no mmap sender.
    WriteFileThenSend {
        #[arg(long)]
        size: u64,
        #[command(flatten)]
        send: SendArgs,
    },
    /// Send from a worker thread that names itself WORKER, as thread pools do; the process keeps
    /// its own name.
    SendFromThread {
        #[arg(long)]
        worker: String,
        #[command(flatten)]
        send: SendArgs,
    },
}

#[derive(Clone, Debug, clap::Args)]
pub struct SendArgs {
    #[arg(long, value_enum)]
    pub method: Method,
    #[arg(long)]
    pub file: PathBuf,
    /// Receiver address, for example 127.0.0.1:9471.
    #[arg(long, required_unless_present = "to_file", conflicts_with = "to_file")]
    pub to: Option<SocketAddr>,
    /// Write into this regular file instead of a socket (read-write, sendfile, splice).
    #[arg(long)]
    pub to_file: Option<PathBuf>,
    /// Bytes per syscall.
    #[arg(long, default_value_t = 128 * 1024, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    pub chunk: u64,
}

impl SendArgs {
    pub fn options<'a>(&'a self, progress: Option<&'a dyn Fn(u64)>) -> SendOptions<'a> {
        let destination = match (&self.to, &self.to_file) {
            (Some(addr), _) => Destination::Tcp(*addr),
            (None, Some(path)) => Destination::File(path.clone()),
            (None, None) => unreachable!("clap requires --to or --to-file"),
        };
        SendOptions {
            method: self.method,
            file: &self.file,
            destination,
            chunk: self.chunk as usize,
            progress,
        }
    }
}

pub fn run(workload: &Workload) -> Result<()> {
    match *workload {
        Workload::Getppid { count } => {
            for _ in 0..count {
                std::hint::black_box(getppid());
            }
        }
        Workload::SleepSpin { sleeps, spin_ms } => {
            for _ in 0..sleeps {
                std::thread::sleep(Duration::from_millis(1));
            }
            spin_on_cpu0(spin_ms)?;
        }
        Workload::Spin { spin_ms } => {
            spin_on_cpu0(spin_ms)?;
            return Ok(());
        }
        Workload::Send(ref args) => return bracketed_send(args),
        Workload::GetpidLoop { count } => {
            let started = Instant::now();
            for _ in 0..count {
                std::hint::black_box(nix::unistd::getpid());
            }
            println!("{:.1}", started.elapsed().as_nanos() as f64 / count.max(1) as f64);
            return Ok(());
        }
        Workload::PingPong { rounds } => return ping_pong(rounds),
        Workload::Rename { count } => return rename_loop(count),
        Workload::RenameThenSend {
            ref name,
            after_ms,
            spin,
            ref send,
        } => {
            let after = Duration::from_millis(after_ms);
            if spin {
                let until = Instant::now() + after;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            } else {
                std::thread::sleep(after);
            }
            set_name(name)?;
            return sender::send(&send.options(None)).map(drop);
        }
        Workload::WriteFileThenSend { size, ref send } => {
            let mut file = std::fs::File::create_new(&send.file)
                .with_context(|| format!("creating {} (it must not exist)", send.file.display()))?;
            let block = vec![0x5au8; 1 << 16];
            let mut left = size;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                file.write_all(&block[..n])?;
                left -= n as u64;
            }
            drop(file);
            return sender::send(&send.options(None)).map(drop);
        }
        Workload::SendFromThread { ref worker, ref send } => {
            let (worker, send) = (worker.clone(), send.clone());
            let sending = std::thread::spawn(move || -> Result<()> {
                set_name(&worker)?;
                sender::send(&send.options(None)).map(drop)
            });
            return sending
                .join()
                .map_err(|_| anyhow::anyhow!("the worker thread panicked"))?;
        }
        Workload::TcpPingPong { rounds } => return tcp_ping_pong(rounds),
        Workload::Spawn { count } => {
            let started = Instant::now();
            for _ in 0..count {
                let status = std::process::Command::new("/bin/true").status()?;
                anyhow::ensure!(status.success(), "/bin/true failed: {status}");
            }
            println!("{:.1}", started.elapsed().as_nanos() as f64 / count.max(1) as f64);
            return Ok(());
        }
    }
    println!("ready");
    let mut rest = Vec::new();
    std::io::stdin()
        .read_to_end(&mut rest)
        .context("waiting for stdin to close")?;
    Ok(())
}

fn bracketed_send(args: &SendArgs) -> Result<()> {
    let mut go = SigSet::empty();
    go.add(Signal::SIGUSR1);
    go.thread_block()?;
    println!("ready");
    std::io::stdout().flush()?;
    go.wait()?;
    let report = sender::send(&args.options(None));
    raise(Signal::SIGSTOP)?;
    println!("{}", serde_json::to_string(&report?)?);
    Ok(())
}

/// Names the calling thread (the process, when called from its first thread).
fn set_name(name: &str) -> Result<()> {
    let name = std::ffi::CString::new(name).context("a name without NUL bytes")?;
    nix::sys::prctl::set_name(&name).context("prctl(PR_SET_NAME)")?;
    Ok(())
}

fn rename_loop(count: u64) -> Result<()> {
    let names = [c"zc-rename-a", c"zc-rename-b"];
    let started = Instant::now();
    for i in 0..count {
        nix::sys::prctl::set_name(names[(i & 1) as usize])?;
    }
    println!("{:.1}", started.elapsed().as_nanos() as f64 / count.max(1) as f64);
    Ok(())
}

fn ping_pong(rounds: u64) -> Result<()> {
    use nix::unistd::{fork, pipe, read, write, ForkResult};
    let (to_child_r, to_child_w) = pipe()?;
    let (to_parent_r, to_parent_w) = pipe()?;
    let mut byte = [0u8; 1];
    // Both on one CPU: every round trip is then exactly two context switches there.
    pin_to_cpu0()?;
    // SAFETY: the child only makes read/write syscalls and exits.
    match unsafe { fork() }? {
        ForkResult::Child => {
            for _ in 0..rounds {
                let _ = read(&to_child_r, &mut byte);
                let _ = write(&to_parent_w, &byte);
            }
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            let started = Instant::now();
            for _ in 0..rounds {
                write(&to_child_w, &byte)?;
                read(&to_parent_r, &mut byte)?;
            }
            let elapsed = started.elapsed();
            nix::sys::wait::waitpid(child, None)?;
            println!("{:.1}", elapsed.as_nanos() as f64 / (2 * rounds.max(1)) as f64);
            Ok(())
        }
    }
}

fn tcp_ping_pong(rounds: u64) -> Result<()> {
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let mut parent = TcpStream::connect(listener.local_addr()?)?;
    let (mut child_end, _) = listener.accept()?;
    drop(listener);
    parent.set_nodelay(true)?;
    child_end.set_nodelay(true)?;
    let mut byte = [0u8; 1];
    // Both on one CPU, as in the pipe ping-pong: steadier, and every message is a switch.
    pin_to_cpu0()?;
    // SAFETY: the child only makes read/write syscalls and exits.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(parent);
            for _ in 0..rounds {
                if child_end.read_exact(&mut byte).is_err() || child_end.write_all(&byte).is_err() {
                    break;
                }
            }
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(child_end);
            let started = Instant::now();
            for _ in 0..rounds {
                parent.write_all(&byte)?;
                parent.read_exact(&mut byte)?;
            }
            let elapsed = started.elapsed();
            nix::sys::wait::waitpid(child, None)?;
            println!("{:.1}", elapsed.as_nanos() as f64 / (2 * rounds.max(1)) as f64);
            Ok(())
        }
    }
}

/// Pins the calling thread (and the children it forks after) to CPU 0.
fn pin_to_cpu0() -> Result<()> {
    let mut cpu0 = CpuSet::new();
    cpu0.set(0)?;
    sched_setaffinity(Pid::from_raw(0), &cpu0).context("pinning to CPU 0")?;
    Ok(())
}

fn spin_on_cpu0(millis: u64) -> Result<()> {
    pin_to_cpu0()?;
    let until = Instant::now() + Duration::from_millis(millis);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    Ok(())
}
