//! The kernel's code symbols, read from `/proc/kallsyms` once, while the reader may still see
//! their addresses: the daemon drops its capabilities after starting, and the kernel then shows
//! every address as 0 (`kptr_restrict`). Modules loaded later are not in it; their frames stay
//! unnamed.
use anyhow::{ensure, Context as _, Result};

pub struct KernelSymbols {
    /// Each code symbol's start and the offset of its name in `names`, by start.
    starts: Vec<(u64, u32)>,
    names: String,
}

impl KernelSymbols {
    pub fn read() -> Result<KernelSymbols> {
        let text = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
        let symbols = KernelSymbols::parse(&text);
        ensure!(
            !symbols.starts.is_empty(),
            "/proc/kallsyms shows no addresses (kernel.kptr_restrict hides them from this process)"
        );
        Ok(symbols)
    }

    /// The code symbols of a kallsyms listing (`address type name [module]`), without those at
    /// address 0, which is all a reader without the right to see addresses gets.
    pub fn parse(text: &str) -> KernelSymbols {
        let mut symbols: Vec<(u64, &str)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let code = matches!(fields.next()?, "t" | "T" | "w" | "W");
                let name = fields.next()?;
                (code && address != 0).then_some((address, name))
            })
            .collect();
        symbols.sort_by_key(|(address, _)| *address);
        let mut names = String::new();
        let starts = symbols
            .into_iter()
            .map(|(address, name)| {
                let offset = names.len() as u32;
                names.push_str(name);
                names.push('\n');
                (address, offset)
            })
            .collect();
        KernelSymbols { starts, names }
    }

    /// The symbol `address` lies in: the last one starting at or below it.
    pub fn name(&self, address: u64) -> Option<&str> {
        let index = self
            .starts
            .partition_point(|(start, _)| *start <= address)
            .checked_sub(1)?;
        let offset = self.starts[index].1 as usize;
        self.names[offset..].split('\n').next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
ffffffff81000000 T _stext
ffffffff81200000 d some_data
ffffffff81100000 t tcp_sendmsg_locked
ffffffff81100400 T tcp_sendmsg
ffffffffc0000000 t nft_do_chain\t[nf_tables]
";

    #[test]
    fn an_address_is_named_by_the_code_symbol_it_lies_in() {
        let symbols = KernelSymbols::parse(LISTING);
        assert_eq!(symbols.name(0xffffffff81100000), Some("tcp_sendmsg_locked"));
        assert_eq!(symbols.name(0xffffffff811003ff), Some("tcp_sendmsg_locked"));
        assert_eq!(symbols.name(0xffffffff81100401), Some("tcp_sendmsg"));
        // Data symbols bound nothing.
        assert_eq!(symbols.name(0xffffffff81200010), Some("tcp_sendmsg"));
        assert_eq!(symbols.name(0xffffffffc0000010), Some("nft_do_chain"));
        assert_eq!(symbols.name(0xffffffff80000000), None);
    }

    #[test]
    fn a_listing_with_hidden_addresses_names_nothing() {
        let hidden = "0000000000000000 T _stext\n0000000000000000 t tcp_sendmsg_locked\n";
        let symbols = KernelSymbols::parse(hidden);
        assert!(symbols.starts.is_empty());
        assert_eq!(symbols.name(0xffffffff81100000), None);
    }
}
