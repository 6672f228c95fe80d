//! USB: the `--usb-controller` and `--usb` options, the images USB disks
//! open, the PIIX3 UHCI function at 00:01.2 with the emulated devices on
//! its root ports, and the host timer that runs its frames.
//!
//! The frame timer is a thread that runs one frame per millisecond while
//! the guest has the schedule running (USBCMD.RS) and sleeps on a condition
//! variable while it is stopped, so an idle controller costs nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rehost_devices::pci::{DevFn, PciInterruptRouter, PciRoot};
use rehost_devices::usb::keyboard::{KeyboardHandle, UsbKeyboard};
use rehost_devices::usb::storage::UsbStorage;
use rehost_devices::usb::uhci::Uhci;
use rehost_devices::usb::uhci_spec;
use rehost_devices::usb::UsbDevice;
use rehost_devices::GuestMemory;
use rehost_disk::dirty::DirtyTracker;
use rehost_disk::{BlockDevice, DiskImage};

/// Where the PIIX3 USB function sits: function 2 of the south bridge.
pub const UHCI_DEVFN: DevFn = DevFn::new(1, 2);

/// The USB host controller (`--usb-controller`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UsbController {
    /// PIIX3 UHCI (8086:7020) at 00:01.2: two full/low-speed root ports.
    /// SeaBIOS's bios.bin and bios-256k.bin, GRUB's `uhci` and every
    /// Windows since 2000 drive it.
    #[default]
    Uhci,
}

/// One `--usb` option, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsbDeviceSpec {
    Disk {
        path: PathBuf,
        read_only: bool,
        port: Option<usize>,
    },
    Keyboard {
        port: Option<usize>,
    },
}

/// A USB device with its image opened and its root port.
#[derive(Debug, Clone)]
pub struct UsbDeviceConfig {
    pub spec: UsbDeviceSpec,
    pub port: usize,
    pub image: Option<Arc<dyn DiskImage>>,
    /// A writable disk's dirty tracker: the guest's writes go through it.
    pub tracker: Option<Arc<DirtyTracker>>,
}

#[derive(Debug, Clone)]
pub struct UsbConfig {
    pub controller: UsbController,
    pub devices: Vec<UsbDeviceConfig>,
}

fn parse_port(option: &str, text: &str, v: &str) -> anyhow::Result<usize> {
    match v.parse::<usize>() {
        Ok(p) if (1..=uhci_spec::PORTS).contains(&p) => Ok(p),
        _ => bail!(
            "{option} {text}: port={v}: expected a root port from 1 to {}",
            uhci_spec::PORTS
        ),
    }
}

/// Parses `disk:PATH[,readonly=on][,port=N]` or `keyboard[,port=N]`
/// (`,,` is a literal comma in PATH).
pub fn parse_usb(text: &str) -> anyhow::Result<UsbDeviceSpec> {
    let option = "--usb";
    let parts = crate::storage::split_options(text);
    let head = parts.first().cloned().unwrap_or_default();
    let mut port = None;
    if head == "keyboard" {
        for opt in &parts[1..] {
            match opt.split_once('=') {
                Some(("port", v)) => port = Some(parse_port(option, text, v)?),
                _ => bail!("{option} {text}: unknown option {opt:?} (expected port=N)"),
            }
        }
        return Ok(UsbDeviceSpec::Keyboard { port });
    }
    let Some(path) = head.strip_prefix("disk:") else {
        bail!("{option} {text}: expected disk:PATH or keyboard");
    };
    if path.is_empty() {
        bail!("{option} {text}: the image path is missing");
    }
    let mut read_only = false;
    for opt in &parts[1..] {
        match opt.split_once('=') {
            Some(("port", v)) => port = Some(parse_port(option, text, v)?),
            Some(("readonly", v)) => {
                read_only = match v {
                    "on" | "yes" | "true" => true,
                    "off" | "no" | "false" => false,
                    _ => bail!("{option} {text}: readonly={v}: expected on or off"),
                }
            }
            _ => bail!("{option} {text}: unknown option {opt:?} (expected readonly=on or port=N)"),
        }
    }
    Ok(UsbDeviceSpec::Disk {
        path: PathBuf::from(path),
        read_only,
        port,
    })
}

