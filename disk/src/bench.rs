//! The in-process benchmark behind `rehost disk bench`.
