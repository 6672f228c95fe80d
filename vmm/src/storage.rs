//! Disks and CD-ROMs: the `--disk`, `--cdrom` and `--boot` options, the
//! images they open, and attaching them to the PIIX3 IDE function
//! (00:01.1, always present) and the ICH9 AHCI controller (00:04.0, present
//! when a drive asks for it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use rehost_devices::bus::{Bus, SharedDevice};
use rehost_devices::irq::{IrqLine, MsiSender};
use rehost_devices::pci::{DevFn, PciInterruptRouter, PciRoot};
use rehost_devices::storage::ahci::Ahci;
use rehost_devices::storage::ata::{AtaDevice, DriveIdentity, Link};
use rehost_devices::storage::atapi::Cdrom;
use rehost_devices::storage::ide::PiixIde;
use rehost_devices::storage::{ahci_spec, ide_spec};
use rehost_devices::GuestMemory;
use rehost_disk::dirty::{DirtyTracker, TrackerOptions};
use rehost_disk::{BlockDevice, DiskImage, ImageFormat, OpenOptions};

/// Where the PIIX3 IDE function and the AHCI controller sit on bus 0.
pub const IDE_DEVFN: DevFn = DevFn::new(1, 1);
pub const AHCI_DEVFN: DevFn = DevFn::new(4, 0);

/// IDE positions: primary master/slave, secondary master/slave.
pub const IDE_SLOTS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Ide,
    Ahci,
}

impl Controller {
    pub fn name(self) -> &'static str {
        match self {
            Controller::Ide => "ide",
            Controller::Ahci => "ahci",
        }
    }

    fn slots(self) -> usize {
        match self {
            Controller::Ide => IDE_SLOTS,
            Controller::Ahci => ahci_spec::PORTS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveKind {
    Disk,
    Cdrom,
}

/// What the firmware boots first (`--boot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BootDevice {
    #[default]
    Disk,
    Cdrom,
    /// The USB disks (`--usb disk:PATH`), then the other disks.
    Usb,
}

/// One `--disk` or `--cdrom` option, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    pub path: PathBuf,
    pub controller: Controller,
    pub read_only: bool,
    /// The name the control socket knows the drive by (`id=`); rehost
    /// names it after its place when none is given (see [`drive_name`]).
    pub id: Option<String>,
    /// `format=raw|vhd|vhdx`: open the image as this format instead of
    /// detecting it (`format=raw` uses a file that looks like a damaged
    /// VHD or VHDX as a raw disk).
    pub format: Option<ImageFormat>,
}

/// A drive with its image opened and its place on a controller.
#[derive(Debug, Clone)]
pub struct DriveConfig {
    pub kind: DriveKind,
    pub spec: DriveSpec,
    /// IDE: channel * 2 + device; AHCI: the port.
    pub slot: usize,
    /// The inserted image; a CD-ROM drive may be empty (ejected through
    /// the control socket).
    pub image: Option<Arc<dyn DiskImage>>,
    /// Every writable disk: the guest's writes go through this tracker,
    /// which keeps the image's dirty bitmaps (if any) up to date.
    pub tracker: Option<Arc<DirtyTracker>>,
}

/// The name a drive has on the control socket: its `id=`, or one after
/// its place as QEMU names `if=ide` drives (`ide0-hd0`, `ide1-cd0`), and
/// `ahci0-hd3` / `ahci0-cd3` for AHCI port 3.
pub fn drive_name(d: &DriveConfig) -> String {
    if let Some(id) = &d.spec.id {
        return id.clone();
    }
    let kind = match d.kind {
        DriveKind::Disk => "hd",
        DriveKind::Cdrom => "cd",
    };
    match d.spec.controller {
        Controller::Ide => format!("ide{}-{kind}{}", d.slot / 2, d.slot % 2),
        Controller::Ahci => format!("ahci0-{kind}{}", d.slot),
    }
}

/// Splits `PATH[,key=value]...`, where `,,` is a literal comma.
pub(crate) fn split_options(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                if let Some(p) = parts.last_mut() {
                    p.push(',');
                }
            } else {
                parts.push(String::new());
            }
        } else if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    parts
}

