//! Host input to a UART with back-pressure: bytes are read from the host
//! only while the guest's receive FIFO has room, and the FIFO character
//! timeout is driven by a timer on the event loop.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use rehost_devices::serial::Uart16550;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// Bytes held between the host source and the guest FIFO.
const PENDING_MAX: usize = 4096;

/// A source of host input for a COM port.
pub trait InputSource: Send {
    fn fd(&self) -> RawFd;
    /// Reads available input into `buf`; Ok(0) means the source ended.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Lets the source interpret bytes (escape keys); returns what goes
    /// to the guest.
    fn filter(&mut self, data: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(data);
    }
    /// A break requested by the source (e.g. its escape key).
    fn take_break(&mut self) -> bool {
        false
    }
}

pub struct InputPump {
    uart: Arc<Mutex<Uart16550>>,
    source: Box<dyn InputSource>,
    /// Written by the backend when the FIFO has room again.
    space: Arc<EventFd>,
    timer: TimerFd,
    pending: VecDeque<u8>,
    reading: bool,
    ended: bool,
}

const DATA_SOURCE: u32 = 1;
const DATA_SPACE: u32 = 2;
const DATA_TIMER: u32 = 3;

impl InputPump {
    pub fn new(
        uart: Arc<Mutex<Uart16550>>,
        source: Box<dyn InputSource>,
        space: Arc<EventFd>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            uart,
            source,
            space,
            timer: TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?,
            pending: VecDeque::new(),
            reading: false,
            ended: false,
        })
    }

    /// Moves pending bytes into the FIFO; arms the character timeout.
    fn deliver(&mut self) {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        if self.source.take_break() {
            uart.receive_break();
        }
        while !self.pending.is_empty() {
            let (a, _) = self.pending.as_slices();
            let n = uart.receive(a);
            self.pending.drain(..n);
            if n == 0 {
                break;
            }
        }
        let due = uart.tick();
        drop(uart);
        if let Some(due) = due {
            let d = due.saturating_duration_since(Instant::now());
            let _ = self
                .timer
                .reset(d.max(std::time::Duration::from_micros(50)), None);
        }
    }

    fn want_reading(&self) -> bool {
        !self.ended && self.pending.len() < PENDING_MAX
    }

    fn sync_interest(&mut self, ops: &mut EventOps) {
        let want = self.want_reading();
        if want != self.reading {
            let ev = Events::with_data_raw(self.source.fd(), DATA_SOURCE, EventSet::IN);
            let r = if want { ops.add(ev) } else { ops.remove(ev) };
            if r.is_ok() {
                self.reading = want;
            }
        }
    }
}

impl MutEventSubscriber for InputPump {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::with_data(
            self.space.as_ref(),
            DATA_SPACE,
            EventSet::IN,
        ));
        let _ = ops.add(Events::with_data(&self.timer, DATA_TIMER, EventSet::IN));
        self.sync_interest(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            DATA_SOURCE => {
                let mut buf = [0u8; 1024];
                let room = PENDING_MAX - self.pending.len().min(PENDING_MAX);
                match self.source.read(&mut buf[..room.min(1024)]) {
                    Ok(0) => self.ended = true,
                    Ok(n) => {
                        let mut out = Vec::with_capacity(n);
                        self.source.filter(&buf[..n], &mut out);
                        self.pending.extend(out);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!("COM input failed, input disconnected: {e}");
                        self.ended = true;
                    }
                }
                if events.event_set().contains(EventSet::HANG_UP)
                    && !events.event_set().contains(EventSet::IN)
                {
                    self.ended = true;
                }
                self.deliver();
            }
            DATA_SPACE => {
                let _ = self.space.read();
                self.deliver();
            }
            DATA_TIMER => {
                let _ = self.timer.wait();
                self.deliver();
            }
            _ => {}
        }
        self.sync_interest(ops);
    }
}

/// Lets an `InputSource`'s raw fd be used with `Events::new`.
pub struct Fd(pub RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
