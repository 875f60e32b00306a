//! Typed values with their units, as users write them in the config.
//!
//! Each type parses from the text a user writes (`"200/s"`, `"512MiB"`,
//! `0.25`, `"80%"`), prints back in the same form, and (de)serializes through
//! that form, so a value read from a file, shown in `status` or in a log line
//! reads the same everywhere.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Why a value does not parse: what is wrong and how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct UnitError {
    /// What is wrong, e.g. `"200" has no unit`.
    pub problem: String,
    /// How to fix it, e.g. `write a rate with its unit, e.g. "200/s"`.
    pub help: String,
}

impl UnitError {
    pub(crate) fn new(problem: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            problem: problem.into(),
            help: help.into(),
        }
    }
}

macro_rules! serde_via_str {
    ($ty:ty, $expecting:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse()
                            .map_err(|e: UnitError| E::custom(format!("{}; {}", e.problem, e.help)))
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

/// Parses a duration written with its unit: `"500us"`, `"2ms"`, `"1s"`, `"1m 30s"`.
///
/// A bare number is refused: `for = 2` could mean seconds or milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let t = text.trim();
    if !t.is_empty() && t.parse::<f64>().is_ok() {
        return Err(UnitError::new(
            format!("duration {text:?} has no unit"),
            format!("write the unit, e.g. \"{t}ms\" or \"{t}s\""),
        ));
    }
    humantime::parse_duration(t).map_err(|e| {
        UnitError::new(
            format!("{text:?} is not a duration ({e})"),
            "write a number and a unit: \"500us\", \"2ms\", \"1s\", \"5m\"",
        )
    })
}

/// Formats a duration the way users write it (`2ms`, `1s 500ms`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A rate of events, stored per second. Written `"200/s"`, `"12000/min"`,
/// `"5/ms"`, `"3600/h"`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Rate {
    per_second: f64,
}

impl Rate {
    /// A rate of `n` events per second.
    pub fn per_second(n: f64) -> Self {
        Self { per_second: n }
    }

    /// Events per second.
    pub fn as_per_second(self) -> f64 {
        self.per_second
    }
}

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(text: &str) -> Result<Self, UnitError> {
        let help = "write a count per unit of time: \"200/s\", \"12000/min\", \"5/ms\"";
        let Some((n, unit)) = text.trim().split_once('/') else {
            let problem = if text.trim().parse::<f64>().is_ok() {
                format!("rate {text:?} has no unit")
            } else {
                format!("{text:?} is not a rate")
            };
            return Err(UnitError::new(problem, help));
        };
        let n: f64 = n.trim().parse().map_err(|_| {
            UnitError::new(
                format!("{:?} in rate {text:?} is not a number", n.trim()),
                help,
            )
        })?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "ms" => 1e-3,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            other => {
                return Err(UnitError::new(
                    format!("unknown time unit {other:?} in rate {text:?}"),
                    help,
                ));
            }
        };
        if !n.is_finite() || n < 0.0 {
            return Err(UnitError::new(
                format!("rate {text:?} must be a finite number ≥ 0"),
                help,
            ));
        }
        Ok(Self {
            per_second: n / per,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", trim_float(self.per_second))
    }
}
serde_via_str!(Rate, "a rate such as \"200/s\"");

/// A CPU quota in CPUs: `0.25` is a quarter of one CPU, `2` two full CPUs.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Cpus(f64);

impl Cpus {
    /// The smallest quota `cpu.max` accepts is 1 ms per 100 ms period.
    pub const MIN: f64 = 0.01;

    /// A quota of `n` CPUs; `None` unless `n` is at least [`Cpus::MIN`] and finite.
    pub fn new(n: f64) -> Option<Self> {
        (n.is_finite() && n >= Self::MIN).then_some(Self(n))
    }

    /// Number of CPUs.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl FromStr for Cpus {
    type Err = UnitError;
    fn from_str(text: &str) -> Result<Self, UnitError> {
        let n: f64 = text.trim().parse().map_err(|_| {
            UnitError::new(
                format!("{text:?} is not a number of CPUs"),
                "write CPUs as a number, e.g. cpus = 0.25",
            )
        })?;
        Self::new(n).ok_or_else(|| {
            UnitError::new(
                format!("{text} CPUs is not a usable quota"),
                format!("use at least {} CPUs, e.g. cpus = 0.25", Self::MIN),
            )
        })
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} CPUs", trim_float(self.0))
    }
}
serde_via_str!(Cpus, "a number of CPUs such as 0.25");

/// A size in bytes. Written `"512MiB"`, `"2GiB"`, `"64KiB"`, `"1000000B"`, or
/// a bare integer of bytes. Binary units only: `MB` is refused as ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(u64);

impl Bytes {
    /// `n` bytes.
    pub fn new(n: u64) -> Self {
        Self(n)
    }

