//! System control port A (0x92): bit 0 is the fast reset, bit 1 the A20
//! gate (always on in a KVM guest; the bit is remembered for reads).

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::events::{MachineEvents, MachineRequest};

pub const PORT92: u64 = 0x92;

pub struct Port92 {
    value: u8,
    events: Arc<MachineEvents>,
}

impl Port92 {
    pub fn new(events: Arc<MachineEvents>) -> Self {
        // A20 enabled, as KVM runs with it.
        Self {
            value: 0x02,
            events,
        }
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.value;
    }

    fn write(&mut self, _addr: u64, data: &[u8]) {
        let new = data[0];
        // The reset fires on a 0 -> 1 transition of bit 0.
        if new & 1 != 0 && self.value & 1 == 0 {
            self.events.request(MachineRequest::Reset);
        }
        self.value = new & 0x03;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit0_rising_edge_resets_and_a20_reads_back() {
        let ev = Arc::new(MachineEvents::new().unwrap());
        let mut p = Port92::new(ev.clone());
        let mut r = [0u8];
        p.read(PORT92, &mut r);
        assert_eq!(r[0] & 2, 2);
        p.write(PORT92, &[0x02]);
        assert_eq!(ev.pending(), None);
        p.write(PORT92, &[0x03]);
        assert_eq!(ev.pending(), Some(MachineRequest::Reset));
    }
}
