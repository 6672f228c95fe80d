//! An in-memory block device with fault injection and an access log, for
//! the storage unit tests and fuzz targets.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use rehost_disk::{check_request, BlockDevice, BlockError, BlockGeometry, Result};

/// One request that reached the medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Read { offset: u64, len: u64 },
    Write { offset: u64, len: u64 },
    Discard { offset: u64, len: u64 },
    Flush,
}

const PAGE: u64 = 4096;

type Fill = Box<dyn Fn(u64) -> u8 + Send + Sync>;

/// Sparse contents: written pages, and a function for the rest.
struct Pages {
    written: BTreeMap<u64, Box<[u8]>>,
    fill: Fill,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pages({} written)", self.written.len())
    }
}

impl Pages {
    fn read(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = match self.written.get(&(at / PAGE)) {
                Some(p) => p[(at % PAGE) as usize],
                None => (self.fill)(at),
            };
        }
    }

    fn write(&mut self, offset: u64, buf: &[u8]) {
        for (i, &b) in buf.iter().enumerate() {
            let at = offset + i as u64;
            let fill = &self.fill;
            let page = self
                .written
                .entry(at / PAGE)
                .or_insert_with(|| (0..PAGE).map(|k| fill(at / PAGE * PAGE + k)).collect());
            page[(at % PAGE) as usize] = b;
        }
    }
}

/// A sparse in-memory disk of any size.
#[derive(Debug)]
pub struct MemDisk {
    data: Mutex<Pages>,
    geometry: BlockGeometry,
    failing: Mutex<Option<Range<u64>>>,
    log: Mutex<Vec<Access>>,
    flushes: AtomicU32,
    /// Requests refused as out of range or misaligned: the device layer
    /// must never send one.
    refused: AtomicU32,
}

impl MemDisk {
    /// A zero-filled disk of `size` bytes with 512-byte sectors.
    pub fn new(size: u64) -> Self {
        Self::with_geometry(BlockGeometry {
            size,
            logical_sector_size: 512,
            physical_sector_size: 512,
            read_only: false,
        })
    }

    pub fn with_geometry(geometry: BlockGeometry) -> Self {
        Self {
            data: Mutex::new(Pages {
                written: BTreeMap::new(),
                fill: Box::new(|_| 0),
            }),
            geometry,
            failing: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            flushes: AtomicU32::new(0),
            refused: AtomicU32::new(0),
        }
    }

    /// A disk whose bytes are `f(offset)`.
    pub fn patterned(size: u64, f: impl Fn(u64) -> u8 + Send + Sync + 'static) -> Self {
        let d = Self::new(size);
        d.data.lock().unwrap_or_else(|e| e.into_inner()).fill = Box::new(f);
        d
    }

    /// Requests touching `range` (bytes) fail with an I/O error.
    pub fn fail(&self, range: Option<Range<u64>>) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = range;
    }

    pub fn bytes(&self, range: Range<u64>) -> Vec<u8> {
        let mut v = vec![0u8; (range.end - range.start) as usize];
        self.data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(range.start, &mut v);
        v
    }

    pub fn set_bytes(&self, offset: u64, bytes: &[u8]) {
        self.data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(offset, bytes);
    }

    pub fn flushes(&self) -> u32 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Requests so far, oldest first; clears the log.
    pub fn take_log(&self) -> Vec<Access> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Out-of-range or misaligned requests seen so far.
    pub fn refused(&self) -> u32 {
        self.refused.load(Ordering::SeqCst)
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        if let Err(e) = check_request(&self.geometry, offset, len) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(e);
        }
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = failing.as_ref() {
            if offset < r.end && offset + len > r.start {
                return Err(BlockError::Io {
                    path: "memdisk".into(),
                    offset,
                    source: std::io::Error::other("injected fault"),
                });
            }
        }
        Ok(())
    }

    fn record(&self, a: Access) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(a);
    }
}

impl BlockDevice for MemDisk {
    fn geometry(&self) -> BlockGeometry {
        self.geometry
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        self.record(Access::Read {
            offset,
            len: buf.len() as u64,
        });
        self.data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset, buf);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if self.geometry.read_only {
            return Err(BlockError::ReadOnly {
                path: "memdisk".into(),
            });
        }
        self.check(offset, buf.len() as u64)?;
        self.record(Access::Write {
            offset,
            len: buf.len() as u64,
        });
        self.data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(offset, buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.record(Access::Flush);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        self.record(Access::Discard { offset, len });
        Ok(())
    }
}
