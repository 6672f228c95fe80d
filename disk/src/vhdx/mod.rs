//! VHDX images (fixed, dynamic, differencing): [MS-VHDX] v6.0
//! with its log, region table, metadata, BAT and sector bitmaps.

use std::path::Path;

use crate::{
    BlockDevice, BlockError, BlockGeometry, CreateOptions, DiskImage, ImageInfo, OpenOptions,
    ParentOpener, Problem, Result,
};

#[derive(Debug)]
pub struct VhdxImage {}

impl VhdxImage {
    pub fn open(
        path: &Path,
        _options: &OpenOptions,
        _open_parent: &mut ParentOpener,
    ) -> Result<Self> {
        Err(BlockError::Unsupported {
            path: path.to_owned(),
            reason: "VHDX images are not supported yet".into(),
        })
    }
}

pub fn create(path: &Path, _options: &CreateOptions) -> Result<()> {
    Err(BlockError::Unsupported {
        path: path.to_owned(),
        reason: "creating VHDXX images is not supported yet".into(),
    })
}

impl BlockDevice for VhdxImage {
    fn geometry(&self) -> BlockGeometry {
        unreachable!()
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> Result<()> {
        unreachable!()
    }
    fn write_at(&self, _offset: u64, _buf: &[u8]) -> Result<()> {
        unreachable!()
    }
    fn flush(&self) -> Result<()> {
        unreachable!()
    }
}

impl DiskImage for VhdxImage {
    fn info(&self) -> ImageInfo {
        unreachable!()
    }
    fn check(&self) -> Result<Vec<Problem>> {
        unreachable!()
    }
    fn allocated_extents(&self) -> Result<Vec<std::ops::Range<u64>>> {
        unreachable!()
    }
}
