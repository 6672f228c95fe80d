//! USB: the `--usb-controller` and `--usb` options, the images USB disks
//! open, the host controller (the PIIX3 UHCI function at 00:01.2, the
//! ICH9 EHCI at 00:1d.7 with its UHCI companions at 00:1d.0-2, or an xHCI
//! at 00:05.0) with the emulated devices on its root ports, and the host
//! thread that runs UHCI/EHCI frames or completes xHCI transfers.
//!
//! Devices are plugged and unplugged while the guest runs through
//! [`UsbHandle`] (QMP `device_add`/`device_del`, see `control::devices`);
//! the list of devices lives in the control state, so it outlives resets.
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
use rehost_devices::display::{Console, InputSink};
use rehost_devices::irq::MsiSender;
use rehost_devices::pci::{DevFn, PciInterruptRouter, PciRoot};
use rehost_devices::usb::ehci::Ehci;
use rehost_devices::usb::ehci_spec;
use rehost_devices::usb::keyboard::{KeyboardHandle, UsbKeyboard};
use rehost_devices::usb::storage::UsbStorage;
use rehost_devices::usb::uhci::{Uhci, UhciIdentity};
use rehost_devices::usb::uhci_spec;
use rehost_devices::usb::xhci::Xhci;
use rehost_devices::usb::xhci_spec;
use rehost_devices::usb::UsbDevice;
use rehost_devices::GuestMemory;
use rehost_disk::dirty::DirtyTracker;
use rehost_disk::{BlockDevice, DiskImage};

/// Where the PIIX3 USB function sits: function 2 of the south bridge.
pub const UHCI_DEVFN: DevFn = DevFn::new(1, 2);
/// Where the ICH9 EHCI sits (function 7 of slot 0x1d, as on ICH9); its
/// UHCI companions are functions 0-2 of the same slot.
pub const EHCI_DEVFN: DevFn = DevFn::new(0x1d, ehci_spec::EHCI_FUNCTION);
/// Where the xHCI controller sits: a slot of its own.
pub const XHCI_DEVFN: DevFn = DevFn::new(5, 0);

/// The firmware that has an xHCI driver: Debian's 256 KiB SeaBIOS build
/// (the 128 KiB bios.bin has UHCI and EHCI only).
pub const XHCI_FIRMWARE: &str = "/usr/share/seabios/bios-256k.bin";

/// The USB host controller (`--usb-controller`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UsbController {
    /// PIIX3 UHCI (8086:7020) at 00:01.2: two full/low-speed root ports.
    /// SeaBIOS's bios.bin and bios-256k.bin, GRUB's `uhci` and every
    /// Windows since 2000 drive it.
    #[default]
    Uhci,
    /// ICH9 EHCI (8086:293a) at 00:1d.7 with six root ports, and its UHCI
    /// companions (8086:2934-2936) at 00:1d.0-2: high-speed devices (USB
    /// disks) stay on the EHCI, full/low-speed ones (keyboards) are handed
    /// to a companion. SeaBIOS's bios.bin and bios-256k.bin and GRUB's
    /// `ehci` (with `uhci` for the companions) drive it; Windows' inbox
    /// usbehci is the driver it is meant for (not tried here).
    Ehci,
    /// xHCI (QEMU's qemu-xhci, 1b36:000d, class 0c0330) at 00:05.0: USB 2
    /// root ports 1-4 (low, full, high speed) and USB 3 ports 5-8. SeaBIOS
    /// drives it only in bios-256k.bin (taken by default with this
    /// controller); Windows 8 and later and Linux's xhci_hcd drive it.
    Xhci,
}

impl UsbController {
    /// How many root ports the controller offers.
    pub fn ports(self) -> usize {
        match self {
            UsbController::Uhci => uhci_spec::PORTS,
            UsbController::Ehci => ehci_spec::PORTS,
            // The USB 2 ports: the emulated devices have no SuperSpeed
            // descriptors for the USB 3 ports 5-8.
            UsbController::Xhci => xhci_spec::USB2_PORTS,
        }
    }

    /// The firmware this controller needs when --firmware is not given,
    /// if not the default bios.bin.
    pub fn default_firmware(self) -> Option<&'static str> {
        match self {
            UsbController::Uhci | UsbController::Ehci => None,
            UsbController::Xhci => Some(XHCI_FIRMWARE),
        }
    }

    /// The PCI function SeaBIOS's boot paths name.
    fn devfn(self) -> DevFn {
        match self {
            UsbController::Uhci => UHCI_DEVFN,
            UsbController::Ehci => EHCI_DEVFN,
            UsbController::Xhci => XHCI_DEVFN,
        }
    }
}

