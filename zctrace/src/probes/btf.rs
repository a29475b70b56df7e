//! What the running kernel's BTF says: the struct field offsets the programs read at, resolved
//! so that one binary reads the right bytes on every BTF-enabled kernel (aya cannot emit CO-RE
//! relocations from Rust), and which functions exist with how many parameters.
use anyhow::{anyhow, bail, Context as _, Result};
use btf_rs::{Backend, Btf, BtfType, Struct, Type};
use zctrace_common::{KernelOffsets, EMBEDDED_FDS, NO_FIELD};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The running kernel's BTF, mapped rather than parsed: parsing it all would peak at about
/// 40 MiB, twice the daemon's steady size.
pub fn kernel_btf() -> Result<Btf> {
    let context = || format!("reading kernel BTF from {VMLINUX_BTF} (needs CONFIG_DEBUG_INFO_BTF)");
    match Btf::from_file_with_backend(VMLINUX_BTF, Backend::Mmap) {
        Ok(btf) => Ok(btf),
        // Kernels before mmap support for this file (6.1 among them) refuse with ENODEV; a
        // memfd holding a copy can be mapped instead, at the cost of the file's size (~5 MiB).
        Err(btf_rs::Error::IO(e)) if e.raw_os_error() == Some(libc::ENODEV) => {
            mapped_copy(VMLINUX_BTF).with_context(context)
        }
        Err(e) => Err(e).with_context(context),
    }
}

fn mapped_copy(path: &str) -> Result<Btf> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let memfd = std::fs::File::from(memfd_create("zctrace-btf", MFdFlags::MFD_CLOEXEC)?);
    std::io::copy(&mut std::fs::File::open(path)?, &mut &memfd)?;
    let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&memfd));
    Ok(Btf::from_file_with_backend(through, Backend::Mmap)?)
}

/// The offsets the programs read kernel structs at.
pub fn resolve(btf: &Btf) -> Result<KernelOffsets> {
    let field = |s: &str, path: &str| field_offset(btf, s, path);
    Ok(KernelOffsets {
        task_pid: field("task_struct", "pid")?,
        task_tgid: field("task_struct", "tgid")?,
        task_group_leader: field("task_struct", "group_leader")?,
        task_start_boottime: field("task_struct", "start_boottime")?,
        task_files: field("task_struct", "files")?,
        task_comm: field("task_struct", "comm")?,
        task_flags: field("task_struct", "flags")?,
        task_signal: field("task_struct", "signal")?,
        signal_live: field("signal_struct", "live")?,
        files_fdt: field("files_struct", "fdt")?,
        files_fd_array: embedded_fd_array(btf)?,
        fdtable_max_fds: field("fdtable", "max_fds")?,
        fdtable_fd: field("fdtable", "fd")?,
        file_inode: field("file", "f_inode")?,
        file_private_data: field("file", "private_data")?,
        file_mode: field("file", "f_mode")?,
        inode_mode: field("inode", "i_mode")?,
        inode_rdev: field("inode", "i_rdev")?,
        inode_ino: field("inode", "i_ino")?,
        socket_sk: field("socket", "sk")?,
        sock_family: field("sock", "__sk_common.skc_family")?,
        sock_type: field("sock", "sk_type")?,
        sock_protocol: field("sock", "sk_protocol")?,
        sock_route_caps: field("sock", "sk_route_caps")?,
        sock_flags: field("sock", "__sk_common.skc_flags")?,
        sock_dst_cache: field("sock", "sk_dst_cache")?,
        dst_dev: field("dst_entry", "dev")?,
        netdev_flags: field("net_device", "flags")?,
        msghdr_flags: field("msghdr", "msg_flags")?,
        // io_uring's zerocopy sends (6.0) brought msg_ubuf; older kernels have no such sends.
        msghdr_ubuf: field("msghdr", "msg_ubuf").unwrap_or(NO_FIELD),
        sock_zerocopy_bit: enum_value(btf, "sock_flags", "SOCK_ZEROCOPY")?,
        // Before 5.14 the iterator's kind shares `type` with its direction, in bits of which the
        // low byte holds the kind's (ITER_PIPE: 32) and READ is 0, as a pipe splice's is.
        iov_iter_type: field("iov_iter", "iter_type").or_else(|_| field("iov_iter", "type"))?,
        // 6.5 removed pipe iterators: splices stopped reading through them.
        iter_pipe: enum_value(btf, "iter_type", "ITER_PIPE").unwrap_or(u32::MAX),
        skb_data_len: field("sk_buff", "data_len")?,
        skb_head: field("sk_buff", "head")?,
        skb_end: field("sk_buff", "end")?,
        skb_cb: field("sk_buff", "cb")?,
        skb_sk: field("sk_buff", "sk")?,
        shinfo_destructor_arg: field("skb_shared_info", "destructor_arg")?,
        task_runtime: field("task_struct", "se.sum_exec_runtime")?,
        task_migrations: field("task_struct", "se.nr_migrations")?,
        task_stint_start_runtime: field("task_struct", "se.prev_sum_exec_runtime")?,
        task_last_arrival: field("task_struct", "sched_info.last_arrival").unwrap_or(NO_FIELD),
        task_migration_disabled: field("task_struct", "migration_disabled").unwrap_or(NO_FIELD),
        current_task_typed: enum_value(btf, "bpf_func_id", "BPF_FUNC_get_current_task_btf").is_ok() as u32,
        task_regs_typed: enum_value(btf, "bpf_func_id", "BPF_FUNC_task_pt_regs").is_ok() as u32,
        task_state: field("task_struct", "__state").or_else(|_| field("task_struct", "state"))?,
        task_real_parent: field("task_struct", "real_parent")?,
        task_cgroups: field("task_struct", "cgroups")?,
        css_set_dfl_cgrp: field("css_set", "dfl_cgrp")?,
        cgroup_kn: field("cgroup", "kn")?,
        kernfs_node_id: field("kernfs_node", "id")?,
    })
}

