//! A send with a bracket around it: the child gets ready, sends on a signal and stops itself,
//! so a checker reads zctrace's maps before and after the transfer alone.
use std::io::Write as _;

use anyhow::{Context as _, Result};
use nix::{
    sys::signal::{raise, SigSet, Signal},
    unistd::Pid,
};

use crate::{
    accounting::{per_process, ProcessFigures},
    probes::Tracer,
    sender::{self, SendArgs, SendReport},
};

/// A `zctrace bracketed-send` child, waiting at its "ready" line for the go signal.
pub struct BracketedSend {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl BracketedSend {
    /// Starts `zctrace_binary bracketed-send ARGS...` and waits until it is ready.
    pub fn spawn(zctrace_binary: &std::path::Path, args: &[String]) -> Result<BracketedSend> {
        use std::{io::BufRead as _, os::unix::process::CommandExt as _};
        let mut command = std::process::Command::new(zctrace_binary);
        command
            .arg("bracketed-send")
            .args(args)
            .stdout(std::process::Stdio::piped());
        // SAFETY: between fork and exec the closure only makes one async-signal-safe syscall.
        // A sender outlives a killed checker otherwise, stopped at its signal wait forever.
        unsafe {
            command.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from))
        };
        let mut child = command.spawn().context("starting the sender")?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("sender stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "ready", "the sender did not get ready: {line:?}");
        let sender = BracketedSend { child, stdout };
        wait_until_blocked_in(sender.pid(), libc::SYS_rt_sigtimedwait)?;
        Ok(sender)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the transfer run and returns what `tracer` saw of it alone, with the sender's report.
    pub fn run(mut self, tracer: &Tracer) -> Result<(ProcessFigures, SendReport)> {
        use std::io::BufRead as _;

        use nix::sys::{
            signal::kill,
            wait::{waitpid, WaitPidFlag, WaitStatus},
        };
        let pid = Pid::from_raw(self.pid() as i32);
        let missed_before = missed_runs(tracer)?;
        // A tracer attached after the sender got ready has seen nothing of it yet: all zeros.
        let before = figures_of(tracer, self.pid()).unwrap_or_default();
        kill(pid, Signal::SIGUSR1)?;
        let stopped = waitpid(pid, Some(WaitPidFlag::WUNTRACED))?;
        anyhow::ensure!(
            matches!(stopped, WaitStatus::Stopped(_, Signal::SIGSTOP)),
            "the sender ended early: {stopped:?}"
        );
        let during = figures_of(tracer, self.pid())?.since(&before);
        let missed = missed_runs(tracer)? - missed_before;
        kill(pid, Signal::SIGCONT)?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the sender failed ({status})");
        let report = serde_json::from_str(&line).with_context(|| format!("sender report {line:?}"))?;
        if missed > 0 {
            return Err(MissedRuns(missed).into());
        }
        Ok((during, report))
    }
}

/// Waits until process `pid` sleeps in syscall `number`. A line a child prints reaches its
/// reader as soon as the write copied it, but the write's syscall exit (where zctrace counts it)
/// may run later: figures read before the child sleeps in its next syscall could miss the line.
pub fn wait_until_blocked_in(pid: u32, number: i64) -> Result<()> {
    let path = format!("/proc/{pid}/syscall");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let current = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        if current_syscall(&current) == Some(number) {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "process {pid} did not block in syscall {number} within 10 s ({path}: {current:?})"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The syscall a `/proc/PID/syscall` line shows the task blocked in; `None` while it runs.
fn current_syscall(proc_syscall: &str) -> Option<i64> {
    proc_syscall.split_whitespace().next()?.parse().ok()
}

/// The kernel skipped this many runs of zctrace's programs during a bracketed transfer (a
/// program preempted on a CPU is skipped there for every other task until it resumes, on kernels
/// whose syscall tracepoints run preemptibly): the transfer's figures may be short, so a checker
/// measures again rather than report them.
#[derive(Debug)]
pub struct MissedRuns(pub u64);

impl std::fmt::Display for MissedRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the kernel skipped {} runs of zctrace's programs during the transfer",
            self.0
        )
    }
}

impl std::error::Error for MissedRuns {}

fn missed_runs(tracer: &Tracer) -> Result<u64> {
    Ok(tracer.missed_runs()?.iter().map(|(_, n)| n).sum())
}

/// Runs `attempt` (a whole bracketed transfer) again while the kernel skipped runs during it, at
/// most `ATTEMPTS` times in all; any other failure ends it at once.
pub fn measured_without_missed_runs<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    const ATTEMPTS: usize = 3;
    for _ in 1..ATTEMPTS {
        match attempt() {
            Err(e) if e.downcast_ref::<MissedRuns>().is_some() => tracing::info!("{e}; measuring again"),
            other => return other,
        }
    }
    attempt()
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
    let seen = per_process(&tracer.snapshot()?, tracer.copies_observed());
    let processes = seen.len();
    seen.into_iter()
        .filter(|f| f.key.tgid == pid)
        .max_by_key(|f| f.key.start_boottime_ns)
        .with_context(|| {
            format!(
                "zctrace saw nothing of process {pid} ({processes} other processes seen, runs skipped by program: {:?})",
                tracer.missed_runs().unwrap_or_default()
            )
        })
}

/// The child's side: print "ready", wait for SIGUSR1, send, stop with SIGSTOP, then (after
/// SIGCONT) print the sender's report.
pub fn child(args: &SendArgs) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocking_syscall_is_the_first_field_and_a_running_task_has_none() {
        assert_eq!(
            current_syscall("128 0x7ffd1 0x0 0x0 0x8 0x0 0x0 0x7ffd0 0x7f12\n"),
            Some(128)
        );
        assert_eq!(current_syscall("-1 0x7ffd0 0x7f12\n"), Some(-1));
        assert_eq!(current_syscall("running\n"), None);
        assert_eq!(current_syscall(""), None);
    }
}
