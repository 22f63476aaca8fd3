//! The edge's clock and id source: the one place services read time and draw new ids,
//! which they then hand to the pure core as arguments.

use std::time::{SystemTime, UNIX_EPOCH};

use parley_domain::Timestamp;
use uuid::Uuid;

/// The wall-clock time now.
pub fn now() -> Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp::from_micros(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A new time-ordered UUID (v7), for ids nothing else determines.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}
