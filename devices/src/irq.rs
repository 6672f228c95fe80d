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

/// One interrupt line driven by several devices, as COM1 and COM3 share
/// ISA IRQ 4 (COM2 and COM4 IRQ 3). The line is the OR of its inputs: one
/// device lowering its output does not hide another's pending request. On
/// the edge-triggered PIC a second device asserting while the line is
/// already high makes no new edge, as on a PC; a guest handler for a shared
/// IRQ polls every device on it before returning.
pub struct SharedIrqLine {
    line: Arc<dyn IrqLine>,
    /// Bit i set: input i is asserted.
    asserted: std::sync::Mutex<u64>,
    inputs: AtomicU32,
}

impl SharedIrqLine {
    pub fn new(line: Arc<dyn IrqLine>) -> Arc<Self> {
        Arc::new(Self {
            line,
            asserted: std::sync::Mutex::new(0),
            inputs: AtomicU32::new(0),
        })
    }

    /// A new input of this line for one device (at most 64).
    pub fn input(self: &Arc<Self>) -> Arc<dyn IrqLine> {
        let bit = self.inputs.fetch_add(1, Ordering::SeqCst).min(63);
        Arc::new(SharedIrqInput {
            shared: self.clone(),
            mask: 1 << bit,
        })
    }
}

struct SharedIrqInput {
    shared: Arc<SharedIrqLine>,
    mask: u64,
}

impl IrqLine for SharedIrqInput {
    fn set_level(&self, level: bool) {
        // The lock also orders the changes of the line itself.
        let mut asserted = self
            .shared
            .asserted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before = *asserted != 0;
        if level {
            *asserted |= self.mask;
        } else {
            *asserted &= !self.mask;
        }
        let after = *asserted != 0;
        if before != after {
            self.shared.line.set_level(after);
        }
    }
}

/// Delivers message-signalled interrupts (PCI MSI): a dword `data`
/// written to `address` in the interrupt controllers' window.
pub trait MsiSender: Send + Sync {
    fn send(&self, address: u64, data: u32);
}

/// An MSI sink that records messages, for unit tests.
#[derive(Debug, Default)]
pub struct RecordingMsi {
    messages: std::sync::Mutex<Vec<(u64, u32)>>,
}

impl RecordingMsi {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Messages sent so far, oldest first.
    pub fn messages(&self) -> Vec<(u64, u32)> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl MsiSender for RecordingMsi {
    fn send(&self, address: u64, data: u32) {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((address, data));
    }
}
