//! Direct Linux boot (no firmware) through `linux-loader`: a bzImage or
//! ELF vmlinux, an optional initrd and a command line, entered at the
//! kernel's 64-bit entry point with the boot parameters ("zero page") the
//! x86 boot protocol defines (Documentation/arch/x86/boot.rst).
//!
//! Guest memory below 1 MiB used here:
//!   0x0500  GDT (null, 64-bit code, data, TSS)
//!   0x0520  IDT (empty)
//!   0x7000  boot_params
//!   0x8ff0  initial stack top
//!   0x9000  PML4, 0xa000 PDPT, 0xb000 page directory (identity map, 1 GiB)
//!   0x20000 kernel command line
//! ACPI tables (when given) go in the F segment, where Linux looks.

use std::fs::File;
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{MemoryLayout, MIB};
use crate::BootError;

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
/// Where the kernel goes: the protected-mode kernel's traditional address.
pub const HIMEM_START: u64 = MIB;
/// Where an RSDP for a firmware-less guest is placed.
pub const ACPI_RSDP_ADDR: u64 = 0xf_0000;
pub const ACPI_TABLES_ADDR: u64 = 0xf_0040;

/// GDT entries in the order the selectors below name them.
pub const GDT: [u64; 4] = [
    0,                     // null
    0x00af_9b00_0000_ffff, // 0x08: 64-bit code, present, DPL 0
    0x00cf_9300_0000_ffff, // 0x10: data, present, read/write
    0x008f_8b00_0000_ffff, // 0x18: 64-bit TSS (busy)
];
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;

const BOOT_FLAG: u16 = 0xaa55;
const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_UNDEFINED: u8 = 0xff;
const KEEP_SEGMENTS_CAN_USE_HEAP: u8 = 0x80;

/// Where the vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxEntry {
    pub rip: u64,
    pub rsp: u64,
    /// RSI carries the boot_params address.
    pub rsi: u64,
    pub cr3: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub idt_base: u64,
}

/// What is being booted.
pub struct LinuxBootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    /// ACPI files to place for the guest (RSDP and tables), if any.
    pub acpi: Option<&'a crate::acpi::AcpiFiles>,
}

fn mem_err(what: &str, e: impl std::fmt::Display) -> BootError {
    BootError::Memory(format!("{what}: {e}"))
}

