//! The host file under a VHDX image, seen through the log replay overlay
//! when the image is opened read-only.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::log::Overlay;
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
    pub file: File,
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
    /// Test hook: the number of writes, truncations and flushes left before
    /// every further one fails, as if the process had been killed there.
    #[cfg(test)]
    pub crash_countdown: Option<u64>,
    /// Test hook: writes and size changes since the last flush, in 4 KiB
    /// pieces, so a power loss can be simulated by keeping only some.
    #[cfg(test)]
    pub unsynced: Vec<Unsynced>,
}

/// One change not yet flushed (test builds only).
#[cfg(test)]
#[derive(Debug)]
pub(crate) enum Unsynced {
    Write {
        offset: u64,
        old: Vec<u8>,
        new: Vec<u8>,
    },
    Len {
        old: u64,
        new: u64,
    },
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
            file,
            path: path.to_owned(),
            overlay: Overlay::default(),
            len,
            writable,
            punched: false,
            #[cfg(test)]
            crash_countdown: None,
            #[cfg(test)]
            unsynced: Vec::new(),
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

    #[cfg(test)]
    fn tick(&mut self) -> Result<()> {
        match &mut self.crash_countdown {
            Some(0) => Err(self.io_err(0, std::io::Error::other("injected crash (test)"))),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    #[cfg(not(test))]
    fn tick(&mut self) -> Result<()> {
        Ok(())
    }

    #[cfg(test)]
    fn record_write(&mut self, offset: u64, buf: &[u8]) {
        let mut at = 0usize;
        while at < buf.len() {
            let off = offset + at as u64;
            let n = ((4096 - off % 4096) as usize).min(buf.len() - at);
            let mut old = vec![0u8; n];
            let _ = self.file.read_at(&mut old, off);
            self.unsynced.push(Unsynced::Write {
                offset: off,
                old,
                new: buf[at..at + n].to_vec(),
            });
            at += n;
        }
    }

    /// Test hook: a power loss. Every change since the last flush is undone,
    /// then those for which `keep(i)` is true are redone in order (the
    /// storage may have persisted any subset of them, 4 KiB at a time).
    #[cfg(test)]
    pub fn power_loss(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let changes = std::mem::take(&mut self.unsynced);
        for c in changes.iter().rev() {
            match c {
                Unsynced::Write { offset, old, .. } => {
                    self.file.write_all_at(old, *offset).unwrap();
                }
                Unsynced::Len { old, .. } => self.file.set_len(*old).unwrap(),
            }
        }
        for (i, c) in changes.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            match c {
                Unsynced::Write { offset, new, .. } => {
                    self.file.write_all_at(new, *offset).unwrap();
                }
                Unsynced::Len { new, .. } => self.file.set_len(*new).unwrap(),
            }
        }
    }

    pub fn write(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        self.tick()?;
        if !self.writable {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        #[cfg(test)]
        self.record_write(offset, buf);
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_err(offset, e))?;
        self.len = self.len.max(offset + buf.len() as u64);
        Ok(())
    }

    pub fn set_len(&mut self, len: u64) -> Result<()> {
        self.tick()?;
        if !self.writable {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        #[cfg(test)]
        {
            let old = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            self.unsynced.push(Unsynced::Len { old, new: len });
        }
        self.file.set_len(len).map_err(|e| self.io_err(len, e))?;
        self.len = len;
        Ok(())
    }

    /// Deallocates `len` bytes at `offset` (they read as zeros afterwards)
    /// without changing the file's length.
    pub fn punch_hole(&mut self, offset: u64, len: u64) -> Result<()> {
        use vmm_sys_util::fallocate::{fallocate, FallocateMode};
        self.tick()?;
        if !self.writable {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        #[cfg(test)]
        {
            let n = len.min(self.len.saturating_sub(offset));
            self.record_write(offset, &vec![0u8; n as usize]);
        }
        self.punched = true;
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len)
            .map_err(|e| self.io_err(offset, e.into()))
    }

    /// fdatasync: data and the file size reach stable storage (a full
    /// fsync after a hole was punched, so the hole is stable too).
    pub fn sync(&mut self) -> Result<()> {
        self.tick()?;
        #[cfg(test)]
        self.unsynced.clear();
        if self.punched {
            self.file.sync_all().map_err(|e| self.io_err(0, e))?;
            self.punched = false;
            Ok(())
        } else {
            self.file.sync_data().map_err(|e| self.io_err(0, e))
        }
    }
}
