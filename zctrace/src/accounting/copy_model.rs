//! The copy model: how many times the CPU copies each byte a data-path syscall moves, given what
//! it moved the bytes between. Figures from this table are labelled `model`, never `observed`.
use zctrace_common::{nr, FdKind, Variant};

/// Whether a figure was seen in the kernel or inferred from the copy model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Basis {
    Observed,
    Model,
}

impl Basis {
    pub fn label(self) -> &'static str {
        match self {
            Basis::Observed => "observed",
            Basis::Model => "model",
        }
    }
}

/// A data-path syscall's mechanism as the programs key it: the syscall, what it moved bytes
/// between, and whether it asked for MSG_ZEROCOPY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mechanism {
    pub nr: u16,
    pub src: FdKind,
    pub dst: FdKind,
    pub zerocopy_flag: bool,
}

impl Mechanism {
    /// From the raw fields of a `SyscallKey` or `StackKey`.
    pub fn from_key(nr: u16, src: u8, dst: u8, variant: u8) -> Mechanism {
        Mechanism {
            nr,
            src: FdKind::from_u8(src),
            dst: FdKind::from_u8(dst),
            zerocopy_flag: variant == Variant::Zerocopy as u8,
        }
    }

    /// CPU copies per byte, by the copy model.
    pub fn copies(self) -> u64 {
        let variant = if self.zerocopy_flag {
            Variant::Zerocopy
        } else {
            Variant::Plain
        };
        copy_factor(self.nr, self.dst, variant)
    }

    /// "write user->pipe", "sendto+zc user->tcp".
    pub fn label(self) -> String {
        let zerocopy = if self.zerocopy_flag { "+zc" } else { "" };
        format!(
            "{}{zerocopy} {}->{}",
            super::syscall_name(self.nr),
            kind_label(self.src),
            kind_label(self.dst)
        )
    }
}

/// CPU copies per byte for one data-path syscall between `src` and `dst`.
pub fn copy_factor(syscall: u16, dst: FdKind, variant: Variant) -> u64 {
    use FdKind::*;
    match syscall {
        // The null device discards without looking at the bytes.
        _ if dst == Null => 0,
        // Page-cache or skb pages are referenced, not copied, unless they land in a regular file
        // (or anything else that is not a pipe or a splice-capable socket).
        nr::SENDFILE | nr::SPLICE => match dst {
            Pipe | Tcp | Udp | Unix => 0,
            _ => 1,
        },
        nr::TEE => 0,
        // User pages mapped into a pipe; out of a pipe into user memory they are copied.
        nr::VMSPLICE => u64::from(dst == User),
        // Pinned user pages at send time; a local receiver's deferred copy is counted separately.
        nr::SENDTO | nr::SENDMSG | nr::SENDMMSG
            if variant == Variant::Zerocopy && matches!(dst, Tcp | Udp) =>
        {
            0
        }
        // An in-kernel copy; a reflinking filesystem would make it 0, which the probes cannot see.
        nr::COPY_FILE_RANGE => 1,
        // Between user memory and the kernel every byte is copied once (O_DIRECT aside).
        _ => 1,
    }
}

pub fn kind_label(kind: FdKind) -> &'static str {
    match kind {
        FdKind::None => "none",
        FdKind::User => "user",
        FdKind::Regular => "file",
        FdKind::Pipe => "pipe",
        FdKind::Tcp => "tcp",
        FdKind::Udp => "udp",
        FdKind::Unix => "unix",
        FdKind::OtherSocket => "socket",
        FdKind::Other => "other",
        FdKind::Null => "null",
    }
}

#[cfg(test)]
mod tests {
    use FdKind::*;

    use super::*;

    #[test]
    fn seeds_table_sender_side() {
        let plain = Variant::Plain;
        assert_eq!(copy_factor(nr::READ, User, plain), 1);
        assert_eq!(copy_factor(nr::WRITE, Tcp, plain), 1);
        assert_eq!(copy_factor(nr::SENDFILE, Tcp, plain), 0);
        assert_eq!(copy_factor(nr::SENDFILE, Regular, plain), 1);
        assert_eq!(copy_factor(nr::SPLICE, Pipe, plain), 0);
        assert_eq!(copy_factor(nr::SPLICE, Tcp, plain), 0);
        assert_eq!(copy_factor(nr::SPLICE, Pipe, plain), 0);
        assert_eq!(copy_factor(nr::SPLICE, Regular, plain), 1);
        assert_eq!(copy_factor(nr::TEE, Pipe, plain), 0);
        assert_eq!(copy_factor(nr::VMSPLICE, Pipe, plain), 0);
        assert_eq!(copy_factor(nr::VMSPLICE, User, plain), 1);
        assert_eq!(copy_factor(nr::COPY_FILE_RANGE, Regular, plain), 1);
        assert_eq!(copy_factor(nr::RECVFROM, User, plain), 1);
        assert_eq!(copy_factor(nr::SPLICE, Null, plain), 0);
        assert_eq!(copy_factor(nr::WRITE, Null, plain), 0);
        assert_eq!(copy_factor(nr::SPLICE, Other, plain), 1);
    }

    #[test]
    fn zerocopy_sends_are_free_only_on_sockets_that_support_them() {
        assert_eq!(copy_factor(nr::SENDMSG, Tcp, Variant::Zerocopy), 0);
        assert_eq!(copy_factor(nr::SENDTO, Udp, Variant::Zerocopy), 0);
        assert_eq!(copy_factor(nr::SENDMSG, Unix, Variant::Zerocopy), 1);
        assert_eq!(copy_factor(nr::SENDMSG, Tcp, Variant::Plain), 1);
    }
}
