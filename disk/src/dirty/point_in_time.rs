//! A point-in-time view of a disk that keeps being written: copy before
//! write into a temporary overlay.
//!
//! [`DirtyTracker::point_in_time`] freezes the disk's content and the
//! chosen bitmaps at one moment (no write is between the two). From then
//! on, before the tracker lets a write or discard reach a granule the view
//! has not saved yet, the granule's old content is copied into an
//! anonymous overlay file; the view reads saved granules from the overlay
//! and the others from the live disk. The overlay is an unnamed file
//! (`O_TMPFILE`) in the directory the caller names, so it disappears with
//! the view, also when the process dies. It grows by at most the disk's
//! size, and only by what the guest rewrites while the view exists.
//!
//! [`DirtyTracker::point_in_time`]: super::DirtyTracker::point_in_time

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{check_request, BlockDevice, BlockError, BlockGeometry, Result};

/// The unit the view saves: a granule is copied whole before its first
/// change.
pub const GRANULE: u64 = 64 << 10;

/// A frozen view of a disk; see the module documentation.
#[derive(Debug)]
pub struct PointInTime {
    live: Arc<dyn BlockDevice>,
    geometry: BlockGeometry,
    overlay: File,
    overlay_dir: PathBuf,
    saved: Mutex<Vec<u64>>,
    bitmaps: Vec<(String, Vec<Range<u64>>)>,
}

