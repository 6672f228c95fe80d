//! Dirty tracking: a block layer that records which parts of a disk were
//! written (or discarded) into named bitmaps, persisted crash-safely in a
//! sidecar file next to the image (`IMAGE.rehost-bitmaps`).
//!
//! # Guarantees
//!
//! - Never under-reports: every byte written through the tracker since a
//!   bitmap was last cleared is inside a dirty granule of that bitmap, also
//!   after a crash at any point.
//! - After a crash, over-reporting is bounded by the activity log: at most
//!   `al_capacity` extents of `al_extent_size` bytes beyond what was really
//!   written (defaults 505 x 4 MiB, about 2 GiB: the most one log slot
//!   holds; DRBD's default log covers about 4.7 GiB). A larger log costs
//!   nothing while running; a log smaller than the region a workload
//!   writes at random makes writes wait for log updates and persists.
//! - A sidecar that is missing its bitmaps, corrupt, or older than the
//!   image's last write (the image's size, modification time or, for VHDX,
//!   DataWriteGuid differs from the stamp stored at the last persist, and no
//!   crash recovery explains it) turns every bitmap to [`BitmapState::ResyncRequired`] (every
//!   granule dirty) with a new generation; never to a clean state.
//!
//! # The activity log (DRBD's idea)
//!
//! The disk is divided into extents of `al_extent_size` bytes. Before the
//! first write to an extent that is not in the activity log, the extent is
//! added to the log on disk and the log is made durable (`fdatasync`);
//! only then does the data write proceed. A persist (every flush, and
//! closing; skipped when the sidecar already says it all) flushes the
//! image (closing: only when it was written since its last flush) and
//! writes the bitmaps with an image stamp as a new state record, which
//! starts an empty log. On open, a
//! non-empty log means the last session did not persist after some
//! writes: each logged extent is marked dirty in every bitmap. When the
//! log is full, a write to a new extent persists first (which empties the
//! log). Opening a clean sidecar writes nothing: its record stays in force
//! until the next persist.
//!
//! # Sidecar format, version 2 (all integers little-endian)
//!
//! ```text
//! offset 0          activity log slot 0 (4096 bytes)
//! offset 4096       activity log slot 1 (4096 bytes)
//! offset 8192       state slot 0 (S bytes, a multiple of 4096)
//! offset 8192 + S   state slot 1 (S bytes)
//! ```
//!
//! The file is 8192 + 2 x S bytes. A persist writes the new state record
//! into the state slot that does not hold the record in force, zero-padded
//! to S bytes, and makes it durable (`pwrite` + `fdatasync`, the file's
//! size unchanged): until then the record in force and its log stand, and
//! a torn write fails the new record's checksum. Of the two, the valid
//! record with the highest sequence number is in force; a slot of all zeros
//! was never written. Only when the sidecar is created, is of version 1,
//! or its slots are too small for the bitmaps (one was added) is a whole
//! new file written (`IMAGE.rehost-bitmaps.tmp`, both log slots and state
//! slot 1 zero, S = the record's length rounded up to 4096), fsynced and
//! renamed over the sidecar, and the directory fsynced.
//!
//! Activity log slot (all zeros = never written):
//!
//! ```text
//!  0   8  magic "RHDIRTAL"
//!  8   8  sequence number (of the slots that belong to the state record
//!         in force, the valid one with the highest number is current)
//! 16   8  owner: the sequence number of the state record it belongs to
//! 24   8  owner: bytes 0..8 of that record's state id
//! 32   8  extent size in bytes (power of two, 64 KiB .. 1 GiB)
//! 40   4  number of extents N (at most 505)
//! 44   4  reserved, zero
//! 48 8*N  extent indices (extent i covers i*size .. (i+1)*size)
//! ...     zeros
//! 4092 4  CRC-32C of bytes 0..4096 with this field taken as zero
//! ```
//!
//! Log updates alternate between the slots, so a torn slot write leaves
//! the previous log (a subset: the log only grows between persists) in
//! the other slot, and the data write it announced had not started. A
//! slot owned by an older record than the one in force is stale: that
//! record was written after every write the slot announced. A slot owned
//! by a newer record than the one in force (whose slot is then damaged)
//! announced writes no readable record covers: every bitmap needs a resync.
//! So does a log whose every slot is damaged.
//!
//! State record (in a state slot; the slot's bytes after it are zero):
//!
//! ```text
//!  0   8  magic "RHDIRTY\0"
//!  8   4  version (2)
//! 12   4  header length (128)
//! 16  16  state id (random, new at every persist)
//! 32   8  virtual size of the disk in bytes
//! 40   8  image stamp: file size in bytes
//! 48   8  image stamp: modification time, seconds since the epoch (signed)
//! 56   4  image stamp: modification time, nanoseconds
//! 60   4  activity log capacity (extents, 1 .. 505)
//! 64   8  activity log extent size in bytes
//! 72   4  number of bitmaps (at most 64)
//! 76   4  flags: bit 0 = the image stamp is valid; bit 1 = the stamp
//!         includes a VHDX DataWriteGuid (only with bit 0); other bits zero
//! 80   8  length L of the state record in bytes (128 .. S)
//! 88   4  reserved, zero
//! 92   4  CRC-32C of the record's L bytes with this field taken as zero
//! 96  16  image stamp: the VHDX DataWriteGuid (zero without flag bit 1)
//! 112  8  sequence number (1 for the first record, one more at each persist)
//! 120  8  slot size S in bytes
//! 128     bitmaps, one after another:
//!          0   2  name length L (1 .. 64; letters, digits, '-', '_', '.')
//!          2   2  reserved, zero
//!          4   4  state: 0 = tracking, 1 = resync required
//!          8   8  granularity in bytes (power of two, 4 KiB .. 16 MiB)
//!         16  16  generation id (random; changes whenever continuity breaks)
//!         32   8  number of bits B = ceil(virtual size / granularity)
//!         40      name, zero-padded to a multiple of 8 bytes
//!         then ceil(B / 64) 64-bit words; bit i (word i/64, bit i%64)
//!         set = granule i dirty; bits past B are zero
//! ```
//!
//! # Version 1 (read; the first persist rewrites it as version 2)
//!
//! A version-1 file is the two activity log slots, then one state record
//! from offset 8192 to the end of the file, which was only ever replaced
//! whole by renaming a new file over it (both log slots zero). Its record
//! is the version-2 record without bytes 112..128: version 1, header length
//! 112, the bitmaps from byte 112 on, and its length (bytes 80..88) equal to
//! the rest of the file. Its log slots hold the record's whole state id at
//! bytes 16..32; a valid slot with another state id needs a resync.

