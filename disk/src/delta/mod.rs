//! Delta streams: the blocks of a disk that changed since a dirty bitmap's
//! generation (or every allocated block, for a full stream), in one
//! versioned, checksummed file that a replica applies atomically.
//!
//! # Generations
//!
//! A stream carries a *source generation* (what the target must hold
//! before the apply) and a *target generation* (what it holds after).
//!
//! - An incremental stream (`--bitmap NAME`) starts from the bitmap's
//!   generation: the bitmap's state at its last add or clear. Its changed
//!   extents are everything written since then.
//! - With `--clear`, the bitmap is cleared after the stream is durable and
//!   gets a new generation chosen before the stream is written; that
//!   generation is the stream's target generation. The next incremental
//!   stream starts from it. (If the process dies between the stream being
//!   durable and the clear, the bitmap keeps its old generation and the
//!   next incremental stream is refused by the replica: a full stream
//!   reseeds it. Nothing is ever applied on the wrong base.)
//! - Without `--clear`, the bitmap keeps its generation and the stream's
//!   target generation equals its source generation: the stream is
//!   cumulative. A replica at that generation may apply any later
//!   cumulative stream of the same bitmap (each holds every block changed
//!   since the generation, with the newest data), so the replica stays at
//!   the same generation until a `--clear` stream moves it on.
//! - A full stream (`--full`) has no source generation: any target of the
//!   right size takes it. With `--bitmap NAME` its target generation is
//!   the bitmap's generation (or the new one with `--clear`); without a
//!   bitmap the target is left without a generation and only takes full
//!   streams until a full stream with a bitmap seeds it.
//!
//! The replica side records the generation it holds in
//! `TARGET.rehost-replica` (see [`replica`]) together with the target's
//! stamp (size, modification time, VHDX DataWriteGuid) after the apply: an
//! incremental stream is refused when the target was written since.
//!
//! # Atomic apply
//!
//! `apply` reads the whole stream first, checking every checksum, bound and
//! the trailer, while copying it into a journal next to the target
//! (`TARGET.rehost-delta-journal`: temporary file, fsync, rename, directory
//! fsync). Nothing touches the target before the journal is durable. Then
//! the journal's records are written to the target (through its dirty
//! tracker when it has bitmaps), the target is flushed, the replica record
//! is replaced, and the journal is removed. Writing a record is idempotent,
//! so after a crash at any point the journal is simply applied again
//! (rolled forward) by the next `apply` or by `recover`; until then
//! [`crate::open`] refuses the target with
//! [`crate::BlockError::DeltaApplyPending`]. A crash before the journal
//! exists leaves the target as it was.
//!
//! # Stream format, version 1 (all integers little-endian)
//!
//! A stream is a header, records in ascending disk order, and a trailer,
//! with nothing after it.
//!
//! Header, 136 bytes:
//!
//! ```text
//!   0   8  magic "RHDELTA\0"
//!   8   4  version (1)
//!  12   4  header length (136)
//!  16   8  virtual size of the disk in bytes (a non-zero multiple of 512,
//!          at most 2^56)
//!  24   8  granularity of the bitmap the extents come from (a power of two
//!          from 512 to 1 GiB; informational)
//!  32   4  flags: bit 0 = full stream (no source generation); bit 1 = the
//!          target generation field is valid; other bits zero
//!  36   4  largest data record the writer makes, in bytes (1 .. 4 MiB)
//!  40  16  source generation (zero in a full stream)
//!  56  16  target generation (zero without flag bit 1)
//!  72  16  stream id (random; a replica recognises a stream applied twice)
//!  88   8  creation time, seconds since the Unix epoch (signed)
//!  96   4  creation time, nanoseconds (below 10^9)
//! 100   4  image identity: format of the exported image (0 raw, 1 VHD,
//!          2 VHDX)
//! 104   8  image identity: size of the exported image file in bytes
//! 112  16  image identity: VHDX DataWriteGuid at export (zero otherwise)
//! 128   4  reserved, zero
//! 132   4  CRC-32C of bytes 0..136 with this field taken as zero
//! ```
//!
//! Record, a 32-byte header then the payload:
//!
//! ```text
//!   0   4  kind: 1 = raw data, 2 = zstd data, 3 = zero extent
//!   4   4  payload length in bytes: raw = the extent length; zstd = more
//!          than 0 and less than the extent length (compression paid);
//!          zero = 0
//!   8   8  disk offset of the extent in bytes (a multiple of 512, at or
//!          after the end of the previous record's extent)
//!  16   8  extent length in bytes (a non-zero multiple of 512, inside the
//!          disk; at most 4 MiB for data records)
//!  24   4  reserved, zero
//!  28   4  CRC-32C of the 32 header bytes (this field taken as zero)
//!          followed by the payload
//!  32   .. payload: the extent's bytes (raw), or one zstd frame that
//!          decompresses to exactly the extent length (zstd)
//! ```
//!
//! Trailer, 48 bytes:
//!
//! ```text
//!   0   4  kind 0xFFFFFFFF (end of stream)
//!   4   4  trailer length (48)
//!   8   8  number of records
//!  16   8  data bytes: sum of the extent lengths of data records
//!  24   8  zero bytes: sum of the extent lengths of zero records
//!  32   8  stream length before the trailer (header and records)
//!  40   4  CRC-32C of every stream byte before the trailer
//!  44   4  CRC-32C of bytes 0..48 with this field taken as zero
//! ```
//!
//! A reader refuses a stream whose header, any record or the trailer fails
//! its checks, whose counts disagree with the trailer, that ends before
//! the trailer (truncated) or that has bytes after it.

