//! P2V inspection: predicts from a disk image alone whether the Windows on
//! it will boot on rehost's IDE (PIIX3, PCI 8086:7010) or AHCI (ICH9, PCI
//! 8086:2922) controller, and says why not.
//!
//! The image is opened read-only through the block stack (raw, VHD, VHDX,
//! differencing chains). The checks, each a finding with evidence:
//!
//! - `partition_table`: MBR or GPT (a protective MBR means UEFI, which
//!   rehost's BIOS machine cannot boot), entries inside the disk, disk
//!   signature;
//! - `mbr_boot_code`: the class of the MBR code (Windows Vista/7 and later,
//!   2000/XP era, GRUB, SYSLINUX, rehost, empty, unknown) and whether it
//!   loads the active partition's boot sector;
//! - `active_partition`: exactly one partition marked active;
//! - `boot_sector`: the active partition is NTFS and its hidden-sectors
//!   field equals the partition's start;
//! - `boot_manager`: BOOTMGR or NTLDR in the active volume's root;
//! - `bcd`: the default loader's application and OS devices in `\Boot\BCD`
//!   name this disk's signature and the active partition's offset;
//! - `windows_install`: an NTFS volume with `Windows\System32\config`;
//! - `system_hive`: clean or dirty (sequence numbers differ); a dirty hive's
//!   transaction logs (new "HvLE" format from .LOG1/.LOG2, or the old "DIRT"
//!   format from the .LOG1/.LOG2/.LOG Windows would choose) are replayed in
//!   memory, and without usable logs, or when recovery stops early, the
//!   verdict is marked as possibly stale (evidence `stale`: true);
//! - `windows_version`: ProductName, CurrentVersion and CurrentBuildNumber
//!   (or CurrentBuild) from `SOFTWARE\Microsoft\Windows NT\CurrentVersion`;
//!   a missing or unreadable SOFTWARE hive, or one without that key, is
//!   named ("version unknown") and does not change the verdict;
//! - `control_set`: `Select\Current`;
//! - `storage_driver` (one per controller): the services the controller's
//!   PCI IDs bind to (CriticalDeviceDatabase before Windows 8,
//!   DriverDatabase after), each with `Start`, `Type`, every `StartOverride`
//!   value and whether its `.sys` file exists; a service boots when Start
//!   is 0, every StartOverride value is 0 and the file is there.
//!
//! The JSON form ([`check::Report::to_json`]) is one object:
//! `{"image": PATH, "findings": [{"check": NAME, "ok": BOOL, "detail":
//! TEXT, "evidence": {...}}, ...], "controllers": {"ide": {"boots": BOOL,
//! "verdict": LINE, "storage_driver": {"ok": BOOL, "service": NAME,
//! "reason": TEXT}}, "ahci": {...}}}`. `storage_driver` judges the driver
//! chain alone, `boots` every finding together.

pub mod bcd;
pub mod check;
pub mod fix;
pub mod hive;
pub mod hive_log;
pub mod hive_spec;
pub mod mbr_code;
pub mod partition;
pub mod partition_spec;
pub mod volume;