pub mod point_in_time;
pub mod sidecar_spec;

use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

pub use point_in_time::PointInTime;

use crate::hostfile::{self, HostFile};
use crate::{check_request, BlockDevice, BlockError, BlockGeometry, DiskImage, Result};
use sidecar_spec::{
    AlSlot, ImageStamp, SidecarError, StateRecord, StoredBitmap, AL_MAX_EXTENTS, AL_SLOT_SIZE,
    STATE_OFFSET, STATE_SLOT_ALIGN,
};

/// The default granularity of a new bitmap.
pub const DEFAULT_GRANULARITY: u64 = 64 << 10;
/// Activity-log extents announced together (an aligned group) while the
/// log has room for them.
const AL_GROUP: u64 = 64;
/// The default activity-log extent size.
pub const DEFAULT_AL_EXTENT_SIZE: u64 = 4 << 20;
/// The default number of extents the activity log holds.
pub const DEFAULT_AL_CAPACITY: u32 = AL_MAX_EXTENTS as u32;

/// The sidecar file of an image: `IMAGE.rehost-bitmaps` next to it.
pub fn sidecar_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".rehost-bitmaps");
    PathBuf::from(s)
}

/// Whether a bitmap's bits can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitmapState {
    /// Every write since the last clear is recorded.
    Tracking,
    /// Continuity was lost (sidecar missing, corrupt, or older than the
    /// image): every granule is dirty until the bitmap is cleared after a
    /// full resync.
    ResyncRequired,
}

impl BitmapState {
    pub fn name(self) -> &'static str {
        match self {
            BitmapState::Tracking => "tracking",
            BitmapState::ResyncRequired => "resync-required",
        }
    }
}

/// What [`DirtyTracker::bitmaps`] reports about one bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    pub name: String,
    pub granularity: u64,
    /// Bytes covered by dirty granules (the last one clipped to the disk).
    pub dirty_bytes: u64,
    pub generation: u128,
    pub state: BitmapState,
}

/// How to open a tracker.
#[derive(Debug, Clone)]
pub struct TrackerOptions {
    /// Extents the activity log holds (1 ..= 505). Used when the sidecar is
    /// created or rewritten; bounds the over-report after a crash.
    pub al_capacity: u32,
    /// Activity-log extent size (power of two, 64 KiB .. 1 GiB).
    pub al_extent_size: u64,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            al_capacity: DEFAULT_AL_CAPACITY,
            al_extent_size: DEFAULT_AL_EXTENT_SIZE,
        }
    }
}

#[derive(Debug, Clone)]
struct Bitmap {
    name: String,
    granularity: u64,
    generation: u128,
    state: BitmapState,
    words: Vec<u64>,
    bits: u64,
}

impl Bitmap {
    fn new(name: &str, granularity: u64, size: u64) -> Bitmap {
        let bits = sidecar_spec::bit_count(size, granularity);
        Bitmap {
            name: name.to_owned(),
            granularity,
            generation: random_u128(),
            state: BitmapState::Tracking,
            words: vec![0; bits.div_ceil(64) as usize],
            bits,
        }
    }

    fn mark(&mut self, range: Range<u64>) {
        if range.start >= range.end {
            return;
        }
        let first = range.start / self.granularity;
        let last = ((range.end - 1) / self.granularity).min(self.bits.saturating_sub(1));
        for bit in first..=last {
            if let Some(w) = self.words.get_mut((bit / 64) as usize) {
                *w |= 1 << (bit % 64);
            }
        }
    }

    fn set_all(&mut self) {
        self.words.fill(u64::MAX);
        let spare = self.bits % 64;
        if spare != 0 {
            if let Some(w) = self.words.last_mut() {
                *w = (1u64 << spare) - 1;
            }
        }
    }

    fn resync_required(&mut self) {
        self.set_all();
        self.state = BitmapState::ResyncRequired;
        self.generation = random_u128();
    }

    fn is_set(&self, bit: u64) -> bool {
        self.words
            .get((bit / 64) as usize)
            .is_some_and(|w| w >> (bit % 64) & 1 == 1)
    }

    fn extents(&self, size: u64) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for bit in 0..self.bits {
            if bit % 64 == 0 && self.words.get((bit / 64) as usize) == Some(&0) {
                continue;
            }
            if !self.is_set(bit) {
                continue;
            }
            let start = bit * self.granularity;
            let end = (start + self.granularity).min(size);
            match out.last_mut() {
                Some(r) if r.end == start => r.end = end,
                _ => out.push(start..end),
            }
        }
        out
    }

    fn info(&self, size: u64) -> BitmapInfo {
        BitmapInfo {
            name: self.name.clone(),
            granularity: self.granularity,
            dirty_bytes: self.extents(size).iter().map(|r| r.end - r.start).sum(),
            generation: self.generation,
            state: self.state,
        }
    }

    fn to_stored(&self) -> StoredBitmap {
        StoredBitmap {
            name: self.name.clone(),
            granularity: self.granularity,
            generation: self.generation,
            state: match self.state {
                BitmapState::Tracking => sidecar_spec::STATE_TRACKING,
                BitmapState::ResyncRequired => sidecar_spec::STATE_RESYNC_REQUIRED,
            },
            words: self.words.clone(),
            bits: self.bits,
        }
    }

    fn from_stored(s: StoredBitmap) -> Bitmap {
        Bitmap {
            name: s.name,
            granularity: s.granularity,
            generation: s.generation,
            state: if s.state == sidecar_spec::STATE_TRACKING {
                BitmapState::Tracking
            } else {
                BitmapState::ResyncRequired
            },
            words: s.words,
            bits: s.bits,
        }
    }
}