/// Offset of `files_struct.fd_array`, whose slots the programs read at constant offsets: a
/// kernel with another number of embedded slots would fail verification, so it is refused here.
fn embedded_fd_array(btf: &Btf) -> Result<u32> {
    let files = find_struct(btf, "files_struct")?;
    let (bits, type_id) = find_member(btf, &files, "fd_array")?
        .context("kernel BTF: struct files_struct has no member fd_array")?;
    match btf.resolve_type_by_id(type_id)? {
        Type::Array(array) if array.len() == EMBEDDED_FDS => Ok(bits / 8),
        Type::Array(array) => bail!(
            "kernel BTF: files_struct.fd_array has {} slots; zctrace's programs are built for {EMBEDDED_FDS}",
            array.len()
        ),
        _ => bail!("kernel BTF: files_struct.fd_array is not an array"),
    }
}

/// How many parameters kernel function `name` takes, or `None` when BTF has no such function.
pub fn function_params(btf: &Btf, name: &str) -> Option<usize> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Func(func) => match btf.resolve_chained_type(&func).ok()? {
                Type::FuncProto(proto) => Some(proto.parameters.len()),
                _ => None,
            },
            _ => None,
        })
}

/// How many arguments BTF tracepoint `name` hands its programs (its `btf_trace_<name>`
/// prototype less the context), or `None` when BTF has no such tracepoint.
pub fn tracepoint_args(btf: &Btf, name: &str) -> Option<usize> {
    let typedef = btf
        .resolve_types_by_name(&format!("btf_trace_{name}"))
        .ok()?
        .into_iter()
        .find(|t| matches!(t, Type::Typedef(_)))?;
    let mut t = typedef;
    loop {
        match t {
            Type::FuncProto(proto) => return proto.parameters.len().checked_sub(1),
            Type::Typedef(_) | Type::Ptr(_) => t = btf.resolve_chained_type(t.as_btf_type()?).ok()?,
            _ => return None,
        }
    }
}

/// Byte offset of `path` (members separated by dots) inside `struct_name`, looking through
/// anonymous structs and unions as C does.
pub fn field_offset(btf: &Btf, struct_name: &str, path: &str) -> Result<u32> {
    let mut current = find_struct(btf, struct_name)?;
    let mut bits = 0u32;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (offset, type_id) = find_member(btf, &current, segment)?
            .ok_or_else(|| anyhow!("kernel BTF: struct {struct_name} has no member {path}"))?;
        bits += offset;
        if segments.peek().is_some() {
            current = as_struct(btf, type_id)?
                .ok_or_else(|| anyhow!("kernel BTF: {struct_name}.{segment} is not a struct"))?;
        }
    }
    if !bits.is_multiple_of(8) {
        bail!("kernel BTF: {struct_name}.{path} is a bitfield; zctrace reads whole fields only");
    }
    Ok(bits / 8)
}

fn find_struct(btf: &Btf, name: &str) -> Result<Struct> {
    btf.resolve_types_by_name(name)
        .with_context(|| format!("kernel BTF has no type named {name}"))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) | Type::Union(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| anyhow!("kernel BTF: {name} is not a struct"))
}

/// (bit offset, type id) of member `name`, searching anonymous members recursively.
fn find_member(btf: &Btf, s: &Struct, name: &str) -> Result<Option<(u32, u32)>> {
    for member in &s.members {
        if matches!(member.bitfield_size(), Some(size) if size != 0) && btf.resolve_name(member)? == name {
            bail!("kernel BTF: member {name} is a bitfield; zctrace reads whole fields only");
        }
        let member_name = btf.resolve_name(member)?;
        let type_id = member.get_type_id().context("BTF member without a type")?;
        if member_name == name {
            return Ok(Some((member.bit_offset(), type_id)));
        }
        if member_name.is_empty() {
            if let Some(inner) = as_struct(btf, type_id)? {
                if let Some((offset, id)) = find_member(btf, &inner, name)? {
                    return Ok(Some((member.bit_offset() + offset, id)));
                }
            }
        }
    }
    Ok(None)
}

/// The struct or union behind `type_id`, looking through typedefs and qualifiers.
fn as_struct(btf: &Btf, type_id: u32) -> Result<Option<Struct>> {
    let mut t = btf.resolve_type_by_id(type_id)?;
    loop {
        match t {
            Type::Struct(s) | Type::Union(s) => return Ok(Some(s)),
            Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::TypeTag(_) => {
                let inner = t.as_btf_type().context("BTF qualifier without a type")?;
                t = btf.resolve_chained_type(inner)?;
            }
            _ => return Ok(None),
        }
    }
}

fn enum_value(btf: &Btf, enum_name: &str, member_name: &str) -> Result<u32> {
    for t in btf.resolve_types_by_name(enum_name)? {
        if let Type::Enum(e) = t {
            for member in &e.members {
                if btf.resolve_name(member)? == member_name {
                    return Ok(member.val());
                }
            }
        }
    }
    bail!("kernel BTF: enum {enum_name} has no {member_name}")
}
