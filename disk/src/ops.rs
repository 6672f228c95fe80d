//! Whole-image operations over any format and chain: convert, compare,
//! commit. They work through [`DiskImage`] only, so every format that
//! implements it takes part.

use std::ops::Range;
use std::path::Path;

use crate::{
    BlockDevice, BlockError, CreateOptions, DiskImage, ImageFormat, OpenOptions, Result, Subformat,
};

/// Bytes moved per request by convert, compare and commit.
pub const CHUNK: u64 = 1 << 20;

/// Called with (bytes done, bytes to do) as an operation goes.
pub type Progress<'a> = dyn FnMut(u64, u64) + 'a;

/// Sorts and merges ranges, dropping empty ones.
pub fn merge_ranges(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The byte ranges that any image of the chain holds data for, clipped to
/// the top image's size: everything else reads as zeros. When a
/// differencing image does not expose its parent, the whole disk counts.
pub fn chain_allocated_extents(image: &dyn DiskImage) -> Result<Vec<Range<u64>>> {
    let size = image.geometry().size;
    let mut all = Vec::new();
    let mut layer: Option<&dyn DiskImage> = Some(image);
    while let Some(l) = layer {
        all.extend(l.allocated_extents()?);
        layer = match l.parent() {
            Some(p) => Some(p),
            None if l.info().parent.is_some() => return Ok(std::iter::once(0..size).collect()),
            None => None,
        };
    }
    Ok(merge_ranges(
        all.into_iter()
            .map(|r| r.start.min(size)..r.end.min(size))
            .collect(),
    ))
}

/// Splits ranges into pieces of at most [`CHUNK`] bytes, aligned to
/// [`CHUNK`] so that they match image blocks.
pub(crate) fn chunks(ranges: &[Range<u64>]) -> impl Iterator<Item = Range<u64>> + '_ {
    ranges.iter().flat_map(|r| {
        let mut pos = r.start;
        std::iter::from_fn(move || {
            if pos >= r.end {
                return None;
            }
            let end = ((pos / CHUNK + 1) * CHUNK).min(r.end);
            let piece = pos..end;
            pos = end;
            Some(piece)
        })
    })
}

/// Whether every byte is zero: compared against zeros with `memcmp`, which
/// is fast in every build (allocated but never written blocks make convert
/// scan a lot of zeros).
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    buf.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

fn total(ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

/// What [`convert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertStats {
    pub virtual_size: u64,
    /// Bytes read from the source (its allocated ranges).
    pub bytes_read: u64,
    /// Bytes written to the destination (non-zero data).
    pub bytes_written: u64,
}

/// Copies the content of `src` (a whole chain) into a new flat image at
/// `dst`: `options.size` is taken from the source and `options.parent` must
/// be `None`. Only the source's allocated ranges are read, and zero
/// stretches are not written, so the destination is sparse where the
/// source is.
pub fn convert(
    src: &dyn DiskImage,
    dst: &Path,
    options: &CreateOptions,
    progress: &mut Progress,
) -> Result<ConvertStats> {
    if options.parent.is_some() {
        return Err(BlockError::Unsupported {
            path: dst.to_owned(),
            reason: "convert writes a flat image, without a parent".into(),
        });
    }
    let size = src.geometry().size;
    let create = CreateOptions {
        size,
        ..options.clone()
    };
    crate::create(dst, &create)?;
    let out = crate::open(
        dst,
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
    )?;
    if out.geometry().size < size {
        return Err(BlockError::Unsupported {
            path: dst.to_owned(),
            reason: format!(
                "the new image holds {} bytes, less than the source's {size}",
                out.geometry().size
            ),
        });
    }
    let extents = chain_allocated_extents(src)?;
    let todo = total(&extents);
    let mut stats = ConvertStats {
        virtual_size: size,
        bytes_read: 0,
        bytes_written: 0,
    };
    let mut buf = vec![0u8; CHUNK as usize];
    progress(0, todo);
    for piece in chunks(&extents) {
        let len = (piece.end - piece.start) as usize;
        let data = &mut buf[..len];
        src.read_at(piece.start, data)?;
        stats.bytes_read += len as u64;
        if is_zero(data) {
            progress(stats.bytes_read, todo);
            continue;
        }
        // Write only the sectors that are not zero, in runs.
        let mut s = 0;
        while s < len {
            if is_zero(&data[s..s + 512]) {
                s += 512;
                continue;
            }
            let mut e = s + 512;
            while e < len && !is_zero(&data[e..e + 512]) {
                e += 512;
            }
            out.write_at(piece.start + s as u64, &data[s..e])?;
            stats.bytes_written += (e - s) as u64;
            s = e;
        }
        progress(stats.bytes_read, todo);
    }
    out.flush()?;
    Ok(stats)
}

/// How two images compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Identical,
    /// The first byte offset whose content differs.
    DifferAt(u64),
    /// Sizes differ and `strict` was asked for.
    SizeMismatch {
        a: u64,
        b: u64,
    },
}