/// Parses every `--usb`, gives each a root port and opens the disks.
/// `in_use` are the images `--disk`/`--cdrom` already opened.
pub fn open_usb(
    controller: Option<UsbController>,
    specs: &[String],
    in_use: &[PathBuf],
) -> anyhow::Result<Option<UsbConfig>> {
    if specs.is_empty() {
        return Ok(controller.map(|controller| UsbConfig {
            controller,
            devices: Vec::new(),
        }));
    }
    let mut parsed = Vec::new();
    for s in specs {
        parsed.push((s, parse_usb(s)?));
    }
    let mut taken: Vec<usize> = parsed
        .iter()
        .filter_map(|(_, p)| match p {
            UsbDeviceSpec::Disk { port, .. } | UsbDeviceSpec::Keyboard { port } => *port,
        })
        .collect();
    let mut fixed = taken.clone();
    fixed.sort_unstable();
    if fixed.windows(2).any(|w| w[0] == w[1]) {
        bail!("--usb: two devices ask for the same root port");
    }
    let mut opened: Vec<PathBuf> = in_use.to_vec();
    let mut devices = Vec::new();
    for (text, spec) in parsed {
        let port = match &spec {
            UsbDeviceSpec::Disk { port: Some(p), .. }
            | UsbDeviceSpec::Keyboard { port: Some(p) } => *p,
            _ => {
                let Some(p) = (1..=uhci_spec::PORTS).find(|p| !taken.contains(p)) else {
                    bail!(
                        "--usb {text}: the USB controller has no free root port (it has {})",
                        uhci_spec::PORTS
                    );
                };
                taken.push(p);
                p
            }
        };
        let (image, tracker) = match &spec {
            UsbDeviceSpec::Disk {
                path, read_only, ..
            } => {
                let canonical = std::fs::canonicalize(path)
                    .with_context(|| format!("--usb {text}: cannot open the image"))?;
                if opened.contains(&canonical) {
                    bail!("--usb {text}: the same image is attached twice");
                }
                opened.push(canonical);
                let (image, tracker) = crate::storage::open_guest_image(
                    &format!("--usb {text}"),
                    path,
                    *read_only,
                    None,
                    true,
                )?;
                (Some(image), tracker)
            }
            UsbDeviceSpec::Keyboard { .. } => (None, None),
        };
        devices.push(UsbDeviceConfig {
            spec,
            port,
            image,
            tracker,
        });
    }
    Ok(Some(UsbConfig {
        controller: controller.unwrap_or_default(),
        devices,
    }))
}

/// The OpenFirmware path SeaBIOS matches a USB disk against (SeaBIOS
/// src/boot.c bootprio_find_usb: the controller's PCI path, then
/// storage@PORT/channel@0/disk@0,LUN).
pub fn firmware_path(port: usize) -> String {
    format!(
        "/pci@i0cf8/usb@{:x},{:x}/storage@{port:x}/channel@0/disk@0,0",
        UHCI_DEVFN.device, UHCI_DEVFN.function
    )
}

/// The dirty trackers of the USB disks, each with its image's path.
pub fn trackers_of(cfg: UsbConfig) -> Vec<(PathBuf, Arc<DirtyTracker>)> {
    cfg.devices
        .into_iter()
        .filter_map(|d| match (d.spec, d.tracker) {
            (UsbDeviceSpec::Disk { path, .. }, Some(t)) => Some((path, t)),
            _ => None,
        })
        .collect()
}

/// Boot order entries of the USB disks.
pub fn boot_order(cfg: &UsbConfig) -> Vec<String> {
    cfg.devices
        .iter()
        .filter(|d| matches!(d.spec, UsbDeviceSpec::Disk { .. }))
        .map(|d| firmware_path(d.port))
        .collect()
}

/// Wakes the frame timer.
#[derive(Default)]
struct Wake {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    fn signal(&self) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_one();
    }

    fn wait(&self, timeout: Duration) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !*p {
            p = self
                .cv
                .wait_timeout(p, timeout)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *p = false;
    }
}

/// Frames the timer runs at once when it fell behind (the host was busy);
/// older ones are skipped, as a real controller's frames pass unseen.
const MAX_CATCH_UP: u64 = 8;

/// The pause before walking a busy frame again.
const REWALK_PAUSE: Duration = Duration::from_micros(50);

fn frame_timer(uhci: Arc<Mutex<Uhci>>, stop: Arc<AtomicBool>, wake: Arc<Wake>) {
    let frame = Duration::from_millis(1);
    let mut epoch: Option<(Instant, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let running = uhci.lock().unwrap_or_else(|e| e.into_inner()).running();
        if !running {
            epoch = None;
            wake.wait(Duration::from_millis(500));
            continue;
        }
        let (start, done) = epoch.get_or_insert((Instant::now(), 0));
        let due = (start.elapsed().as_micros() / 1000) as u64 + 1;
        let n = due.saturating_sub(*done).min(MAX_CATCH_UP);
        let mut progress = false;
        {
            let mut u = uhci.lock().unwrap_or_else(|e| e.into_inner());
            for _ in 0..n {
                progress |= u.run_frame();
            }
        }
        *done = due;
        let next = *start + frame * (*done as u32);
        // While TDs complete, the guest is likely queueing more: go round
        // the frame again after a short pause instead of waiting for the
        // next one. An idle schedule costs one wake-up per frame.
        while progress && Instant::now() + REWALK_PAUSE * 2 < next {
            std::thread::sleep(REWALK_PAUSE);
            progress = uhci.lock().unwrap_or_else(|e| e.into_inner()).walk_again();
        }
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}

/// The USB controller of one boot.
pub struct AttachedUsb {
    disks: Vec<Arc<dyn BlockDevice>>,
    keyboards: Vec<KeyboardHandle>,
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    timer: Option<JoinHandle<()>>,
}

impl AttachedUsb {
    /// Stops the frame timer (the vCPUs are stopped already).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.signal();
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
    }

    pub fn flush(&self) {
        for d in &self.disks {
            if let Err(e) = d.flush() {
                tracing::error!("flushing a USB disk failed: {e}");
            }
        }
    }

    /// The keyboards, in `--usb` order.
    pub fn keyboards(&self) -> &[KeyboardHandle] {
        &self.keyboards
    }
}

