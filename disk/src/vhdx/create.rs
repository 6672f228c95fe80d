//! Creating VHDX files: fixed, dynamic and differencing.
//!
//! Layout of a new file (every object 1 MiB aligned, section 2.1):
//! header section (0..1 MiB), log (1 MiB, 1 MiB long), metadata region
//! (2 MiB, 1 MiB long), BAT (3 MiB, rounded up to 1 MiB), then payload
//! blocks.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::layout::read_current_header;
use super::parent::{absolute_path_value, relative_path_value};
use super::spec::*;
use crate::{BlockError, CreateOptions, ImageFormat, Result, Subformat};

/// Block size of new dynamic and fixed images when none is asked for:
/// qemu-img's choice for the same size (8 MiB up to 1 GiB, 16 MiB up to
/// 100 GiB, 32 MiB up to 32 TiB, 64 MiB above), so an image made by either
/// tool has the same layout. Smaller blocks keep the file sparse where the
/// guest is; rehost batches the BAT updates that more blocks cost.
pub fn default_block_size(virtual_size: u64) -> u32 {
    const GIB: u64 = 1 << 30;
    if virtual_size > 32 << 40 {
        64 << 20
    } else if virtual_size > 100 * GIB {
        32 << 20
    } else if virtual_size > GIB {
        16 << 20
    } else {
        8 << 20
    }
}
/// Block size of new differencing images when none is asked for (what
/// Hyper-V uses for them).
pub const DEFAULT_DIFFERENCING_BLOCK_SIZE: u32 = 2 << 20;
/// Log size of new images.
pub const DEFAULT_LOG_SIZE: u32 = 1 << 20;

/// A fresh random (version 4) GUID.
pub(crate) fn random_guid() -> Guid {
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        // No /dev/urandom: mix the clock, the process id and a counter.
        use std::hash::{BuildHasher, Hasher};
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        for half in 0..2 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.write_u32(std::process::id());
            h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            b[half * 8..half * 8 + 8].copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    // Version 4 (data3's top nibble), RFC 4122 variant.
    b[7] = (b[7] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    Guid(b)
}

/// Everything that shapes a new file.
#[derive(Debug, Clone)]
pub(crate) struct NewImage {
    pub virtual_size: u64,
    pub block_size: u32,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub log_size: u32,
    pub fixed: bool,
    pub parent: Option<NewParent>,
}

#[derive(Debug, Clone)]
pub(crate) struct NewParent {
    pub data_write_guid: Guid,
    pub relative_path: String,
    pub absolute_win32_path: String,
}

/// `rehost disk create -f vhdx`: see [`crate::create`].
pub fn create(path: &Path, options: &CreateOptions) -> Result<()> {
    let bad = |reason: String| BlockError::Open {
        path: path.to_owned(),
        reason,
    };
    if options.format != ImageFormat::Vhdx {
        return Err(bad(format!(
            "asked to create a {} image with the VHDX writer",
            options.format.name()
        )));
    }
    let block_size = match options.block_size {
        None if options.parent.is_some() => DEFAULT_DIFFERENCING_BLOCK_SIZE,
        None => default_block_size(options.size),
        Some(b) => {
            if b < u64::from(BLOCK_SIZE_MIN)
                || b > u64::from(BLOCK_SIZE_MAX)
                || !b.is_power_of_two()
            {
                return Err(bad(format!(
                    "block size {b} is not a power of two between 1 MiB and 256 MiB"
                )));
            }
            b as u32
        }
    };
    let image = match &options.parent {
        Some(parent) => {
            if options.subformat == Subformat::Fixed {
                return Err(bad("a differencing image cannot be fixed".into()));
            }
            new_child(path, parent, block_size)?
        }
        None => {
            if options.subformat == Subformat::Differencing {
                return Err(bad("a differencing image needs a parent".into()));
            }
            NewImage {
                virtual_size: options.size,
                block_size,
                logical_sector_size: 512,
                physical_sector_size: 4096,
                log_size: DEFAULT_LOG_SIZE,
                fixed: options.subformat == Subformat::Fixed,
                parent: None,
            }
        }
    };
    create_image(path, &image)
}

/// Reads what a child needs from its parent: the chain must open, the parent
/// must be a VHDX file, and its DataWriteGuid becomes the child's
/// parent_linkage (section 2.6.2.6.3).
fn new_child(path: &Path, parent: &Path, block_size: u32) -> Result<NewImage> {
    let img = crate::open(
        parent,
        &crate::OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )?;
    let info = img.info();
    if info.format != ImageFormat::Vhdx {
        return Err(BlockError::Open {
            path: path.to_owned(),
            reason: format!(
                "parent {} is a {} image; a VHDX differencing image needs a VHDX parent",
                parent.display(),
                info.format.name()
            ),
        });
    }
    let header = read_current_header(parent)?;
    let canon = |p: &Path| {
        std::fs::canonicalize(p).map_err(|source| BlockError::Io {
            path: p.to_owned(),
            offset: 0,
            source,
        })
    };
    let parent_abs = canon(parent)?;
    let child_dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => canon(d)?,
        _ => canon(Path::new("."))?,
    };
    Ok(NewImage {
        virtual_size: info.virtual_size,
        block_size,
        logical_sector_size: info.logical_sector_size,
        physical_sector_size: info.physical_sector_size,
        log_size: DEFAULT_LOG_SIZE,
        fixed: false,
        parent: Some(NewParent {
            data_write_guid: header.data_write_guid,
            relative_path: relative_path_value(&child_dir, &parent_abs),
            absolute_win32_path: absolute_path_value(&parent_abs),
        }),
    })
}

