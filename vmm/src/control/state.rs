//! What the control socket acts on: the VM's run state, the vCPU pause
//! gate, the drives and their media, the COM ports, the machine of the
//! current boot, and the queue of events for connected clients. It
//! outlives guest resets (each reset builds a new machine).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rehost_devices::display::Console;
use rehost_devices::pci::piix4_pm::Piix4Pm;
use serde_json::Value;
use vmm_sys_util::eventfd::EventFd;

use crate::serial::queue::PortShared;
use crate::serial::ComSpec;
use crate::storage::{Attached, DriveConfig};
use crate::usb::UsbConfig;

/// QMP's `RunState` values rehost can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    Shutdown,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Shutdown => "shutdown",
        }
    }
}

/// What the control socket asks of the main thread, which owns the
/// machine's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRequest {
    /// `system_reset`: rebuild the machine as after a reset button.
    Reset,
    /// `quit`: stop the vCPUs, flush every disk, close every backend,
    /// exit 0.
    Quit,
}

/// Parks vCPU threads between KVM_RUN calls while the VM is paused.
#[derive(Debug, Default)]
pub struct PauseGate {
    paused: AtomicBool,
    parked: Mutex<usize>,
    changed: Condvar,
}

impl PauseGate {
    fn lock(&self) -> MutexGuard<'_, usize> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a vCPU thread before each KVM_RUN: returns at once when
    /// running, else waits until resumed or until `stop` is set.
    pub fn wait_while_paused(&self, stop: &AtomicBool) {
        if !self.paused.load(Ordering::Acquire) {
            return;
        }
        let mut parked = self.lock();
        *parked += 1;
        self.changed.notify_all();
        while self.paused.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
            parked = self
                .changed
                .wait_timeout(parked, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *parked -= 1;
        self.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Pauses and waits until `vcpus` threads are parked, kicking them out
    /// of KVM_RUN with `kick` until they are (at most `limit`). Returns
    /// false if they did not all park in time.
    pub fn pause(&self, vcpus: usize, kick: &dyn Fn(), limit: Duration) -> bool {
        self.paused.store(true, Ordering::Release);
        let deadline = Instant::now() + limit;
        let mut parked = self.lock();
        while *parked < vcpus {
            if Instant::now() > deadline {
                return false;
            }
            drop(parked);
            kick();
            parked = self.lock();
            parked = self
                .changed
                .wait_timeout(parked, Duration::from_millis(5))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        let _guard = self.lock();
        self.changed.notify_all();
    }
}

/// The running machine's parts the control socket touches; registered by
/// the machine when it is built and removed before its vCPUs stop.
#[derive(Clone)]
pub struct MachineHandle {
    pub pm: Arc<Mutex<Piix4Pm>>,
    pub storage: Attached,
    /// The USB controller, when the machine has one.
    pub usb: Option<crate::usb::UsbHandle>,
    pub vcpus: Vec<libc::pthread_t>,
}

/// One drive as the control socket sees it.
#[derive(Clone)]
pub struct DriveState {
    pub config: DriveConfig,
    /// The tray was opened from the host (`eject`).
    pub tray_open: bool,
}

/// One COM port as the control socket sees it.
pub struct ChardevState {
    pub index: usize,
    pub spec: ComSpec,
    pub shared: Option<Arc<PortShared>>,
}

/// Events waiting for the server thread to send them.
pub const MAX_QUEUED_EVENTS: usize = 1024;

struct EventQueue {
    queue: Mutex<VecDeque<Value>>,
    wake: EventFd,
}

pub struct VmControl {
    run_state: Mutex<RunState>,
    pub gate: Arc<PauseGate>,
    request: Mutex<Option<HostRequest>>,
    request_wake: EventFd,
    machine: Mutex<Option<MachineHandle>>,
    drives: Mutex<Vec<DriveState>>,
    /// The USB controller and the devices on it now (`--usb` and
    /// `device_add`); each machine is built with them.
    usb: Mutex<Option<UsbConfig>>,
    chardevs: Mutex<Vec<ChardevState>>,
    events: EventQueue,
    /// Events are queued only when a control socket exists.
    events_enabled: AtomicBool,
    /// The NBD server of `nbd-server-start`, if running.
    pub nbd: Mutex<Option<crate::nbd::NbdServer>>,
    /// `object-add` `tls-creds-x509` objects by id: the credentials,
    /// loaded when added.
    pub tls_creds: Mutex<std::collections::BTreeMap<String, Arc<rustls::ServerConfig>>>,
    /// The console viewers and `send-key` use; it outlives resets (each
    /// machine attaches its display and input devices to it).
    pub console: Arc<Console>,
    /// Types `send-key` requests into the console.
    pub typist: super::send_key::Typist,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VmControl {
    pub fn new(drives: &[DriveConfig]) -> std::io::Result<Arc<Self>> {
        let console = Console::new();
        Ok(Arc::new(Self {
            run_state: Mutex::new(RunState::Running),
            gate: Arc::new(PauseGate::default()),
            request: Mutex::new(None),
            request_wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            machine: Mutex::new(None),
            drives: Mutex::new(
                drives
                    .iter()
                    .map(|d| DriveState {
                        config: d.clone(),
                        tray_open: false,
                    })
                    .collect(),
            ),
            usb: Mutex::new(None),
            chardevs: Mutex::new(Vec::new()),
            events: EventQueue {
                queue: Mutex::new(VecDeque::new()),
                wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            },
            events_enabled: AtomicBool::new(false),
            nbd: Mutex::new(None),
            tls_creds: Mutex::new(std::collections::BTreeMap::new()),
            typist: super::send_key::Typist::new(console.clone()),
            console,
        }))
    }

    // ---- run state ----

    pub fn run_state(&self) -> RunState {
        *lock(&self.run_state)
    }

    pub fn set_run_state(&self, s: RunState) {
        *lock(&self.run_state) = s;
    }

    // ---- requests to the main thread ----

    pub fn request(&self, r: HostRequest) {
        let mut req = lock(&self.request);
        // Quit outranks a reset asked for before it.
        if *req != Some(HostRequest::Quit) {
            *req = Some(r);
        }
        let _ = self.request_wake.write(1);
    }

    /// Takes the pending request, if any.
    pub fn take_request(&self) -> Option<HostRequest> {
        let _ = self.request_wake.read();
        lock(&self.request).take()
    }

    pub fn request_eventfd(&self) -> &EventFd {
        &self.request_wake
    }

    // ---- the current machine ----

    pub fn set_machine(&self, m: Option<MachineHandle>) {
        *lock(&self.machine) = m;
    }

    /// Runs `f` on the current machine while it cannot be torn down.
    pub fn with_machine<R>(&self, f: impl FnOnce(&MachineHandle) -> R) -> Option<R> {
        lock(&self.machine).as_ref().map(f)
    }

    // ---- drives ----

    /// The drives with their current media, for building a machine.
    pub fn drive_configs(&self) -> Vec<DriveConfig> {
        lock(&self.drives)
            .iter()
            .map(|d| d.config.clone())
            .collect()
    }

    pub fn drives(&self) -> MutexGuard<'_, Vec<DriveState>> {
        lock(&self.drives)
    }

    /// Lets go of every image (at exit: closing is what marks a VHDX's
    /// log empty).
    pub fn close_drives(&self) {
        // The NBD exports hold the images too: stop serving first.
        if let Some(server) = lock(&self.nbd).take() {
            server.stop();
        }
        lock(&self.drives).clear();
    }

    // ---- USB ----

    /// Hands the control state the USB controller and its `--usb`
    /// devices: it holds them from now on (and their images: nothing else
    /// may, or an unplugged disk's image could not be closed).
    pub fn set_usb(&self, usb: Option<UsbConfig>) {
        *lock(&self.usb) = usb;
    }

    /// The USB controller and its devices. Hold the guard across building
    /// a machine and registering it, so no device is added in between
    /// (and missed by both).
    pub fn usb(&self) -> MutexGuard<'_, Option<UsbConfig>> {
        lock(&self.usb)
    }

    /// Takes every USB device (at exit, to close their images).
    pub fn take_usb_devices(&self) -> Vec<crate::usb::UsbDeviceConfig> {
        lock(&self.usb)
            .as_mut()
            .map(|u| std::mem::take(&mut u.devices))
            .unwrap_or_default()
    }

    // ---- COM ports ----

    pub fn set_chardevs(&self, c: Vec<ChardevState>) {
        *lock(&self.chardevs) = c;
    }

    pub fn chardevs(&self) -> MutexGuard<'_, Vec<ChardevState>> {
        lock(&self.chardevs)
    }

    // ---- events ----

    pub fn enable_events(&self) {
        self.events_enabled.store(true, Ordering::Release);
    }

    /// Queues an event for every negotiated client. The queue is bounded:
    /// past [`MAX_QUEUED_EVENTS`] unsent events the oldest are dropped.
    pub fn emit(&self, name: &str, data: Option<Value>) {
        if !self.events_enabled.load(Ordering::Acquire) {
            return;
        }
        let ev = super::protocol::event(name, data);
        let mut q = lock(&self.events.queue);
        if q.len() >= MAX_QUEUED_EVENTS {
            q.pop_front();
            tracing::warn!("control socket: event queue full; the oldest event was dropped");
        }
        q.push_back(ev);
        let _ = self.events.wake.write(1);
    }

    /// The events waiting to be sent (no system call when there are none).
    pub fn take_events(&self) -> Vec<Value> {
        let mut q = lock(&self.events.queue);
        if q.is_empty() {
            return Vec::new();
        }
        let _ = self.events.wake.read();
        q.drain(..).collect()
    }

    pub fn events_eventfd(&self) -> &EventFd {
        &self.events.wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_parks_every_vcpu_and_resume_releases_them() {
        let gate = Arc::new(PauseGate::default());
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (g, s, r) = (gate.clone(), stop.clone(), runs.clone());
                std::thread::spawn(move || {
                    while !s.load(Ordering::Acquire) {
                        g.wait_while_paused(&s);
                        r.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        assert!(gate.pause(3, &|| {}, Duration::from_secs(5)));
        let before = runs.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            runs.load(Ordering::Relaxed),
            before,
            "a vCPU ran while paused"
        );
        gate.resume();
        std::thread::sleep(Duration::from_millis(50));
        assert!(runs.load(Ordering::Relaxed) > before);
        // Stopping releases parked threads.
        assert!(gate.pause(3, &|| {}, Duration::from_secs(5)));
        stop.store(true, Ordering::Release);
        for t in threads {
            t.join().unwrap();
        }
        // Nobody to park: pausing gives up after its limit.
        assert!(!gate.pause(1, &|| {}, Duration::from_millis(20)));
    }

    #[test]
    fn quit_outranks_reset_and_events_are_bounded() {
        let c = VmControl::new(&[]).unwrap();
        c.request(HostRequest::Quit);
        c.request(HostRequest::Reset);
        assert_eq!(c.take_request(), Some(HostRequest::Quit));
        assert_eq!(c.take_request(), None);
        c.emit("X", None);
        assert!(c.take_events().is_empty(), "no socket, no events");
        c.enable_events();
        for i in 0..MAX_QUEUED_EVENTS + 5 {
            c.emit("E", Some(serde_json::json!({ "i": i })));
        }
        let ev = c.take_events();
        assert_eq!(ev.len(), MAX_QUEUED_EVENTS);
        assert_eq!(ev[0]["data"]["i"], 5);
    }
}