/// Parses `PATH[,controller=ide|ahci][,readonly=on|off][,id=NAME][,format=raw|vhd|vhdx]`
/// (`readonly` only for disks; CD-ROMs are always read-only).
pub fn parse_drive(option: &str, kind: DriveKind, text: &str) -> anyhow::Result<DriveSpec> {
    let parts = split_options(text);
    let path = parts.first().cloned().unwrap_or_default();
    if path.is_empty() {
        bail!("{option} {text:?}: the image path is missing");
    }
    let mut spec = DriveSpec {
        path: PathBuf::from(path),
        controller: Controller::Ide,
        read_only: kind == DriveKind::Cdrom,
        id: None,
        format: None,
    };
    for opt in &parts[1..] {
        match opt.split_once('=') {
            Some(("controller", "ide")) => spec.controller = Controller::Ide,
            Some(("controller", "ahci")) => spec.controller = Controller::Ahci,
            Some(("controller", other)) => {
                bail!("{option} {text}: controller={other}: expected ide or ahci")
            }
            Some(("id", v)) => {
                if v.is_empty()
                    || v.len() > 64
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    bail!("{option} {text}: id={v}: 1 to 64 letters, digits, '-', '_' or '.'");
                }
                spec.id = Some(v.to_owned());
            }
            Some(("format", v)) => {
                spec.format = Some(match v {
                    "raw" => ImageFormat::Raw,
                    "vhd" | "vpc" => ImageFormat::Vhd,
                    "vhdx" => ImageFormat::Vhdx,
                    _ => bail!("{option} {text}: format={v}: expected raw, vhd or vhdx"),
                })
            }
            Some(("readonly", v)) if kind == DriveKind::Disk => {
                spec.read_only = match v {
                    "on" | "yes" | "true" => true,
                    "off" | "no" | "false" => false,
                    _ => bail!("{option} {text}: readonly={v}: expected on or off"),
                }
            }
            _ => bail!(
                "{option} {text}: unknown option {opt:?} (expected controller=ide|ahci, id=NAME, format=raw|vhd|vhdx{})",
                if kind == DriveKind::Disk {
                    " or readonly=on"
                } else {
                    ""
                }
            ),
        }
    }
    Ok(spec)
}

/// The dirty trackers of `drives`, each with its image's path; the rest of
/// each drive (its other image handle) is dropped.
pub fn trackers_of(drives: Vec<DriveConfig>) -> Vec<(PathBuf, Arc<DirtyTracker>)> {
    drives
        .into_iter()
        .filter_map(|d| d.tracker.map(|t| (d.spec.path, t)))
        .collect()
}

/// Closes dirty trackers once nothing else holds them or their images:
/// the image is closed first (formats that write on close have then done
/// so), then the bitmaps are persisted with the image's final stamp, so
/// the next open finds them current.
pub fn close_trackers(trackers: Vec<(PathBuf, Arc<DirtyTracker>)>) {
    for (path, t) in trackers {
        match Arc::try_unwrap(t) {
            Ok(t) => {
                if let Err(e) = t.close() {
                    tracing::error!("{}: saving its dirty bitmaps failed: {e}", path.display());
                }
            }
            Err(_) => tracing::warn!(
                "{}: its dirty bitmaps are still in use at exit; they are saved when released",
                path.display()
            ),
        }
    }
}

/// An opened guest image and, for a writable disk, its dirty tracker.
pub type GuestImage = (Arc<dyn DiskImage>, Option<Arc<DirtyTracker>>);

/// Opens a guest's disk image. A writable disk goes through a dirty
/// tracker, so its bitmaps stay current and bitmaps can be added while the
/// guest runs (QMP block-dirty-bitmap-add); without bitmaps the tracker
/// only passes requests on and writes no sidecar. `what` names the option
/// in errors (`--disk PATH`).
pub fn open_guest_image(
    what: &str,
    path: &Path,
    read_only: bool,
    format: Option<ImageFormat>,
    track: bool,
) -> anyhow::Result<GuestImage> {
    let image = rehost_disk::open(path, &OpenOptions { read_only, format })
        .with_context(|| what.to_owned())?;
    if image.geometry().size == 0 {
        bail!("{what}: the image is empty");
    }
    let image: Arc<dyn DiskImage> = Arc::from(image);
    if !track || read_only {
        return Ok((image, None));
    }
    let t = DirtyTracker::open_image(image.clone(), &TrackerOptions::default())
        .with_context(|| format!("{what}: opening its dirty bitmaps"))?;
    if let Some(p) = t.problem() {
        tracing::warn!("{what}: {p}");
    }
    Ok((image, Some(Arc::new(t))))
}

