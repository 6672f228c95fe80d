//! A raw image: the file's bytes are the disk's bytes.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use crate::hostfile::HostFile;
use crate::{
    check_request, BlockDevice, BlockError, BlockGeometry, DiskImage, ImageFormat, ImageInfo,
    Problem, Result, Subformat, SECTOR_SIZE,
};

#[derive(Debug)]
pub struct RawFile {
    file: HostFile,
    path: PathBuf,
    geometry: BlockGeometry,
}

impl RawFile {
    pub fn open(path: &Path, read_only: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
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
        Ok(RawFile {
            file: HostFile::new(file),
            path: path.to_owned(),
            geometry: BlockGeometry {
                // A trailing partial sector is not addressable.
                size: len - len % SECTOR_SIZE,
                logical_sector_size: 512,
                physical_sector_size: 512,
                read_only,
            },
        })
    }

    fn io_err(&self, offset: u64, source: std::io::Error) -> BlockError {
        BlockError::Io {
            path: self.path.clone(),
            offset,
            source,
        }
    }
}

impl BlockDevice for RawFile {
    fn geometry(&self) -> BlockGeometry {
        self.geometry
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_request(&self.geometry, offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io_err(offset, e))
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_request(&self.geometry, offset, buf.len() as u64)?;
        if self.geometry.read_only {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_err(offset, e))
    }

    fn flush(&self) -> Result<()> {
        if self.geometry.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| self.io_err(0, e))
    }
}

impl DiskImage for RawFile {
    fn info(&self) -> ImageInfo {
        use std::os::unix::fs::MetadataExt;
        let allocated_bytes = self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        ImageInfo {
            path: self.path.clone(),
            format: ImageFormat::Raw,
            subformat: Subformat::Fixed,
            virtual_size: self.geometry.size,
            block_size: None,
            logical_sector_size: self.geometry.logical_sector_size,
            physical_sector_size: self.geometry.physical_sector_size,
            allocated_bytes,
            parent: None,
        }
    }

    fn check(&self) -> Result<Vec<Problem>> {
        // A raw image has no structure to be inconsistent.
        Ok(Vec::new())
    }

    fn allocated_extents(&self) -> Result<Vec<std::ops::Range<u64>>> {
        let whole = 0..self.geometry.size;
        Ok(std::iter::once(whole).collect())
    }
}

/// Creates a sparse raw image of `options.size` bytes.
pub fn create(path: &Path, options: &crate::CreateOptions) -> Result<()> {
    let open_err = |reason: String| BlockError::Open {
        path: path.to_owned(),
        reason,
    };
    if options.parent.is_some() {
        return Err(open_err("raw images cannot have a parent".into()));
    }
    if !options.size.is_multiple_of(SECTOR_SIZE) {
        return Err(open_err(format!(
            "size {} is not a multiple of {SECTOR_SIZE} bytes",
            options.size
        )));
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| BlockError::Io {
            path: path.to_owned(),
            offset: 0,
            source,
        })?;
    file.set_len(options.size).map_err(|source| BlockError::Io {
        path: path.to_owned(),
        offset: options.size,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_writes_and_rejects_bad_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        std::fs::write(&path, vec![0u8; 4096 + 100]).unwrap();
        let disk = RawFile::open(&path, false).unwrap();
        assert_eq!(disk.geometry().size, 4096);
        disk.write_at(512, &[0xab; 512]).unwrap();
        let mut buf = [0u8; 1024];
        disk.read_at(0, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 0));
        assert!(buf[512..].iter().all(|&b| b == 0xab));
        assert!(matches!(
            disk.read_at(4096, &mut buf[..512]),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            disk.read_at(u64::MAX - 511, &mut buf[..512]),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            disk.read_at(1, &mut buf[..512]),
            Err(BlockError::Misaligned { .. })
        ));
        let ro = RawFile::open(&path, true).unwrap();
        assert!(matches!(
            ro.write_at(0, &[0; 512]),
            Err(BlockError::ReadOnly { .. })
        ));
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk[512..1024].iter().all(|&b| b == 0xab));
    }
}
