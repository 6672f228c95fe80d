//! Interrupt lines from devices to the interrupt controllers.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// One interrupt input of the PIC/I/O APIC (an ISA IRQ or a GSI).
pub trait IrqLine: Send + Sync {
    /// Drives the line to `level` (true = asserted).
    fn set_level(&self, level: bool);
}

/// A line that records its level: for unit tests and for devices whose
/// interrupt output is not wired.
#[derive(Debug, Default)]
pub struct RecordingIrq {
    level: AtomicBool,
    rising_edges: AtomicU32,
}

impl RecordingIrq {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
    /// How many times the line went from low to high.
    pub fn rising_edges(&self) -> u32 {
        self.rising_edges.load(Ordering::SeqCst)
    }
}

impl IrqLine for RecordingIrq {
    fn set_level(&self, level: bool) {
        let old = self.level.swap(level, Ordering::SeqCst);
        if level && !old {
            self.rising_edges.fetch_add(1, Ordering::SeqCst);
        }
    }
}
