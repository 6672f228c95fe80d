//! Property test: whatever a guest does to the platform's ports — any
//! address, width and value, in any order — no device panics, and reads of
//! ports nothing decodes return all ones.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use rehost_devices::bus::Bus;
use rehost_devices::events::MachineEvents;
use rehost_devices::irq::{IrqLine, RecordingIrq};
use rehost_devices::legacy::cmos::{Cmos, NvramConfig};
use rehost_devices::legacy::debugcon::DebugCon;
use rehost_devices::legacy::fw_cfg::FwCfg;
use rehost_devices::legacy::i8042::I8042;
use rehost_devices::legacy::port92::Port92;
use rehost_devices::pci::i440fx::I440fx;
use rehost_devices::pci::piix3::Piix3Isa;
use rehost_devices::pci::piix4_pm::Piix4Pm;
use rehost_devices::pci::{DevFn, PciInterruptRouter, PciRoot};
use rehost_devices::serial::{NullBackend, Uart16550};
use rehost_devices::GuestMemory;
use vm_memory::GuestAddress;

fn platform() -> (Arc<Bus>, Arc<MachineEvents>) {
    let io = Arc::new(Bus::new());
    let mmio = Arc::new(Bus::new());
    let events = Arc::new(MachineEvents::new().unwrap());
    let isa: Vec<Arc<dyn IrqLine>> = (0..16)
        .map(|_| RecordingIrq::new() as Arc<dyn IrqLine>)
        .collect();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let router = PciInterruptRouter::new(isa.clone());
    let mut pci = PciRoot::new(io.clone(), mmio.clone(), events.clone());
    pci.add(DevFn::new(0, 0), Arc::new(Mutex::new(I440fx::new(None))))
        .unwrap();
    pci.add(
        DevFn::new(1, 0),
        Arc::new(Mutex::new(Piix3Isa::new(router))),
    )
    .unwrap();
    pci.add(
        DevFn::new(1, 3),
        Arc::new(Mutex::new(Piix4Pm::new(isa[9].clone(), events.clone()))),
    )
    .unwrap();
    io.insert(0xcf8, 8, Arc::new(Mutex::new(pci))).unwrap();
    io.insert(
        0x70,
        2,
        Arc::new(Mutex::new(Cmos::new(
            NvramConfig {
                ram_below_4g: 1 << 20,
                ram_above_4g: 0,
                cpus: 1,
            },
            isa[8].clone(),
        ))),
    )
    .unwrap();
    let kbc = Arc::new(Mutex::new(I8042::new(
        isa[1].clone(),
        isa[12].clone(),
        events.clone(),
    )));
    io.insert(0x60, 1, kbc.clone()).unwrap();
    io.insert(0x64, 1, kbc).unwrap();
    io.insert(0x92, 1, Arc::new(Mutex::new(Port92::new(events.clone()))))
        .unwrap();
    io.insert(0x402, 1, Arc::new(Mutex::new(DebugCon::new(None))))
        .unwrap();
    let mut fw = FwCfg::new(mem);
    fw.add_file("etc/e820", vec![0; 20]).unwrap();
    io.insert(0x510, 12, Arc::new(Mutex::new(fw))).unwrap();
    io.insert(
        0x3f8,
        8,
        Arc::new(Mutex::new(Uart16550::new(
            isa[4].clone(),
            Box::new(NullBackend),
        ))),
    )
    .unwrap();
    (io, events)
}

#[derive(Debug, Clone)]
enum Access {
    Read { port: u16, len: usize },
    Write { port: u16, data: Vec<u8> },
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        // Mostly the decoded ranges, sometimes anywhere.
        (0x60u16..0x66),
        (0x70u16..0x72),
        Just(0x92u16),
        Just(0x402u16),
        (0x510u16..0x51c),
        (0xcf8u16..0xd00),
        (0x3f8u16..0x400),
        (0x600u16..0x640),
        (0xb000u16..0xb040),
        any::<u16>(),
    ]
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        (port(), prop_oneof![Just(1usize), Just(2), Just(4)])
            .prop_map(|(port, len)| Access::Read { port, len }),
        (
            port(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1),
                prop::collection::vec(any::<u8>(), 2),
                prop::collection::vec(any::<u8>(), 4),
            ]
        )
            .prop_map(|(port, data)| Access::Write { port, data }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_port_io_never_panics(accesses in prop::collection::vec(access(), 1..300)) {
        let (io, _events) = platform();
        for a in accesses {
            match a {
                Access::Read { port, len } => {
                    let mut d = vec![0u8; len];
                    let claimed = io.read(u64::from(port), &mut d);
                    if !claimed {
                        prop_assert!(d.iter().all(|&b| b == 0xff));
                    }
                }
                Access::Write { port, data } => {
                    io.write(u64::from(port), &data);
                }
            }
        }
    }
}