/// A random 128-bit id from the kernel's generator; falls back to time
/// and address entropy when getrandom is unavailable.
pub(crate) fn random_u128() -> u128 {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 16 {
        return u128::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    t ^ (u128::from(std::process::id()) << 64) ^ (&b as *const _ as usize as u128)
}

/// What the sidecar said when it was read, before any decision.
#[derive(Debug)]
pub struct LoadedSidecar {
    pub bitmaps: Vec<BitmapInfo>,
    /// Each bitmap's dirty byte ranges (as [`DirtyTracker::dirty_extents`]),
    /// in the order of `bitmaps`.
    pub extents: Vec<Vec<Range<u64>>>,
    /// Why the bitmaps were turned to resync-required, if they were.
    pub problem: Option<String>,
    /// Extents the activity log held (a crash is being recovered from).
    pub recovered_extents: usize,
}

fn sidecar_err(path: &Path, e: SidecarError) -> BlockError {
    BlockError::Corrupt {
        path: path.to_owned(),
        structure: e.structure,
        offset: e.offset,
        reason: e.reason,
    }
}

pub(crate) fn stamp_of(path: &Path) -> Result<ImageStamp> {
    let m = std::fs::metadata(path).map_err(|source| BlockError::Io {
        path: path.to_owned(),
        offset: 0,
        source,
    })?;
    // A VHDX writer changes the DataWriteGuid before its first write of a
    // session, which catches writers that put the modification time back.
    let data_write_guid = match crate::detect_format(path) {
        Ok(crate::ImageFormat::Vhdx) => crate::vhdx::current_data_write_guid(path).ok(),
        _ => None,
    };
    Ok(ImageStamp {
        file_size: m.len(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
        data_write_guid,
    })
}

/// Whether the image still holds the data it held when `stored` was
/// taken. A VHDX is judged by its size and DataWriteGuid alone: every
/// VHDX writer (rehost, Hyper-V, QEMU) changes the DataWriteGuid before
/// its first data write of a session, while merely opening one for
/// writing rewrites its headers, and so its modification time, with the
/// data untouched (after a crash, that would force a needless resync).
fn same_image_state(stored: &ImageStamp, current: &ImageStamp) -> bool {
    match (stored.data_write_guid, current.data_write_guid) {
        (Some(a), Some(b)) => a == b && stored.file_size == current.file_size,
        _ => stored == current,
    }
}

/// The decoded sidecar with every rule applied.
struct Decoded {
    bitmaps: Vec<Bitmap>,
    al_capacity: u32,
    al_extent_size: u64,
    problem: Option<String>,
    recovered: usize,
    /// Set when the sidecar is clean (no problem, an empty activity log,
    /// the image unchanged): the record a tracker can carry on from
    /// without writing anything.
    current: Option<Current>,
}

/// Where the state record in force is, and what it says about the file.
#[derive(Debug, Clone, Copy)]
struct Current {
    version: u32,
    sequence: u64,
    /// Its state slot (0 or 1).
    slot: usize,
    slot_size: u64,
    al_owner: u128,
    stamp: Option<ImageStamp>,
}

/// Reads and judges a sidecar's bytes against the image's current stamp
/// and virtual size. Never fails: damage turns bitmaps to resync-required
/// (those whose names can still be read) and is described in `problem`.
fn decode(
    sidecar: &Path,
    bytes: &[u8],
    size: u64,
    current_stamp: Option<ImageStamp>,
    opts: &TrackerOptions,
) -> Decoded {
    let mut d = Decoded {
        bitmaps: Vec::new(),
        al_capacity: opts.al_capacity,
        al_extent_size: opts.al_extent_size,
        problem: None,
        recovered: 0,
        current: None,
    };
    let describe = |e: SidecarError| sidecar_err(sidecar, e).to_string();
    let slots = match sidecar_spec::state_slots(bytes) {
        Ok(s) => s,
        Err(e) => {
            d.problem = Some(describe(e));
            return d;
        }
    };
    // The state: the valid slot with the highest sequence number. A
    // damaged slot beside a valid one is a torn or lost persist (the
    // activity log decides below whether the valid one still covers every
    // write).
    let mut records: Vec<(usize, StateRecord)> = Vec::new();
    let mut damaged: Vec<String> = Vec::new();
    for (i, (at, b)) in slots.slots.iter().enumerate() {
        if slots.version == sidecar_spec::VERSION && b.iter().all(|&x| x == 0) {
            continue;
        }
        match StateRecord::parse(b, *at, true) {
            Ok(r) => records.push((i, r)),
            Err(e) => damaged.push(describe(e)),
        }
    }
    let Some((slot, state)) = records.into_iter().max_by_key(|(_, r)| r.sequence) else {
        d.problem = Some(if damaged.is_empty() {
            format!("{}: both state slots are empty", sidecar.display())
        } else {
            damaged.join("; ")
        });
        // Salvage the names of the bitmaps (the structure still has to
        // hold together); their bits are never trusted.
        let salvaged = slots
            .slots
            .iter()
            .filter_map(|(at, b)| StateRecord::parse(b, *at, false).ok())
            .filter(|s| s.virtual_size == size)
            .max_by_key(|s| s.sequence);
        if let Some(s) = salvaged {
            d.bitmaps = s.bitmaps.into_iter().map(Bitmap::from_stored).collect();
        }
        for b in &mut d.bitmaps {
            b.resync_required();
        }
        return d;
    };
    if !damaged.is_empty() {
        tracing::debug!(
            "{}: using state record {} ({}); the other slot: {}",
            sidecar.display(),
            state.sequence,
            slot,
            damaged.join("; ")
        );
    }
    d.al_capacity = state.al_capacity;
    d.al_extent_size = state.al_extent_size;
    let owner = state.al_owner();
    let (sequence, state_stamp) = (state.sequence, state.stamp);
    let current = Current {
        version: state.version,
        sequence,
        slot,
        slot_size: state.slot_size,
        al_owner: owner,
        stamp: state.stamp,
    };
    d.bitmaps = state.bitmaps.into_iter().map(Bitmap::from_stored).collect();
    let all_resync = |d: &mut Decoded, why: String| {
        d.problem = Some(why);
        for b in &mut d.bitmaps {
            if b.state != BitmapState::ResyncRequired {
                b.resync_required();
            } else {
                b.set_all();
            }
        }
    };
    if state.virtual_size != size {
        all_resync(
            &mut d,
            format!(
                "{}: written for a {}-byte disk, but the image is {size} bytes now",
                sidecar.display(),
                state.virtual_size
            ),
        );
        return d;
    }
    // The activity log: of the valid slots that belong to the state
    // record, the one with the highest sequence number. A damaged slot
    // next to a valid one is a torn log update: the valid one (written and
    // synced before) covers every data write started, since a data write
    // starts only after its log update is synced; when the valid one
    // belongs to an older state record, the torn update was the first of
    // this one and nothing it announced was written. A damaged slot with
    // no valid one beside it cannot be told from a lost log: every bitmap
    // needs a resync.
    let mut valid: Vec<AlSlot> = Vec::new();
    let mut damaged: Vec<String> = Vec::new();
    for i in 0..2 {
        let at = i * AL_SLOT_SIZE;
        match AlSlot::parse(&bytes[at..at + AL_SLOT_SIZE], at as u64) {
            Ok(Some(s)) => valid.push(s),
            Ok(None) => {}
            Err(e) => damaged.push(describe(e)),
        }
    }
    if !damaged.is_empty() && valid.is_empty() {
        all_resync(
            &mut d,
            format!("activity log damaged: {}", damaged.join("; ")),
        );
        return d;
    }
    let log = if slots.version == sidecar_spec::VERSION_1 {
        // Version 1 emptied both slots at every persist: a log that is
        // there belongs to the record.
        let log = valid.iter().max_by_key(|s| s.sequence);
        if log.is_some_and(|l| l.owner != owner) {
            all_resync(
                &mut d,
                format!(
                    "{}: the activity log does not belong to the bitmap state",
                    sidecar.display()
                ),
            );
            return d;
        }
        log
    } else {
        // Logs of older records are stale (the record covers them); a log
        // of a newer record means that record was written and then lost:
        // the writes it announced are not known.
        if let Some(l) = valid
            .iter()
            .find(|l| l.owner as u64 >= sequence && l.owner != owner)
        {
            all_resync(
                &mut d,
                format!(
                    "{}: the activity log belongs to state record {}, but the newest readable one is {sequence} ({})",
                    sidecar.display(),
                    l.owner as u64,
                    if damaged.is_empty() { "no slot damaged".to_owned() } else { damaged.join("; ") }
                ),
            );
            return d;
        }
        valid
            .iter()
            .filter(|l| l.owner == owner)
            .max_by_key(|l| l.sequence)
    };
    if let Some(log) = log {
        if log.extent_size != d.al_extent_size {
            let why = format!(
                "{}: the activity log's extent size {} differs from the state's {}",
                sidecar.display(),
                log.extent_size,
                d.al_extent_size
            );
            all_resync(&mut d, why);
            return d;
        }
        if !log.extents.is_empty() {
            d.recovered = log.extents.len();
            for &e in &log.extents {
                let start = e.saturating_mul(log.extent_size);
                let end = start.saturating_add(log.extent_size).min(size);
                for b in &mut d.bitmaps {
                    b.mark(start..end);
                }
            }
            return d;
        }
    }
    // Cleanly persisted: the image must not have changed since.
    match (state_stamp, current_stamp) {
        (Some(s), Some(c)) if same_image_state(&s, &c) => d.current = Some(current),
        (s, c) => all_resync(
            &mut d,
            format!(
                "{}: the image changed since the bitmaps were last written (stamp {s:?}, image now {c:?}): written outside rehost?",
                sidecar.display()
            ),
        ),
    }
    d
}

/// Reads a sidecar without changing anything: what a tracker opened now
/// would report. `Ok(None)` when the image has no sidecar.
pub fn inspect(image_path: &Path, virtual_size: u64) -> Result<Option<LoadedSidecar>> {
    let sidecar = sidecar_path(image_path);
    let bytes = match std::fs::read(&sidecar) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(BlockError::Io {
                path: sidecar,
                offset: 0,
                source,
            })
        }
    };
    let current = stamp_of(image_path).ok();
    let d = decode(
        &sidecar,
        &bytes,
        virtual_size,
        current,
        &TrackerOptions::default(),
    );
    Ok(Some(LoadedSidecar {
        bitmaps: d.bitmaps.iter().map(|b| b.info(virtual_size)).collect(),
        extents: d.bitmaps.iter().map(|b| b.extents(virtual_size)).collect(),
        problem: d.problem,
        recovered_extents: d.recovered,
    }))
}