/// Parses and opens every drive, and gives each its controller slot: disks
/// in order first, then CD-ROMs (on IDE preferring the secondary master,
/// where PCs put them).
pub fn open_drives(disks: &[String], cdroms: &[String]) -> anyhow::Result<Vec<DriveConfig>> {
    let mut specs = Vec::new();
    for d in disks {
        specs.push((DriveKind::Disk, parse_drive("--disk", DriveKind::Disk, d)?));
    }
    for c in cdroms {
        specs.push((
            DriveKind::Cdrom,
            parse_drive("--cdrom", DriveKind::Cdrom, c)?,
        ));
    }
    let mut taken: Vec<(Controller, usize)> = Vec::new();
    let mut opened: Vec<PathBuf> = Vec::new();
    let mut drives = Vec::new();
    for (kind, spec) in specs {
        let option = if kind == DriveKind::Disk {
            "--disk"
        } else {
            "--cdrom"
        };
        let canonical = std::fs::canonicalize(&spec.path)
            .with_context(|| format!("{option} {}: cannot open the image", spec.path.display()))?;
        if opened.contains(&canonical) {
            bail!(
                "{option} {}: the same image is attached twice",
                spec.path.display()
            );
        }
        let c = spec.controller;
        let mut order: Vec<usize> = (0..c.slots()).collect();
        if kind == DriveKind::Cdrom && c == Controller::Ide {
            order.rotate_left(2);
        }
        let Some(slot) = order.into_iter().find(|s| !taken.contains(&(c, *s))) else {
            bail!(
                "{option} {}: the {} controller has no free slot (it takes {} drives)",
                spec.path.display(),
                c.name(),
                c.slots()
            );
        };
        if let Some(id) = &spec.id {
            if drives
                .iter()
                .any(|d: &DriveConfig| d.spec.id.as_ref() == Some(id))
            {
                bail!("{option} {}: id={id} is used twice", spec.path.display());
            }
        }
        let (image, tracker) = open_guest_image(
            &format!("{option} {}", spec.path.display()),
            &spec.path,
            spec.read_only,
            spec.format,
            kind == DriveKind::Disk,
        )?;
        taken.push((c, slot));
        opened.push(canonical);
        drives.push(DriveConfig {
            kind,
            spec,
            slot,
            image: Some(image),
            tracker,
        });
    }
    Ok(drives)
}

/// The OpenFirmware device path SeaBIOS matches a drive against
/// (SeaBIOS src/boot.c build_ata_path: the PCI path, then drive@CHANNEL/
/// disk@DEVICE; AHCI uses the port as channel and 0 as device).
pub fn firmware_path(drive: &DriveConfig) -> String {
    match drive.spec.controller {
        Controller::Ide => format!(
            "/pci@i0cf8/ide@{:x},{:x}/drive@{:x}/disk@{:x}",
            IDE_DEVFN.device,
            IDE_DEVFN.function,
            drive.slot / 2,
            drive.slot % 2
        ),
        Controller::Ahci => format!(
            "/pci@i0cf8/sata@{:x}/drive@{:x}/disk@0",
            AHCI_DEVFN.device, drive.slot
        ),
    }
}

/// The firmware's boot order: drives of the chosen kind first, each kind
/// in controller order.
pub fn boot_order(drives: &[DriveConfig], boot: BootDevice) -> Vec<String> {
    let first = match boot {
        BootDevice::Disk | BootDevice::Usb => DriveKind::Disk,
        BootDevice::Cdrom => DriveKind::Cdrom,
    };
    let mut sorted: Vec<&DriveConfig> = drives.iter().collect();
    sorted.sort_by_key(|d| {
        (
            d.kind != first,
            d.spec.controller == Controller::Ahci,
            d.slot,
        )
    });
    sorted.into_iter().map(firmware_path).collect()
}