pub mod replica;
pub mod stream_spec;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dirty::{self, BitmapState, DirtyTracker, TrackerOptions};
use crate::hostfile;
use crate::ops::Progress;
use crate::{BlockDevice, BlockError, DiskImage, ImageFormat, OpenOptions};
use replica::{replica_path, ReplicaRecord};
use stream_spec::{
    Header, ImageIdentity, RecordHeader, RecordKind, SpecError, Trailer, HEADER_SIZE, KIND_END,
    MAX_RECORD_DATA, RECORD_CRC_AT, RECORD_HEADER_SIZE, TRAILER_SIZE,
};

/// Bytes of disk one data record covers at most, as written by export.
pub const RECORD_CHUNK: u64 = 1 << 20;
/// zstd level of data records.
pub const ZSTD_LEVEL: i32 = 3;
/// Unit in which the writer looks for zeros inside data.
pub const ZERO_UNIT: u64 = 4096;
/// Zero stretches at least this long inside data become zero records.
pub const ZERO_RUN: u64 = 64 << 10;

/// Errors of the delta stream: each names the file, the offset or field
/// and the reason.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("{path}: I/O error at offset {offset}: {source}")]
    Io {
        path: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: delta stream corrupt at offset {offset}: {detail}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("{path}: delta stream truncated: it ends at offset {offset}, inside the {what}")]
    Truncated {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
    #[error("{path}: generation mismatch: the stream starts from generation {stream:032x} but {target_path} holds {target}; apply the streams in order, or reseed the target with a full stream")]
    GenerationMismatch {
        path: PathBuf,
        target_path: PathBuf,
        stream: u128,
        target: String,
    },
    #[error("{path}: size mismatch: the stream is for a disk of {stream} bytes but {target_path} is {target} bytes")]
    SizeMismatch {
        path: PathBuf,
        target_path: PathBuf,
        stream: u64,
        target: u64,
    },
    #[error("{path}: target changed: written since the last delta apply (recorded {recorded}, now {now}); an incremental stream no longer fits it; apply a full stream")]
    TargetChanged {
        path: PathBuf,
        recorded: String,
        now: String,
    },
    #[error("{path}: replica record damaged: {reason}; apply a full stream to reseed the target")]
    ReplicaCorrupt { path: PathBuf, reason: String },
    #[error("{path}: bitmap {name:?} needs a full resync (its continuity was lost); an incremental export cannot be trusted: export with --full (and --clear to start a new generation)")]
    ResyncRequired { path: PathBuf, name: String },
    #[error("{path}: already exists; a delta export never overwrites a file")]
    Exists { path: PathBuf },
    #[error("{path}: {reason}")]
    Usage { path: PathBuf, reason: String },
    #[error(transparent)]
    Block(#[from] BlockError),
}

pub type Result<T, E = DeltaError> = std::result::Result<T, E>;

/// Where the apply journal of `target` lives.
pub fn journal_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".rehost-delta-journal");
    PathBuf::from(s)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn io_err(path: &Path, offset: u64) -> impl FnOnce(std::io::Error) -> DeltaError + '_ {
    move |source| DeltaError::Io {
        path: path.to_owned(),
        offset,
        source,
    }
}

/// Creates (or empties) a file for writing.
fn create_truncated(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path, 0))
}

/// fsyncs the directory holding `of`.
fn sync_dir(of: &Path) -> Result<()> {
    let dir = match of.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    hostfile::sync_dir(dir).map_err(io_err(dir, 0))
}

/// Renames the durable file `from` over `to` and makes the rename durable.
fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    hostfile::rename(from, to).map_err(io_err(to, 0))?;
    sync_dir(to)
}

/// One record as read: its extent and how it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub offset: u64,
    pub len: u64,
    /// Payload bytes in the stream.
    pub stored: u32,
}

/// Counts of a stream as read or written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounts {
    pub raw_records: u64,
    pub zstd_records: u64,
    pub zero_records: u64,
    /// Sum of data record extents (uncompressed).
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// Sum of data record payloads as stored.
    pub stored_bytes: u64,
    /// Bytes of the whole stream (header, records and trailer).
    pub stream_bytes: u64,
}

impl StreamCounts {
    pub fn records(&self) -> u64 {
        self.raw_records + self.zstd_records + self.zero_records
    }

