//! Parsing of the disk's first sectors: the MBR (partition table, boot code
//! class, disk signature), a GPT behind a protective MBR, and a volume's
//! boot sector. Pure functions over byte slices, so they can be fuzzed.

use super::hive::{le_u16, le_u32};
use super::partition_spec::*;

/// One primary partition entry of the MBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrPartition {
    /// 1-based slot number (1..=4), as `--active N` counts.
    pub number: u8,
    pub status: u8,
    pub partition_type: u8,
    pub lba_start: u32,
    pub sectors: u32,
}

impl MbrPartition {
    pub fn active(&self) -> bool {
        self.status == PE_STATUS_ACTIVE
    }
    pub fn start_bytes(&self) -> u64 {
        u64::from(self.lba_start) * SECTOR as u64
    }
    pub fn len_bytes(&self) -> u64 {
        u64::from(self.sectors) * SECTOR as u64
    }
}

/// What the MBR's boot code is, by the marks each kind carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootCodeClass {
    /// All zeros: nothing to run.
    Empty,
    /// Microsoft's MBR of Windows Vista, 7 and later (it checks for a TPM,
    /// "TCPA"); loads the active partition's boot sector.
    WindowsVistaOrLater,
    /// Microsoft's MBR of Windows 2000/XP/2003; loads the active partition.
    WindowsXp,
    /// GRUB's boot.img: loads GRUB's core image, not the active partition.
    Grub,
    /// SYSLINUX's mbr.bin; loads the active partition.
    Syslinux,
    /// rehost's own MBR written by `rehost p2v fix --mbr`; loads the active
    /// partition.
    Rehost,
    /// Code of a kind we do not recognise.
    Unknown,
}

impl BootCodeClass {
    pub fn name(self) -> &'static str {
        match self {
            BootCodeClass::Empty => "empty (all zeros)",
            BootCodeClass::WindowsVistaOrLater => "Windows Vista/7 and later",
            BootCodeClass::WindowsXp => "Windows 2000/XP era",
            BootCodeClass::Grub => "GRUB",
            BootCodeClass::Syslinux => "SYSLINUX",
            BootCodeClass::Rehost => "rehost",
            BootCodeClass::Unknown => "unknown",
        }
    }

    /// Whether code of this class loads the active partition's boot sector
    /// (what Windows' boot chain needs). `None` when we cannot tell.
    pub fn loads_active_partition(self) -> Option<bool> {
        match self {
            BootCodeClass::WindowsVistaOrLater
            | BootCodeClass::WindowsXp
            | BootCodeClass::Syslinux
            | BootCodeClass::Rehost => Some(true),
            BootCodeClass::Empty | BootCodeClass::Grub => Some(false),
            BootCodeClass::Unknown => None,
        }
    }
}

/// The marker rehost's own MBR carries in its code area.
pub const REHOST_MBR_MARK: &[u8] = b"rehost-mbr";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Classifies the first 440 bytes of an MBR.
pub fn classify_boot_code(code: &[u8]) -> BootCodeClass {
    let code = &code[..code.len().min(MBR_BOOT_CODE_END)];
    if code.iter().all(|&b| b == 0) {
        return BootCodeClass::Empty;
    }
    if contains(code, REHOST_MBR_MARK) {
        return BootCodeClass::Rehost;
    }
    if contains(code, b"GRUB ") {
        return BootCodeClass::Grub;
    }
    let ms_messages =
        contains(code, b"Invalid partition table") && contains(code, b"Missing operating system");
    if ms_messages && contains(code, b"TCPA") {
        return BootCodeClass::WindowsVistaOrLater;
    }
    if ms_messages {
        return BootCodeClass::WindowsXp;
    }
    if contains(code, b"Missing operating system") || contains(code, b"SYSLINUX") {
        return BootCodeClass::Syslinux;
    }
    BootCodeClass::Unknown
}

/// The parsed MBR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mbr {
    pub boot_signature_ok: bool,
    pub disk_signature: u32,
    pub boot_code: BootCodeClass,
    /// Non-empty entries only.
    pub partitions: Vec<MbrPartition>,
}

