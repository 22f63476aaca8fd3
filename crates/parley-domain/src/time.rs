//! Time as a value: the core is handed `now`, it never reads a clock.

use std::fmt;
use std::time::Duration;

/// Microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub const fn from_millis(millis: i64) -> Self {
        Self(millis.saturating_mul(1000))
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Seconds and nanoseconds, as protobuf's `Timestamp` wants them.
    pub const fn to_seconds_nanos(self) -> (i64, i32) {
        (self.0.div_euclid(1_000_000), (self.0.rem_euclid(1_000_000) * 1000) as i32)
    }

    pub const fn from_seconds_nanos(seconds: i64, nanos: i32) -> Self {
        Self(seconds.saturating_mul(1_000_000).saturating_add(nanos as i64 / 1000))
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
    }

    /// How long from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}µs", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_nanos_round_trip_including_before_epoch() {
        for micros in [0, 1, 999_999, 1_000_000, 1_700_000_000_123_456, -1, -1_500_000] {
            let t = Timestamp::from_micros(micros);
            let (s, n) = t.to_seconds_nanos();
            assert!((0..1_000_000_000).contains(&n));
            assert_eq!(Timestamp::from_seconds_nanos(s, n), t);
        }
    }

    #[test]
    fn since_never_goes_negative() {
        let a = Timestamp::from_millis(1000);
        let b = Timestamp::from_millis(1500);
        assert_eq!(b.since(a), Duration::from_millis(500));
        assert_eq!(a.since(b), Duration::ZERO);
    }
}