    fn count(&mut self, kind: RecordKind, len: u64, stored: u64) {
        match kind {
            RecordKind::Raw => self.raw_records += 1,
            RecordKind::Zstd => self.zstd_records += 1,
            RecordKind::Zero => self.zero_records += 1,
        }
        if kind == RecordKind::Zero {
            self.zero_bytes += len;
        } else {
            self.data_bytes += len;
            self.stored_bytes += stored;
        }
        self.stream_bytes += RECORD_HEADER_SIZE as u64 + stored;
    }
}

/// Reads a stream, checking everything as it goes. Data is handed out
/// record by record; only [`StreamReader::next_record`] returning
/// `Ok(None)` says the whole stream (trailer included) verified.
pub struct StreamReader<R: Read> {
    input: R,
    path: PathBuf,
    header: Header,
    crc: u32,
    previous_end: u64,
    counts: StreamCounts,
    payload: Vec<u8>,
    decompressor: zstd::bulk::Decompressor<'static>,
    trailer: Option<Trailer>,
}

impl<R: Read> StreamReader<R> {
    /// Reads and checks the header. `path` names the stream in errors.
    pub fn new(mut input: R, path: &Path) -> Result<Self> {
        let mut b = [0u8; HEADER_SIZE];
        read_full(&mut input, &mut b, path, 0, "header")?;
        let header = Header::parse(&b).map_err(|e| corrupt(path, 0, e))?;
        let decompressor = zstd::bulk::Decompressor::new().map_err(io_err(path, 0))?;
        Ok(StreamReader {
            input,
            path: path.to_owned(),
            header,
            crc: crc32c::crc32c(&b),
            previous_end: 0,
            counts: StreamCounts {
                stream_bytes: HEADER_SIZE as u64,
                ..Default::default()
            },
            payload: Vec::new(),
            decompressor,
            trailer: None,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// What was read so far.
    pub fn counts(&self) -> &StreamCounts {
        &self.counts
    }

    /// The trailer, once the stream was read to its verified end.
    pub fn trailer(&self) -> Option<&Trailer> {
        self.trailer.as_ref()
    }

    /// The next record, its data (decompressed; empty for a zero record)
    /// in `data`; `Ok(None)` at the verified end of the stream.
    pub fn next_record(&mut self, data: &mut Vec<u8>) -> Result<Option<Record>> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let at = self.counts.stream_bytes;
        let mut head = [0u8; RECORD_HEADER_SIZE];
        read_full(&mut self.input, &mut head[..4], &self.path, at, "record")?;
        let kind = stream_spec::kind_of(&[head[0], head[1], head[2], head[3]]);
        if kind == KIND_END {
            let mut t = [0u8; TRAILER_SIZE];
            t[..4].copy_from_slice(&head[..4]);
            read_full(&mut self.input, &mut t[4..], &self.path, at + 4, "trailer")?;
            let trailer = Trailer::parse(&t).map_err(|e| corrupt(&self.path, at, e))?;
            self.check_trailer(&trailer, at)?;
            let mut extra = [0u8; 1];
            let n = read_some(&mut self.input, &mut extra, &self.path, at)?;
            if n != 0 {
                return Err(DeltaError::Corrupt {
                    path: self.path.clone(),
                    offset: at + TRAILER_SIZE as u64,
                    detail: "bytes after the trailer".into(),
                });
            }
            self.counts.stream_bytes += TRAILER_SIZE as u64;
            self.trailer = Some(trailer);
            return Ok(None);
        }
        read_full(
            &mut self.input,
            &mut head[4..],
            &self.path,
            at + 4,
            "record header",
        )?;
        let rh = RecordHeader::parse(&head, self.header.disk_size, self.previous_end)
            .map_err(|e| corrupt(&self.path, at, e))?;
        // Bounded by the header's checks: at most MAX_RECORD_DATA.
        let plen = rh.payload_len as usize;
        self.payload.resize(plen, 0);
        read_full(
            &mut self.input,
            &mut self.payload,
            &self.path,
            at + RECORD_HEADER_SIZE as u64,
            "record payload",
        )?;
        let stored_crc = u32::from_le_bytes([
            head[RECORD_CRC_AT],
            head[RECORD_CRC_AT + 1],
            head[RECORD_CRC_AT + 2],
            head[RECORD_CRC_AT + 3],
        ]);
        let crc = stream_spec::record_crc(&head, &self.payload);
        if crc != stored_crc {
            return Err(DeltaError::Corrupt {
                path: self.path.clone(),
                offset: at,
                detail: format!(
                    "record of {} at disk offset {}: stored CRC-32C {stored_crc:#010x}, computed {crc:#010x}",
                    rh.kind.name(),
                    rh.offset
                ),
            });
        }
        data.clear();
        match rh.kind {
            RecordKind::Raw => data.extend_from_slice(&self.payload),
            RecordKind::Zstd => {
                data.reserve(rh.len as usize);
                let n = self
                    .decompressor
                    .decompress_to_buffer(&self.payload[..], data)
                    .map_err(|e| DeltaError::Corrupt {
                        path: self.path.clone(),
                        offset: at,
                        detail: format!(
                            "zstd record at disk offset {}: does not decompress to {} bytes: {e}",
                            rh.offset, rh.len
                        ),
                    })?;
                if n as u64 != rh.len {
                    return Err(DeltaError::Corrupt {
                        path: self.path.clone(),
                        offset: at,
                        detail: format!(
                            "zstd record at disk offset {}: decompresses to {n} bytes, declared {}",
                            rh.offset, rh.len
                        ),
                    });
                }
            }
            RecordKind::Zero => {}
        }
        self.crc = crc32c::crc32c_append(self.crc, &head);
        self.crc = crc32c::crc32c_append(self.crc, &self.payload);
        self.previous_end = rh.offset + rh.len;
        self.counts.count(rh.kind, rh.len, plen as u64);
        Ok(Some(Record {
            kind: rh.kind,
            offset: rh.offset,
            len: rh.len,
            stored: rh.payload_len,
        }))
    }

    fn check_trailer(&self, t: &Trailer, at: u64) -> Result<()> {
        let c = &self.counts;
        let mismatch = |field: &str, trailer: u64, read: u64| DeltaError::Corrupt {
            path: self.path.clone(),
            offset: at,
            detail: format!("trailer {field} is {trailer} but the stream has {read}"),
        };
        if t.records != c.records() {
            return Err(mismatch("record count", t.records, c.records()));
        }
        if t.data_bytes != c.data_bytes {
            return Err(mismatch("data bytes", t.data_bytes, c.data_bytes));
        }
        if t.zero_bytes != c.zero_bytes {
            return Err(mismatch("zero bytes", t.zero_bytes, c.zero_bytes));
        }
        if t.stream_len != c.stream_bytes {
            return Err(mismatch("stream length", t.stream_len, c.stream_bytes));
        }
        if t.stream_crc != self.crc {
            return Err(DeltaError::Corrupt {
                path: self.path.clone(),
                offset: at,
                detail: format!(
                    "stream checksum: trailer says {:#010x}, computed {:#010x}",
                    t.stream_crc, self.crc
                ),
            });
        }
        Ok(())
    }

    /// Reads to the end, checking everything.
    pub fn verify_rest(&mut self) -> Result<StreamCounts> {
        let mut data = Vec::new();
        while self.next_record(&mut data)?.is_some() {}
        Ok(self.counts)
    }
}

fn corrupt(path: &Path, offset: u64, e: SpecError) -> DeltaError {
    DeltaError::Corrupt {
        path: path.to_owned(),
        offset,
        detail: e.to_string(),
    }
}

fn read_some(input: &mut impl Read, buf: &mut [u8], path: &Path, at: u64) -> Result<usize> {
    loop {
        match input.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path, at)(e)),
        }
    }
}

