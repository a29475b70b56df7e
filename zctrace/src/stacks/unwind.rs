//! Where a leaf function keeps its return address at an instruction, read from the call frame
//! information (`.eh_frame`) of its file. A frame-pointer walk starts at the leaf's caller's frame
//! when the leaf keeps no frame of its own (libc's syscall wrappers), and so skips that caller;
//! the kernel side hands over a candidate return address, which is that caller exactly when the
//! CFI says the leaf's return address is where the candidate was found.
use std::path::Path;

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext, UnwindSection,
};
use object::{Object, ObjectSection, ObjectSegment};

/// Where a frameless leaf's return address is, at one of its instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnAddress {
    /// In the word this many words above the stack pointer (x86_64).
    StackSlot(u8),
    /// In the link register, never saved (arm64).
    LinkRegister,
}

/// Where the function at `file_offset` of the ELF file at `path` keeps its return address there,
/// if it keeps no frame; `None` when it keeps one (the frame-pointer walk then sees its caller),
/// or when the file has no CFI for that instruction.
pub fn frameless_return(path: &Path, file_offset: u64) -> Option<ReturnAddress> {
    let cache = object::ReadCache::new(std::fs::File::open(path).ok()?);
    let elf = object::File::parse(&cache).ok()?;
    let address = elf.segments().find_map(|segment| {
        let (start, size) = segment.file_range();
        (start..start + size)
            .contains(&file_offset)
            .then(|| segment.address() + file_offset - start)
    })?;
    let eh_frame = elf.section_by_name(".eh_frame")?;
    let header = elf.section_by_name(".eh_frame_hdr");
    let mut bases = BaseAddresses::default().set_eh_frame(eh_frame.address());
    if let Some(text) = elf.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(header) = &header {
        bases = bases.set_eh_frame_hdr(header.address());
    }
    let section = EhFrame::new(eh_frame.data().ok()?, LittleEndian);
    let mut context = UnwindContext::new();
    let parsed_header = header.and_then(|h| {
        EhFrameHdr::new(h.data().ok()?, LittleEndian)
            .parse(&bases, 8)
            .ok()
    });
    let row = match parsed_header.as_ref().and_then(|h| h.table()) {
        // Found by binary search; a header without a table is searched through, as none is.
        Some(table) => {
            table.unwind_info_for_address(&section, &bases, &mut context, address, EhFrame::cie_from_offset)
        }
        None => section.unwind_info_for_address(&bases, &mut context, address, EhFrame::cie_from_offset),
    }
    .ok()?;
    frameless(row.cfa(), row.register(RETURN_ADDRESS).as_ref())
}

#[cfg(target_arch = "x86_64")]
const RETURN_ADDRESS: gimli::Register = gimli::X86_64::RA;
#[cfg(target_arch = "aarch64")]
const RETURN_ADDRESS: gimli::Register = gimli::AArch64::X30;

/// x86_64: the call pushed the return address just below the caller's stack pointer, the CFA;
/// a leaf whose CFA is the stack pointer plus an offset has moved it by a known amount only.
#[cfg(target_arch = "x86_64")]
fn frameless(cfa: &CfaRule<usize>, return_rule: Option<&RegisterRule<usize>>) -> Option<ReturnAddress> {
    let &CfaRule::RegisterAndOffset { register, offset } = cfa else {
        return None;
    };
    let slot = (offset - 8) / 8;
    (register == gimli::X86_64::RSP
        && return_rule == Some(&RegisterRule::Offset(-8))
        && offset >= 8
        && offset % 8 == 0
        && slot < zctrace_common::CALLER_SLOTS as i64)
        .then_some(ReturnAddress::StackSlot(slot as u8))
}

/// arm64: the call left the return address in x30; a leaf that never saved it still has it there
/// (one that saved it has a frame record, which the walk follows).
#[cfg(target_arch = "aarch64")]
fn frameless(cfa: &CfaRule<usize>, return_rule: Option<&RegisterRule<usize>>) -> Option<ReturnAddress> {
    let &CfaRule::RegisterAndOffset { register, .. } = cfa else {
        return None;
    };
    let unsaved = matches!(return_rule, None | Some(RegisterRule::SameValue));
    (register == gimli::AArch64::SP && unsaved).then_some(ReturnAddress::LinkRegister)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary's own libc: its `read` keeps no frame on every distribution zctrace
    /// knows, and the test's own functions are built with CFI.
    fn libc_read() -> (std::path::PathBuf, u64) {
        let path = procfs::process::Process::myself()
            .unwrap()
            .maps()
            .unwrap()
            .into_iter()
            .find_map(|m| match m.pathname {
                procfs::process::MMapPath::Path(p) if p.to_string_lossy().contains("libc.so") => Some(p),
                _ => None,
            })
            .expect("libc mapped");
        let data = std::fs::read(&path).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        let read = elf
            .dynamic_symbols()
            .find(|s| object::ObjectSymbol::name(s) == Ok("read"))
            .map(|s| object::ObjectSymbol::address(&s))
            .expect("read in libc");
        let offset = elf
            .segments()
            .find_map(|s| {
                let (start, size) = s.file_range();
                (s.address()..s.address() + size)
                    .contains(&read)
                    .then(|| read - s.address() + start)
            })
            .unwrap();
        (path, offset)
    }

    #[test]
    fn libcs_read_keeps_its_return_address_at_the_stack_pointer_on_entry() {
        let (path, read) = libc_read();
        let expected = if cfg!(target_arch = "x86_64") {
            ReturnAddress::StackSlot(0)
        } else {
            ReturnAddress::LinkRegister
        };
        assert_eq!(frameless_return(&path, read), Some(expected));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn only_a_stack_pointer_based_frame_gives_a_slot() {
        let (rbp, rsp) = (gimli::X86_64::RBP, gimli::X86_64::RSP);
        let at = |register, offset| CfaRule::RegisterAndOffset { register, offset };
        let pushed = Some(&RegisterRule::Offset(-8));
        assert_eq!(frameless(&at(rsp, 8), pushed), Some(ReturnAddress::StackSlot(0)));
        // libc's wrappers on their way to the cancellation hooks: sub $0x28, %rsp.
        assert_eq!(
            frameless(&at(rsp, 0x30), pushed),
            Some(ReturnAddress::StackSlot(5))
        );
        assert_eq!(frameless(&at(rbp, 16), pushed), None);
        assert_eq!(frameless(&at(rsp, 8 + 8 * 8), pushed), None);
        assert_eq!(frameless(&at(rsp, 12), pushed), None);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn only_a_leaf_that_never_saved_the_link_register_gives_it() {
        let (sp, x29) = (gimli::AArch64::SP, gimli::AArch64::X29);
        let at = |register| CfaRule::RegisterAndOffset { register, offset: 16 };
        assert_eq!(frameless(&at(sp), None), Some(ReturnAddress::LinkRegister));
        assert_eq!(frameless(&at(sp), Some(&RegisterRule::Offset(-8))), None);
        assert_eq!(frameless(&at(x29), None), None);
    }

    #[test]
    fn a_file_without_cfi_gives_no_answer() {
        let dir = tempfile::tempdir().unwrap();
        let not_elf = dir.path().join("not-elf");
        std::fs::write(&not_elf, b"plain text").unwrap();
        assert_eq!(frameless_return(&not_elf, 0), None);
        assert_eq!(frameless_return(&dir.path().join("absent"), 0), None);
    }
}
