//! COM port redirection: what each guest serial port is connected to on the
//! host, and the event-loop side that feeds host input to the guest.

pub mod pump;
pub mod spec;
pub mod stdio;

use std::fs::OpenOptions;
use std::io::Write;

use rehost_devices::serial::SerialBackend;

pub use spec::ComSpec;

/// `file:PATH`: guest output appended to a file; no input.
pub struct FileBackend {
    file: Option<std::fs::File>,
    path: std::path::PathBuf,
}

impl FileBackend {
    pub fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot open for COM output: {e}", path.display()))?;
        Ok(Self {
            file: Some(file),
            path: path.to_owned(),
        })
    }
}

impl SerialBackend for FileBackend {
    fn write(&mut self, data: &[u8]) {
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.write_all(data) {
                tracing::error!(
                    "{}: COM output failed, port disconnected: {e}",
                    self.path.display()
                );
                self.file = None;
            }
        }
    }
}
