//! An image file (its whole differencing chain) as an export source.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use rehost_disk::dirty::DirtyTracker;
use rehost_disk::{BlockDevice, BlockError, DiskImage, Result, SECTOR_SIZE};

use super::source::{merge, ExportSource};

/// Serves an opened image. Writes go through the image's
/// [`DirtyTracker`] when one is given, so its bitmaps record them; the
/// bitmaps named at creation are offered as `qemu:dirty-bitmap:NAME`.
pub struct ImageSource {
    image: Arc<dyn DiskImage>,
    tracker: Option<Arc<DirtyTracker>>,
    bitmaps: Vec<String>,
    read_only: bool,
    /// The chain's allocation, dropped on every write, trim or zeroing.
    allocation: Mutex<Option<Arc<Vec<Range<u64>>>>>,
}

/// Byte ranges, sorted and merged, that some image of the chain holds
/// (the rest reads as zeros).
pub fn chain_allocation(image: &dyn DiskImage) -> Result<Vec<Range<u64>>> {
    let mut all = Vec::new();
    let mut layer = Some(image);
    while let Some(l) = layer {
        all.extend(l.allocated_extents()?);
        layer = l.parent();
    }
    Ok(merge(all))
}

impl ImageSource {
    /// `tracker` must wrap `image`; every name in `bitmaps` must be one of
    /// its bitmaps.
    pub fn new(
        image: Arc<dyn DiskImage>,
        tracker: Option<Arc<DirtyTracker>>,
        bitmaps: Vec<String>,
        read_only: bool,
    ) -> Result<Self> {
        let path = image.info().path;
        for b in &bitmaps {
            let known = tracker
                .as_ref()
                .is_some_and(|t| t.bitmaps().iter().any(|i| &i.name == b));
            if !known {
                return Err(BlockError::Open {
                    path,
                    reason: format!("no dirty bitmap named {b:?} (see `rehost disk bitmap list`)"),
                });
            }
        }
        let read_only = read_only || image.geometry().read_only;
        Ok(ImageSource {
            image,
            tracker,
            bitmaps,
            read_only,
            allocation: Mutex::new(None),
        })
    }

    fn device(&self) -> &dyn BlockDevice {
        match &self.tracker {
            Some(t) => t.as_ref(),
            None => self.image.as_ref(),
        }
    }

    fn changed(&self) {
        *self.allocation.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn ro_error(&self) -> BlockError {
        BlockError::ReadOnly {
            path: self.image.info().path,
        }
    }
}

impl ExportSource for ImageSource {
    fn size(&self) -> u64 {
        self.image.geometry().size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn block_size(&self) -> u32 {
        SECTOR_SIZE as u32
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.device().read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if self.read_only {
            return Err(self.ro_error());
        }
        self.changed();
        self.device().write_at(offset, buf)
    }

    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(self.ro_error());
        }
        self.changed();
        self.device().discard(offset, len)
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            // Nothing was written through this source; a tracker's flush
            // would rewrite the sidecar of an image opened read-only.
            return Ok(());
        }
        self.device().flush()
    }

    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let all = {
            let mut cache = self.allocation.lock().unwrap_or_else(|e| e.into_inner());
            match &*cache {
                Some(a) => a.clone(),
                None => {
                    let a = Arc::new(chain_allocation(self.image.as_ref())?);
                    *cache = Some(a.clone());
                    a
                }
            }
        };
        Ok(within(&all, range))
    }

    fn bitmaps(&self) -> Vec<String> {
        self.bitmaps.clone()
    }

    fn dirty(&self, name: &str, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        match &self.tracker {
            Some(t) if self.bitmaps.iter().any(|b| b == name) => {
                Ok(within(&t.dirty_extents(name)?, range))
            }
            _ => Err(BlockError::Unsupported {
                path: self.image.info().path,
                reason: format!("dirty bitmap {name:?} is not exported"),
            }),
        }
    }
}

/// The ranges of a sorted, disjoint list that meet `range`.
fn within(all: &[Range<u64>], range: Range<u64>) -> Vec<Range<u64>> {
    let first = all.partition_point(|r| r.end <= range.start);
    all[first..]
        .iter()
        .take_while(|r| r.start < range.end)
        .cloned()
        .collect()
}

/// Serves a point-in-time view of a running disk (copy before write, see
/// [`rehost_disk::dirty::PointInTime`]): read-only, with the bitmaps frozen
/// at the view's moment.
pub struct PointInTimeSource {
    view: Arc<rehost_disk::dirty::PointInTime>,
    /// The chain's allocation, read just after the view was taken: ranges
    /// the guest allocated in between read as zeros in the view and are
    /// reported as data, which is never wrong.
    allocation: Vec<Range<u64>>,
}

impl PointInTimeSource {
    pub fn new(view: Arc<rehost_disk::dirty::PointInTime>, image: &dyn DiskImage) -> Result<Self> {
        Ok(PointInTimeSource {
            view,
            allocation: chain_allocation(image)?,
        })
    }
}

impl ExportSource for PointInTimeSource {
    fn size(&self) -> u64 {
        self.view.geometry().size
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.view.read_at(offset, buf)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        Ok(within(&self.allocation, range))
    }

    fn bitmaps(&self) -> Vec<String> {
        self.view.bitmaps().iter().map(|(n, _)| n.clone()).collect()
    }

    fn dirty(&self, name: &str, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        match self.view.bitmaps().iter().find(|(n, _)| n == name) {
            Some((_, extents)) => Ok(within(extents, range)),
            None => Err(BlockError::Unsupported {
                path: std::path::PathBuf::from("point-in-time view"),
                reason: format!("dirty bitmap {name:?} is not exported"),
            }),
        }
    }
}
