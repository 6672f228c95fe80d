//! Guest memory and its KVM memory slots, including the BIOS area below
//! 1 MiB whose 13 segments the i440FX PAM registers switch between RAM
//! (read-write or read-only), the firmware ROM, and nothing.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use rehost_boot::firmware::Firmware;
use rehost_boot::layout::{MemoryLayout, BIOS_AREA, LOW_RAM_END, MIB};
use rehost_devices::bus::BusDevice;
use rehost_devices::pci::i440fx::{pam_segment_range, PamMode, PAM_SEGMENTS};
use rehost_devices::GuestMemory;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _, MmapRegion};

const SLOT_LOW_RAM: u32 = 0;
const SLOT_PAM_FIRST: u32 = 1;
/// The most firmware shadowed below 1 MiB at reset: 0xC0000-0xFFFFF.
const SHADOW_MAX: usize = 256 * 1024;
const SLOT_MID_RAM: u32 = SLOT_PAM_FIRST + PAM_SEGMENTS as u32;
const SLOT_HIGH_RAM: u32 = SLOT_MID_RAM + 1;
const SLOT_FIRMWARE: u32 = SLOT_HIGH_RAM + 1;
/// The VGA's video memory behind its linear framebuffer BAR.
pub const SLOT_VRAM: u32 = SLOT_FIRMWARE + 1;
/// The VGA's video memory behind its A0000h window in chain-4 modes.
pub const SLOT_VGA_WINDOW: u32 = SLOT_VRAM + 1;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {size} bytes of guest memory: {reason}")]
    Allocate { size: u64, reason: String },
    #[error("KVM refused memory slot {slot} at {addr:#x} ({size} bytes): {source}")]
    Slot {
        slot: u32,
        addr: u64,
        size: u64,
        source: kvm_ioctls::Error,
    },
}

/// Host memory holding the firmware image (mapped at the top of 4 GiB).
pub struct FirmwareRom {
    region: MmapRegion<()>,
    len: usize,
    isa_window: usize,
}

impl FirmwareRom {
    fn new(fw: &Firmware) -> Result<Self, MemoryError> {
        let len = fw.image.len();
        let region = MmapRegion::new(len).map_err(|e| MemoryError::Allocate {
            size: len as u64,
            reason: e.to_string(),
        })?;
        // SAFETY: the region is `len` bytes long, freshly mapped and not yet
        // shared with the guest or any other thread.
        unsafe { std::ptr::copy_nonoverlapping(fw.image.as_ptr(), region.as_ptr(), len) };
        Ok(Self {
            region,
            len,
            isa_window: fw.isa_window(),
        })
    }

    /// Host address of the ROM byte that the ISA BIOS window shows at
    /// guest address `addr` (below 1 MiB), if the window covers it.
    fn isa_alias(&self, addr: u64) -> Option<u64> {
        let window_start = MIB - self.isa_window as u64;
        (addr >= window_start && addr < MIB)
            .then(|| self.region.as_ptr() as u64 + (self.len as u64 - (MIB - addr)))
    }
}

/// Guest RAM, the firmware ROM, and the KVM slots that expose them.
pub struct GuestRam {
    pub mem: GuestMemory,
    pub layout: MemoryLayout,
    /// The firmware and where it is mapped; `None` for direct kernel boot.
    rom: Option<(FirmwareRom, u64)>,
    readonly_slots: bool,
    pam: Arc<Mutex<[PamMode; PAM_SEGMENTS]>>,
}

impl GuestRam {
    /// Without firmware (direct kernel boot) the BIOS area is plain RAM.
    pub fn new(
        layout: MemoryLayout,
        fw: Option<&Firmware>,
        readonly_slots: bool,
    ) -> Result<Self, MemoryError> {
        let ranges: Vec<(GuestAddress, usize)> = layout
            .ram_regions()
            .into_iter()
            .map(|(a, s)| (GuestAddress(a), s as usize))
            .collect();
        let mem = GuestMemory::from_ranges(&ranges).map_err(|e| MemoryError::Allocate {
            size: layout.total(),
            reason: e.to_string(),
        })?;
        let rom = match fw {
            Some(fw) => Some((FirmwareRom::new(fw)?, fw.base())),
            None => None,
        };
        // With no firmware the BIOS area is plain RAM. With firmware, the
        // machine comes out of reset with the BIOS already shadowed: the
        // ISA window's content is in RAM and those segments decode to
        // read-only RAM (the state firmware reaches after shadowing itself,
        // which SeaBIOS recognises and does not redo), the rest to nothing.
        let mut modes = [PamMode {
            read_ram: rom.is_none(),
            write_ram: rom.is_none(),
        }; PAM_SEGMENTS];
        if let Some(fw) = fw {
            // Shadowed is all SeaBIOS copies when it shadows itself: its
            // 32-bit code from wherever it starts (below 0xE0000 in the
            // 256 KiB build) up to 1 MiB, taken from the image's alias at
            // 0xFFF00000 + address, i.e. up to the last 256 KiB of it.
            let window = fw.image.len().min(SHADOW_MAX);
            let start = MIB - window as u64;
            mem.write_slice(&fw.image[fw.image.len() - window..], GuestAddress(start))
                .map_err(|e| MemoryError::Allocate {
                    size: window as u64,
                    reason: format!("shadowing the firmware: {e}"),
                })?;
            for (i, m) in modes.iter_mut().enumerate() {
                if pam_segment_range(i).0 >= start {
                    m.read_ram = true;
                }
            }
        }
        Ok(Self {
            mem,
            layout,
            rom,
            readonly_slots,
            pam: Arc::new(Mutex::new(modes)),
        })
    }

