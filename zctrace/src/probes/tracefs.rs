//! The layout of classic tracepoint records, from tracefs: programs read their fields at fixed
//! offsets, so a kernel that laid one out differently is refused rather than misread.
use anyhow::{ensure, Context as _, Result};
use zctrace_common::SYS_EXIT_RECORD_RET;

use super::catalog::SYS_EXIT_TRACEPOINT;

/// Where tracefs is mounted: its own mount, or under debugfs on older setups.
const ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The record fields programs read: (tracepoint, field, offset).
const READ_FIELDS: &[(&str, &str, u32)] = &[(SYS_EXIT_TRACEPOINT, "ret", SYS_EXIT_RECORD_RET)];

/// Fails unless every field a program reads from `category/name`'s record is where it reads it.
pub fn check_record(category: &str, name: &str) -> Result<()> {
    let target = format!("{category}/{name}");
    let format = ROOTS
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}/events/{target}/format")).ok())
        .with_context(|| format!("no tracefs format for {target} (is tracefs mounted?)"))?;
    for (_, field, expected) in READ_FIELDS.iter().filter(|(t, _, _)| *t == target) {
        let found =
            field_offset(&format, field).with_context(|| format!("{target}'s record has no {field}"))?;
        ensure!(
            found == *expected,
            "{target}'s {field} is at offset {found} on this kernel; the program reads offset {expected}"
        );
    }
    Ok(())
}

/// A field's offset in a tracefs format, from lines like `field:long ret;<TAB>offset:16;...`.
fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        if declaration.rsplit(' ').next()? != field {
            return None;
        }
        parts.find_map(|part| part.strip_prefix("offset:"))?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS_EXIT_FORMAT: &str = "name: sys_exit\nID: 21\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:long id;\toffset:8;\tsize:8;\tsigned:1;\n\
        \tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n\n\
        print fmt: \"NR %ld = %ld\", REC->id, REC->ret\n";

    #[test]
    fn finds_each_field_by_its_own_name() {
        assert_eq!(field_offset(SYS_EXIT_FORMAT, "ret"), Some(16));
        assert_eq!(field_offset(SYS_EXIT_FORMAT, "id"), Some(8));
        assert_eq!(field_offset(SYS_EXIT_FORMAT, "pid"), None);
        assert_eq!(field_offset(SYS_EXIT_FORMAT, "common_pid"), Some(4));
    }
}