fn read_full(
    input: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
    at: u64,
    what: &'static str,
) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = read_some(input, &mut buf[done..], path, at + done as u64)?;
        if n == 0 {
            return Err(DeltaError::Truncated {
                path: path.to_owned(),
                offset: at + done as u64,
                what,
            });
        }
        done += n;
    }
    Ok(())
}

/// Checks a whole stream held in memory (for fuzzing and tests).
pub fn verify_bytes(bytes: &[u8]) -> Result<(Header, StreamCounts)> {
    let mut r = StreamReader::new(bytes, Path::new("stream"))?;
    let counts = r.verify_rest()?;
    Ok((*r.header(), counts))
}

/// Writes a stream. Extents must come in ascending, disjoint order; data
/// is split into records of at most [`RECORD_CHUNK`] bytes, all-zero
/// stretches become zero records (adjacent ones merged), and a data record
/// is stored raw when zstd does not make it smaller.
pub struct StreamWriter<W: Write> {
    out: W,
    disk_size: u64,
    crc: u32,
    previous_end: u64,
    counts: StreamCounts,
    pending_zero: Option<Range<u64>>,
    compressor: zstd::bulk::Compressor<'static>,
}

impl<W: Write> StreamWriter<W> {
    pub fn new(mut out: W, header: &Header) -> std::io::Result<Self> {
        let b = header.to_bytes();
        out.write_all(&b)?;
        Ok(StreamWriter {
            out,
            disk_size: header.disk_size,
            crc: crc32c::crc32c(&b),
            previous_end: 0,
            counts: StreamCounts {
                stream_bytes: HEADER_SIZE as u64,
                ..Default::default()
            },
            pending_zero: None,
            compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
        })
    }

