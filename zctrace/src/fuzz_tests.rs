//! Property tests: every parser of outside input answers arbitrary bytes with a value or an
//! error, never a panic, and what it accepts round-trips.
use proptest::prelude::*;

use crate::{
    exporter::{scrape::to_prometheus_text, webconfig::WebConfig},
    sender::{Header, HEADER_LEN},
};

proptest! {
    #[test]
    fn web_config_parser_never_panics(text in ".{0,400}") {
        let _ = WebConfig::parse(&text);
    }

    #[test]
    fn web_config_parser_survives_yaml_shaped_noise(
        key in "[a-z_]{1,20}", value in "[ -~]{0,40}", nested in proptest::bool::ANY
    ) {
        let text = if nested { format!("tls_server_config:\n  {key}: {value}\n") } else { format!("{key}: {value}\n") };
        let _ = WebConfig::parse(&text);
    }

    #[test]
    fn header_decode_accepts_only_its_own_encoding(bytes in proptest::collection::vec(any::<u8>(), HEADER_LEN)) {
        let raw: [u8; HEADER_LEN] = bytes.try_into().unwrap();
        if let Ok(header) = Header::decode(&raw) {
            prop_assert_eq!(Header::decode(&header.encode()).unwrap(), header);
        }
    }

    #[test]
    fn header_round_trips(len in any::<u64>(), checksum in any::<u32>()) {
        let header = Header { len, checksum };
        prop_assert_eq!(Header::decode(&header.encode()).unwrap(), header);
    }

    #[test]
    fn prometheus_text_conversion_keeps_every_sample(lines in proptest::collection::vec("[a-z_]{1,10}(_total)? [0-9]{1,5}", 0..20)) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect::<String>() + "# EOF\n";
        let converted = to_prometheus_text(&text);
        prop_assert!(!converted.contains("# EOF"));
        prop_assert_eq!(converted.lines().count(), lines.len());
    }
}