    /// Number of bytes.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for Bytes {
    type Err = UnitError;
    fn from_str(text: &str) -> Result<Self, UnitError> {
        let help = "write a size with a binary unit: \"512MiB\", \"2GiB\", \"64KiB\"";
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: f64 = n
            .parse()
            .map_err(|_| UnitError::new(format!("{text:?} is not a size"), help))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            "KB" | "MB" | "GB" | "TB" | "kB" => {
                return Err(UnitError::new(
                    format!("{unit:?} in {text:?} is ambiguous (1000 or 1024?)"),
                    format!(
                        "write {}iB, e.g. \"512MiB\"",
                        &unit[..1].to_ascii_uppercase()
                    ),
                ));
            }
            other => {
                return Err(UnitError::new(
                    format!("unknown size unit {other:?} in {text:?}"),
                    help,
                ));
            }
        };
        let bytes = n * mult as f64;
        if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
            return Err(UnitError::new(
                format!("size {text:?} is out of range"),
                help,
            ));
        }
        Ok(Self(bytes as u64))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, name) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}
serde_via_str!(Bytes, "a size such as \"512MiB\"");

/// A fraction between 0 and 1 inclusive: `0.8`, or `"80%"`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Ratio(f64);

impl Ratio {
    /// `r` if it lies in `0.0..=1.0`.
    pub fn new(r: f64) -> Option<Self> {
        (0.0..=1.0).contains(&r).then_some(Self(r))
    }

    /// The fraction.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl FromStr for Ratio {
    type Err = UnitError;
    fn from_str(text: &str) -> Result<Self, UnitError> {
        let help = "write a fraction between 0 and 1, e.g. 0.8, or a percentage, e.g. \"80%\"";
        let t = text.trim();
        let r = match t.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
            None => t.parse::<f64>(),
        }
        .map_err(|_| UnitError::new(format!("{text:?} is not a ratio"), help))?;
        Self::new(r).ok_or_else(|| UnitError::new(format!("ratio {text} is outside 0..1"), help))
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&trim_float(self.0))
    }
}
serde_via_str!(Ratio, "a ratio such as 0.8");

/// A `cpu.weight`: 1–10000 (100 is the kernel default), or `idle`, which
/// runs the cgroup only when nothing else wants the CPU (`cpu.idle = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuWeight {
    /// A weight from 1 to 10000.
    Weight(u16),
    /// `cpu.idle = 1` (SCHED_IDLE for the whole cgroup).
    Idle,
}

impl FromStr for CpuWeight {
    type Err = UnitError;
    fn from_str(text: &str) -> Result<Self, UnitError> {
        let help = "write a weight from 1 to 10000 (100 is the default), or \"idle\"";
        if text.trim() == "idle" {
            return Ok(Self::Idle);
        }
        match text.trim().parse::<u64>() {
            Ok(w @ 1..=10000) => Ok(Self::Weight(w as u16)),
            Ok(w) => Err(UnitError::new(
                format!("weight {w} is outside 1–10000"),
                help,
            )),
            Err(_) => Err(UnitError::new(
                format!("{text:?} is not a CPU weight"),
                help,
            )),
        }
    }
}

impl fmt::Display for CpuWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Weight(w) => write!(f, "{w}"),
            Self::Idle => f.write_str("idle"),
        }
    }
}
serde_via_str!(CpuWeight, "a weight from 1 to 10000, or \"idle\"");

/// Prints a float without a trailing `.0` and with at most 4 decimals.
pub(crate) fn trim_float(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("2ms").unwrap(), Duration::from_millis(2));
        assert!(parse_duration("2").unwrap_err().help.contains("\"2ms\""));
        assert!(parse_duration("2 parsecs").is_err());
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!("200/s".parse::<Rate>().unwrap().as_per_second(), 200.0);
        assert_eq!("120/min".parse::<Rate>().unwrap().as_per_second(), 2.0);
        assert_eq!("5/ms".parse::<Rate>().unwrap().to_string(), "5000/s");
        assert!("200".parse::<Rate>().is_err());
        assert!("200/fortnight".parse::<Rate>().is_err());
        assert!("-1/s".parse::<Rate>().is_err());
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!("512MiB".parse::<Bytes>().unwrap().get(), 512 << 20);
        assert_eq!("1.5GiB".parse::<Bytes>().unwrap().get(), 3 << 29);
        assert_eq!(Bytes::new(512 << 20).to_string(), "512MiB");
        assert!("512MB".parse::<Bytes>().unwrap_err().help.contains("MiB"));
        assert!("lots".parse::<Bytes>().is_err());
    }

    #[test]
    fn ratios_cpus_weights() {
        assert_eq!("80%".parse::<Ratio>().unwrap().get(), 0.8);
        assert!("1.2".parse::<Ratio>().is_err());
        assert_eq!("0.25".parse::<Cpus>().unwrap().get(), 0.25);
        assert!("0".parse::<Cpus>().is_err());
        assert_eq!("idle".parse::<CpuWeight>().unwrap(), CpuWeight::Idle);
        assert_eq!("100".parse::<CpuWeight>().unwrap(), CpuWeight::Weight(100));
        assert!("0".parse::<CpuWeight>().is_err());
        assert!("10001".parse::<CpuWeight>().is_err());
    }

    #[test]
    fn serde_round_trips_through_the_written_form() {
        let r: Rate = serde_json::from_str("\"200/s\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"200/s\"");
        let c: Cpus = serde_json::from_str("0.25").unwrap();
        assert_eq!(c.get(), 0.25);
    }
}
