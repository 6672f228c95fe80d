//! `rehost p2v ...`: offline checks of a physical machine's captured disk
//! (P2V) for booting on rehost's storage controllers.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use rehost_boot::p2v::check::{check_device, check_image, Controller};
use rehost_boot::p2v::fix::fix_image;

const FIX_HELP: &str = "\
A new differencing image, CHILD, is created over IMAGE (VHDX over a VHDX,
VHD over a VHD; convert a raw IMAGE first) and the fix is written
into it alone; IMAGE is only ever opened read-only, so its bytes (and sha256)
stay the same. Boot CHILD instead of IMAGE, or drop it to undo.
What is written:
  * in Windows\\System32\\config\\SYSTEM: the Start value (set to 0) and every
    StartOverride value (set to 0) of the services the controller's PCI IDs
    bind to in the current control set, as in-place edits of the existing
    DWORD values, with the hive's two sequence numbers advanced together and
    its checksum recomputed as Windows does when it writes a hive out. A
    dirty hive (last changes still in its logs) is refused.
  * with --active N: the MBR's active flag on partition N and off elsewhere.
  * with --mbr: rehost's own MBR boot code in bytes 0-439 of sector 0 (the
    disk signature and partition table stay): it loads the active
    partition's first sector by LBA (INT 13h extensions, else CHS) and jumps
    to it with the boot drive in DL and DS:SI at the partition's entry, as
    Windows' and syslinux's MBRs do; `p2v check` then names it rehost.
Then the check runs on CHILD and its verdict is printed.

Exit codes:
  0  the fix was written and CHILD should boot on the controller
  1  the fix was written but CHILD still will not boot (see the verdict)
  2  nothing was written: IMAGE unreadable, or the fix was refused";