impl Drop for AttachedUsb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Plugs the controller and its devices into the machine.
pub fn attach(
    cfg: &UsbConfig,
    mem: &GuestMemory,
    pci: &mut PciRoot,
    router: &Arc<PciInterruptRouter>,
) -> anyhow::Result<AttachedUsb> {
    let UsbController::Uhci = cfg.controller;
    let intx = router.intx(
        UHCI_DEVFN.device,
        uhci_spec::INTERRUPT_PIN - 1,
        u32::from(UHCI_DEVFN.device) << 3 | u32::from(UHCI_DEVFN.function),
    );
    let wake = Arc::new(Wake::default());
    let mut uhci = Uhci::new(mem.clone(), intx);
    let w = wake.clone();
    uhci.set_wake(Some(Arc::new(move || w.signal())));
    let mut disks: Vec<Arc<dyn BlockDevice>> = Vec::new();
    let mut keyboards = Vec::new();
    for d in &cfg.devices {
        let device: Box<dyn UsbDevice> = match (&d.spec, &d.image) {
            (UsbDeviceSpec::Disk { read_only, .. }, Some(image)) => {
                let medium: Arc<dyn BlockDevice> = match &d.tracker {
                    Some(t) => t.clone(),
                    None => image.clone(),
                };
                disks.push(medium.clone());
                // BOT asks for a serial number of at least 12 hex digits.
                let serial = format!("{:012X}", 0x5245_4800_0000u64 + d.port as u64);
                Box::new(UsbStorage::new(medium, *read_only, &serial))
            }
            (UsbDeviceSpec::Keyboard { .. }, _) => {
                let k = KeyboardHandle::default();
                keyboards.push(k.clone());
                Box::new(UsbKeyboard::new(k))
            }
            (UsbDeviceSpec::Disk { path, .. }, None) => {
                bail!("--usb disk:{}: the image is not open", path.display())
            }
        };
        uhci.attach(d.port, device)
            .with_context(|| format!("--usb on port {}", d.port))?;
    }
    let uhci = Arc::new(Mutex::new(uhci));
    pci.add(UHCI_DEVFN, uhci.clone())?;
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let (u, s, w) = (uhci.clone(), stop.clone(), wake.clone());
        std::thread::Builder::new()
            .name("uhci-frames".into())
            .spawn(move || frame_timer(u, s, w))
            .context("spawning the UHCI frame timer thread")?
    };
    Ok(AttachedUsb {
        disks,
        keyboards,
        stop,
        wake,
        timer: Some(timer),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usb_options_parse() {
        assert_eq!(
            parse_usb("disk:a,,b.vhdx,readonly=on,port=2").unwrap(),
            UsbDeviceSpec::Disk {
                path: PathBuf::from("a,b.vhdx"),
                read_only: true,
                port: Some(2)
            }
        );
        assert_eq!(
            parse_usb("keyboard").unwrap(),
            UsbDeviceSpec::Keyboard { port: None }
        );
        for bad in [
            "",
            "disk:",
            "mouse",
            "disk:x,port=0",
            "disk:x,port=3",
            "disk:x,readonly=maybe",
            "keyboard,readonly=on",
        ] {
            assert!(parse_usb(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_are_given_in_order_and_images_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.raw");
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let disk = format!("disk:{}", p.display());
        let cfg = open_usb(None, &["keyboard,port=1".into(), disk.clone()], &[])
            .unwrap()
            .unwrap();
        assert_eq!(cfg.controller, UsbController::Uhci);
        assert_eq!(cfg.devices[1].port, 2);
        assert_eq!(
            boot_order(&cfg),
            vec!["/pci@i0cf8/usb@1,2/storage@2/channel@0/disk@0,0"]
        );
        let err = open_usb(None, &[disk.clone(), disk.clone()], &[]).unwrap_err();
        assert!(format!("{err:#}").contains("attached twice"), "{err:#}");
        let err = open_usb(
            None,
            &["keyboard".into(), "keyboard".into(), "keyboard".into()],
            &[],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("no free root port"), "{err:#}");
        let err = open_usb(None, &[disk], &[std::fs::canonicalize(&p).unwrap()]).unwrap_err();
        assert!(format!("{err:#}").contains("attached twice"), "{err:#}");
        assert!(open_usb(None, &[], &[]).unwrap().is_none());
        // A writable disk goes through a dirty tracker; a read-only one not.
        assert!(cfg.devices[1].tracker.is_some());
        let ro = format!("disk:{},readonly=on", p.display());
        let cfg = open_usb(None, &[ro], &[]).unwrap().unwrap();
        assert!(cfg.devices[0].tracker.is_none());
    }
}
