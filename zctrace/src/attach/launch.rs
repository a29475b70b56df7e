//! Starting a command held at a gate, so its probes are attached (filtered to its PID) before it
//! runs its first instruction. The gate is a stop signal, not a pipe to read: a read would be the
//! first data-path call of every launched report.
use std::{ffi::CString, os::fd::OwnedFd};

use anyhow::{bail, Context as _, Result};
use nix::{
    errno::Errno,
    fcntl::OFlag,
    sys::{
        signal::{kill, raise, Signal},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::{execvp, fork, pipe2, read, write, ForkResult, Pid},
};

pub struct Gated {
    pub pid: Pid,
    exec_errors: OwnedFd,
    program: String,
}

impl Gated {
    /// Forks a child that waits at the gate, then execs `command`.
    pub fn spawn(command: &[String]) -> Result<Gated> {
        let program = command.first().context("no command given after --")?.clone();
        let argv: Vec<CString> = command
            .iter()
            .map(|a| {
                CString::new(a.as_bytes()).with_context(|| format!("argument {a:?} contains a NUL byte"))
            })
            .collect::<Result<_>>()?;
        let (error_reader, error_writer) = pipe2(OFlag::O_CLOEXEC)?;
        // SAFETY: the child only calls async-signal-safe functions (raise, execvp, write, _exit)
        // on memory prepared before the fork.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                // Only the parent's copy may read exec errors.
                drop(error_reader);
                let _ = raise(Signal::SIGSTOP);
                let errno = execvp(&argv[0], &argv).unwrap_err();
                let _ = write(&error_writer, &(errno as i32).to_ne_bytes());
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(127) }
            }
            ForkResult::Parent { child } => {
                drop(error_writer);
                match waitpid(child, Some(WaitPidFlag::WUNTRACED))
                    .context("waiting for the command to stop at its gate")?
                {
                    WaitStatus::Stopped(..) => Ok(Gated {
                        pid: child,
                        exec_errors: error_reader,
                        program,
                    }),
                    other => bail!("the command's process ended before it could start: {other:?}"),
                }
            }
        }
    }

    /// Lets the child exec; fails (and reaps it) when the command cannot be started.
    pub fn release(&mut self) -> Result<()> {
        kill(self.pid, Signal::SIGCONT).context("releasing the command")?;
        let mut raw = [0u8; 4];
        let n = read(&self.exec_errors, &mut raw).unwrap_or(0);
        if n == 4 {
            let errno = Errno::from_raw(i32::from_ne_bytes(raw));
            let _ = waitpid(self.pid, None);
            bail!("cannot start {:?}: {errno} ({})", self.program, errno.desc());
        }
        Ok(())
    }

    /// The exit code once the child has exited (reaping it), else `None`.
    pub fn exit_code(&self) -> Option<Option<i32>> {
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(Some(code)),
            Ok(WaitStatus::Signaled(..)) => Some(None),
            Ok(_) => None,
            Err(_) => Some(None),
        }
    }
}
