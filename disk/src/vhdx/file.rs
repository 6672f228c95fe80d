//! The host file under a VHDX image, seen through the log replay overlay
//! when the image is opened read-only.

use std::path::{Path, PathBuf};

use super::log::Overlay;
use crate::hostfile::HostFile;
use crate::{BlockError, Result};

/// A corruption error naming the file, the structure, its offset and why.
pub(crate) fn corrupt(
    path: &Path,
    structure: &'static str,
    offset: u64,
    reason: impl Into<String>,
) -> BlockError {
    BlockError::Corrupt {
        path: path.to_owned(),
        structure,
        offset,
        reason: reason.into(),
    }
}

#[derive(Debug)]
pub(crate) struct Backing {
    pub file: HostFile,
    pub path: PathBuf,
    /// The replayed log of a read-only open (empty otherwise).
    pub overlay: Overlay,
    /// Length of the file as the image sees it: the host file's length,
    /// extended by a replay that asks for more.
    pub len: u64,
    pub writable: bool,
    /// A hole was punched since the last flush: the next flush is a full
    /// fsync, so the file's new extent map (the hole reading as zeros) is
    /// stable before any metadata that relies on it.
    punched: bool,
}

impl Backing {
    pub fn open(path: &Path, writable: bool) -> Result<Backing> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| BlockError::Io {
                path: path.to_owned(),
                offset: 0,
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| BlockError::Io {
                path: path.to_owned(),
                offset: 0,
                source,
            })?
            .len();
        Ok(Backing {
            file: HostFile::new(file),
            path: path.to_owned(),
            overlay: Overlay::default(),
            len,
            writable,
            punched: false,
        })
    }

    pub fn io_err(&self, offset: u64, source: std::io::Error) -> BlockError {
        BlockError::Io {
            path: self.path.clone(),
            offset,
            source,
        }
    }

    pub fn corrupt(
        &self,
        structure: &'static str,
        offset: u64,
        reason: impl Into<String>,
    ) -> BlockError {
        corrupt(&self.path, structure, offset, reason)
    }

    /// Reads `buf.len()` bytes at `offset`. Bytes past the host file's end
    /// but inside `len` (a replay extended the file) read as zeros.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| self.corrupt("file", offset, "offset overflows"))?;
        if end > self.len {
            return Err(self.io_err(
                offset,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at {offset} passes the end of the {}-byte file",
                        buf.len(),
                        self.len
                    ),
                ),
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(offset + done as u64, e)),
            }
        }
        buf[done..].fill(0);
        if !self.overlay.is_empty() {
            self.overlay.patch(offset, buf);
        }
        Ok(())
    }

    /// Reads a structure, turning a short file into a corruption error that
    /// names the structure.
    pub fn read_structure(
        &self,
        structure: &'static str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64);
        if end > self.len {
            return Err(self.corrupt(
                structure,
                offset,
                format!(
                    "needs bytes {offset}..{end} but the file is only {} bytes long (truncated?)",
                    self.len
                ),
            ));
        }
        let mut buf = vec![0u8; len];
        self.read(offset, &mut buf)?;
        Ok(buf)
    }

    pub fn write(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_err(offset, e))?;
        self.len = self.len.max(offset + buf.len() as u64);
        Ok(())
    }

    pub fn set_len(&mut self, len: u64) -> Result<()> {
        if !self.writable {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.file.set_len(len).map_err(|e| self.io_err(len, e))?;
        self.len = len;
        Ok(())
    }

    /// Deallocates `len` bytes at `offset` (they read as zeros afterwards)
    /// without changing the file's length.
    pub fn punch_hole(&mut self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.punched = true;
        self.file
            .punch_hole(offset, len)
            .map_err(|e| self.io_err(offset, e))
    }

    /// fdatasync: data and the file size reach stable storage (a full
    /// fsync after a hole was punched, so the hole is stable too).
    pub fn sync(&mut self) -> Result<()> {
        if self.punched {
            self.file.sync_all().map_err(|e| self.io_err(0, e))?;
            self.punched = false;
            Ok(())
        } else {
            self.file.sync_data().map_err(|e| self.io_err(0, e))
        }
    }
}