/// The most root ports any controller has (`port=N` is checked against
/// the controller's own count once it is known).
pub const MAX_PORTS: usize = ehci_spec::PORTS;

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

impl UsbDeviceSpec {
    /// QEMU's name of the device model (`device_add`'s `driver`).
    pub fn driver(&self) -> &'static str {
        match self {
            UsbDeviceSpec::Disk { .. } => DRIVER_STORAGE,
            UsbDeviceSpec::Keyboard { .. } => DRIVER_KEYBOARD,
        }
    }
}

/// `device_add` driver names (QEMU's).
pub const DRIVER_STORAGE: &str = "usb-storage";
pub const DRIVER_KEYBOARD: &str = "usb-kbd";
/// QEMU's name of the first USB bus (`device_add`'s `bus`).
pub const USB_BUS_NAME: &str = "usb-bus.0";

/// A USB device with its image opened and its root port.
#[derive(Debug, Clone)]
pub struct UsbDeviceConfig {
    pub spec: UsbDeviceSpec,
    /// The name the control socket knows it by (`--usb ...,id=NAME` or
    /// `device_add`'s `id`); `device_del` needs one.
    pub id: Option<String>,
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
        Ok(p) if (1..=MAX_PORTS).contains(&p) => Ok(p),
        _ => bail!("{option} {text}: port={v}: expected a root port from 1 to {MAX_PORTS}"),
    }
}

/// Parses `disk:PATH[,readonly=on][,port=N][,id=NAME]` or
/// `keyboard[,port=N][,id=NAME]` (`,,` is a literal comma in PATH).
pub fn parse_usb(text: &str) -> anyhow::Result<(UsbDeviceSpec, Option<String>)> {
    let option = "--usb";
    let parts = crate::storage::split_options(text);
    let head = parts.first().cloned().unwrap_or_default();
    let mut port = None;
    let mut id = None;
    if head == "keyboard" {
        for opt in &parts[1..] {
            match opt.split_once('=') {
                Some(("port", v)) => port = Some(parse_port(option, text, v)?),
                Some(("id", v)) => id = Some(parse_id(option, text, v)?),
                _ => bail!("{option} {text}: unknown option {opt:?} (expected port=N or id=NAME)"),
            }
        }
        return Ok((UsbDeviceSpec::Keyboard { port }, id));
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
            Some(("id", v)) => id = Some(parse_id(option, text, v)?),
            Some(("readonly", v)) => {
                read_only = match v {
                    "on" | "yes" | "true" => true,
                    "off" | "no" | "false" => false,
                    _ => bail!("{option} {text}: readonly={v}: expected on or off"),
                }
            }
            _ => bail!(
                "{option} {text}: unknown option {opt:?} (expected readonly=on, port=N or id=NAME)"
            ),
        }
    }
    Ok((
        UsbDeviceSpec::Disk {
            path: PathBuf::from(path),
            read_only,
            port,
        },
        id,
    ))
}

/// Whether `id` is a valid device name: 1 to 64 letters, digits, '-',
/// '_' or '.' (the rule `--disk ...,id=` follows).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_id(option: &str, text: &str, v: &str) -> anyhow::Result<String> {
    if !valid_id(v) {
        bail!("{option} {text}: id={v}: 1 to 64 letters, digits, '-', '_' or '.'");
    }
    Ok(v.to_owned())
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
    let mut ids: Vec<String> = Vec::new();
    for s in specs {
        let (spec, id) = parse_usb(s)?;
        if let Some(id) = &id {
            if ids.contains(id) {
                bail!("--usb {s}: id={id} is used twice");
            }
            ids.push(id.clone());
        }
        parsed.push((s, spec, id));
    }
    let controller = controller.unwrap_or_default();
    let ports = controller.ports();
    let mut taken: Vec<usize> = parsed
        .iter()
        .filter_map(|(_, p, _)| match p {
            UsbDeviceSpec::Disk { port, .. } | UsbDeviceSpec::Keyboard { port } => *port,
        })
        .collect();
    let mut fixed = taken.clone();
    fixed.sort_unstable();
    if fixed.windows(2).any(|w| w[0] == w[1]) {
        bail!("--usb: two devices ask for the same root port");
    }
    if let Some(p) = fixed.iter().find(|p| **p > ports) {
        bail!("--usb: port={p}: the {controller:?} controller has root ports 1 to {ports}");
    }
    let mut opened: Vec<PathBuf> = in_use.to_vec();
    let mut devices = Vec::new();
    for (text, spec, id) in parsed {
        let port = match &spec {
            UsbDeviceSpec::Disk { port: Some(p), .. }
            | UsbDeviceSpec::Keyboard { port: Some(p) } => *p,
            _ => {
                let Some(p) = (1..=ports).find(|p| !taken.contains(p)) else {
                    bail!(
                        "--usb {text}: the USB controller has no free root port (it has {ports})"
                    );
                };
                taken.push(p);
                p
            }
        };
        let (image, tracker) = open_device(&format!("--usb {text}"), &spec, &mut opened)?;
        devices.push(UsbDeviceConfig {
            spec,
            id,
            port,
            image,
            tracker,
        });
    }
    Ok(Some(UsbConfig {
        controller,
        devices,
    }))
}