    fn check_extent(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let end = offset.checked_add(len);
        let ok = offset.is_multiple_of(stream_spec::SECTOR)
            && len.is_multiple_of(stream_spec::SECTOR)
            && offset >= self.previous_end
            && end.is_some_and(|e| e <= self.disk_size);
        if ok {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "extent at {offset} length {len}: not sector-aligned, not after {} or past the disk's {} bytes",
                    self.previous_end, self.disk_size
                ),
            ))
        }
    }

    fn emit(
        &mut self,
        kind: RecordKind,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let rh = RecordHeader {
            kind,
            payload_len: payload.len() as u32,
            offset,
            len,
        };
        let mut head = rh.to_bytes();
        let crc = stream_spec::record_crc(&head, payload);
        head[RECORD_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(payload)?;
        self.crc = crc32c::crc32c_append(self.crc, &head);
        self.crc = crc32c::crc32c_append(self.crc, payload);
        self.counts.count(kind, len, payload.len() as u64);
        Ok(())
    }

    fn flush_zero(&mut self) -> std::io::Result<()> {
        if let Some(z) = self.pending_zero.take() {
            self.emit(RecordKind::Zero, z.start, z.end - z.start, &[])?;
        }
        Ok(())
    }

    /// Records that `offset..offset+len` reads as zeros.
    pub fn zero(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.check_extent(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match &mut self.pending_zero {
            Some(z) if z.end == offset => z.end = offset + len,
            _ => {
                self.flush_zero()?;
                self.pending_zero = Some(offset..offset + len);
            }
        }
        self.previous_end = offset + len;
        Ok(())
    }

    /// Records the data of `offset..offset+data.len()`. Runs of at least
    /// [`ZERO_RUN`] zero bytes (in [`ZERO_UNIT`] units) become zero records.
    pub fn data(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check_extent(offset, data.len() as u64)?;
        let unit = ZERO_UNIT as usize;
        let mut start = 0;
        while start < data.len() {
            // The next zero run long enough to be worth a zero record.
            let mut run = start;
            let mut zero_from = data.len();
            let mut zero_to = data.len();
            while run < data.len() {
                let end = (run + unit).min(data.len());
                if crate::ops::is_zero(&data[run..end]) {
                    let mut e = end;
                    while e < data.len()
                        && crate::ops::is_zero(&data[e..(e + unit).min(data.len())])
                    {
                        e = (e + unit).min(data.len());
                    }
                    if (e - run) as u64 >= ZERO_RUN || (run == start && e == data.len()) {
                        zero_from = run;
                        zero_to = e;
                        break;
                    }
                    run = e;
                } else {
                    run = end;
                }
            }
            self.data_records(offset + start as u64, &data[start..zero_from])?;
            if zero_to > zero_from {
                self.zero(offset + zero_from as u64, (zero_to - zero_from) as u64)?;
            }
            start = zero_to;
        }
        Ok(())
    }

    fn data_records(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        for (i, piece) in data.chunks(RECORD_CHUNK as usize).enumerate() {
            let at = offset + i as u64 * RECORD_CHUNK;
            self.flush_zero()?;
            let packed = self.compressor.compress(piece)?;
            if packed.len() < piece.len() && !packed.is_empty() {
                self.emit(RecordKind::Zstd, at, piece.len() as u64, &packed)?;
            } else {
                self.emit(RecordKind::Raw, at, piece.len() as u64, piece)?;
            }
            self.previous_end = at + piece.len() as u64;
        }
        Ok(())
    }

    /// Writes the trailer; returns the output and what was written.
    pub fn finish(mut self) -> std::io::Result<(W, StreamCounts)> {
        self.flush_zero()?;
        let t = Trailer {
            records: self.counts.records(),
            data_bytes: self.counts.data_bytes,
            zero_bytes: self.counts.zero_bytes,
            stream_len: self.counts.stream_bytes,
            stream_crc: self.crc,
        };
        self.out.write_all(&t.to_bytes())?;
        self.out.flush()?;
        self.counts.stream_bytes += TRAILER_SIZE as u64;
        Ok((self.out, self.counts))
    }
}

const _: () = assert!(RECORD_CHUNK <= MAX_RECORD_DATA);

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// The bitmap whose dirty extents (or, with `full`, whose generation)
    /// the stream carries.
    pub bitmap: Option<String>,
    /// Clear the bitmap (new generation) once the stream is durable.
    pub clear: bool,
    /// Every allocated extent of the whole chain, no source generation.
    pub full: bool,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub header: Header,
    pub counts: StreamCounts,
    /// Bytes the extents cover (dirty or allocated bytes).
    pub extent_bytes: u64,
}

fn now() -> (i64, u32) {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(_) => (0, 0),
    }
}

fn identity_of(image: &dyn DiskImage, path: &Path) -> ImageIdentity {
    let format = image.info().format;
    let file_size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let data_write_guid = match format {
        ImageFormat::Vhdx => crate::vhdx::current_data_write_guid(path).unwrap_or([0; 16]),
        _ => [0; 16],
    };
    ImageIdentity {
        format: match format {
            ImageFormat::Raw => stream_spec::FORMAT_RAW,
            ImageFormat::Vhd => stream_spec::FORMAT_VHD,
            ImageFormat::Vhdx => stream_spec::FORMAT_VHDX,
        },
        file_size,
        data_write_guid,
    }
}

