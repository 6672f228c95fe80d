//! Format detection from a file's own bytes.
//!
//! A file is raw only when nothing in it looks like a VHD or VHDX: a damaged
//! image must never be opened as raw, or a guest would write straight over
//! its metadata. Each format keeps more than one copy of what identifies it,
//! so the surviving copies are looked for when the primary one is missing:
//!
//! - VHDX ([MS-VHDX] 2.2, 2.3; offsets from [`crate::vhdx::spec`]): the file
//!   identifier at 0, header 1 at 64 KiB, header 2 at 128 KiB, region table 1
//!   at 192 KiB and region table 2 at 256 KiB. The headers and region tables
//!   carry a signature and a CRC-32C.
//! - VHD (VHD specification, "Hard Disk Footer Format", "Dynamic Disk Header
//!   Format"): the footer in the last 512 bytes (511 on some old fixed
//!   disks), its copy at offset 0 of dynamic and differencing disks, and the
//!   dynamic disk header (cookie `cxsparse`) at offset 512. Each carries a
//!   one's-complement checksum, so a footer whose only damage is its cookie
//!   is still recognised: with the cookie put back its checksum holds.
//!
//! Evidence for a damaged image is a structure whose checksum holds, or at
//! least two structures whose signatures are in place: a raw disk holding a
//! stray `head` at 64 KiB is not refused, one holding a checksummed VHDX
//! header there is (open it with an explicit raw format to use it anyway).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::vhd::spec as vhd;
use crate::vhdx::spec as vhdx;
use crate::{BlockError, ImageFormat, Result};

fn read_up_to(file: &File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(BlockError::Io {
                    path: path.to_owned(),
                    offset: offset + done as u64,
                    source,
                })
            }
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Detects an image's format from its bytes (never from its name). A file
/// that looks like a damaged VHD or VHDX is refused with
/// [`BlockError::Damaged`] rather than reported as raw.
pub fn detect_format(path: &Path) -> Result<ImageFormat> {
    let io = |offset, source| BlockError::Io {
        path: path.to_owned(),
        offset,
        source,
    };
    let file = File::open(path).map_err(|e| io(0, e))?;
    let len = file.metadata().map_err(|e| io(0, e))?.len();
    let head = read_up_to(&file, path, 0, vhd::FOOTER_SIZE)?;
    if head.starts_with(vhdx::FILE_IDENTIFIER_SIGNATURE) {
        return Ok(ImageFormat::Vhdx);
    }
    if head.starts_with(vhd::FOOTER_COOKIE) {
        // A dynamic VHD starts with a copy of its footer.
        return Ok(ImageFormat::Vhd);
    }
    // A fixed VHD ends with its footer (512 bytes; some old tools wrote 511).
    for footer_len in [vhd::FOOTER_SIZE as u64, vhd::OLD_FOOTER_SIZE as u64] {
        if len >= footer_len {
            let tail = read_up_to(&file, path, len - footer_len, 8)?;
            if tail == vhd::FOOTER_COOKIE {
                return Ok(ImageFormat::Vhd);
            }
        }
    }
    if let Some(reason) = damaged_vhdx(&file, path, len)? {
        return Err(BlockError::Damaged {
            path: path.to_owned(),
            format: ImageFormat::Vhdx,
            reason: format!(
                "{reason}, but its file identifier ({:?} at offset 0) is missing",
                String::from_utf8_lossy(vhdx::FILE_IDENTIFIER_SIGNATURE)
            ),
        });
    }
    if let Some(reason) = damaged_vhd(&file, path, len, &head)? {
        return Err(BlockError::Damaged {
            path: path.to_owned(),
            format: ImageFormat::Vhd,
            reason: format!(
                "{reason}, but no footer with the cookie {:?} is in place",
                String::from_utf8_lossy(vhd::FOOTER_COOKIE)
            ),
        });
    }
    Ok(ImageFormat::Raw)
}

/// What survives of a VHDX whose file identifier is gone, described, or
/// `None` when nothing does.
fn damaged_vhdx(file: &File, path: &Path, len: u64) -> Result<Option<String>> {
    let mut signatures = Vec::new();
    for &offset in &vhdx::HEADER_OFFSETS {
        if offset >= len {
            continue;
        }
        let buf = read_up_to(file, path, offset, vhdx::HEADER_SIZE)?;
        if buf.starts_with(vhdx::HEADER_SIGNATURE) {
            if vhdx::Header::parse(&buf, offset).is_ok() {
                return Ok(Some(format!(
                    "a valid VHDX header (signature \"head\", checksum correct) is at offset {offset}"
                )));
            }
            signatures.push(format!("\"head\" at {offset}"));
        }
    }
    for &offset in &vhdx::REGION_TABLE_OFFSETS {
        if offset >= len {
            continue;
        }
        let buf = read_up_to(file, path, offset, vhdx::REGION_TABLE_SIZE)?;
        if buf.starts_with(vhdx::REGION_TABLE_SIGNATURE) {
            if vhdx::RegionTable::parse(&buf, offset).is_ok() {
                return Ok(Some(format!(
                    "a valid VHDX region table (signature \"regi\", checksum correct) is at offset {offset}"
                )));
            }
            signatures.push(format!("\"regi\" at {offset}"));
        }
    }
    Ok((signatures.len() >= 2).then(|| {
        format!(
            "VHDX structure signatures are in place ({})",
            signatures.join(", ")
        )
    }))
}

/// Whether `bytes` is a VHD footer whose only damage may be its cookie.
fn footer_with_cookie_restored(bytes: &[u8]) -> bool {
    if bytes.len() != vhd::FOOTER_SIZE && bytes.len() != vhd::OLD_FOOTER_SIZE {
        return false;
    }
    let mut fixed = bytes.to_vec();
    fixed[..8].copy_from_slice(vhd::FOOTER_COOKIE);
    vhd::Footer::parse(&fixed).is_ok()
}

/// What survives of a VHD whose footers lost their cookies, described, or
/// `None` when nothing does.
fn damaged_vhd(file: &File, path: &Path, len: u64, head: &[u8]) -> Result<Option<String>> {
    if footer_with_cookie_restored(head) {
        return Ok(Some(
            "the footer copy at offset 0 is intact apart from its cookie".into(),
        ));
    }
    for footer_len in [vhd::FOOTER_SIZE, vhd::OLD_FOOTER_SIZE] {
        let Some(at) = len.checked_sub(footer_len as u64) else {
            continue;
        };
        let tail = read_up_to(file, path, at, footer_len)?;
        if footer_with_cookie_restored(&tail) {
            return Ok(Some(format!(
                "the footer at offset {at} is intact apart from its cookie"
            )));
        }
    }
    // Every VHD tool puts the dynamic disk header right after the footer
    // copy.
    let at = vhd::FOOTER_SIZE as u64;
    let dyn_header = read_up_to(file, path, at, vhd::DYNAMIC_HEADER_SIZE)?;
    if dyn_header.len() == vhd::DYNAMIC_HEADER_SIZE {
        if vhd::DynamicHeader::parse(&dyn_header).is_ok() {
            return Ok(Some(format!(
                "a valid VHD dynamic disk header (cookie \"cxsparse\", checksum correct) is at offset {at}"
            )));
        }
        let mut fixed = dyn_header.clone();
        fixed[..8].copy_from_slice(vhd::DYNAMIC_COOKIE);
        if vhd::DynamicHeader::parse(&fixed).is_ok() {
            return Ok(Some(format!(
                "the VHD dynamic disk header at offset {at} is intact apart from its cookie"
            )));
        }
    }
    Ok(None)
}