fn device_for(drive: &DriveConfig, link: Link) -> AtaDevice {
    let medium: Option<Arc<dyn BlockDevice>> = match &drive.tracker {
        Some(t) => Some(t.clone()),
        None => drive.image.clone().map(|i| -> Arc<dyn BlockDevice> { i }),
    };
    let (model, prefix) = match drive.kind {
        DriveKind::Disk => ("REHOST HARDDISK", "RHD"),
        DriveKind::Cdrom => ("REHOST DVD-ROM", "RCD"),
    };
    let identity = DriveIdentity {
        serial: format!(
            "{prefix}-{}-{}",
            drive.spec.controller.name().to_uppercase(),
            drive.slot
        ),
        model: model.to_owned(),
        firmware: env!("CARGO_PKG_VERSION").to_owned(),
    };
    match (drive.kind, medium) {
        (DriveKind::Disk, Some(m)) => AtaDevice::disk(m, drive.spec.read_only, link, identity),
        (_, m) => AtaDevice::cdrom(m, link, identity),
    }
}

/// MSI delivery through KVM_SIGNAL_MSI.
pub struct KvmMsi {
    pub vm: Arc<VmFd>,
}

impl MsiSender for KvmMsi {
    fn send(&self, address: u64, data: u32) {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        if let Err(e) = self.vm.signal_msi(msi) {
            tracing::error!("KVM_SIGNAL_MSI to {address:#x} failed: {e}");
        }
    }
}

/// The storage controllers of one boot.
#[derive(Clone)]
pub struct Attached {
    ide: Arc<Mutex<PiixIde>>,
    ahci: Option<Arc<Mutex<Ahci>>>,
}

impl Attached {
    /// Runs `f` on the CD-ROM drive at `controller`/`slot` while holding
    /// its controller's lock; `None` if there is no CD-ROM there.
    pub fn with_cdrom<R>(
        &self,
        controller: Controller,
        slot: usize,
        f: impl FnOnce(&mut Cdrom) -> R,
    ) -> Option<R> {
        match controller {
            Controller::Ide => {
                let mut ide = self.ide.lock().unwrap_or_else(|e| e.into_inner());
                ide.device_mut(slot / 2, slot % 2)?.cdrom_mut().map(f)
            }
            Controller::Ahci => {
                let mut ahci = self
                    .ahci
                    .as_ref()?
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                ahci.device_mut(slot)?.cdrom_mut().map(f)
            }
        }
    }

    /// Flushes every disk: called on power-off, reset and signals.
    pub fn flush(&self) {
        self.ide.lock().unwrap_or_else(|e| e.into_inner()).flush();
        if let Some(a) = &self.ahci {
            a.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
    }
}

/// Plugs the controllers into the machine.
pub fn attach(
    drives: &[DriveConfig],
    mem: &GuestMemory,
    pci: &mut PciRoot,
    io_bus: &Bus,
    isa: &[Arc<dyn IrqLine>],
    router: &Arc<PciInterruptRouter>,
    msi: Arc<dyn MsiSender>,
) -> anyhow::Result<Attached> {
    let mut ide_drives: [[Option<AtaDevice>; 2]; 2] = Default::default();
    let mut ahci_drives: Vec<Option<AtaDevice>> = (0..ahci_spec::PORTS).map(|_| None).collect();
    for d in drives {
        match d.spec.controller {
            Controller::Ide => {
                ide_drives[d.slot / 2][d.slot % 2] = Some(device_for(d, Link::Parallel))
            }
            Controller::Ahci => ahci_drives[d.slot] = Some(device_for(d, Link::Serial)),
        }
    }
    let irq = |n: usize| -> anyhow::Result<Arc<dyn IrqLine>> {
        isa.get(n)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("ISA IRQ {n} is not wired"))
    };
    let ide = Arc::new(Mutex::new(PiixIde::new(
        mem.clone(),
        ide_drives,
        [irq(ide_spec::IRQ[0])?, irq(ide_spec::IRQ[1])?],
    )));
    pci.add(IDE_DEVFN, ide.clone())?;
    let shared: SharedDevice = ide.clone();
    for ch in 0..2 {
        io_bus.insert(
            ide_spec::COMMAND_BLOCK[ch],
            ide_spec::COMMAND_BLOCK_LEN,
            shared.clone(),
        )?;
        io_bus.insert(
            ide_spec::CONTROL_BLOCK[ch],
            ide_spec::CONTROL_BLOCK_LEN,
            shared.clone(),
        )?;
    }
    let ahci = if drives.iter().any(|d| d.spec.controller == Controller::Ahci) {
        let intx = router.intx(AHCI_DEVFN.device, 0, u32::from(AHCI_DEVFN.device) << 3);
        let a = Arc::new(Mutex::new(Ahci::new(
            mem.clone(),
            ahci_drives,
            intx,
            Some(msi),
        )));
        pci.add(AHCI_DEVFN, a.clone())?;
        Some(a)
    } else {
        None
    };
    Ok(Attached { ide, ahci })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_options_parse_with_escaped_commas() {
        let d = parse_drive(
            "--disk",
            DriveKind::Disk,
            "a,,b.vhdx,controller=ahci,readonly=on",
        )
        .unwrap();
        assert_eq!(d.path, PathBuf::from("a,b.vhdx"));
        assert_eq!(d.controller, Controller::Ahci);
        assert!(d.read_only);
        let c = parse_drive("--cdrom", DriveKind::Cdrom, "x.iso").unwrap();
        assert!(c.read_only);
        assert_eq!(c.controller, Controller::Ide);
        for bad in ["", "x,controller=scsi", "x,readonly=maybe", "x,foo=1"] {
            assert!(
                parse_drive("--disk", DriveKind::Disk, bad).is_err(),
                "{bad}"
            );
        }
        assert!(parse_drive("--cdrom", DriveKind::Cdrom, "x.iso,readonly=on").is_err());
        let d = parse_drive("--disk", DriveKind::Disk, "x.vhdx,id=d0,format=raw").unwrap();
        assert_eq!(d.format, Some(ImageFormat::Raw));
        assert_eq!(d.id.as_deref(), Some("d0"));
        assert_eq!(
            parse_drive("--disk", DriveKind::Disk, "x,format=vhdx")
                .unwrap()
                .format,
            Some(ImageFormat::Vhdx)
        );
        assert_eq!(
            parse_drive("--disk", DriveKind::Disk, "x").unwrap().format,
            None
        );
        assert!(parse_drive("--disk", DriveKind::Disk, "x,format=qcow2").is_err());
    }

