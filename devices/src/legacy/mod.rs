//! The legacy PC pieces firmware relies on.

pub mod cmos;
pub mod debugcon;
pub mod fw_cfg;
pub mod i8042;
pub mod port92;
pub mod scancode;
