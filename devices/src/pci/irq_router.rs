//! PCI INTx routing through the PIIX3 PIRQ route control registers
//! (config 0x60-0x63): a function's pin maps to PIRQ A-D by the slot
//! swizzle, and each PIRQ to an ISA IRQ or to nothing. Several functions
//! can share a PIRQ; the line is the OR of them (level-triggered).

use std::sync::{Arc, Mutex};

use crate::irq::IrqLine;

/// A route register's "disabled" bit.
pub const PIRQ_DISABLED: u8 = 0x80;

struct State {
    routes: [u8; 4],
    /// Per PIRQ, a bit per asserting source.
    asserted: [u64; 4],
}

pub struct PciInterruptRouter {
    state: Mutex<State>,
    /// ISA IRQ lines 0-15.
    isa: Vec<Arc<dyn IrqLine>>,
}

impl PciInterruptRouter {
    /// `isa` holds the lines for ISA IRQs 0-15.
    pub fn new(isa: Vec<Arc<dyn IrqLine>>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                routes: [PIRQ_DISABLED; 4],
                asserted: [0; 4],
            }),
            isa,
        })
    }

    /// The PIRQ (0-3 for A-D) that pin INTA..INTD (0-3) of `slot` drives
    /// on bus 0.
    pub fn pirq_for(slot: u8, pin: u8) -> usize {
        (usize::from(slot) + usize::from(pin) + 3) & 3
    }

    fn isa_irq(route: u8) -> Option<usize> {
        let irq = usize::from(route & 0x0f);
        // IRQs 0-2, 8 and 13 cannot be PCI-routed on the PIIX3.
        (route & PIRQ_DISABLED == 0 && !matches!(irq, 0..=2 | 8 | 13)).then_some(irq)
    }

    fn drive(&self, st: &State, pirq: usize) {
        if let Some(irq) = Self::isa_irq(st.routes[pirq]) {
            // Any PIRQ routed to this IRQ keeps it asserted.
            let level =
                (0..4).any(|p| Self::isa_irq(st.routes[p]) == Some(irq) && st.asserted[p] != 0);
            if let Some(line) = self.isa.get(irq) {
                line.set_level(level);
            }
        }
    }

    /// A write to the PIIX3 route register of `pirq`.
    pub fn set_route(&self, pirq: usize, value: u8) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(old) = st.routes.get(pirq).copied() else {
            return;
        };
        if old == value {
            return;
        }
        // Release the old IRQ, then drive the new one.
        st.routes[pirq] = PIRQ_DISABLED;
        if let Some(irq) = Self::isa_irq(old) {
            let level =
                (0..4).any(|p| Self::isa_irq(st.routes[p]) == Some(irq) && st.asserted[p] != 0);
            if let Some(line) = self.isa.get(irq) {
                line.set_level(level);
            }
        }
        st.routes[pirq] = value;
        self.drive(&st, pirq);
    }

    pub fn route(&self, pirq: usize) -> u8 {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.routes.get(pirq).copied().unwrap_or(PIRQ_DISABLED)
    }

    fn set(&self, pirq: usize, source: u32, level: bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let bit = 1u64 << (source % 64);
        if level {
            st.asserted[pirq] |= bit;
        } else {
            st.asserted[pirq] &= !bit;
        }
        self.drive(&st, pirq);
    }

    /// The interrupt line of pin `pin` (0-3 = INTA-INTD) of the function
    /// in `slot`; `source` tells sharers apart (e.g. devfn).
    pub fn intx(self: &Arc<Self>, slot: u8, pin: u8, source: u32) -> Arc<PciIntx> {
        Arc::new(PciIntx {
            router: self.clone(),
            pirq: Self::pirq_for(slot, pin),
            source,
        })
    }
}

/// One function's INTx output.
pub struct PciIntx {
    router: Arc<PciInterruptRouter>,
    pirq: usize,
    source: u32,
}

impl IrqLine for PciIntx {
    fn set_level(&self, level: bool) {
        self.router.set(self.pirq, self.source, level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingIrq;

    fn router() -> (Arc<PciInterruptRouter>, Vec<Arc<RecordingIrq>>) {
        let lines: Vec<_> = (0..16).map(|_| RecordingIrq::new()).collect();
        let r = PciInterruptRouter::new(
            lines
                .iter()
                .map(|l| l.clone() as Arc<dyn IrqLine>)
                .collect(),
        );
        (r, lines)
    }

    #[test]
    fn swizzle_matches_the_piix_convention() {
        // Slot 1 INTA -> PIRQA, slot 1 INTB -> PIRQB, slot 2 INTA -> PIRQB,
        // slot 4 INTA -> PIRQD, slot 5 INTA -> PIRQA.
        assert_eq!(PciInterruptRouter::pirq_for(1, 0), 0);
        assert_eq!(PciInterruptRouter::pirq_for(1, 1), 1);
        assert_eq!(PciInterruptRouter::pirq_for(2, 0), 1);
        assert_eq!(PciInterruptRouter::pirq_for(4, 0), 3);
        assert_eq!(PciInterruptRouter::pirq_for(5, 0), 0);
    }

    #[test]
    fn shared_and_rerouted_lines() {
        let (r, lines) = router();
        let a = r.intx(1, 0, 8); // PIRQA
        let b = r.intx(5, 0, 40); // PIRQA too
        a.set_level(true);
        assert!(!lines[10].level(), "unrouted PIRQ drives nothing");
        r.set_route(0, 10);
        assert!(lines[10].level());
        b.set_level(true);
        a.set_level(false);
        assert!(lines[10].level(), "still held by the sharer");
        b.set_level(false);
        assert!(!lines[10].level());
        b.set_level(true);
        r.set_route(0, 11);
        assert!(!lines[10].level());
        assert!(lines[11].level());
        r.set_route(0, PIRQ_DISABLED | 11);
        assert!(!lines[11].level());
        // IRQ 8 (the RTC) is not routable.
        r.set_route(0, 8);
        assert!(!lines[8].level());
    }
}
