//! Starting a command held at a gate, so its probes are attached (filtered to its PID) before it
//! runs its first instruction.
use std::{ffi::CString, os::fd::OwnedFd};

use anyhow::{bail, Context as _, Result};
use nix::{
    errno::Errno,
    fcntl::OFlag,
    sys::wait::{waitpid, WaitStatus},
    unistd::{execvp, fork, pipe2, read, write, ForkResult, Pid},
};

pub struct Gated {
    pub pid: Pid,
    gate: Option<OwnedFd>,
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
        let (gate_reader, gate_writer) = pipe2(OFlag::O_CLOEXEC)?;
        let (error_reader, error_writer) = pipe2(OFlag::O_CLOEXEC)?;
        // SAFETY: the child only calls async-signal-safe functions (read, execvp, write, _exit)
        // on memory prepared before the fork.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                // Only the parent's copies may keep the gate shut and read exec errors.
                drop(gate_writer);
                drop(error_reader);
                let mut byte = [0u8; 1];
                let _ = read(&gate_reader, &mut byte);
                let errno = execvp(&argv[0], &argv).unwrap_err();
                let _ = write(&error_writer, &(errno as i32).to_ne_bytes());
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(127) }
            }
            ForkResult::Parent { child } => {
                drop(gate_reader);
                drop(error_writer);
                Ok(Gated {
                    pid: child,
                    gate: Some(gate_writer),
                    exec_errors: error_reader,
                    program,
                })
            }
        }
    }

    /// Lets the child exec; fails (and reaps it) when the command cannot be started.
    pub fn release(&mut self) -> Result<()> {
        drop(self.gate.take());
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
        match waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(Some(code)),
            Ok(WaitStatus::Signaled(..)) => Some(None),
            Ok(_) => None,
            Err(_) => Some(None),
        }
    }
}