impl Mbr {
    /// A single 0xEE entry: the disk is partitioned with GPT (UEFI).
    pub fn is_protective(&self) -> bool {
        self.partitions
            .iter()
            .any(|p| p.partition_type == TYPE_GPT_PROTECTIVE)
    }
    pub fn active(&self) -> Vec<MbrPartition> {
        self.partitions
            .iter()
            .copied()
            .filter(|p| p.active())
            .collect()
    }
}

/// Parses sector 0. `None` when it is shorter than a sector.
pub fn parse_mbr(sector: &[u8]) -> Option<Mbr> {
    if sector.len() < SECTOR {
        return None;
    }
    let mut partitions = Vec::new();
    for i in 0..MBR_ENTRIES {
        let e = &sector[MBR_PARTITION_TABLE + i * MBR_ENTRY_SIZE..][..MBR_ENTRY_SIZE];
        let p = MbrPartition {
            number: i as u8 + 1,
            status: e[PE_STATUS],
            partition_type: e[PE_TYPE],
            lba_start: le_u32(e, PE_LBA_START)?,
            sectors: le_u32(e, PE_SECTORS)?,
        };
        if p.partition_type != 0 || p.sectors != 0 {
            partitions.push(p);
        }
    }
    Some(Mbr {
        boot_signature_ok: sector[BOOT_SIGNATURE..BOOT_SIGNATURE + 2] == BOOT_SIGNATURE_BYTES,
        disk_signature: le_u32(sector, MBR_DISK_SIGNATURE)?,
        boot_code: classify_boot_code(&sector[..MBR_BOOT_CODE_END]),
        partitions,
    })
}

/// The GPT header at LBA 1, as much as the report needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptHeader {
    pub entry_count: u32,
}

pub fn parse_gpt_header(sector: &[u8]) -> Option<GptHeader> {
    if sector.get(..8)? != GPT_SIGNATURE {
        return None;
    }
    Some(GptHeader {
        entry_count: le_u32(sector, GPT_ENTRY_COUNT)?,
    })
}

/// A volume boot sector, as much as the check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSector {
    pub ntfs: bool,
    pub boot_signature_ok: bool,
    pub bytes_per_sector: u16,
    pub hidden_sectors: u32,
    pub total_sectors: u64,
}

pub fn parse_boot_sector(sector: &[u8]) -> Option<BootSector> {
    if sector.len() < SECTOR {
        return None;
    }
    let mut total = [0u8; 8];
    total.copy_from_slice(&sector[VBR_TOTAL_SECTORS_NTFS..VBR_TOTAL_SECTORS_NTFS + 8]);
    Some(BootSector {
        ntfs: &sector[VBR_OEM_ID..VBR_OEM_ID + 8] == NTFS_OEM_ID,
        boot_signature_ok: sector[BOOT_SIGNATURE..BOOT_SIGNATURE + 2] == BOOT_SIGNATURE_BYTES,
        bytes_per_sector: le_u16(sector, VBR_BYTES_PER_SECTOR)?,
        hidden_sectors: le_u32(sector, VBR_HIDDEN_SECTORS)?,
        total_sectors: u64::from_le_bytes(total),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grub_boot_img_is_grub() {
        let Ok(img) = std::fs::read("/usr/lib/grub/i386-pc/boot.img") else {
            return;
        };
        assert_eq!(classify_boot_code(&img), BootCodeClass::Grub);
        let mbr = parse_mbr(&img).unwrap();
        assert_eq!(mbr.boot_code.loads_active_partition(), Some(false));
    }

    #[test]
    fn zeroed_code_is_empty() {
        let mut s = vec![0u8; 512];
        s[510] = 0x55;
        s[511] = 0xAA;
        s[446] = 0x80;
        s[450] = 7;
        s[454..458].copy_from_slice(&2048u32.to_le_bytes());
        s[458..462].copy_from_slice(&4096u32.to_le_bytes());
        let mbr = parse_mbr(&s).unwrap();
        assert_eq!(mbr.boot_code, BootCodeClass::Empty);
        assert_eq!(mbr.active().len(), 1);
        assert_eq!(mbr.active()[0].start_bytes(), 2048 * 512);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = parse_mbr(&data);
            let _ = parse_gpt_header(&data);
            let _ = parse_boot_sector(&data);
            let _ = classify_boot_code(&data);
        }
    }
}
