//! Whether the kernel runs sys_exit's raw tracepoint programs preemptibly, asked of the kernel
//! itself: a program there records whether migration, not preemption, was disabled around it.
use anyhow::{Context as _, Result};
use aya::{
    maps::Array,
    programs::{BtfTracePoint, ProgramError},
    Btf, Ebpf,
};
use zctrace_common::PreemptionProbe;

const MAP: &str = "PREEMPTION_PROBE";
const PROGRAM: &str = "sys_exit_preemption";

/// Syscalls made for the probe to see, at most: the first normally answers.
const ATTEMPTS: usize = 100;

/// True where the kernel may preempt a program on `sys_exit` (7.x with preemptible RCU, which
/// disables migration around it instead): there it skips other tasks' runs meanwhile.
pub fn sys_exit_runs_preemptibly(ebpf: &mut Ebpf, btf: &Btf) -> Result<bool> {
    let mut slots: Array<_, u32> = Array::try_from(ebpf.map_mut(MAP).context("no preemption map")?)?;
    slots.set(PreemptionProbe::Asker as u32, std::process::id(), 0)?;
    slots.set(PreemptionProbe::Answer as u32, 0, 0)?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(PROGRAM)
        .context("no preemption program")?
        .try_into()?;
    program.load("sys_exit", btf)?;
    let answer = program.attach().map_err(anyhow::Error::from).and_then(|_| {
        let slots: Array<_, u32> = Array::try_from(ebpf.map(MAP).context("no preemption map")?)?;
        answer(&slots)
    });
    unload(ebpf)?;
    let answer = answer?.context("the sys_exit probe saw none of zctrace's syscalls")?;
    Ok(answer > 1)
}

/// The probe's answer once one of this process's syscalls has exited under it.
fn answer(slots: &Array<&aya::maps::MapData, u32>) -> Result<Option<u32>> {
    for _ in 0..ATTEMPTS {
        // SAFETY: getppid has no preconditions; it is called only to exit a syscall.
        unsafe { libc::getppid() };
        let answer = slots.get(&(PreemptionProbe::Answer as u32), 0)?;
        if answer != 0 {
            return Ok(Some(answer));
        }
    }
    Ok(None)
}

fn unload(ebpf: &mut Ebpf) -> Result<(), ProgramError> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(PROGRAM)
        .ok_or(ProgramError::NotLoaded)?
        .try_into()?;
    program.unload()
}