/// A disk device's image and, when writable, its dirty tracker.
pub type OpenedMedium = (Option<Arc<dyn DiskImage>>, Option<Arc<DirtyTracker>>);

/// Opens a disk device's image (through a dirty tracker when writable);
/// `opened` are the canonical paths of the images already in use, to
/// which this one is added. `what` names the option in errors.
pub fn open_device(
    what: &str,
    spec: &UsbDeviceSpec,
    opened: &mut Vec<PathBuf>,
) -> anyhow::Result<OpenedMedium> {
    let UsbDeviceSpec::Disk {
        path, read_only, ..
    } = spec
    else {
        return Ok((None, None));
    };
    let canonical =
        std::fs::canonicalize(path).with_context(|| format!("{what}: cannot open the image"))?;
    if opened.contains(&canonical) {
        bail!("{what}: the same image is attached twice");
    }
    let (image, tracker) = crate::storage::open_guest_image(what, path, *read_only, None, true)?;
    opened.push(canonical);
    Ok((Some(image), tracker))
}

/// The OpenFirmware path SeaBIOS matches a USB disk against (SeaBIOS
/// src/boot.c bootprio_find_usb: the controller's PCI path, its function
/// only when not 0, then storage@PORT/channel@0/disk@0,LUN).
pub fn firmware_path(controller: UsbController, port: usize) -> String {
    let at = controller.devfn();
    let function = if at.function != 0 {
        format!(",{:x}", at.function)
    } else {
        String::new()
    };
    format!(
        "/pci@i0cf8/usb@{:x}{function}/storage@{port:x}/channel@0/disk@0,0",
        at.device
    )
}

/// The dirty trackers of the USB disks `devices`, each with its image's
/// path; the rest of each device (its other image handle) is dropped.
pub fn trackers_of(devices: Vec<UsbDeviceConfig>) -> Vec<(PathBuf, Arc<DirtyTracker>)> {
    devices
        .into_iter()
        .filter_map(|d| match (d.spec, d.tracker) {
            (UsbDeviceSpec::Disk { path, .. }, Some(t)) => Some((path, t)),
            _ => None,
        })
        .collect()
}

/// Writes what a USB disk's image caches (its dirty bitmaps too).
pub fn flush_device(d: &UsbDeviceConfig) {
    let medium: Option<Arc<dyn BlockDevice>> = match (&d.tracker, &d.image) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(i)) => Some(i.clone()),
        _ => None,
    };
    if let (Some(m), UsbDeviceSpec::Disk { path, .. }) = (medium, &d.spec) {
        if let Err(e) = m.flush() {
            tracing::error!("{}: flushing a USB disk failed: {e}", path.display());
        }
    }
}

/// Lets go of an unplugged device: its disk is flushed, its image closed
/// and its dirty bitmaps saved with the image's final stamp.
pub fn close_device(d: UsbDeviceConfig) {
    flush_device(&d);
    crate::storage::close_trackers(trackers_of(vec![d]));
}