/// Writes the delta stream of `image` (read through its whole chain) to
/// `out`, which must not exist: written to `OUT.tmp`, synced, then linked
/// into place (never over an existing file). With `clear`, the bitmap is
/// cleared to the stream's target generation after the stream is durable.
/// The image must not be written by anyone else meanwhile (an offline
/// operation).
pub fn export(
    image_path: &Path,
    out: &Path,
    options: &ExportOptions,
    progress: &mut Progress,
) -> Result<ExportReport> {
    if out.exists() {
        return Err(DeltaError::Exists {
            path: out.to_owned(),
        });
    }
    if !options.full && options.bitmap.is_none() {
        return Err(DeltaError::Usage {
            path: image_path.to_owned(),
            reason:
                "an incremental export needs --bitmap NAME (or --full for every allocated block)"
                    .into(),
        });
    }
    if options.clear && options.bitmap.is_none() {
        return Err(DeltaError::Usage {
            path: image_path.to_owned(),
            reason: "--clear needs --bitmap NAME".into(),
        });
    }
    let image: Arc<dyn DiskImage> = Arc::from(crate::open(
        image_path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )?);
    let size = image.geometry().size;
    let identity = identity_of(image.as_ref(), image_path);
    let full_extents = if options.full {
        Some(crate::ops::chain_allocated_extents(image.as_ref())?)
    } else {
        None
    };
    // The bitmap's tracker (the image is only read; the tracker writes the
    // sidecar when clearing).
    let (tracker, bitmap) = match &options.bitmap {
        Some(name) => {
            let t = DirtyTracker::open_image(image.clone(), &TrackerOptions::default())?;
            let info = t
                .bitmaps()
                .into_iter()
                .find(|b| &b.name == name)
                .ok_or_else(|| DeltaError::Usage {
                    path: dirty::sidecar_path(image_path),
                    reason: format!("no bitmap named {name:?}"),
                })?;
            (Some(t), Some(info))
        }
        None => (None, None),
    };
    let extents = match (&full_extents, &bitmap, &tracker) {
        (Some(e), _, _) => e.clone(),
        (None, Some(b), Some(t)) => {
            if b.state == BitmapState::ResyncRequired {
                return Err(DeltaError::ResyncRequired {
                    path: image_path.to_owned(),
                    name: b.name.clone(),
                });
            }
            t.dirty_extents(&b.name)?
        }
        _ => Vec::new(),
    };
    let new_generation = options.clear.then(dirty::random_u128);
    let (created_sec, created_nsec) = now();
    let header = Header {
        disk_size: size,
        granularity: bitmap
            .as_ref()
            .map(|b| b.granularity)
            .unwrap_or(dirty::DEFAULT_GRANULARITY),
        source_generation: if options.full {
            None
        } else {
            bitmap.as_ref().map(|b| b.generation)
        },
        target_generation: new_generation.or(bitmap.as_ref().map(|b| b.generation)),
        stream_id: dirty::random_u128(),
        created_sec,
        created_nsec,
        identity,
    };
    let tmp = with_suffix(out, ".tmp");
    let file = create_truncated(&tmp)?;
    let written = (|| -> Result<StreamCounts> {
        let mut w = StreamWriter::new(BufWriter::with_capacity(1 << 20, &file), &header)
            .map_err(io_err(&tmp, 0))?;
        let todo: u64 = extents.iter().map(|r| r.end - r.start).sum();
        let mut done = 0;
        let mut buf = vec![0u8; RECORD_CHUNK as usize];
        progress(0, todo);
        // A full stream says what every byte of the disk is: the gaps
        // between allocated extents are zero records, so a full stream
        // applied onto an image with other data leaves none of it behind.
        let mut covered = 0;
        for piece in crate::ops::chunks(&extents) {
            if options.full && piece.start > covered {
                w.zero(covered, piece.start - covered)
                    .map_err(io_err(&tmp, covered))?;
            }
            let len = (piece.end - piece.start) as usize;
            image.read_at(piece.start, &mut buf[..len])?;
            w.data(piece.start, &buf[..len])
                .map_err(io_err(&tmp, piece.start))?;
            covered = piece.end;
            done += len as u64;
            progress(done, todo);
        }
        if options.full && size > covered {
            w.zero(covered, size - covered)
                .map_err(io_err(&tmp, covered))?;
        }
        let (_, counts) = w.finish().map_err(io_err(&tmp, 0))?;
        file.sync_all().map_err(io_err(&tmp, 0))?;
        Ok(counts)
    })();
    let counts = match written {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    drop(file);
    // A hard link never replaces an existing file (a rename would).
    let linked = std::fs::hard_link(&tmp, out);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(DeltaError::Exists {
                path: out.to_owned(),
            })
        }
        Err(e) => return Err(io_err(out, 0)(e)),
    }
    sync_dir(out)?;
    if let (Some(t), Some(b), Some(g)) = (&tracker, &bitmap, new_generation) {
        t.clear_bitmap_to(&b.name, g)?;
    }
    if let Some(t) = tracker {
        t.close()?;
    }
    Ok(ExportReport {
        header,
        counts,
        extent_bytes: extents.iter().map(|r| r.end - r.start).sum(),
    })
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyReport {
    /// The stream's counts (zero when it had been applied already).
    pub counts: StreamCounts,
    /// The generation the target holds now.
    pub generation: Option<u128>,
    /// This very stream had been applied before; nothing was done.
    pub already_applied: bool,
    /// An interrupted apply's journal was rolled forward first.
    pub recovered: Option<StreamCounts>,
}