    fn host_addr(&self, gpa: u64) -> u64 {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .unwrap_or(0)
    }

    /// Registers every slot with KVM in the reset state (PAM all off).
    pub fn register(&self, vm: &VmFd) -> Result<(), MemoryError> {
        set_slot(vm, SLOT_LOW_RAM, 0, LOW_RAM_END, self.host_addr(0), 0)?;
        set_slot(
            vm,
            SLOT_MID_RAM,
            MIB,
            self.layout.below_4g - MIB,
            self.host_addr(MIB),
            0,
        )?;
        if self.layout.above_4g > 0 {
            let base = rehost_boot::layout::FOUR_GIB;
            set_slot(
                vm,
                SLOT_HIGH_RAM,
                base,
                self.layout.above_4g,
                self.host_addr(base),
                0,
            )?;
        }
        if let Some((rom, base)) = &self.rom {
            set_slot(
                vm,
                SLOT_FIRMWARE,
                *base,
                rom.len as u64,
                rom.region.as_ptr() as u64,
                if self.readonly_slots {
                    KVM_MEM_READONLY
                } else {
                    0
                },
            )?;
        }
        let modes = *self.pam.lock().unwrap_or_else(|e| e.into_inner());
        for (i, mode) in modes.iter().enumerate() {
            self.map_pam_segment(vm, i, *mode)?;
        }
        Ok(())
    }

    /// Maps PAM segment `i` the way `mode` decodes it.
    fn map_pam_segment(&self, vm: &VmFd, i: usize, mode: PamMode) -> Result<(), MemoryError> {
        let (addr, size) = pam_segment_range(i);
        let slot = SLOT_PAM_FIRST + i as u32;
        let ro = if self.readonly_slots {
            KVM_MEM_READONLY
        } else {
            0
        };
        let (host, flags) = if mode.read_ram {
            // Writes to read-only RAM exit to the PAM area and are dropped.
            (self.host_addr(addr), if mode.write_ram { 0 } else { ro })
        } else if let Some(rom) = self.rom.as_ref().and_then(|(r, _)| r.isa_alias(addr)) {
            // Reads from the ROM; writes (to RAM, if enabled) exit.
            (rom, ro)
        } else {
            // Nothing decodes here: reads exit and return all ones.
            (0, 0)
        };
        // Changing a slot's flags needs it deleted first; deleting a slot
        // that is not there fails harmlessly.
        let _ = set_slot(vm, slot, addr, 0, 0, 0);
        if host == 0 {
            Ok(())
        } else {
            set_slot(vm, slot, addr, size, host, flags)
        }
    }

    /// Applies new PAM modes (called by the host bridge on a PAM write).
    pub fn apply_pam(&self, vm: &VmFd, modes: &[PamMode; PAM_SEGMENTS]) {
        let mut cur = self.pam.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..PAM_SEGMENTS {
            if cur[i] != modes[i] {
                if let Err(e) = self.map_pam_segment(vm, i, modes[i]) {
                    tracing::error!("PAM: {e}");
                }
            }
        }
        *cur = *modes;
    }

    /// The PAM decode at power-on, for the host bridge's registers.
    pub fn initial_pam(&self) -> [PamMode; PAM_SEGMENTS] {
        *self.pam.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device that takes the accesses KVM does not satisfy from memory
    /// in the BIOS area.
    pub fn pam_area(&self) -> PamArea {
        PamArea {
            mem: self.mem.clone(),
            pam: self.pam.clone(),
        }
    }
}

pub(crate) fn set_slot(
    vm: &VmFd,
    slot: u32,
    addr: u64,
    size: u64,
    host: u64,
    flags: u32,
) -> Result<(), MemoryError> {
    let region = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: addr,
        memory_size: size,
        userspace_addr: host,
    };
    // SAFETY: `host` points at `size` bytes of memory owned by GuestRam
    // (guest RAM or the firmware ROM) or by the VGA (video memory), which
    // outlive the VM: the machine drops the VM fd before its memory, and
    // the console keeps the VGA until the next machine replaces it.
    unsafe { vm.set_user_memory_region(region) }.map_err(|source| MemoryError::Slot {
        slot,
        addr,
        size,
        source,
    })
}

/// MMIO exits in 0xC0000-0xFFFFF: writes that PAM sends to RAM while reads
/// come from the ROM, writes to read-only segments (dropped), and reads of
/// undecoded segments (all ones).
pub struct PamArea {
    mem: GuestMemory,
    pam: Arc<Mutex<[PamMode; PAM_SEGMENTS]>>,
}

impl PamArea {
    pub const BASE: u64 = BIOS_AREA.0;
    pub const LEN: u64 = BIOS_AREA.1;

    fn segment(addr: u64) -> usize {
        if addr >= 0xf0000 {
            0
        } else {
            1 + ((addr - 0xc0000) / 0x4000) as usize
        }
    }
}

impl BusDevice for PamArea {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0xff);
        let seg = Self::segment(addr);
        let read_ram = self.pam.lock().unwrap_or_else(|e| e.into_inner())[seg].read_ram;
        if read_ram {
            // Only reached if the slot could not be mapped.
            let _ = self.mem.read_slice(data, GuestAddress(addr));
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let seg = Self::segment(addr);
        let write_ram = self.pam.lock().unwrap_or_else(|e| e.into_inner())[seg].write_ram;
        if write_ram {
            let _ = self.mem.write_slice(data, GuestAddress(addr));
        }
    }
}