/// Boot order entries of the USB disks.
pub fn boot_order(usb: &UsbConfig) -> Vec<String> {
    usb.devices
        .iter()
        .filter(|d| matches!(d.spec, UsbDeviceSpec::Disk { .. }))
        .map(|d| firmware_path(usb.controller, d.port))
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

/// A host controller whose schedule runs frame by frame.
trait FrameClock: Send {
    fn running(&self) -> bool;
    fn run_frame(&mut self) -> bool;
    fn walk_again(&mut self) -> bool;
}

impl FrameClock for Uhci {
    fn running(&self) -> bool {
        Uhci::running(self)
    }
    fn run_frame(&mut self) -> bool {
        Uhci::run_frame(self)
    }
    fn walk_again(&mut self) -> bool {
        Uhci::walk_again(self)
    }
}

impl FrameClock for Ehci {
    fn running(&self) -> bool {
        Ehci::running(self)
    }
    fn run_frame(&mut self) -> bool {
        Ehci::run_frame(self)
    }
    fn walk_again(&mut self) -> bool {
        Ehci::walk_again(self)
    }
}

type Clocked = Arc<Mutex<dyn FrameClock>>;

/// Runs the frames of `controllers` (an EHCI and its companions share one
/// timer) while any of them runs.
fn frame_timer(controllers: Vec<Clocked>, stop: Arc<AtomicBool>, wake: Arc<Wake>) {
    let frame = Duration::from_millis(1);
    let mut epoch: Option<(Instant, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let running = controllers.iter().any(|c| lock(c).running());
        if !running {
            epoch = None;
            wake.wait(Duration::from_millis(500));
            continue;
        }
        let (start, done) = epoch.get_or_insert((Instant::now(), 0));
        let due = (start.elapsed().as_micros() / 1000) as u64 + 1;
        let n = due.saturating_sub(*done).min(MAX_CATCH_UP);
        let mut progress = false;
        for c in &controllers {
            let mut u = lock(c);
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
            progress = false;
            for c in &controllers {
                progress |= lock(c).walk_again();
            }
        }
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}

/// Completes xHCI transfers the devices answer later and retries NAKed
/// ones (about once a millisecond while any waits); sleeps otherwise.
fn xhci_worker(xhci: Arc<Mutex<Xhci>>, stop: Arc<AtomicBool>, wake: Arc<Wake>) {
    while !stop.load(Ordering::Relaxed) {
        let waiting = {
            let mut x = lock(&xhci);
            x.poll();
            x.wants_poll()
        };
        if waiting {
            std::thread::sleep(Duration::from_millis(1));
        } else {
            wake.wait(Duration::from_millis(500));
        }
    }
}

/// A keyboard's place on the console, by root port.
type ConsoleInputs = Arc<Mutex<Vec<(usize, Arc<dyn InputSink>)>>>;

/// What the control socket needs to plug and unplug devices while the
/// guest runs. Every change happens under the controller's lock, which
/// the frame timer and the vCPUs take for each frame and register access:
/// a device comes or goes between two frames, never during one.
#[derive(Clone)]
pub struct UsbHandle {
    root: RootHub,
    keyboards: ConsoleInputs,
}

/// The controller that owns the root ports devices plug into.
#[derive(Clone)]
enum RootHub {
    Uhci(Arc<Mutex<Uhci>>),
    /// The EHCI: its ports reach the companions too.
    Ehci(Arc<Mutex<Ehci>>),
    Xhci(Arc<Mutex<Xhci>>),
}

impl RootHub {
    fn attach(&self, port: usize, device: Box<dyn UsbDevice>) -> anyhow::Result<()> {
        match self {
            RootHub::Uhci(u) => lock(u).attach(port, device)?,
            RootHub::Ehci(e) => lock(e).attach(port, device)?,
            RootHub::Xhci(x) => lock(x).attach(port, device)?,
        }
        Ok(())
    }

    fn detach(&self, port: usize) -> anyhow::Result<()> {
        match self {
            RootHub::Uhci(u) => lock(u).detach(port)?,
            RootHub::Ehci(e) => lock(e).detach(port)?,
            RootHub::Xhci(x) => lock(x).detach(port)?,
        }
        Ok(())
    }
}

impl UsbHandle {
    /// Plugs `d` into its root port: the guest sees a connect status
    /// change and enumerates it. A keyboard takes the console's keys.
    pub fn plug(&self, d: &UsbDeviceConfig, console: &Console) -> anyhow::Result<()> {
        let (device, input) = device_model(d)?;
        self.root
            .attach(d.port, device)
            .with_context(|| format!("USB root port {}", d.port))?;
        if let Some(input) = input {
            console.add_input(input.clone());
            lock(&self.keyboards).push((d.port, input));
        }
        Ok(())
    }

    /// Unplugs the device on root port `port`: the guest sees the
    /// disconnect, and transfers it had in flight end with errors on its
    /// next frame. The device model (and its hold on a disk image) is
    /// dropped before this returns.
    pub fn unplug(&self, port: usize, console: &Console) -> anyhow::Result<()> {
        self.root
            .detach(port)
            .with_context(|| format!("USB root port {port}"))?;
        let mut keyboards = lock(&self.keyboards);
        if let Some(i) = keyboards.iter().position(|(p, _)| *p == port) {
            let (_, input) = keyboards.remove(i);
            console.remove_input(&input);
        }
        Ok(())
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device model and, for a keyboard, its console input.
type DeviceModel = (Box<dyn UsbDevice>, Option<Arc<dyn InputSink>>);

/// The device model of `d`, and a keyboard's console input.
fn device_model(d: &UsbDeviceConfig) -> anyhow::Result<DeviceModel> {
    match (&d.spec, &d.image) {
        (UsbDeviceSpec::Disk { read_only, .. }, Some(image)) => {
            let medium: Arc<dyn BlockDevice> = match &d.tracker {
                Some(t) => t.clone(),
                None => image.clone(),
            };
            // BOT asks for a serial number of at least 12 hex digits.
            let serial = format!("{:012X}", 0x5245_4800_0000u64 + d.port as u64);
            Ok((Box::new(UsbStorage::new(medium, *read_only, &serial)), None))
        }
        (UsbDeviceSpec::Keyboard { .. }, _) => {
            let k = KeyboardHandle::default();
            Ok((Box::new(UsbKeyboard::new(k.clone())), Some(Arc::new(k))))
        }
        (UsbDeviceSpec::Disk { path, .. }, None) => {
            bail!("USB disk {}: the image is not open", path.display())
        }
    }
}

/// The USB controller of one boot.
pub struct AttachedUsb {
    handle: UsbHandle,
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

    /// The keyboards' console inputs, in port order.
    pub fn keyboards(&self) -> Vec<Arc<dyn InputSink>> {
        let mut k = lock(&self.handle.keyboards).clone();
        k.sort_by_key(|(p, _)| *p);
        k.into_iter().map(|(_, i)| i).collect()
    }

    pub fn handle(&self) -> UsbHandle {
        self.handle.clone()
    }
}

impl Drop for AttachedUsb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Plugs the controller and `devices` into the machine.
pub fn attach(
    controller: UsbController,
    devices: &[UsbDeviceConfig],
    mem: &GuestMemory,
    pci: &mut PciRoot,
    router: &Arc<PciInterruptRouter>,
    msi: Arc<dyn MsiSender>,
) -> anyhow::Result<AttachedUsb> {
    let intx = |at: DevFn, pin: u8| {
        router.intx(
            at.device,
            pin - 1,
            u32::from(at.device) << 3 | u32::from(at.function),
        )
    };
    let wake = Arc::new(Wake::default());
    let w = wake.clone();
    let waker: Arc<dyn Fn() + Send + Sync> = Arc::new(move || w.signal());
    let mut keyboards = Vec::new();
    let mut models = Vec::new();
    for d in devices {
        let (device, input) = device_model(d)?;
        if let Some(input) = input {
            keyboards.push((d.port, input));
        }
        models.push((d.port, device));
    }
    // UHCI and EHCI run frame by frame on a timer; the xHCI's worker only
    // completes transfers devices answer later.
    enum Worker {
        Frames(Vec<Clocked>),
        Xhci(Arc<Mutex<Xhci>>),
    }
    let (root, worker) = match controller {
        UsbController::Uhci => {
            let mut uhci = Uhci::new(mem.clone(), intx(UHCI_DEVFN, uhci_spec::INTERRUPT_PIN));
            uhci.set_wake(Some(waker));
            for (port, device) in models {
                uhci.attach(port, device)
                    .with_context(|| format!("--usb on port {port}"))?;
            }
            let uhci = Arc::new(Mutex::new(uhci));
            pci.add(UHCI_DEVFN, uhci.clone())?;
            (RootHub::Uhci(uhci.clone()), Worker::Frames(vec![uhci]))
        }
        UsbController::Ehci => {
            let mut ehci = Ehci::new(mem.clone(), intx(EHCI_DEVFN, ehci_spec::INTERRUPT_PIN));
            ehci.set_wake(Some(waker.clone()));
            for (port, device) in models {
                ehci.attach(port, device)
                    .with_context(|| format!("--usb on port {port}"))?;
            }
            let mut clocked: Vec<Clocked> = Vec::new();
            for n in 0..ehci_spec::COMPANIONS {
                let at = DevFn::new(EHCI_DEVFN.device, n as u8);
                let id = UhciIdentity {
                    device_id: ehci_spec::DEVICE_ICH9_UHCI[n],
                    revision: ehci_spec::REVISION,
                    interrupt_pin: ehci_spec::COMPANION_INTERRUPT_PINS[n],
                    multifunction: n == 0,
                };
                let first = n * ehci_spec::PORTS_PER_COMPANION;
                let pin = id.interrupt_pin;
                let mut u =
                    Uhci::companion(mem.clone(), intx(at, pin), id, ehci.root_ports(), first);
                u.set_wake(Some(waker.clone()));
                let u = Arc::new(Mutex::new(u));
                pci.add(at, u.clone())?;
                clocked.push(u);
            }
            let ehci = Arc::new(Mutex::new(ehci));
            pci.add(EHCI_DEVFN, ehci.clone())?;
            clocked.push(ehci.clone());
            (RootHub::Ehci(ehci), Worker::Frames(clocked))
        }
        UsbController::Xhci => {
            let mut xhci = Xhci::new(mem.clone(), intx(XHCI_DEVFN, xhci_spec::INTERRUPT_PIN));
            xhci.set_wake(Some(waker));
            xhci.set_msi(Some(msi));
            for (port, device) in models {
                xhci.attach(port, device)
                    .with_context(|| format!("--usb on port {port}"))?;
            }
            let xhci = Arc::new(Mutex::new(xhci));
            pci.add(XHCI_DEVFN, xhci.clone())?;
            (RootHub::Xhci(xhci.clone()), Worker::Xhci(xhci))
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (s, w) = (stop.clone(), wake.clone());
    let timer = match worker {
        Worker::Frames(clocked) => std::thread::Builder::new()
            .name("usb-frames".into())
            .spawn(move || frame_timer(clocked, s, w))
            .context("spawning the USB frame timer thread")?,
        Worker::Xhci(x) => std::thread::Builder::new()
            .name("xhci-events".into())
            .spawn(move || xhci_worker(x, s, w))
            .context("spawning the xHCI transfer thread")?,
    };
    Ok(AttachedUsb {
        handle: UsbHandle {
            root,
            keyboards: Arc::new(Mutex::new(keyboards)),
        },
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
            (
                UsbDeviceSpec::Disk {
                    path: PathBuf::from("a,b.vhdx"),
                    read_only: true,
                    port: Some(2)
                },
                None
            )
        );
        assert_eq!(
            parse_usb("keyboard,id=kbd-1").unwrap(),
            (UsbDeviceSpec::Keyboard { port: None }, Some("kbd-1".into()))
        );
        for bad in [
            "",
            "disk:",
            "mouse",
            "disk:x,port=0",
            "disk:x,port=7",
            "disk:x,readonly=maybe",
            "keyboard,readonly=on",
            "keyboard,id=",
            "keyboard,id=a b",
            "disk:x,id=a/b",
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
        assert_eq!(
            boot_order(&UsbConfig {
                controller: UsbController::Xhci,
                devices: cfg.devices.clone(),
            }),
            vec!["/pci@i0cf8/usb@5/storage@2/channel@0/disk@0,0"]
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

    #[test]
    fn ehci_offers_six_ports_and_its_own_boot_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.raw");
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let disk = format!("disk:{},port=5", p.display());
        let err = open_usb(None, std::slice::from_ref(&disk), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("root ports 1 to 2"), "{err:#}");
        let cfg = open_usb(Some(UsbController::Ehci), &[disk], &[])
            .unwrap()
            .unwrap();
        assert_eq!(cfg.devices[0].port, 5);
        assert_eq!(
            boot_order(&cfg),
            vec!["/pci@i0cf8/usb@1d,7/storage@5/channel@0/disk@0,0"]
        );
        let six: Vec<String> = (0..6).map(|_| "keyboard".to_string()).collect();
        let cfg = open_usb(Some(UsbController::Ehci), &six, &[])
            .unwrap()
            .unwrap();
        let ports: Vec<usize> = cfg.devices.iter().map(|d| d.port).collect();
        assert_eq!(ports, vec![1, 2, 3, 4, 5, 6]);
        let seven: Vec<String> = (0..7).map(|_| "keyboard".to_string()).collect();
        assert!(open_usb(Some(UsbController::Ehci), &seven, &[]).is_err());
    }
}
