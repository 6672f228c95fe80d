//! The host side that outlives a guest reset: COM port backends, the
//! firmware log, and the event-loop thread that carries host input.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use rehost_devices::events::MachineEvents;
use rehost_devices::legacy::debugcon::DebugCon;
use vmm_sys_util::eventfd::EventFd;

use crate::config::MachineConfig;
use crate::serial::stdio::RawModeGuard;
use crate::serial::{ComPort, ComPorts};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Ends the event loop when its eventfd is written.
struct ExitWatcher {
    evt: Arc<EventFd>,
    exit: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.evt.as_ref(), EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.exit.store(true, Ordering::SeqCst);
    }
}

pub struct HostSide {
    /// The configured COM ports (COM1-COM4), in order.
    pub com_ports: Vec<ComPort>,
    pub debugcon: Arc<Mutex<DebugCon>>,
    /// Requests from the host side (the console escape key); persistent
    /// across resets, watched by the machine's run loop.
    pub host_requests: Arc<MachineEvents>,
    loop_exit: Arc<EventFd>,
    loop_thread: Option<JoinHandle<()>>,
    _raw_mode: Option<RawModeGuard>,
}

impl HostSide {
    pub fn start(cfg: &MachineConfig) -> anyhow::Result<Self> {
        let host_requests = Arc::new(MachineEvents::new()?);
        let mut subscribers: Vec<Subscriber> = Vec::new();
        let coms = ComPorts::start(&cfg.com_ports, &host_requests)?;
        let port_loops = coms.loops.clone();
        for l in &coms.loops {
            subscribers.push(l.clone());
        }

        let log: Option<Box<dyn std::io::Write + Send>> = match &cfg.firmware_log {
            Some(p) => Some(Box::new(std::io::LineWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("{}: cannot create the firmware log", p.display()))?,
            ))),
            None => None,
        };
        let debugcon = Arc::new(Mutex::new(DebugCon::new(log)));

        let loop_exit = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let exit_flag = Arc::new(AtomicBool::new(false));
        subscribers.push(Arc::new(Mutex::new(ExitWatcher {
            evt: loop_exit.clone(),
            exit: exit_flag.clone(),
        })));
        let loop_thread = std::thread::Builder::new()
            .name("rehost-events".into())
            .spawn(move || {
                let mut em = match EventManager::<Subscriber>::new() {
                    Ok(em) => em,
                    Err(e) => {
                        tracing::error!("event loop could not start: {e}");
                        return;
                    }
                };
                for s in subscribers {
                    em.add_subscriber(s);
                }
                while !exit_flag.load(Ordering::SeqCst) {
                    if let Err(e) = em.run() {
                        tracing::error!("event loop failed: {e}");
                        break;
                    }
                }
                // The vCPUs have stopped: write what COM output is left.
                for l in &port_loops {
                    l.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .finish(std::time::Duration::from_secs(2));
                }
            })?;
        Ok(Self {
            com_ports: coms.ports,
            debugcon,
            host_requests,
            loop_exit,
            loop_thread: Some(loop_thread),
            _raw_mode: coms.raw_mode,
        })
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        let _ = self.loop_exit.write(1);
        if let Some(t) = self.loop_thread.take() {
            let _ = t.join();
        }
        if let Ok(mut d) = self.debugcon.lock() {
            // Flushes the firmware log.
            *d = DebugCon::new(None);
        }
    }
}
