//! Fuzz target: SMS segment counting on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_channels::segments;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let c = segments::count(s);
        assert!(c.segments <= c.units);
    }
});
