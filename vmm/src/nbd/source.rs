//! What an export serves: the [`ExportSource`] trait and an in-memory
//! implementation.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rehost_disk::{BlockError, Result};

/// The data behind an export. Offsets and lengths the server passes are
/// inside [`ExportSource::size`] and multiples of
/// [`ExportSource::block_size`]; an implementation still returns an error
/// (never panics) for anything else.
///
/// Ranges returned by [`ExportSource::allocated`] and
/// [`ExportSource::dirty`] are sorted and disjoint; they may reach outside
/// the range asked for (the server clips them).
pub trait ExportSource: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Writes, trims and zeroing are refused (`NBD_EPERM`).
    fn read_only(&self) -> bool;
    /// Alignment of requests to the source (a power of two, at most 64 KiB).
    fn block_size(&self) -> u32 {
        512
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let _ = (offset, buf);
        Err(BlockError::ReadOnly {
            path: PathBuf::from("nbd export"),
        })
    }
    /// Writes zeros; by default through [`ExportSource::write_at`].
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let chunk = vec![0u8; (1 << 20).min(len) as usize];
        let mut at = offset;
        let end = offset.saturating_add(len);
        while at < end {
            let n = (end - at).min(chunk.len() as u64);
            self.write_at(at, &chunk[..n as usize])?;
            at += n;
        }
        Ok(())
    }
    /// The range's content is no longer needed (advisory).
    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Returns once every completed write is on stable storage.
    fn flush(&self) -> Result<()>;
    /// Ranges within `range` that hold data; the rest reads as zeros and
    /// is reported as a hole. By default everything is data.
    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        Ok(vec![range])
    }
    /// Names of the dirty bitmaps this export offers as
    /// `qemu:dirty-bitmap:NAME`.
    fn bitmaps(&self) -> Vec<String> {
        Vec::new()
    }
    /// Dirty ranges of bitmap `name` within `range`.
    fn dirty(&self, name: &str, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let _ = range;
        Err(BlockError::Unsupported {
            path: PathBuf::from("nbd export"),
            reason: format!("no dirty bitmap {name:?}"),
        })
    }
}

/// A named export: what [`super::NbdServer::add_export`] takes.
#[derive(Clone)]
pub struct Export {
    pub name: String,
    /// Sent as NBD_INFO_DESCRIPTION and in NBD_OPT_LIST replies.
    pub description: String,
    pub source: Arc<dyn ExportSource>,
    /// Served read-only even when the source is writable.
    pub read_only: bool,
}

impl Export {
    pub fn new(name: impl Into<String>, source: Arc<dyn ExportSource>) -> Self {
        Export {
            name: name.into(),
            description: String::new(),
            source,
            read_only: false,
        }
    }

    pub fn read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }

    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only || self.source.read_only()
    }
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.source.size())
            .field("read_only", &self.is_read_only())
            .finish()
    }
}

/// An export held in memory, with dirty bitmaps that record the writes
/// made through it (granularity 64 KiB). For tests and fuzzing.
pub struct MemorySource {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    bitmaps: Mutex<Vec<(String, Vec<Range<u64>>)>>,
}

const MEM_GRANULE: u64 = 64 * 1024;

impl MemorySource {
    pub fn new(data: Vec<u8>) -> Self {
        MemorySource {
            data: Mutex::new(data),
            read_only: false,
            bitmaps: Mutex::new(Vec::new()),
        }
    }

    pub fn with_read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }

    /// Adds a bitmap with every granule clean.
    pub fn add_bitmap(&self, name: &str) {
        self.bitmaps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), Vec::new()));
    }

    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn check(&self, offset: u64, len: u64) -> Result<Range<usize>> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(BlockError::OutOfRange { offset, len, size }),
        }
    }

    fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let start = offset / MEM_GRANULE * MEM_GRANULE;
        let end = (offset + len).div_ceil(MEM_GRANULE) * MEM_GRANULE;
        let end = end.min(self.size());
        for (_, ranges) in self
            .bitmaps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            ranges.push(start..end);
            *ranges = merge(std::mem::take(ranges));
        }
    }
}

/// Sorts and merges overlapping or touching ranges.
pub(crate) fn merge(mut v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    v.retain(|r| r.start < r.end);
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

impl ExportSource for MemorySource {
    fn size(&self) -> u64 {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let r = self.check(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.lock().unwrap_or_else(|e| e.into_inner())[r]);
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if self.read_only {
            return Err(BlockError::ReadOnly {
                path: PathBuf::from("memory export"),
            });
        }
        let r = self.check(offset, buf.len() as u64)?;
        self.data.lock().unwrap_or_else(|e| e.into_inner())[r].copy_from_slice(buf);
        self.mark(offset, buf.len() as u64);
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn bitmaps(&self) -> Vec<String> {
        self.bitmaps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }
    fn dirty(&self, name: &str, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let b = self.bitmaps.lock().unwrap_or_else(|e| e.into_inner());
        let (_, ranges) =
            b.iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| BlockError::Unsupported {
                    path: PathBuf::from("memory export"),
                    reason: format!("no dirty bitmap {name:?}"),
                })?;
        Ok(ranges
            .iter()
            .filter(|r| r.end > range.start && r.start < range.end)
            .cloned()
            .collect())
    }
}