impl PointInTime {
    /// A view of `live` as it is now. The caller makes sure no write
    /// reaches `live` until the view is installed where writes pass.
    pub(crate) fn new(
        live: Arc<dyn BlockDevice>,
        overlay_dir: &Path,
        bitmaps: Vec<(String, Vec<Range<u64>>)>,
    ) -> Result<PointInTime> {
        let overlay = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(overlay_dir)
            .map_err(|source| BlockError::Io {
                path: overlay_dir.to_owned(),
                offset: 0,
                source,
            })?;
        let mut geometry = live.geometry();
        geometry.read_only = true;
        let granules = geometry.size.div_ceil(GRANULE);
        Ok(PointInTime {
            live,
            geometry,
            overlay,
            overlay_dir: overlay_dir.to_owned(),
            saved: Mutex::new(vec![0; granules.div_ceil(64) as usize]),
            bitmaps,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u64>> {
        self.saved.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn overlay_err(&self, offset: u64, source: std::io::Error) -> BlockError {
        BlockError::Io {
            path: self.overlay_dir.join("(point-in-time overlay)"),
            offset,
            source,
        }
    }

    /// The bitmaps frozen with the view: each one's dirty byte ranges at
    /// that moment.
    pub fn bitmaps(&self) -> &[(String, Vec<Range<u64>>)] {
        &self.bitmaps
    }

    /// Bytes saved in the overlay so far.
    pub fn saved_bytes(&self) -> u64 {
        let saved = self.lock();
        saved.iter().map(|w| u64::from(w.count_ones())).sum::<u64>() * GRANULE
    }

    /// Saves the old content of every granule of `range` not saved yet.
    /// The tracker calls it before a write or discard of `range`.
    pub(crate) fn before_change(&self, range: Range<u64>) -> Result<()> {
        if range.start >= range.end {
            return Ok(());
        }
        let mut saved = self.lock();
        let mut buf = Vec::new();
        for g in range.start / GRANULE..=(range.end - 1) / GRANULE {
            let (word, bit) = ((g / 64) as usize, g % 64);
            let Some(w) = saved.get(word).copied() else {
                break;
            };
            if w >> bit & 1 == 1 {
                continue;
            }
            let start = g * GRANULE;
            let len = GRANULE.min(self.geometry.size - start) as usize;
            buf.resize(len, 0);
            self.live.read_at(start, &mut buf)?;
            self.overlay
                .write_all_at(&buf, start)
                .map_err(|e| self.overlay_err(start, e))?;
            saved[word] |= 1 << bit;
        }
        Ok(())
    }
}

impl BlockDevice for PointInTime {
    fn geometry(&self) -> BlockGeometry {
        self.geometry
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_request(&self.geometry, offset, buf.len() as u64)?;
        // Held across the reads: a granule cannot be saved and then
        // overwritten between deciding where to read it from and reading.
        let saved = self.lock();
        let mut at = 0usize;
        while at < buf.len() {
            let off = offset + at as u64;
            let g = off / GRANULE;
            let n = (((g + 1) * GRANULE - off) as usize).min(buf.len() - at);
            let piece = &mut buf[at..at + n];
            let is_saved = saved
                .get((g / 64) as usize)
                .is_some_and(|w| w >> (g % 64) & 1 == 1);
            if is_saved {
                self.overlay
                    .read_exact_at(piece, off)
                    .map_err(|e| self.overlay_err(off, e))?;
            } else {
                self.live.read_at(off, piece)?;
            }
            at += n;
        }
        Ok(())
    }

    fn write_at(&self, _offset: u64, _buf: &[u8]) -> Result<()> {
        Err(BlockError::ReadOnly {
            path: self.overlay_dir.join("(point-in-time view)"),
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dirty::{DirtyTracker, TrackerOptions};
    use crate::raw::RawFile;
    use crate::DiskImage;
    use proptest::prelude::*;

    const SIZE: u64 = 1 << 20;

    fn tracker(dir: &Path) -> DirtyTracker {
        let image = dir.join("disk.raw");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(SIZE))
            .expect("image");
        let raw: Arc<dyn DiskImage> = Arc::new(RawFile::open(&image, false).expect("open"));
        DirtyTracker::open_image(raw, &TrackerOptions::default()).expect("tracker")
    }

    fn read_all(d: &dyn BlockDevice) -> Vec<u8> {
        let mut v = vec![0u8; SIZE as usize];
        d.read_at(0, &mut v).expect("read");
        v
    }

    /// (offset in sectors, length in sectors, fill byte, discard)
    fn op() -> impl Strategy<Value = (u64, u64, u8, bool)> {
        (
            0..SIZE / 512,
            1u64..300,
            any::<u8>(),
            prop::bool::weighted(0.1),
        )
    }

    fn apply(t: &DirtyTracker, model: &mut [u8], (at, n, fill, discard): (u64, u64, u8, bool)) {
        let off = at * 512;
        let len = (n * 512).min(SIZE - off);
        if discard {
            t.discard(off, len).expect("discard");
            // A raw file reads old data or zeros after a discard: read back.
            t.read_at(off, &mut model[off as usize..(off + len) as usize])
                .expect("read");
        } else {
            t.write_at(off, &vec![fill; len as usize]).expect("write");
            model[off as usize..(off + len) as usize].fill(fill);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The view reads the disk as it was when taken, whatever the
        /// guest writes afterwards; the frozen bitmap is the bitmap of
        /// that moment; the live disk has every write.
        #[test]
        fn the_view_keeps_the_moment_it_was_taken(
            before in prop::collection::vec(op(), 0..12),
            after in prop::collection::vec(op(), 0..24),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let t = tracker(dir.path());
            t.add_bitmap("b", 4096).expect("bitmap");
            let mut model = vec![0u8; SIZE as usize];
            for o in before {
                apply(&t, &mut model, o);
            }
            let frozen = t.dirty_extents("b").expect("extents");
            let view = t.point_in_time(&["b"], dir.path()).expect("view");
            let moment = model.clone();
            for o in after {
                apply(&t, &mut model, o);
                prop_assert!(read_all(view.as_ref()) == moment);
            }
            prop_assert_eq!(read_all(&t), model);
            prop_assert_eq!(&view.bitmaps()[0].1, &frozen);
            prop_assert!(view.write_at(0, &[0u8; 512]).is_err());
        }
    }

    #[test]
    fn a_dropped_view_saves_nothing_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = tracker(dir.path());
        let view = t.point_in_time(&[], dir.path()).expect("view");
        t.write_at(0, &[1u8; 4096]).expect("write");
        assert_eq!(view.saved_bytes(), GRANULE);
        t.write_at(GRANULE * 3, &[1u8; 512]).expect("write");
        assert_eq!(view.saved_bytes(), 2 * GRANULE);
        let mut b = vec![9u8; 512];
        view.read_at(GRANULE * 3, &mut b).expect("read");
        assert_eq!(b, vec![0u8; 512]);
        drop(view);
        t.write_at(GRANULE * 5, &[1u8; 512]).expect("write");
        assert!(t
            .views
            .lock()
            .unwrap()
            .iter()
            .all(|v| v.strong_count() == 0));
        assert!(t.point_in_time(&["nope"], dir.path()).is_err());
    }
}
