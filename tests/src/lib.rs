//! End-to-end test support for Parley (the tests live in `e2e/`).
