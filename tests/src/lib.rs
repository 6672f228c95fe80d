//! Shared helpers for rehost end-to-end tests.
