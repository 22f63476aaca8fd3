//! Parley's copies of the protobuf well-known types it uses, `Timestamp` and `Duration`:
//! the same wire form as `google.protobuf`'s, plus their proto3 JSON form (an RFC 3339
//! string, and seconds with an `s`), which the web desk reads.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Serialize, Serializer};

/// A point in time: seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// A span of time: seconds and nanoseconds of the same sign.
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        let (seconds, nanos) = match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i32),
            Err(e) => {
                let d = e.duration();
                match d.subsec_nanos() {
                    0 => (-(d.as_secs() as i64), 0),
                    n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n as i32),
                }
            }
        };
        Timestamp { seconds, nanos }
    }
}

impl TryFrom<Timestamp> for std::time::SystemTime {
    type Error = String;

    /// The instant, when it is a valid time (nanoseconds within a second).
    fn try_from(t: Timestamp) -> Result<Self, String> {
        if !(0..1_000_000_000).contains(&t.nanos) {
            return Err(format!("nanos {} is not within a second", t.nanos));
        }
        let nanos = std::time::Duration::from_nanos(t.nanos as u64);
        match t.seconds {
            s if s >= 0 => Ok(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s as u64) + nanos),
            s => Ok(std::time::UNIX_EPOCH - std::time::Duration::from_secs(s.unsigned_abs()) + nanos),
        }
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC, with as many fractional digits as needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::Timestamp::new(self.seconds, self.nanos) {
            Ok(t) => write!(f, "{t}"),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl FromStr for Timestamp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t: jiff::Timestamp = s.parse().map_err(|e| format!("not an RFC 3339 time ({e})"))?;
        Ok(Timestamp { seconds: t.as_second(), nanos: t.subsec_nanosecond() })
    }
}

impl fmt::Display for Duration {
    /// Seconds with up to nine fractional digits and an `s`: "30s", "-1.5s".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let negative = self.seconds < 0 || self.nanos < 0;
        let (secs, nanos) = (self.seconds.unsigned_abs(), self.nanos.unsigned_abs());
        let sign = if negative { "-" } else { "" };
        if nanos == 0 {
            return write!(f, "{sign}{secs}s");
        }
        let fraction = format!("{nanos:09}");
        write!(f, "{sign}{secs}.{}s", fraction.trim_end_matches('0'))
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a duration such as \"30s\" or \"1.5s\"");
        let body = s.strip_suffix('s').ok_or_else(bad)?;
        let (negative, body) = match body.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, body),
        };
        let (whole, fraction) = body.split_once('.').unwrap_or((body, ""));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > 9 {
            return Err(bad());
        }
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let seconds: i64 = whole.parse().map_err(|_| bad())?;
        let nanos: i32 = if fraction.is_empty() { 0 } else { format!("{fraction:0<9}").parse().map_err(|_| bad())? };
        Ok(match negative {
            true => Duration { seconds: -seconds, nanos: -nanos },
            false => Duration { seconds, nanos },
        })
    }
}

/// Serializes through `Display` and deserializes from a string through `FromStr`.
macro_rules! string_json {
    ($t:ty, $expecting:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

string_json!(Timestamp, "an RFC 3339 time such as \"2026-12-06T03:00:00Z\"");
string_json!(Duration, "a duration such as \"30s\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_back_as_they_were_written() {
        for (t, text) in [
            (Timestamp { seconds: 0, nanos: 0 }, "\"1970-01-01T00:00:00Z\""),
            (Timestamp { seconds: 1_796_526_000, nanos: 123_000_000 }, "\"2026-12-06T03:00:00.123Z\""),
        ] {
            assert_eq!(serde_json::to_string(&t).unwrap(), text);
            assert_eq!(serde_json::from_str::<Timestamp>(text).unwrap(), t);
        }
        // Any offset is read as the instant it names.
        let t: Timestamp = serde_json::from_str("\"2026-12-06T06:00:00+03:00\"").unwrap();
        assert_eq!(t, Timestamp { seconds: 1_796_526_000, nanos: 0 });
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("12").is_err());
        let before = std::time::UNIX_EPOCH - std::time::Duration::from_millis(1500);
        let t = Timestamp::from(before);
        assert_eq!(t, Timestamp { seconds: -2, nanos: 500_000_000 });
        assert_eq!(std::time::SystemTime::try_from(t).unwrap(), before);
    }

    #[test]
    fn durations_read_back_as_they_were_written() {
        for (d, text) in [
            (Duration { seconds: 30, nanos: 0 }, "30s"),
            (Duration { seconds: 1, nanos: 500_000_000 }, "1.5s"),
            (Duration { seconds: 0, nanos: 1 }, "0.000000001s"),
            (Duration { seconds: -2, nanos: -250_000_000 }, "-2.25s"),
        ] {
            assert_eq!(d.to_string(), text);
            assert_eq!(text.parse::<Duration>().unwrap(), d);
        }
        for bad in ["30", "s", "1.s5", "1.0000000001s", "+1s", "1e3s", ".5s"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }
}