/// Loads the kernel, initrd, command line and boot structures into guest
/// memory and returns the 64-bit entry state.
pub fn load(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    spec: &LinuxBootSpec,
) -> Result<LinuxEntry, BootError> {
    let mut kernel = File::open(spec.kernel)
        .map_err(|e| BootError::file(spec.kernel, format!("cannot read kernel: {e}")))?;
    // A bzImage first; otherwise an ELF vmlinux.
    let (entry, header) =
        match BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))) {
            Ok(r) => (r.kernel_load.0 + 0x200, r.setup_header),
            Err(bz) => {
                let r = Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))
                    .map_err(|elf| {
                        BootError::file(
                            spec.kernel,
                            format!(
                            "not a loadable kernel: as a bzImage: {bz}; as an ELF vmlinux: {elf}"
                        ),
                        )
                    })?;
                (r.kernel_load.0, None)
            }
        };

    // Command line.
    let max = header
        .map(|h| h.cmdline_size as usize)
        .filter(|&n| n > 0)
        .unwrap_or(2048)
        .min(CMDLINE_MAX);
    if spec.cmdline.len() >= max {
        return Err(BootError::Invalid(format!(
            "--cmdline is {} bytes; this kernel accepts at most {}",
            spec.cmdline.len(),
            max - 1
        )));
    }
    let cmdline = Cmdline::try_from(spec.cmdline, max)
        .map_err(|e| BootError::Invalid(format!("--cmdline: {e}")))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(|e| mem_err("command line", e))?;

    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = BOOT_FLAG;
        params.hdr.header = HDR_MAGIC;
        params.hdr.kernel_alignment = 0x100_0000;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.loadflags |= KEEP_SEGMENTS_CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = (spec.cmdline.len() + 1) as u32;

    // Initrd: as high in low memory as the kernel allows, page aligned.
    if let Some(path) = spec.initrd {
        let data = crate::read_input(path, "initrd")?;
        let max_addr = match header.map(|h| h.initrd_addr_max) {
            Some(m) if m != 0 => u64::from(m),
            _ => 0x37ff_ffff,
        };
        let top = layout.below_4g.min(max_addr + 1);
        let size = data.len() as u64;
        let addr = top.checked_sub(size).map(|a| a & !0xfff);
        let kernel_end = HIMEM_START + 64 * MIB;
        match addr {
            Some(a) if a >= kernel_end => {
                mem.write_slice(&data, GuestAddress(a))
                    .map_err(|e| mem_err("initrd", e))?;
                params.hdr.ramdisk_image = a as u32;
                params.hdr.ramdisk_size = size as u32;
            }
            _ => {
                return Err(BootError::file(
                    path,
                    format!(
                        "initrd of {size} bytes does not fit in guest memory below {top:#x}; give the guest more --memory"
                    ),
                ))
            }
        }
    }

    // E820 map.
    let e820 = layout.kernel_e820();
    if e820.len() > params.e820_table.len() {
        return Err(BootError::Invalid("too many memory map entries".into()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = e820.len() as u8;

    if let Some(acpi) = spec.acpi {
        let (rsdp, tables) = crate::acpi::simulate_loader(acpi, ACPI_RSDP_ADDR, ACPI_TABLES_ADDR);
        if ACPI_TABLES_ADDR + tables.len() as u64 > MIB {
            return Err(BootError::Invalid(
                "ACPI tables do not fit in the F segment".into(),
            ));
        }
        mem.write_slice(&rsdp, GuestAddress(ACPI_RSDP_ADDR))
            .map_err(|e| mem_err("ACPI RSDP", e))?;
        mem.write_slice(&tables, GuestAddress(ACPI_TABLES_ADDR))
            .map_err(|e| mem_err("ACPI tables", e))?;
        params.acpi_rsdp_addr = ACPI_RSDP_ADDR;
    }

    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| mem_err("boot parameters", e))?;

    // GDT and an empty IDT.
    for (i, d) in GDT.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(|e| mem_err("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|e| mem_err("IDT", e))?;

    // Identity map of the first GiB with 2 MiB pages.
    mem.write_obj(PDPT_ADDR | 0x03, GuestAddress(PML4_ADDR))
        .map_err(|e| mem_err("page tables", e))?;
    mem.write_obj(PD_ADDR | 0x03, GuestAddress(PDPT_ADDR))
        .map_err(|e| mem_err("page tables", e))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PD_ADDR + i * 8))
            .map_err(|e| mem_err("page tables", e))?;
    }

    Ok(LinuxEntry {
        rip: entry,
        rsp: BOOT_STACK_TOP,
        rsi: ZERO_PAGE_ADDR,
        cr3: PML4_ADDR,
        gdt_base: GDT_ADDR,
        gdt_limit: (GDT.len() * 8 - 1) as u16,
        idt_base: IDT_ADDR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    fn guest(layout: &MemoryLayout) -> GuestMemoryMmap {
        let ranges: Vec<(GuestAddress, usize)> = layout
            .ram_regions()
            .into_iter()
            .map(|(a, s)| (GuestAddress(a), s as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    /// A minimal bzImage: boot sector + one setup sector + a payload.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 1024];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        img[0x202..0x206].copy_from_slice(&HDR_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
        img[0x211] = 0x01; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
        img.extend_from_slice(payload);
        img
    }

    /// A minimal ELF64 x86-64 executable with one PT_LOAD segment at 16 MiB.
    fn elf(payload: &[u8], entry: u64) -> Vec<u8> {
        let mut e = vec![0u8; 0x78];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // 64-bit
        e[5] = 1; // little endian
        e[6] = 1; // version
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[24..32].copy_from_slice(&entry.to_le_bytes());
        e[32..40].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
        e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = &mut e[0x40..0x78];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        ph[8..16].copy_from_slice(&0x78u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&(16 * MIB).to_le_bytes()); // vaddr
        ph[24..32].copy_from_slice(&(16 * MIB).to_le_bytes()); // paddr
        ph[32..40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
        e.extend_from_slice(payload);
        e
    }

    fn read_u32(mem: &GuestMemoryMmap, addr: u64) -> u32 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn bzimage_boot_params_and_memory_placement() {
        let dir = tempfile::tempdir().unwrap();
        let kpath = dir.path().join("bzImage");
        let payload: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&kpath, bzimage(&payload)).unwrap();
        let ipath = dir.path().join("initrd");
        let initrd = vec![0x5au8; 10_000];
        std::fs::write(&ipath, &initrd).unwrap();
        let layout = MemoryLayout::new(256 * MIB).unwrap();
        let mem = guest(&layout);
        let acpi = crate::acpi::build(&crate::acpi::AcpiConfig::pc(layout, 1, vec![(0x3f8, 4)]));
        let entry = load(
            &mem,
            &layout,
            &LinuxBootSpec {
                kernel: &kpath,
                initrd: Some(&ipath),
                cmdline: "console=ttyS0 root=/dev/sda1",
                acpi: Some(&acpi),
            },
        )
        .unwrap();
        // The 64-bit entry of a bzImage is 0x200 past the load address.
        assert_eq!(entry.rip, 0x10_0200);
        assert_eq!(entry.rsi, ZERO_PAGE_ADDR);
        let mut loaded = vec![0u8; payload.len()];
        mem.read_slice(&mut loaded, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(loaded, payload);

        let zp = ZERO_PAGE_ADDR;
        // hdr fields (offsets per boot.rst, relative to the zero page).
        assert_eq!(read_u32(&mem, zp + 0x202), HDR_MAGIC);
        let loader_type: u8 = mem.read_obj(GuestAddress(zp + 0x210)).unwrap();
        assert_eq!(loader_type, 0xff);
        let cmd_ptr = read_u32(&mem, zp + 0x228);
        assert_eq!(u64::from(cmd_ptr), CMDLINE_ADDR);
        let mut cmd = vec![0u8; 29];
        mem.read_slice(&mut cmd, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0 root=/dev/sda1\0");
        let rd_image = u64::from(read_u32(&mem, zp + 0x218));
        let rd_size = read_u32(&mem, zp + 0x21c);
        assert_eq!(rd_size, 10_000);
        assert_eq!(rd_image % 4096, 0);
        assert!(rd_image + 10_000 <= 256 * MIB && rd_image >= 200 * MIB);
        let mut got = vec![0u8; 10_000];
        mem.read_slice(&mut got, GuestAddress(rd_image)).unwrap();
        assert_eq!(got, initrd);
        // E820: count at 0x1e8, table at 0x2d0 (20 bytes each).
        let n: u8 = mem.read_obj(GuestAddress(zp + 0x1e8)).unwrap();
        assert_eq!(usize::from(n), layout.kernel_e820().len());
        for (i, e) in layout.kernel_e820().iter().enumerate() {
            let at = zp + 0x2d0 + 20 * i as u64;
            assert_eq!(mem.read_obj::<u64>(GuestAddress(at)).unwrap(), e.addr);
            assert_eq!(mem.read_obj::<u64>(GuestAddress(at + 8)).unwrap(), e.size);
            assert_eq!(read_u32(&mem, at + 16), e.kind);
        }
        // ACPI RSDP where the boot params say, with a valid signature.
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(zp + 0x70)).unwrap(),
            ACPI_RSDP_ADDR
        );
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(ACPI_RSDP_ADDR))
            .unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        // Page tables identity-map 2 MiB pages; the GDT has a long-mode code
        // segment.
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PML4_ADDR)).unwrap(),
            PDPT_ADDR | 3
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PD_ADDR + 8 * 3)).unwrap(),
            (3 << 21) | 0x83
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(GDT_ADDR + 8)).unwrap(),
            GDT[1]
        );
        assert!(mem.get_host_address(GuestAddress(entry.rip)).is_ok());
    }

    #[test]
    fn elf_kernel_enters_at_its_entry_point() {
        let dir = tempfile::tempdir().unwrap();
        let kpath = dir.path().join("vmlinux");
        std::fs::write(&kpath, elf(&[0xf4; 64], 16 * MIB + 0x10)).unwrap();
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let mem = guest(&layout);
        let entry = load(
            &mem,
            &layout,
            &LinuxBootSpec {
                kernel: &kpath,
                initrd: None,
                cmdline: "console=ttyS0",
                acpi: None,
            },
        )
        .unwrap();
        assert_eq!(entry.rip, 16 * MIB + 0x10);
        let b: u8 = mem.read_obj(GuestAddress(16 * MIB + 63)).unwrap();
        assert_eq!(b, 0xf4);
        // Without a setup header, rehost fills in the protocol magic.
        assert_eq!(read_u32(&mem, ZERO_PAGE_ADDR + 0x202), HDR_MAGIC);
    }

    #[test]
    fn bad_kernels_and_oversized_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let mem = guest(&layout);
        let k = dir.path().join("junk");
        std::fs::write(&k, vec![0x42u8; 5000]).unwrap();
        let spec = LinuxBootSpec {
            kernel: &k,
            initrd: None,
            cmdline: "",
            acpi: None,
        };
        let e = load(&mem, &layout, &spec).unwrap_err().to_string();
        assert!(
            e.contains("junk") && e.contains("not a loadable kernel"),
            "{e}"
        );

        let kpath = dir.path().join("bzImage");
        std::fs::write(&kpath, bzimage(&[0; 16])).unwrap();
        let long = "x".repeat(3000);
        let e = load(
            &mem,
            &layout,
            &LinuxBootSpec {
                kernel: &kpath,
                initrd: None,
                cmdline: &long,
                acpi: None,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--cmdline") && e.contains("2047"), "{e}");

        let big = dir.path().join("big.img");
        std::fs::write(&big, vec![0u8; 63 * MIB as usize]).unwrap();
        let e = load(
            &mem,
            &layout,
            &LinuxBootSpec {
                kernel: &kpath,
                initrd: Some(&big),
                cmdline: "",
                acpi: None,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("big.img") && e.contains("does not fit"), "{e}");
    }
}
