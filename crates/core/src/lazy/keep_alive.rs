//! Ollama's `keep_alive`: a number of seconds or a Go duration string.

use std::time::Duration;

/// A `keep_alive` that is neither a number of seconds nor a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeepAliveError {
    #[error("must be a number of seconds or a duration such as \"5m\"")]
    NotADuration,
    #[error("`{0}` is not a duration such as \"5m\" or \"1h30m\"")]
    BadDuration(String),
}

/// How long a model stays loaded after its last request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    For(Duration),
    Forever,
}

impl KeepAlive {
    /// Ollama's `keep_alive`: seconds as a number, or a Go duration (`"5m"`, `"1h30m"`,
    /// `"0"`); any negative value keeps the model loaded.
    pub fn parse(v: &serde_json::Value) -> Result<KeepAlive, KeepAliveError> {
        match v {
            serde_json::Value::Number(n) => n
                .as_f64()
                .map(Self::from_secs)
                .ok_or(KeepAliveError::NotADuration),
            serde_json::Value::String(s) => s.parse(),
            _ => Err(KeepAliveError::NotADuration),
        }
    }

    fn from_secs(secs: f64) -> KeepAlive {
        if secs < 0.0 {
            KeepAlive::Forever
        } else {
            KeepAlive::For(Duration::from_secs_f64(secs.min(1e9)))
        }
    }
}

/// The flag's and the config file's form: a Go duration, or seconds.
impl std::str::FromStr for KeepAlive {
    type Err = KeepAliveError;

    fn from_str(s: &str) -> Result<KeepAlive, KeepAliveError> {
        go_duration(s.trim()).map(Self::from_secs)
    }
}

/// `"1h30m"`, `"90s"`, `"-1m"`, `"300"` (a bare number is seconds) in seconds.
fn go_duration(s: &str) -> Result<f64, KeepAliveError> {
    let bad = || KeepAliveError::BadDuration(s.to_string());
    let (sign, mut rest) = match s.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, s),
    };
    if let Ok(n) = rest.parse::<f64>() {
        return Ok(sign * n);
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += n * unit;
        rest = &rest[unit_len..];
    }
    Ok(sign * total)
}