const CHECK_HELP: &str = "\
The image is opened read-only (raw, VHD, VHDX and differencing chains) and
never written. What is checked, each as a finding with its evidence
(offsets, key paths, values):
  partition_table   MBR or GPT (a protective MBR means UEFI: not bootable on
                    rehost's BIOS machine), entries inside the disk, disk
                    signature
  mbr_boot_code     Windows Vista/7+, 2000/XP, GRUB, SYSLINUX, rehost, empty
                    or unknown; whether it loads the active partition
  active_partition  exactly one partition marked active
  boot_sector       the active partition is NTFS, hidden sectors == its start
  boot_manager      BOOTMGR or NTLDR in the active volume's root
  bcd               \\Boot\\BCD's default loader devices name this disk's
                    signature and the active partition's offset
  windows_install   an NTFS volume with Windows\\System32\\config
  system_hive       clean, or dirty (sequence numbers differ): its transaction
                    logs are replayed in memory (new HvLE .LOG1/.LOG2, or
                    the old DIRT .LOG1/.LOG2/.LOG Windows would pick), or
                    the verdict may be stale (evidence stale: true)
  windows_version   ProductName, CurrentVersion and build from the SOFTWARE
                    hive; a missing or unreadable one is named
  control_set       Select\\Current
  storage_driver    per controller: the services its PCI IDs bind to
                    (CriticalDeviceDatabase before Windows 8, DriverDatabase
                    after) with Start, Type, StartOverride and the .sys file;
                    a driver boots with Start 0, StartOverride values 0, file
                    present

Output: one verdict line per controller (\"AHCI: will stop with 0x7B:
storahci StartOverride\\0 = 3 in ControlSet001\"), then the findings.

--json prints one object:
  {\"image\": PATH,
   \"findings\": [{\"check\": NAME, \"ok\": BOOL, \"detail\": TEXT,
                 \"evidence\": {...}}, ...],
   \"controllers\": {\"ide\": {\"boots\": BOOL, \"verdict\": LINE,
                             \"storage_driver\": {\"ok\": BOOL, \"service\": NAME,
                                                \"reason\": TEXT}},
                   \"ahci\": {...}}}
storage_driver judges the driver chain alone, boots every finding together.

Exit codes:
  0  the chosen controller(s) should boot
  1  at least one chosen controller will not boot
  2  the image could not be read";

/// Controllers on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControllerArg {
    // PIIX3 IDE (PCI 8086:7010).
    Ide,
    // ICH9 AHCI (PCI 8086:2922).
    Ahci,
    // Both, one verdict each.
    Both,
}

impl ControllerArg {
    fn controllers(self) -> Vec<Controller> {
        match self {
            ControllerArg::Ide => vec![Controller::Ide],
            ControllerArg::Ahci => vec![Controller::Ahci],
            ControllerArg::Both => vec![Controller::Ide, Controller::Ahci],
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum P2vCommand {
    /// Predict, from the image alone, whether Windows on it boots on
    /// rehost's IDE and/or AHCI controller, and why not.
    #[command(after_help = CHECK_HELP)]
    Check {
        /// The controller(s) to judge: ide (PIIX3 IDE, PCI 8086:7010), ahci
        /// (ICH9 AHCI, PCI 8086:2922) or both (one verdict each).
        #[arg(long, value_enum, default_value = "both")]
        controller: ControllerArg,
        /// Print one JSON object instead of text (shape below).
        #[arg(long)]
        json: bool,
        /// The disk image (raw, VHD or VHDX, differencing chains too).
        image: PathBuf,
    },
    /// Enable the storage drivers a controller needs (and optionally mark a
    /// partition active), written into a new differencing child.
    #[command(after_help = FIX_HELP)]
    Fix {
        /// The controller to make Windows boot on: ide (PIIX3 IDE, PCI
        /// 8086:7010) or ahci (ICH9 AHCI, PCI 8086:2922).
        #[arg(long, value_enum)]
        controller: FixControllerArg,
        /// Also mark MBR partition N (1 to 4) active and the others not.
        #[arg(long, value_name = "N")]
        active: Option<u8>,
        /// Also replace the MBR boot code (bytes 0-439) with rehost's own,
        /// which loads the active partition's boot sector; the disk
        /// signature and partition table are kept.
        #[arg(long)]
        mbr: bool,
        /// The differencing image to create over IMAGE (same format as
        /// IMAGE); must not exist.
        #[arg(long, value_name = "CHILD.vhdx")]
        out: PathBuf,
        /// The disk image to fix (only read, never written).
        image: PathBuf,
    },
}

/// The controller `fix` enables the drivers of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FixControllerArg {
    Ide,
    Ahci,
}

/// Runs a p2v subcommand and returns the exit code (0 boots, 1 will not,
/// 2 unreadable image).
pub fn execute(cmd: P2vCommand) -> anyhow::Result<u8> {
    match cmd {
        P2vCommand::Check {
            controller,
            json,
            image,
        } => match check_image(&image, &controller.controllers()) {
            Ok(report) => {
                if json {
                    println!("{}", report.to_json());
                } else {
                    print!("{}", report.to_text());
                }
                Ok(if report.boots() { 0 } else { 1 })
            }
            Err(e) => {
                eprintln!("rehost: {e}");
                Ok(2)
            }
        },
        P2vCommand::Fix {
            controller,
            active,
            mbr,
            out,
            image,
        } => {
            let controller = match controller {
                FixControllerArg::Ide => Controller::Ide,
                FixControllerArg::Ahci => Controller::Ahci,
            };
            let outcome = match fix_image(&image, &out, controller, active, mbr) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("rehost: {e}");
                    return Ok(2);
                }
            };
            if outcome.edits.is_empty() {
                println!(
                    "nothing needed changing; {} is an empty child",
                    out.display()
                );
            }
            for e in &outcome.edits {
                println!("wrote {e}");
            }
            println!("re-check of {}:", out.display());
            match check_image(&out, &[controller]) {
                Ok(report) => {
                    print!("{}", report.to_text());
                    Ok(if report.boots() { 0 } else { 1 })
                }
                Err(e) => {
                    eprintln!("rehost: re-check of {}: {e}", out.display());
                    Ok(1)
                }
            }
        }
    }
}

/// What `rehost run` says before booting (unless `--no-p2v-check`): one
/// line for each IDE or AHCI hard disk that holds a Windows installation
/// which the P2V check predicts will not boot on that disk's controller.
/// Disks without Windows (Linux, GRUB, data disks) and disks the check
/// cannot read give no line: the doctor judges migrated Windows only.
pub fn boot_warnings(drives: &[crate::storage::DriveConfig]) -> Vec<String> {
    let mut out = Vec::new();
    for d in drives {
        let Some(image) = &d.image else { continue };
        if d.kind != crate::storage::DriveKind::Disk {
            continue;
        }
        let controller = match d.spec.controller {
            crate::storage::Controller::Ide => Controller::Ide,
            crate::storage::Controller::Ahci => Controller::Ahci,
        };
        let path = d.spec.path.display().to_string();
        let report = match check_device(&path, image.as_ref(), &[controller]) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("p2v check of --disk {path}: {e}");
                continue;
            }
        };
        let windows = report
            .findings
            .iter()
            .any(|f| f.check == "windows_install" && f.ok);
        if !windows || report.boots() {
            continue;
        }
        for v in &report.controllers {
            out.push(format!(
                "--disk {path}: {} (`rehost p2v check {path}` shows the evidence, `rehost p2v fix` repairs it in a differencing child; --no-p2v-check skips this check)",
                v.line
            ));
        }
    }
    out
}
