//! Root ports that an EHCI controller shares with its UHCI companions
//! (EHCI 1.0 section 4.2, "Port Routing and Control"): each port's device
//! is on exactly one controller at a time. The EHCI's PORT_OWNER bit and
//! CONFIGFLAG decide which; the controller that does not own a port sees
//! it empty. A UHCI without an EHCI (PIIX3) owns its ports for good.
//!
//! Each controller keeps its own port status bits and remembers the
//! [`RootPortSet::generation`] of each port it last looked at: a plug, an
//! unplug or a change of owner bumps it, and the controller turns that
//! into a connect status change the next time it looks.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{Speed, UsbDevice, UsbPort};

/// Which controller a port's device is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortOwner {
    Ehci,
    Companion,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootPortError {
    #[error("USB root port {port} does not exist (ports are 1 to {count})")]
    NoSuchPort { port: usize, count: usize },
    #[error("USB root port {0} is already in use")]
    PortInUse(usize),
    #[error("USB root port {0} has no device")]
    PortEmpty(usize),
}

#[derive(Debug)]
struct SharedPort {
    device: Option<UsbPort>,
    owner: PortOwner,
    generation: u64,
}

type Waker = Arc<dyn Fn() + Send + Sync>;

/// The root ports of one EHCI and its companions (or of one UHCI).
pub struct RootPortSet {
    ports: Vec<SharedPort>,
    /// Whether an EHCI can own ports (then devices run at high speed
    /// while it does).
    with_ehci: bool,
    /// Woken when a device completes a transfer.
    waker: Option<Waker>,
}

impl std::fmt::Debug for RootPortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootPortSet")
            .field("ports", &self.ports)
            .field("with_ehci", &self.with_ehci)
            .finish_non_exhaustive()
    }
}

/// A root port set as the controllers hold it.
pub type SharedRootPorts = Arc<Mutex<RootPortSet>>;

/// Locks a port set; a controller that panicked while holding it left
/// nothing half-written that matters more than staying up.
pub fn lock_ports(p: &SharedRootPorts) -> MutexGuard<'_, RootPortSet> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl RootPortSet {
    /// `count` ports. With an EHCI they start routed to the companions
    /// (CONFIGFLAG is 0 after reset, 4.2.1).
    pub fn new(count: usize, with_ehci: bool) -> SharedRootPorts {
        let ports = (0..count)
            .map(|_| SharedPort {
                device: None,
                owner: PortOwner::Companion,
                generation: 0,
            })
            .collect();
        Arc::new(Mutex::new(Self {
            ports,
            with_ehci,
            waker: None,
        }))
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Called on each device completion from now on (devices plugged
    /// later too).
    pub fn set_waker(&mut self, w: Option<Waker>) {
        for d in self.ports.iter().filter_map(|p| p.device.as_ref()) {
            d.queue().set_waker(w.clone());
        }
        self.waker = w;
    }

    fn index(&self, port: usize) -> Result<usize, RootPortError> {
        port.checked_sub(1)
            .filter(|i| *i < self.ports.len())
            .ok_or(RootPortError::NoSuchPort {
                port,
                count: self.ports.len(),
            })
    }

    fn max_speed(&self, owner: PortOwner) -> Speed {
        match owner {
            PortOwner::Ehci => Speed::High,
            PortOwner::Companion => Speed::Full,
        }
    }

    /// Plugs `device` into root port `port` (1-based).
    pub fn attach(&mut self, port: usize, device: Box<dyn UsbDevice>) -> Result<(), RootPortError> {
        let i = self.index(port)?;
        if self.ports[i].device.is_some() {
            return Err(RootPortError::PortInUse(port));
        }
        let d = UsbPort::new(device, self.max_speed(self.ports[i].owner));
        d.queue().set_waker(self.waker.clone());
        let p = &mut self.ports[i];
        p.device = Some(d);
        p.generation += 1;
        Ok(())
    }

    /// Unplugs the device on root port `port` (1-based); transfers in
    /// flight end with it.
    pub fn detach(&mut self, port: usize) -> Result<(), RootPortError> {
        let i = self.index(port)?;
        let p = &mut self.ports[i];
        if p.device.take().is_none() {
            return Err(RootPortError::PortEmpty(port));
        }
        p.generation += 1;
        Ok(())
    }

    /// The first port (1-based) among `ports` without a device.
    pub fn free_port(&self, ports: std::ops::Range<usize>) -> Option<usize> {
        ports
            .filter(|i| self.ports.get(*i).is_some_and(|p| p.device.is_none()))
            .map(|i| i + 1)
            .next()
    }

    /// Which controller port `i` (0-based) is on.
    pub fn owner(&self, i: usize) -> Option<PortOwner> {
        self.ports.get(i).map(|p| p.owner)
    }

    /// Hands port `i` (0-based) to `owner`: the device disconnects from
    /// one controller and connects to the other, at the speed the new one
    /// offers. Without an EHCI the companion keeps every port.
    pub fn set_owner(&mut self, i: usize, owner: PortOwner) {
        let with_ehci = self.with_ehci;
        let max = self.max_speed(owner);
        let Some(p) = self.ports.get_mut(i) else {
            return;
        };
        if p.owner == owner || !with_ehci {
            return;
        }
        p.owner = owner;
        p.generation += 1;
        if let Some(d) = p.device.as_mut() {
            d.set_max_speed(max);
        }
    }

    /// Whether port `i` (0-based) has a device, whoever owns it.
    pub fn has_device(&self, i: usize) -> bool {
        self.ports.get(i).is_some_and(|p| p.device.is_some())
    }

    /// Counts plugs, unplugs and owner changes of port `i` (0-based).
    pub fn generation(&self, i: usize) -> u64 {
        self.ports.get(i).map_or(0, |p| p.generation)
    }

    /// The device on port `i` (0-based) if `side` owns the port.
    pub fn device(&mut self, i: usize, side: PortOwner) -> Option<&mut UsbPort> {
        self.ports
            .get_mut(i)
            .filter(|p| p.owner == side)
            .and_then(|p| p.device.as_mut())
    }

    /// The device at USB address `address` among the ports `enabled`
    /// (0-based) that `side` owns.
    pub fn find(
        &mut self,
        side: PortOwner,
        enabled: impl Iterator<Item = usize>,
        address: u8,
    ) -> Option<&mut UsbPort> {
        let i = enabled.into_iter().find(|i| {
            self.ports.get(*i).is_some_and(|p| {
                p.owner == side && p.device.as_ref().is_some_and(|d| d.address() == address)
            })
        })?;
        self.ports.get_mut(i).and_then(|p| p.device.as_mut())
    }
}