    #[test]
    fn damaged_vhdx_is_refused_unless_format_raw_is_given() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.vhdx");
        rehost_disk::create(
            &p,
            &rehost_disk::CreateOptions {
                format: ImageFormat::Vhdx,
                subformat: rehost_disk::Subformat::Dynamic,
                size: 4 << 20,
                block_size: None,
                parent: None,
            },
        )
        .unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"XXXXXXXX", 0).unwrap();
        drop(f);
        let path = p.to_str().unwrap().to_owned();
        let err = open_drives(std::slice::from_ref(&path), &[]).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("damaged vhdx"), "{text}");
        assert!(text.contains("format=raw"), "{text}");
        let drives = open_drives(&[format!("{path},format=raw")], &[]).unwrap();
        let image = drives[0].image.as_ref().unwrap();
        assert_eq!(image.info().format, ImageFormat::Raw);
        assert_eq!(image.geometry().size, std::fs::metadata(&p).unwrap().len());
    }

    #[test]
    fn slots_boot_order_and_firmware_paths() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![0u8; 4096]).unwrap();
            p.to_str().unwrap().to_owned()
        };
        let (a, b, c, d) = (mk("a.raw"), mk("b.raw"), mk("c.iso"), mk("d.iso"));
        let drives = open_drives(
            &[a.clone(), format!("{b},controller=ahci")],
            &[c.clone(), format!("{d},controller=ahci")],
        )
        .unwrap();
        let slots: Vec<_> = drives.iter().map(|d| (d.spec.controller, d.slot)).collect();
        assert_eq!(
            slots,
            vec![
                (Controller::Ide, 0),
                (Controller::Ahci, 0),
                (Controller::Ide, 2),
                (Controller::Ahci, 1)
            ]
        );
        assert_eq!(
            boot_order(&drives, BootDevice::Cdrom),
            vec![
                "/pci@i0cf8/ide@1,1/drive@1/disk@0",
                "/pci@i0cf8/sata@4/drive@1/disk@0",
                "/pci@i0cf8/ide@1,1/drive@0/disk@0",
                "/pci@i0cf8/sata@4/drive@0/disk@0",
            ]
        );
        let err = open_drives(&[a.clone(), a.clone()], &[]).unwrap_err();
        assert!(format!("{err:#}").contains("attached twice"), "{err:#}");
        let err = open_drives(&["/nonexistent/x.vhdx".into()], &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/x.vhdx"),
            "{err:#}"
        );
        let many: Vec<String> = (0..5).map(|i| mk(&format!("m{i}.raw"))).collect();
        let err = open_drives(&many, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("no free slot"), "{err:#}");
    }
}