/// Compares the content of two images (through their chains) the way
/// `qemu-img compare` does: without `strict`, images of different sizes
/// are identical when the common part matches and the rest of the larger
/// one is zeros.
pub fn compare(
    a: &dyn DiskImage,
    b: &dyn DiskImage,
    strict: bool,
    progress: &mut Progress,
) -> Result<Comparison> {
    let (sa, sb) = (a.geometry().size, b.geometry().size);
    if strict && sa != sb {
        return Ok(Comparison::SizeMismatch { a: sa, b: sb });
    }
    let mut ranges = chain_allocated_extents(a)?;
    ranges.extend(chain_allocated_extents(b)?);
    let ranges = merge_ranges(ranges);
    let todo = total(&ranges);
    let mut done = 0;
    let mut ba = vec![0u8; CHUNK as usize];
    let mut bb = vec![0u8; CHUNK as usize];
    progress(0, todo);
    for piece in chunks(&ranges) {
        let len = (piece.end - piece.start) as usize;
        let read = |img: &dyn DiskImage, size: u64, buf: &mut [u8]| -> Result<()> {
            let inside = size.saturating_sub(piece.start).min(len as u64) as usize;
            if inside > 0 {
                img.read_at(piece.start, &mut buf[..inside])?;
            }
            buf[inside..len].fill(0);
            Ok(())
        };
        read(a, sa, &mut ba)?;
        read(b, sb, &mut bb)?;
        if ba[..len] != bb[..len] {
            let first = ba[..len]
                .iter()
                .zip(&bb[..len])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            return Ok(Comparison::DifferAt(piece.start + first as u64));
        }
        done += len as u64;
        progress(done, todo);
    }
    Ok(Comparison::Identical)
}

/// What [`commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReport {
    pub parent: std::path::PathBuf,
    /// Bytes copied from the child into its parent.
    pub bytes_copied: u64,
    /// The child was emptied and re-linked to its changed parent; when
    /// `false` it is left as it was and is no longer valid over the parent.
    pub child_emptied: bool,
}

/// Merges a differencing image into its parent (Hyper-V's "Merge" into
/// the parent, `qemu-img commit`): the child's own data is written into the
/// parent, opened read-write, and flushed; then the child is emptied and
/// re-linked so that it stays a valid image presenting the same content.
/// Other children of the parent are invalid afterwards (their parent
/// changed under them) and are refused when opened.
pub fn commit(child_path: &Path, progress: &mut Progress) -> Result<CommitReport> {
    let child = crate::open(
        child_path,
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
    )?;
    let parent_path = match child.info().parent {
        Some(p) => p.path,
        None => {
            return Err(BlockError::Unsupported {
                path: child_path.to_owned(),
                reason: "not a differencing image: there is no parent to commit into".into(),
            })
        }
    };
    let extents = child.allocated_extents()?;
    let todo = total(&extents);
    let parent = crate::open(
        &parent_path,
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
    )?;
    let copy = |parent: &dyn BlockDevice, progress: &mut Progress| -> Result<u64> {
        let psize = parent.geometry().size;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut done = 0;
        progress(0, todo);
        for piece in chunks(&extents) {
            let len = (piece.end - piece.start) as usize;
            child.read_at(piece.start, &mut buf[..len])?;
            let inside = psize.saturating_sub(piece.start).min(len as u64) as usize;
            if inside < len && buf[inside..len].iter().any(|&b| b != 0) {
                return Err(BlockError::Unsupported {
                    path: parent_path.clone(),
                    reason: format!(
                        "the child holds data at {} beyond the parent's size {psize}",
                        piece.start + inside as u64
                    ),
                });
            }
            if inside > 0 {
                parent.write_at(piece.start, &buf[..inside])?;
            }
            done += len as u64;
            progress(done, todo);
        }
        Ok(done)
    };
    // A parent with dirty bitmaps is written through its tracker, so they
    // stay up to date; closing it flushes the parent and persists them.
    let done = if crate::dirty::sidecar_path(&parent_path).exists() {
        let tracker = crate::dirty::DirtyTracker::open_image(
            std::sync::Arc::from(parent),
            &crate::dirty::TrackerOptions::default(),
        )?;
        let done = copy(&tracker, progress)?;
        tracker.close()?;
        done
    } else {
        let done = copy(parent.as_ref(), progress)?;
        parent.flush()?;
        drop(parent);
        done
    };
    let child_emptied = child.empty_after_commit()?;
    child.flush()?;
    Ok(CommitReport {
        parent: parent_path,
        bytes_copied: done,
        child_emptied,
    })
}

/// The subformat a new flat image gets when none is asked for.
pub fn default_subformat(format: ImageFormat) -> Subformat {
    match format {
        ImageFormat::Raw => Subformat::Fixed,
        _ => Subformat::Dynamic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4096]));
        for at in [0, 15, 16, 511, 4095] {
            let mut b = vec![0u8; 4096];
            b[at] = 1;
            assert!(!is_zero(&b), "{at}");
            assert!(!is_zero(&b[at..at + 1]));
        }
        assert!(!is_zero(&[0, 0, 0, 7]));
    }

    #[test]
    fn ranges_merge_and_chunk() {
        assert_eq!(
            merge_ranges(vec![5..6, 0..2, 1..3, 7..7, 6..9]),
            vec![0..3, 5..9]
        );
        let r = [0..(CHUNK + 512), (3 * CHUNK - 512)..(3 * CHUNK + 512)];
        let c: Vec<_> = chunks(&r).collect();
        assert_eq!(
            c,
            vec![
                0..CHUNK,
                CHUNK..CHUNK + 512,
                3 * CHUNK - 512..3 * CHUNK,
                3 * CHUNK..3 * CHUNK + 512
            ]
        );
    }
}