/// Parses arbitrary sidecar bytes as a tracker would for a disk of
/// `virtual_size` bytes whose image file now has the stamp `current`
/// (`None`: unknown): the bitmaps, each with its state, and the problem
/// found, if any. For fuzzing and tests.
pub fn decode_sidecar_bytes(
    bytes: &[u8],
    virtual_size: u64,
    current: Option<ImageStamp>,
) -> (Vec<BitmapInfo>, Option<String>) {
    let d = decode(
        Path::new("sidecar"),
        bytes,
        virtual_size,
        current,
        &TrackerOptions::default(),
    );
    (
        d.bitmaps.iter().map(|b| b.info(virtual_size)).collect(),
        d.problem,
    )
}

#[derive(Debug)]
struct State {
    bitmaps: Vec<Bitmap>,
    al_capacity: u32,
    al_extent_size: u64,
    /// Extents in the on-disk activity log.
    al: Vec<u64>,
    al_sequence: u64,
    /// What the log slots of the state record in force say they belong to.
    al_owner: u128,
    /// The sequence number of the state record in force (0: none yet).
    record_sequence: u64,
    /// Its state slot; the next persist writes the other one.
    record_slot: usize,
    /// The size of each state slot of the open sidecar (0 when it has
    /// none of this version: the next persist writes a new file).
    slot_size: u64,
    /// The sidecar, open for log and state updates (None until it exists).
    file: Option<HostFile>,
    /// Set by the test hook that simulates a crash: nothing more is
    /// written.
    crashed: bool,
    /// Bits or bitmaps changed since the last persist.
    changed: bool,
    /// The image was written since it was last flushed.
    unflushed: bool,
    /// The image stamp the sidecar holds.
    last_stamp: Option<ImageStamp>,
    /// What the tracker's own sidecar work has cost so far.
    cost: TrackerCost,
}