/// Reads `TARGET.rehost-replica`; `Ok(None)` when there is none.
pub fn read_replica(target: &Path) -> Result<Option<ReplicaRecord>> {
    let path = replica_path(target);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path, 0)(e)),
    };
    ReplicaRecord::parse(&bytes)
        .map(Some)
        .map_err(|reason| DeltaError::ReplicaCorrupt { path, reason })
}

/// Applies the stream `delta` to `target` atomically (see the module
/// documentation). A pending journal of an earlier interrupted apply is
/// rolled forward first.
pub fn apply(delta: &Path, target: &Path, progress: &mut Progress) -> Result<ApplyReport> {
    let mut report = ApplyReport {
        recovered: recover(target, progress)?,
        ..Default::default()
    };
    let header = {
        let f = File::open(delta).map_err(io_err(delta, 0))?;
        *StreamReader::new(BufReader::new(f), delta)?.header()
    };
    let record = match read_replica(target) {
        Ok(r) => r,
        // A full stream reseeds a target whose record is damaged.
        Err(DeltaError::ReplicaCorrupt { .. }) if header.source_generation.is_none() => None,
        Err(e) => return Err(e),
    };
    if let Some(r) = &record {
        if r.stream_id == header.stream_id {
            report.already_applied = true;
            report.generation = r.generation;
            return Ok(report);
        }
    }
    if let Some(source) = header.source_generation {
        let held = record.and_then(|r| r.generation);
        if held != Some(source) {
            return Err(DeltaError::GenerationMismatch {
                path: delta.to_owned(),
                target_path: target.to_owned(),
                stream: source,
                target: match (record, held) {
                    (None, _) => "no generation (it was never seeded by a full stream)".into(),
                    (Some(_), None) => {
                        "no generation (seeded by a full stream without a bitmap)".into()
                    }
                    (_, Some(g)) => format!("generation {g:032x}"),
                },
            });
        }
        if let Some(r) = record {
            let now = dirty::stamp_of(target)?;
            if now != r.stamp {
                return Err(DeltaError::TargetChanged {
                    path: target.to_owned(),
                    recorded: describe_stamp(&r.stamp),
                    now: describe_stamp(&now),
                });
            }
        }
    }
    let size = crate::open_for_delta_apply(
        target,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )?
    .geometry()
    .size;
    if size != header.disk_size {
        return Err(DeltaError::SizeMismatch {
            path: delta.to_owned(),
            target_path: target.to_owned(),
            stream: header.disk_size,
            target: size,
        });
    }
    // Verify the whole stream while copying it into the journal; the
    // target is not touched before the journal is durable.
    let journal = journal_path(target);
    let tmp = with_suffix(&journal, ".tmp");
    let jf = hostfile::create_truncated(&tmp).map_err(io_err(&tmp, 0))?;
    let copied = (|| -> Result<StreamCounts> {
        let f = File::open(delta).map_err(io_err(delta, 0))?;
        let tee = Tee {
            input: BufReader::with_capacity(1 << 20, f),
            copy: BufWriter::with_capacity(1 << 20, hostfile::Appender::new(&jf)),
        };
        let mut reader = StreamReader::new(tee, delta)?;
        let counts = reader.verify_rest()?;
        let mut copy = reader.input.copy;
        copy.flush().map_err(io_err(&tmp, 0))?;
        drop(copy);
        jf.sync_all().map_err(io_err(&tmp, 0))?;
        Ok(counts)
    })();
    drop(jf);
    if let Err(e) = copied {
        let _ = hostfile::remove_file(&tmp);
        return Err(e);
    }
    rename_durably(&tmp, &journal)?;
    report.counts = roll_forward(target, progress)?;
    report.generation = header.target_generation;
    Ok(report)
}

/// Finishes an interrupted apply of `target`, if one is pending.
pub fn recover(target: &Path, progress: &mut Progress) -> Result<Option<StreamCounts>> {
    if journal_path(target).exists() {
        Ok(Some(roll_forward(target, progress)?))
    } else {
        Ok(None)
    }
}

fn describe_stamp(s: &dirty::sidecar_spec::ImageStamp) -> String {
    format!(
        "size {} mtime {}.{:09}{}",
        s.file_size,
        s.mtime_sec,
        s.mtime_nsec,
        s.data_write_guid
            .map(|g| format!(
                " DataWriteGuid {}",
                g.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ))
            .unwrap_or_default()
    )
}

