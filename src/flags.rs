//! Flag values shared by both binaries: whole numbers, numbers and seconds, each with a
//! one-line error that names the flag.

use std::time::Duration;

pub fn whole(flag: &str, v: &str) -> Result<usize, String> {
    v.parse().map_err(|_| format!("{flag}: '{v}' is not a whole number"))
}

pub fn positive(flag: &str, v: &str) -> Result<usize, String> {
    match whole(flag, v)? {
        0 => Err(format!("{flag}: must be more than 0")),
        n => Ok(n),
    }
}

pub fn non_negative_f64(flag: &str, v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("{flag}: '{v}' is not a number of 0 or more")),
    }
}

pub fn positive_f64(flag: &str, v: &str) -> Result<f64, String> {
    match non_negative_f64(flag, v)? {
        x if x > 0.0 => Ok(x),
        _ => Err(format!("{flag}: must be more than 0")),
    }
}

/// Seconds with fractions (`0.2`), at most `max`; zero only where `zero_ok`.
pub fn seconds(flag: &str, v: &str, zero_ok: bool, max: f64) -> Result<Duration, String> {
    let s: f64 = v.parse().map_err(|_| format!("{flag}: '{v}' is not a number of seconds"))?;
    // Written so that NaN fails too.
    if !(if zero_ok { s >= 0.0 } else { s > 0.0 }) {
        let least = if zero_ok { "0 or more seconds" } else { "more than 0 seconds" };
        return Err(format!("{flag}: must be {least}"));
    }
    if s > max {
        return Err(format!("{flag}: at most {max} seconds"));
    }
    Ok(Duration::from_secs_f64(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_errors() {
        assert_eq!(whole("--n", "7"), Ok(7));
        assert!(whole("--n", "-1").unwrap_err().contains("not a whole number"));
        assert!(positive("--n", "0").unwrap_err().contains("more than 0"));
        assert_eq!(positive_f64("--r", "0.5"), Ok(0.5));
        assert!(non_negative_f64("--r", "inf").is_err());
        assert_eq!(seconds("--s", "0.2", false, 10.0), Ok(Duration::from_millis(200)));
        assert_eq!(seconds("--s", "0", true, 10.0), Ok(Duration::ZERO));
        for (v, zero_ok, needle) in [
            ("0", false, "more than 0 seconds"),
            ("-1", true, "0 or more seconds"),
            ("NaN", false, "more than 0 seconds"),
            ("11", false, "at most 10 seconds"),
            ("x", true, "not a number of seconds"),
        ] {
            let e = seconds("--s", v, zero_ok, 10.0).unwrap_err();
            assert!(e.contains(needle), "{v}: {e}");
        }
    }
}