/// The tracker's own work since it was opened: recording writes (their
/// bits, and activity log updates made durable before the data write) and
/// persists (the sidecar's writes and syncs; the image's own flush inside a
/// persist is not counted, an untracked disk does it too). `rehost disk
/// bench` reports it, so the cost of tracking can be read directly as well
/// as from throughput.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerCost {
    /// Activity log slot writes (each made durable before its data write).
    pub log_updates: u64,
    /// Wall time of recording writes before they go to the image (bitmap
    /// marking, and the log updates with their syncs), in nanoseconds.
    pub record_nanos: u64,
    /// State records written (persists that had something to say).
    pub persists: u64,
    /// Wall time of those writes and syncs, in nanoseconds.
    pub persist_nanos: u64,
}

impl TrackerCost {
    /// All of it, in seconds.
    pub fn seconds(&self) -> f64 {
        (self.record_nanos + self.persist_nanos) as f64 / 1e9
    }
}

fn nanos_since(t: std::time::Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The dirty-tracking block layer. Wraps any block device; see the module
/// documentation.
#[derive(Debug)]
pub struct DirtyTracker {
    inner: Mutex<Option<Arc<dyn BlockDevice>>>,
    geometry: BlockGeometry,
    image_path: PathBuf,
    sidecar: PathBuf,
    /// Writes hold it shared from their log update to their completion; a
    /// persist holds it exclusively, so no write is between the two.
    gate: RwLock<()>,
    state: Mutex<State>,
    problem: Option<String>,
    recovered: usize,
    /// Point-in-time views that save old content before each change.
    views: Mutex<Vec<Weak<PointInTime>>>,
}

impl DirtyTracker {
    /// Opens the tracker for an image with its sidecar at the usual place.
    pub fn open_image(image: Arc<dyn DiskImage>, opts: &TrackerOptions) -> Result<DirtyTracker> {
        let path = image.info().path;
        let sidecar = sidecar_path(&path);
        DirtyTracker::open(image, &sidecar, opts)
    }

    /// Opens the tracker over `image` with the sidecar at `sidecar`. A
    /// missing sidecar is created when the first bitmap is added.
    pub fn open(
        image: Arc<dyn DiskImage>,
        sidecar: &Path,
        opts: &TrackerOptions,
    ) -> Result<DirtyTracker> {
        let image_path = image.info().path;
        let device: Arc<dyn BlockDevice> = image;
        DirtyTracker::over(device, &image_path, sidecar, opts)
    }

    /// Opens the tracker over any block device whose bytes live in the
    /// file `image_path` (whose size and modification time are the stamp).
    pub fn over(
        device: Arc<dyn BlockDevice>,
        image_path: &Path,
        sidecar: &Path,
        opts: &TrackerOptions,
    ) -> Result<DirtyTracker> {
        let bad_opt = |reason: String| BlockError::Open {
            path: sidecar.to_owned(),
            reason,
        };
        if opts.al_capacity == 0 || opts.al_capacity as usize > AL_MAX_EXTENTS {
            return Err(bad_opt(format!(
                "activity log capacity {} must be 1 to {AL_MAX_EXTENTS} extents",
                opts.al_capacity
            )));
        }
        if !sidecar_spec::valid_al_extent_size(opts.al_extent_size) {
            return Err(bad_opt(format!(
                "activity log extent size {} must be a power of two from 64 KiB to 1 GiB",
                opts.al_extent_size
            )));
        }
        let geometry = device.geometry();
        let size = geometry.size;
        let bytes = match std::fs::read(sidecar) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(BlockError::Io {
                    path: sidecar.to_owned(),
                    offset: 0,
                    source,
                })
            }
        };
        let current = Some(stamp_of(image_path)?);
        let decoded = match &bytes {
            Some(b) => decode(sidecar, b, size, current, opts),
            None => Decoded {
                bitmaps: Vec::new(),
                al_capacity: opts.al_capacity,
                al_extent_size: opts.al_extent_size,
                problem: None,
                recovered: 0,
                current: None,
            },
        };
        // A clean sidecar of this version is carried on from as it is: its
        // record stays in force until the next persist writes the other
        // slot, and the first log update names it.
        let adopt = match decoded.current {
            Some(c) if c.version == sidecar_spec::VERSION && !geometry.read_only => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(sidecar)
                    .map_err(|source| BlockError::Io {
                        path: sidecar.to_owned(),
                        offset: 0,
                        source,
                    })?;
                Some((c, HostFile::new(file)))
            }
            _ => None,
        };
        if let Some(p) = &decoded.problem {
            tracing::warn!("{p}; every bitmap needs a full resync");
        }
        let tracker = DirtyTracker {
            inner: Mutex::new(Some(device)),
            geometry,
            image_path: image_path.to_owned(),
            sidecar: sidecar.to_owned(),
            gate: RwLock::new(()),
            state: Mutex::new(State {
                bitmaps: decoded.bitmaps,
                al_capacity: decoded.al_capacity,
                al_extent_size: decoded.al_extent_size,
                al: Vec::new(),
                al_sequence: 0,
                al_owner: adopt.as_ref().map_or(0, |(c, _)| c.al_owner),
                record_sequence: adopt.as_ref().map_or(0, |(c, _)| c.sequence),
                record_slot: adopt.as_ref().map_or(0, |(c, _)| c.slot),
                slot_size: adopt.as_ref().map_or(0, |(c, _)| c.slot_size),
                last_stamp: adopt.as_ref().and_then(|(c, _)| c.stamp),
                changed: adopt.is_none(),
                file: adopt.map(|(_, f)| f),
                crashed: false,
                unflushed: false,
                cost: TrackerCost::default(),
            }),
            problem: decoded.problem,
            recovered: decoded.recovered,
            views: Mutex::new(Vec::new()),
        };
        // Recovery and anything older or damaged are written down at once
        // (a second crash must not lose the recovery), and a read-only
        // image's sidecar is left alone.
        let adopted = tracker.lock().file.is_some();
        if bytes.is_some() && !geometry.read_only && !adopted {
            tracker.persist()?;
        }
        Ok(tracker)
    }

    /// Why the bitmaps were turned to resync-required when opened, if they
    /// were.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Extents the activity log held when opened (crash recovery).
    pub fn recovered_extents(&self) -> usize {
        self.recovered
    }

    pub fn sidecar(&self) -> &Path {
        &self.sidecar
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn inner(&self) -> Result<Arc<dyn BlockDevice>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| BlockError::Open {
                path: self.image_path.clone(),
                reason: "the dirty tracker was closed".into(),
            })
    }

    fn io_err(&self, offset: u64, source: std::io::Error) -> BlockError {
        BlockError::Io {
            path: self.sidecar.clone(),
            offset,
            source,
        }
    }

    /// Adds a bitmap with every granule clean and a new generation.
    pub fn add_bitmap(&self, name: &str, granularity: u64) -> Result<BitmapInfo> {
        if !sidecar_spec::valid_name(name) {
            return Err(BlockError::Open {
                path: self.sidecar.clone(),
                reason: format!("bitmap name {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"),
            });
        }
        if !sidecar_spec::valid_granularity(granularity) {
            return Err(BlockError::Open {
                path: self.sidecar.clone(),
                reason: format!("granularity {granularity}: a power of two from 4 KiB to 16 MiB"),
            });
        }
        let info = {
            let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
            let mut st = self.lock();
            if st.bitmaps.iter().any(|b| b.name == name) {
                return Err(BlockError::Open {
                    path: self.sidecar.clone(),
                    reason: format!("bitmap {name:?} already exists"),
                });
            }
            if st.bitmaps.len() >= sidecar_spec::MAX_BITMAPS as usize {
                return Err(BlockError::Open {
                    path: self.sidecar.clone(),
                    reason: format!("at most {} bitmaps", sidecar_spec::MAX_BITMAPS),
                });
            }
            let b = Bitmap::new(name, granularity, self.geometry.size);
            let info = b.info(self.geometry.size);
            st.bitmaps.push(b);
            st.changed = true;
            info
        };
        self.persist()?;
        Ok(info)
    }

    /// Removes a bitmap.
    pub fn remove_bitmap(&self, name: &str) -> Result<()> {
        {
            let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
            let mut st = self.lock();
            let before = st.bitmaps.len();
            st.bitmaps.retain(|b| b.name != name);
            if st.bitmaps.len() == before {
                return Err(self.no_such(name));
            }
            st.changed = true;
        }
        self.persist()
    }

    fn no_such(&self, name: &str) -> BlockError {
        BlockError::Open {
            path: self.sidecar.clone(),
            reason: format!("no bitmap named {name:?}"),
        }
    }

    /// Marks every granule of a bitmap clean, with a new generation (the
    /// consumer has a full copy as of now).
    pub fn clear_bitmap(&self, name: &str) -> Result<BitmapInfo> {
        self.clear_bitmap_to(name, random_u128())
    }

    /// [`DirtyTracker::clear_bitmap`] with the new generation chosen by the
    /// caller: `delta export --clear` writes it into the stream as the
    /// target generation before the stream is made durable and the bitmap
    /// cleared.
    pub fn clear_bitmap_to(&self, name: &str, generation: u128) -> Result<BitmapInfo> {
        let info = {
            let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
            let mut st = self.lock();
            let size = self.geometry.size;
            let b = st
                .bitmaps
                .iter_mut()
                .find(|b| b.name == name)
                .ok_or_else(|| self.no_such(name))?;
            b.words.fill(0);
            b.state = BitmapState::Tracking;
            b.generation = generation;
            let info = b.info(size);
            st.changed = true;
            info
        };
        self.persist()?;
        Ok(info)
    }

    pub fn bitmaps(&self) -> Vec<BitmapInfo> {
        let st = self.lock();
        st.bitmaps
            .iter()
            .map(|b| b.info(self.geometry.size))
            .collect()
    }

    /// Dirty byte ranges of a bitmap, sorted, disjoint and merged, in
    /// granules (the last one clipped to the disk).
    pub fn dirty_extents(&self, name: &str) -> Result<Vec<Range<u64>>> {
        let st = self.lock();
        st.bitmaps
            .iter()
            .find(|b| b.name == name)
            .map(|b| b.extents(self.geometry.size))
            .ok_or_else(|| self.no_such(name))
    }

    /// Flushes the image, then writes the bitmaps with the image's stamp and
    /// an empty activity log, crash-safely.
    pub fn persist(&self) -> Result<()> {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.persist_locked(true)
    }

    fn persist_locked(&self, flush_inner: bool) -> Result<()> {
        if flush_inner {
            if let Some(inner) = self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                inner.flush()?;
            }
            self.lock().unflushed = false;
        }
        let started = std::time::Instant::now();
        let mut st = self.lock();
        if st.crashed {
            return Err(self.io_err(0, std::io::Error::other("crashed (test)")));
        }
        if st.file.is_none() && st.bitmaps.is_empty() {
            // No sidecar and nothing to track: an image gets a sidecar only
            // when its first bitmap is added.
            return Ok(());
        }
        let stamp = stamp_of(&self.image_path)?;
        let same_stamp = st
            .last_stamp
            .is_some_and(|last| same_image_state(&last, &stamp));
        if !st.changed && st.al.is_empty() && st.file.is_some() && same_stamp {
            // The sidecar already says all of it (a flush with no write
            // since the last one, or a VHDX closed after its last flush:
            // its headers rewritten, its data and DataWriteGuid not, which
            // is all an open compares).
            return Ok(());
        }
        let mut record = StateRecord {
            version: sidecar_spec::VERSION,
            sequence: st.record_sequence + 1,
            slot_size: st.slot_size,
            state_id: random_u128(),
            virtual_size: self.geometry.size,
            stamp: Some(stamp),
            al_capacity: st.al_capacity,
            al_extent_size: st.al_extent_size,
            bitmaps: st.bitmaps.iter().map(Bitmap::to_stored).collect(),
        };
        let len = record.encoded_len() as u64;
        if st.file.is_some() && len <= st.slot_size {
            // In place: the record goes into the slot not in force and is
            // made durable; until then the one in force (with its log)
            // still stands, and a torn write fails its checksum.
            let slot = 1 - st.record_slot;
            let at = STATE_OFFSET as u64 + slot as u64 * st.slot_size;
            let Some(f) = st.file.as_ref() else {
                return Err(self.io_err(at, std::io::Error::other("sidecar is not open")));
            };
            f.write_all_at(&record.to_slot_bytes(), at)
                .map_err(|e| self.io_err(at, e))?;
            f.sync_data().map_err(|e| self.io_err(at, e))?;
            st.record_slot = slot;
        } else {
            // A new sidecar, one of the first version, or one whose slots
            // are too small for the bitmaps now: a new file, synced, then
            // renamed over the old one.
            record.slot_size = len.div_ceil(STATE_SLOT_ALIGN) * STATE_SLOT_ALIGN;
            let mut bytes = vec![0u8; STATE_OFFSET];
            bytes.extend_from_slice(&record.to_slot_bytes());
            bytes.resize(STATE_OFFSET + 2 * record.slot_size as usize, 0);
            let tmp = {
                let mut s = self.sidecar.as_os_str().to_owned();
                s.push(".tmp");
                PathBuf::from(s)
            };
            let f = hostfile::create_truncated(&tmp).map_err(|e| self.io_err(0, e))?;
            f.write_all_at(&bytes, 0).map_err(|e| self.io_err(0, e))?;
            f.sync_all().map_err(|e| self.io_err(0, e))?;
            hostfile::rename(&tmp, &self.sidecar).map_err(|e| self.io_err(0, e))?;
            if let Some(dir) = self.sidecar.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                hostfile::sync_dir(dir).map_err(|e| self.io_err(0, e))?;
            }
            st.file = Some(f);
            st.slot_size = record.slot_size;
            st.record_slot = 0;
        }
        st.changed = false;
        st.last_stamp = Some(stamp);
        st.al.clear();
        st.al_sequence = 0;
        st.record_sequence = record.sequence;
        st.al_owner = record.al_owner();
        st.cost.persists += 1;
        st.cost.persist_nanos = st.cost.persist_nanos.saturating_add(nanos_since(started));
        Ok(())
    }

    /// What the tracker's own sidecar work has cost since it was opened.
    pub fn cost(&self) -> TrackerCost {
        self.lock().cost
    }

    #[cfg(test)]
    pub(crate) fn crash(self) {
        self.lock().crashed = true;
        drop(self);
    }

    /// Test hook: crash after this many more sidecar file operations.
    fn record(&self, range: Range<u64>) -> Result<bool> {
        let started = std::time::Instant::now();
        let mut st = self.lock();
        if st.bitmaps.is_empty() {
            return Ok(true);
        }
        if st.crashed {
            return Err(self.io_err(0, std::io::Error::other("crashed (test)")));
        }
        let es = st.al_extent_size;
        let first = range.start / es;
        let last = (range.end - 1) / es;
        let mut new: Vec<u64> = (first..=last).filter(|e| !st.al.contains(e)).collect();
        if !new.is_empty() {
            if st.al.len() + new.len() > st.al_capacity as usize {
                return Ok(false);
            }
            // While the log has room, announce the whole aligned group of
            // AL_GROUP extents around each new one: scattered writes then
            // wait for a log update once per group, not once per extent.
            // The crash over-report stays within the log's capacity.
            let extents = self.geometry.size.div_ceil(es);
            let mut grouped: Vec<u64> = Vec::new();
            for &e in &new {
                let g = e / AL_GROUP * AL_GROUP;
                for x in g..(g + AL_GROUP).min(extents) {
                    if !st.al.contains(&x) && !grouped.contains(&x) {
                        grouped.push(x);
                    }
                }
            }
            if st.al.len() + grouped.len() <= st.al_capacity as usize {
                new = grouped;
            }
            let mut al = st.al.clone();
            al.extend_from_slice(&new);
            let slot = AlSlot {
                sequence: st.al_sequence + 1,
                owner: st.al_owner,
                extent_size: es,
                extents: al.clone(),
            };
            let at = (slot.sequence % 2) * AL_SLOT_SIZE as u64;
            let Some(f) = st.file.as_ref() else {
                return Err(self.io_err(0, std::io::Error::other("sidecar is not open")));
            };
            f.write_all_at(&slot.to_bytes(), at)
                .map_err(|e| self.io_err(at, e))?;
            f.sync_data().map_err(|e| self.io_err(at, e))?;
            st.al = al;
            st.al_sequence = slot.sequence;
            st.cost.log_updates += 1;
        }
        for b in &mut st.bitmaps {
            b.mark(range.clone());
        }
        st.changed = true;
        st.unflushed = true;
        st.cost.record_nanos = st.cost.record_nanos.saturating_add(nanos_since(started));
        Ok(true)
    }

    /// Runs `io` on each piece of `offset..offset+len` (split at activity
    /// log extent boundaries) after recording it.
    fn tracked(
        &self,
        offset: u64,
        len: u64,
        mut io: impl FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        check_request(&self.geometry, offset, len)?;
        if len == 0 {
            return io(offset, 0);
        }
        let es = self.lock().al_extent_size;
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let piece_end = ((at / es + 1) * es).min(end);
            loop {
                let g = self.gate.read().unwrap_or_else(|e| e.into_inner());
                if self.record(at..piece_end)? {
                    self.save_for_views(at..piece_end)?;
                    io(at, piece_end - at)?;
                    drop(g);
                    break;
                }
                drop(g);
                // The log is full: write the bitmaps down (they hold every
                // write so far, flushed or not, so a crash after this misses
                // nothing) and start an empty log. The image itself need
                // not be flushed for that, and flushing it here would stall
                // the writer on writeback every `al_capacity` extents.
                let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
                self.persist_locked(false)?;
            }
            at = piece_end;
        }
        Ok(())
    }

    /// A point-in-time view of the disk as it is now, with the named
    /// bitmaps frozen at the same moment (no write is between the two).
    /// Old content is saved in an unnamed overlay file in `overlay_dir`
    /// while the view lives; dropping the view ends the saving.
    pub fn point_in_time(&self, bitmaps: &[&str], overlay_dir: &Path) -> Result<Arc<PointInTime>> {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let frozen = bitmaps
            .iter()
            .map(|name| Ok(((*name).to_owned(), self.dirty_extents(name)?)))
            .collect::<Result<Vec<_>>>()?;
        let view = Arc::new(PointInTime::new(self.inner()?, overlay_dir, frozen)?);
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        views.retain(|v| v.strong_count() > 0);
        views.push(Arc::downgrade(&view));
        Ok(view)
    }

    /// Lets every live view save the old content of `range`.
    fn save_for_views(&self, range: Range<u64>) -> Result<()> {
        let views: Vec<Arc<PointInTime>> = {
            let v = self.views.lock().unwrap_or_else(|e| e.into_inner());
            if v.is_empty() {
                return Ok(());
            }
            v.iter().filter_map(Weak::upgrade).collect()
        };
        for v in views {
            v.before_change(range.clone())?;
        }
        Ok(())
    }

    /// Flushes, persists and closes: the image is released (closed, if this
    /// was its last holder, so formats that write on close have done so)
    /// and the final stamp is written.
    pub fn close(self) -> Result<()> {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(inner) = inner {
            // Written since the last flush: the data first. (The bitmaps
            // would cover it either way; a flushed image keeps the stamp
            // written below true after a power loss.)
            if self.lock().unflushed {
                inner.flush()?;
                self.lock().unflushed = false;
            }
            drop(inner);
        }
        // One persist, with the stamp of the closed image; none when the
        // sidecar already says all of it.
        self.persist_locked(false)
    }
}

impl BlockDevice for DirtyTracker {
    fn geometry(&self) -> BlockGeometry {
        self.geometry
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner()?.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if self.geometry.read_only {
            return Err(BlockError::ReadOnly {
                path: self.image_path.clone(),
            });
        }
        let inner = self.inner()?;
        self.tracked(offset, buf.len() as u64, |at, n| {
            let from = (at - offset) as usize;
            inner.write_at(at, &buf[from..from + n as usize])
        })
    }

    fn flush(&self) -> Result<()> {
        self.persist()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.geometry.read_only {
            return Err(BlockError::ReadOnly {
                path: self.image_path.clone(),
            });
        }
        let inner = self.inner()?;
        self.tracked(offset, len, |at, n| inner.discard(at, n))
    }
}

impl Drop for DirtyTracker {
    fn drop(&mut self) {
        let live = {
            let st = self.lock();
            !st.crashed && st.file.is_some()
        };
        let open = self.inner.lock().map(|i| i.is_some()).unwrap_or(false);
        if live && open && !self.geometry.read_only {
            if let Err(e) = self.persist() {
                tracing::error!(
                    "{}: persisting dirty bitmaps on close failed: {e}",
                    self.sidecar.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
