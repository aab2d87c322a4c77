//! Command lines shared by both binaries: walking `--flag value` and `--flag=value`, and
//! flag values (whole numbers, numbers, seconds), each with a one-line error that names the
//! flag.
//!
//! One rule for every command line: a flag is given once. A flag given twice is an error,
//! not the last one silently winning (`--rate-limit 5 ... --rate-limit 7` in a unit file is a
//! mistake the server cannot guess the intent of); only the flags a parser names repeatable
//! (each one adds a value, like `--allow-origin`) may repeat.

use std::time::Duration;

/// A command line being walked flag by flag.
pub struct Cli<I> {
    args: I,
    flag: String,
    /// The `=value` of the current flag, until `value` takes it.
    inline: Option<String>,
    /// Flags given so far.
    seen: Vec<String>,
    /// Flags that may be given more than once.
    repeatable: &'static [&'static str],
}

impl<I: Iterator<Item = String>> Cli<I> {
    pub fn new(args: impl IntoIterator<IntoIter = I>) -> Self {
        Cli { args: args.into_iter(), flag: String::new(), inline: None, seen: Vec::new(), repeatable: &[] }
    }

    /// Names the flags that may be given more than once; every other one is refused the
    /// second time.
    pub fn repeatable(mut self, flags: &'static [&'static str]) -> Self {
        self.repeatable = flags;
        self
    }

    /// The next flag, `None` at the end. A flag given `=value` that did not take it is an
    /// error, not a value silently dropped.
    pub fn next_flag(&mut self) -> Result<Option<String>, String> {
        if self.inline.is_some() {
            return Err(format!("{} takes no value", self.flag));
        }
        let Some(arg) = self.args.next() else { return Ok(None) };
        self.flag = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => {
                self.inline = Some(v.to_string());
                f.to_string()
            }
            _ => arg,
        };
        if self.seen.contains(&self.flag) && !self.repeatable.contains(&self.flag.as_str()) {
            return Err(format!("{} given twice: give it once", self.flag));
        }
        self.seen.push(self.flag.clone());
        Ok(Some(self.flag.clone()))
    }

    /// The current flag's value: its `=value`, else the next argument.
    pub fn value(&mut self) -> Result<String, String> {
        self.inline.take().or_else(|| self.args.next()).ok_or_else(|| format!("{} needs a value", self.flag))
    }
}

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
    fn flags_take_values_inline_or_next_and_refuse_stray_ones() {
        let args = ["--a=1", "--b", "2", "--c", "--d=x", "--e"].map(String::from);
        let mut cli = Cli::new(args);
        assert_eq!(cli.next_flag(), Ok(Some("--a".into())));
        assert_eq!(cli.value(), Ok("1".into()));
        assert_eq!(cli.next_flag(), Ok(Some("--b".into())));
        assert_eq!(cli.value(), Ok("2".into()));
        assert_eq!(cli.next_flag(), Ok(Some("--c".into()))); // a switch: no value taken
        assert_eq!(cli.next_flag(), Ok(Some("--d".into())));
        assert_eq!(cli.next_flag(), Err("--d takes no value".into()), "a switch given =x");
        let mut cli = Cli::new(["--e".to_string()]);
        cli.next_flag().unwrap();
        assert_eq!(cli.value(), Err("--e needs a value".into()));
        assert_eq!(cli.next_flag(), Ok(None));
    }

    #[test]
    fn a_flag_given_twice_is_refused_unless_repeatable() {
        let walk = |args: &[&str]| -> Result<Vec<String>, String> {
            let mut cli = Cli::new(args.iter().map(|a| a.to_string())).repeatable(&["--many"]);
            let mut got = Vec::new();
            while let Some(f) = cli.next_flag()? {
                if f != "--switch" {
                    got.push(cli.value()?);
                }
            }
            Ok(got)
        };
        assert_eq!(walk(&["--one", "5", "--one", "7"]), Err("--one given twice: give it once".into()));
        assert_eq!(
            walk(&["--one=5", "--one", "7"]),
            Err("--one given twice: give it once".into()),
            "either spelling"
        );
        assert_eq!(walk(&["--switch", "--switch"]), Err("--switch given twice: give it once".into()));
        assert_eq!(
            walk(&["--many", "a", "--many=b", "--one", "1"]),
            Ok(vec!["a".into(), "b".into(), "1".into()])
        );
    }

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
