//! The 24-byte header a sender announces before the data: magic, length and checksum.
use std::fs::File;

use anyhow::{bail, Result};

use super::mapping::Mapping;

pub const HEADER_LEN: usize = 24;
const MAGIC: &[u8; 8] = b"ZCTRACE1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u64,
    pub checksum: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..20].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header> {
        if &bytes[..8] != MAGIC {
            bail!("not a zctrace sender: the stream does not start with the ZCTRACE1 header");
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into()?);
        let checksum = u32::from_le_bytes(bytes[16..20].try_into()?);
        Ok(Header { len, checksum })
    }
}

/// CRC-32 of the file, read through a mapping so the checksum adds no read() copies to the
/// sender's own accounting.
pub fn checksum_of(file: &File, size: u64) -> Result<u32> {
    let Some(mapping) = Mapping::of(file, size)? else {
        return Ok(crc32fast::hash(&[]));
    };
    let _guard = mapping.guard_sigbus();
    Ok(crc32fast::hash(mapping.bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_strangers() {
        let header = Header {
            len: 1 << 40,
            checksum: 0xdead_beef,
        };
        assert_eq!(Header::decode(&header.encode()).unwrap(), header);
        let err = Header::decode(&[b'x'; HEADER_LEN]).unwrap_err();
        assert!(err.to_string().contains("ZCTRACE1"));
    }
}