/// Writes a new image file; refuses to overwrite an existing one and
/// removes its partial file on failure.
pub(crate) fn create_image(path: &Path, image: &NewImage) -> Result<()> {
    let bad = |reason: String| BlockError::Open {
        path: path.to_owned(),
        reason,
    };
    let lss = image.logical_sector_size;
    if lss != 512 && lss != 4096 {
        return Err(bad(format!("logical sector size {lss} is not 512 or 4096")));
    }
    if image.physical_sector_size != 512 && image.physical_sector_size != 4096 {
        return Err(bad(format!(
            "physical sector size {} is not 512 or 4096",
            image.physical_sector_size
        )));
    }
    if image.virtual_size == 0
        || image.virtual_size > VIRTUAL_DISK_SIZE_MAX
        || !image.virtual_size.is_multiple_of(u64::from(lss))
    {
        return Err(bad(format!(
            "size {} is not a nonzero multiple of {lss} bytes up to 64 TiB",
            image.virtual_size
        )));
    }
    if image.log_size == 0 || !u64::from(image.log_size).is_multiple_of(MIB) {
        return Err(bad(format!(
            "log size {} is not a nonzero multiple of 1 MiB",
            image.log_size
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| BlockError::Io {
            path: path.to_owned(),
            offset: 0,
            source,
        })?;
    let result = write_new(path, &file, image);
    if result.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    result
}

fn write_new(path: &Path, file: &std::fs::File, image: &NewImage) -> Result<()> {
    let io = |offset: u64| {
        let path: PathBuf = path.to_owned();
        move |source| BlockError::Io {
            path,
            offset,
            source,
        }
    };
    let write = |offset: u64, bytes: &[u8]| file.write_all_at(bytes, offset).map_err(io(offset));
    let has_parent = image.parent.is_some();
    let log_offset = MIB;
    let metadata_offset = log_offset + u64::from(image.log_size);
    let metadata_length = MIB;
    let bat_offset = metadata_offset + metadata_length;
    let entries = bat_entry_count(
        image.virtual_size,
        image.block_size,
        image.logical_sector_size,
        has_parent,
    );
    let bat_length = (entries * 8).div_ceil(MIB) * MIB;
    if bat_length > u64::from(u32::MAX) - (MIB - 1) {
        return Err(BlockError::Open {
            path: path.to_owned(),
            reason: format!("a BAT of {entries} entries does not fit a region"),
        });
    }
    let payload_offset = bat_offset + bat_length;

    // Section 2.2.1.
    write(
        0,
        &FileIdentifier {
            creator: format!("rehost {}", env!("CARGO_PKG_VERSION")),
        }
        .to_bytes(),
    )?;

    // Section 2.2.3: both region table copies.
    let regions = RegionTable {
        entries: vec![
            RegionTableEntry {
                guid: BAT_REGION_GUID,
                file_offset: bat_offset,
                length: bat_length as u32,
                required: true,
            },
            RegionTableEntry {
                guid: METADATA_REGION_GUID,
                file_offset: metadata_offset,
                length: metadata_length as u32,
                required: true,
            },
        ],
    }
    .to_bytes();
    for off in REGION_TABLE_OFFSETS {
        write(off, &regions)?;
    }

    // Section 2.6: the metadata table and its items, from 64 KiB on.
    let mut items: Vec<(Guid, bool, Vec<u8>)> = vec![
        (
            FILE_PARAMETERS_GUID,
            false,
            FileParameters {
                block_size: image.block_size,
                leave_blocks_allocated: image.fixed,
                has_parent,
            }
            .to_bytes(),
        ),
        (
            VIRTUAL_DISK_SIZE_GUID,
            true,
            image.virtual_size.to_le_bytes().to_vec(),
        ),
        (VIRTUAL_DISK_ID_GUID, true, random_guid().0.to_vec()),
        (
            LOGICAL_SECTOR_SIZE_GUID,
            true,
            image.logical_sector_size.to_le_bytes().to_vec(),
        ),
        (
            PHYSICAL_SECTOR_SIZE_GUID,
            true,
            image.physical_sector_size.to_le_bytes().to_vec(),
        ),
    ];
    if let Some(p) = &image.parent {
        items.push((
            PARENT_LOCATOR_GUID,
            false,
            ParentLocator {
                locator_type: VHDX_PARENT_LOCATOR_TYPE,
                entries: vec![
                    ("parent_linkage".into(), p.data_write_guid.to_braced()),
                    ("relative_path".into(), p.relative_path.clone()),
                    ("absolute_win32_path".into(), p.absolute_win32_path.clone()),
                ],
            }
            .to_bytes(),
        ));
    }
    let mut table = MetadataTable {
        entries: Vec::new(),
    };
    let mut item_offset = METADATA_TABLE_SIZE as u32;
    for (id, virtual_disk, bytes) in &items {
        if u64::from(item_offset) + bytes.len() as u64 > metadata_length {
            return Err(BlockError::Open {
                path: path.to_owned(),
                reason: "the parent locator does not fit the metadata region".into(),
            });
        }
        write(metadata_offset + u64::from(item_offset), bytes)?;
        table.entries.push(MetadataEntry {
            item_id: *id,
            offset: item_offset,
            length: bytes.len() as u32,
            is_user: false,
            is_virtual_disk: *virtual_disk,
            is_required: true,
            reserved_nonzero: false,
        });
        item_offset += bytes.len() as u32;
    }
    write(metadata_offset, &table.to_bytes())?;

    // Section 2.5: the BAT. Dynamic and differencing images start with every
    // entry NOT_PRESENT (zeros); fixed images have every payload block
    // allocated in order.
    let mut file_len = payload_offset;
    if image.fixed {
        let ratio = chunk_ratio(image.logical_sector_size, image.block_size);
        let blocks = data_block_count(image.virtual_size, image.block_size);
        let mut bat = vec![0u8; (entries * 8) as usize];
        for block in 0..blocks {
            let index = block + block / ratio;
            let offset = payload_offset + block * u64::from(image.block_size);
            let e = BatEntry::new(PAYLOAD_BLOCK_FULLY_PRESENT, offset);
            bat[(index * 8) as usize..(index * 8 + 8) as usize].copy_from_slice(&e.0.to_le_bytes());
        }
        write(bat_offset, &bat)?;
        file_len = payload_offset + blocks * u64::from(image.block_size);
    }
    file.set_len(file_len).map_err(io(file_len))?;

    // Section 2.2.2: two valid headers, the second current.
    let mut header = Header {
        sequence_number: 1,
        file_write_guid: random_guid(),
        data_write_guid: random_guid(),
        log_guid: Guid::ZERO,
        log_version: LOG_VERSION,
        version: HEADER_VERSION,
        log_length: image.log_size,
        log_offset,
    };
    write(HEADER_OFFSETS[0], &header.to_bytes())?;
    header.sequence_number = 2;
    write(HEADER_OFFSETS[1], &header.to_bytes())?;
    file.sync_all().map_err(io(0))
}
