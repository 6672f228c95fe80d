//! The firmware debug console at port 0x402 (QEMU's "debugcon"): every byte
//! written is appended to a log; a read returns 0xE9, which SeaBIOS checks
//! before using the port.

use std::io::Write;

use crate::bus::BusDevice;

pub const DEBUGCON_PORT: u64 = 0x402;
/// What a read of the port returns, so firmware knows the port is there.
pub const DEBUGCON_READBACK: u8 = 0xe9;

pub struct DebugCon {
    out: Option<Box<dyn Write + Send>>,
}

impl DebugCon {
    /// `out` of `None` discards the output but still answers reads.
    pub fn new(out: Option<Box<dyn Write + Send>>) -> Self {
        Self { out }
    }
}

impl BusDevice for DebugCon {
    fn read(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(DEBUGCON_READBACK);
    }

    fn write(&mut self, _addr: u64, data: &[u8]) {
        if let Some(out) = self.out.as_mut() {
            // Only the low byte of a wider write is a character.
            if out.write_all(&data[..1.min(data.len())]).is_err() {
                tracing::warn!("firmware log: write failed; further output dropped");
                self.out = None;
            }
        }
    }
}

impl Drop for DebugCon {
    fn drop(&mut self) {
        if let Some(out) = self.out.as_mut() {
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn logs_bytes_and_reads_back_e9() {
        let sink = Sink::default();
        let mut dev = DebugCon::new(Some(Box::new(sink.clone())));
        for b in b"SeaBIOS" {
            dev.write(DEBUGCON_PORT, &[*b]);
        }
        let mut r = [0u8; 1];
        dev.read(DEBUGCON_PORT, &mut r);
        assert_eq!(r[0], 0xe9);
        assert_eq!(&*sink.0.lock().unwrap(), b"SeaBIOS");
    }
}