/// Reads `input` and copies every byte read into `copy`.
struct Tee<R: Read, W: Write> {
    input: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// The target as written by an apply: through its dirty tracker when it
/// has bitmaps.
enum ApplyTarget {
    Tracked(Box<DirtyTracker>),
    Plain(Box<dyn DiskImage>),
}

impl ApplyTarget {
    fn device(&self) -> &dyn BlockDevice {
        match self {
            ApplyTarget::Tracked(t) => t.as_ref(),
            ApplyTarget::Plain(i) => i.as_ref(),
        }
    }

    fn close(self) -> crate::Result<()> {
        match self {
            ApplyTarget::Tracked(t) => t.close(),
            ApplyTarget::Plain(i) => {
                i.flush()?;
                drop(i);
                Ok(())
            }
        }
    }
}

/// Applies the journal of `target` (already verified when it was written,
/// and checked again as it is read), records the new generation and
/// removes the journal. Idempotent: run again after any crash.
fn roll_forward(target: &Path, progress: &mut Progress) -> Result<StreamCounts> {
    let journal = journal_path(target);
    let f = File::open(&journal).map_err(io_err(&journal, 0))?;
    let mut reader = StreamReader::new(BufReader::with_capacity(1 << 20, f), &journal)?;
    let header = *reader.header();
    let image = crate::open_for_delta_apply(
        target,
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
    )?;
    if image.geometry().size != header.disk_size {
        return Err(DeltaError::SizeMismatch {
            path: journal,
            target_path: target.to_owned(),
            stream: header.disk_size,
            target: image.geometry().size,
        });
    }
    let dev = if dirty::sidecar_path(target).exists() {
        ApplyTarget::Tracked(Box::new(DirtyTracker::open_image(
            Arc::from(image),
            &TrackerOptions::default(),
        )?))
    } else {
        ApplyTarget::Plain(image)
    };
    let zeros = vec![0u8; RECORD_CHUNK as usize];
    let mut data = Vec::with_capacity(RECORD_CHUNK as usize);
    // The journal was verified whole before it was renamed into place;
    // the totals are known from a first pass only for progress, so use
    // the running count against the disk size.
    let todo = header.disk_size;
    progress(0, todo);
    while let Some(rec) = reader.next_record(&mut data)? {
        let d = dev.device();
        match rec.kind {
            RecordKind::Zero => {
                // Only what does not read as zeros already is written, so
                // a sparse target stays sparse (a full stream's gaps).
                let mut at = rec.offset;
                let end = rec.offset + rec.len;
                while at < end {
                    let n = (end - at).min(RECORD_CHUNK) as usize;
                    data.resize(n, 0);
                    d.read_at(at, &mut data[..n])?;
                    if !crate::ops::is_zero(&data[..n]) {
                        d.write_at(at, &zeros[..n])?;
                    }
                    at += n as u64;
                }
            }
            _ => d.write_at(rec.offset, &data)?,
        }
        progress(rec.offset + rec.len, todo);
    }
    let counts = *reader.counts();
    drop(reader);
    dev.close()?;
    let record = ReplicaRecord {
        generation: header.target_generation,
        stream_id: header.stream_id,
        disk_size: header.disk_size,
        stamp: dirty::stamp_of(target)?,
    };
    let rpath = replica_path(target);
    let rtmp = with_suffix(&rpath, ".tmp");
    let rf = hostfile::create_truncated(&rtmp).map_err(io_err(&rtmp, 0))?;
    rf.write_all_at(&record.to_bytes(), 0)
        .map_err(io_err(&rtmp, 0))?;
    rf.sync_all().map_err(io_err(&rtmp, 0))?;
    drop(rf);
    rename_durably(&rtmp, &rpath)?;
    hostfile::remove_file(&journal).map_err(io_err(&journal, 0))?;
    sync_dir(&journal)?;
    progress(todo, todo);
    Ok(counts)
}

/// What `rehost disk delta info` shows.
#[derive(Debug)]
pub struct StreamInfo {
    pub header: Header,
    /// What was read (all of it when `verified` is `Ok`).
    pub counts: StreamCounts,
    pub trailer: Option<Trailer>,
    /// Whether the whole stream verified, and if not, why.
    pub verified: std::result::Result<(), String>,
}

/// Reads a stream's header and walks (and verifies) all of it. Fails only
/// when the file cannot be opened or its header is unreadable.
pub fn info(path: &Path) -> Result<StreamInfo> {
    let f = File::open(path).map_err(io_err(path, 0))?;
    let mut reader = StreamReader::new(BufReader::with_capacity(1 << 20, f), path)?;
    let verified = reader.verify_rest().map(|_| ()).map_err(|e| e.to_string());
    Ok(StreamInfo {
        header: *reader.header(),
        counts: *reader.counts(),
        trailer: reader.trailer().copied(),
        verified,
    })
}

#[cfg(test)]
mod tests;
