//! Direct Linux boot (filled in below).
