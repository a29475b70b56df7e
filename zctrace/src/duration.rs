//! Durations on the command line, as users of timeout(1) and bcc's tools write them: a bare
//! number is seconds; anything else is humantime ("1m30s", "250ms").
use std::time::Duration;

pub fn parse(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => Ok(Duration::from_secs_f64(seconds)),
        Ok(_) => Err(format!(
            "{text:?} is not a duration: it must be 0 or more seconds"
        )),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration ({e}); write seconds (8) or units (8s, 1m30s)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_seconds_and_units_still_work() {
        assert_eq!(parse("8"), Ok(Duration::from_secs(8)));
        assert_eq!(parse("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("8s"), Ok(Duration::from_secs(8)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn nonsense_and_negative_durations_are_refused_by_name() {
        assert!(parse("-5").unwrap_err().contains("0 or more seconds"));
        assert!(parse("soon").unwrap_err().contains("\"soon\" is not a duration"));
        assert!(parse("inf").is_err());
    }
}
