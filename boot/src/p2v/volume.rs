//! An NTFS volume read through the block stack with the `ntfs` crate: a
//! partition of a [`BlockDevice`] as `Read + Seek`, path lookup and whole-
//! file reads with a size bound.

use std::io::{self, Read, Seek, SeekFrom};

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::{Ntfs, NtfsFile, NtfsReadSeek};
use rehost_disk::{BlockDevice, SECTOR_SIZE};

/// Bytes read from the device at a time (and cached).
const CHUNK: u64 = 64 * 1024;

/// A byte range of a block device as a seekable reader.
pub struct PartitionReader<'d> {
    dev: &'d dyn BlockDevice,
    start: u64,
    len: u64,
    pos: u64,
    cache_at: u64,
    cache: Vec<u8>,
}

impl<'d> PartitionReader<'d> {
    pub fn new(dev: &'d dyn BlockDevice, start: u64, len: u64) -> Self {
        PartitionReader {
            dev,
            start,
            len,
            pos: 0,
            cache_at: u64::MAX,
            cache: Vec::new(),
        }
    }
}

impl Read for PartitionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let abs = self.start + self.pos;
        let chunk_at = abs / CHUNK * CHUNK;
        if chunk_at != self.cache_at {
            let disk_size = self.dev.geometry().size;
            let end = (chunk_at + CHUNK).min(disk_size);
            let len = end.saturating_sub(chunk_at) / SECTOR_SIZE * SECTOR_SIZE;
            if len == 0 {
                return Ok(0);
            }
            self.cache.resize(len as usize, 0);
            self.dev
                .read_at(chunk_at, &mut self.cache)
                .map_err(|e| io::Error::other(e.to_string()))?;
            self.cache_at = chunk_at;
        }
        let in_chunk = (abs - chunk_at) as usize;
        let avail = self.cache.len().saturating_sub(in_chunk);
        let n = buf
            .len()
            .min(avail)
            .min((self.len - self.pos).min(usize::MAX as u64) as usize);
        buf[..n].copy_from_slice(&self.cache[in_chunk..in_chunk + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PartitionReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )),
        }
    }
}

/// An opened NTFS volume.
pub struct NtfsVolume<'d> {
    pub reader: PartitionReader<'d>,
    pub ntfs: Ntfs,
}

/// Largest file read into memory (hives are tens of MiB).
pub const MAX_FILE_READ: u64 = 512 * 1024 * 1024;

impl<'d> NtfsVolume<'d> {
    pub fn open(dev: &'d dyn BlockDevice, start: u64, len: u64) -> Result<Self, String> {
        let mut reader = PartitionReader::new(dev, start, len);
        let mut ntfs =
            Ntfs::new(&mut reader).map_err(|e| format!("not a readable NTFS volume: {e}"))?;
        ntfs.read_upcase_table(&mut reader)
            .map_err(|e| format!("NTFS $UpCase table unreadable: {e}"))?;
        Ok(NtfsVolume { reader, ntfs })
    }

    pub fn exists(&mut self, path: &str) -> Result<bool, String> {
        Ok(lookup(&self.ntfs, &mut self.reader, path)?.is_some())
    }

    /// The unnamed data stream of the file at `path`, `Ok(None)` when the
    /// file does not exist.
    pub fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>, String> {
        self.with_data(path, |attr, reader| {
            let mut value = attr
                .value(reader)
                .map_err(|e| format!("{path}: data attribute value: {e}"))?;
            let len = value.len();
            if len > MAX_FILE_READ {
                return Err(format!(
                    "{path}: {len} bytes is larger than the {MAX_FILE_READ}-byte limit"
                ));
            }
            let mut out = vec![0u8; len as usize];
            let mut done = 0;
            while done < out.len() {
                let n = value
                    .read(reader, &mut out[done..])
                    .map_err(|e| format!("{path}: reading at {done}: {e}"))?;
                if n == 0 {
                    return Err(format!("{path}: data ended at {done} of {len} bytes"));
                }
                done += n;
            }
            Ok(out)
        })
    }

    /// Runs `f` on the unnamed $DATA attribute of the file at `path`;
    /// `Ok(None)` when the file does not exist.
    fn with_data<R>(
        &mut self,
        path: &str,
        f: impl FnOnce(&ntfs::NtfsAttribute<'_, '_>, &mut PartitionReader<'_>) -> Result<R, String>,
    ) -> Result<Option<R>, String> {
        let reader = &mut self.reader;
        let Some(file) = lookup(&self.ntfs, reader, path)? else {
            return Ok(None);
        };
        let item = match file.data(reader, "") {
            None => return Err(format!("{path}: no data stream")),
            Some(i) => i.map_err(|e| format!("{path}: data attribute: {e}"))?,
        };
        let attr = item
            .to_attribute()
            .map_err(|e| format!("{path}: data attribute: {e}"))?;
        f(&attr, reader).map(Some)
    }
}

/// Looks a backslash-separated path up from the root directory
/// (case-insensitive). `Ok(None)` when a component does not exist.
pub fn lookup<'n>(
    ntfs: &'n Ntfs,
    reader: &mut PartitionReader<'_>,
    path: &str,
) -> Result<Option<NtfsFile<'n>>, String> {
    let mut file = ntfs
        .root_directory(reader)
        .map_err(|e| format!("NTFS root directory: {e}"))?;
    for part in path.split('\\').filter(|p| !p.is_empty()) {
        if !file.is_directory() {
            return Ok(None);
        }
        let next = {
            let index = file
                .directory_index(reader)
                .map_err(|e| format!("NTFS directory index on the way to {path}: {e}"))?;
            let mut finder = index.finder();
            let entry = match NtfsFileNameIndex::find(&mut finder, ntfs, reader, part) {
                None => return Ok(None),
                Some(e) => e.map_err(|e| format!("NTFS index entry {part} in {path}: {e}"))?,
            };
            entry
                .to_file(ntfs, reader)
                .map_err(|e| format!("NTFS file record of {part} in {path}: {e}"))?
        };
        file = next;
    }
    Ok(Some(file))
}

/// Where a file's bytes lie on the volume: (offset in the file, offset in
/// the volume, length).
pub type Extent = (u64, u64, u64);

impl NtfsVolume<'_> {
    /// The unnamed data stream's extents, for writing the file in place.
    /// Refused for resident, compressed, sparse or attribute-list data:
    /// those cannot be rewritten by offset.
    pub fn file_extents(&mut self, path: &str) -> Result<Option<(u64, Vec<Extent>)>, String> {
        self.with_data(path, |attr, reader| {
            let flags = attr.flags();
            if flags.contains(ntfs::NtfsAttributeFlags::COMPRESSED)
                || flags.contains(ntfs::NtfsAttributeFlags::SPARSE)
            {
                return Err(format!(
                    "{path}: compressed or sparse data is not written in place"
                ));
            }
            let value = attr
                .value(reader)
                .map_err(|e| format!("{path}: data attribute value: {e}"))?;
            let len = value.len();
            let ntfs::attribute_value::NtfsAttributeValue::NonResident(nr) = value else {
                return Err(format!(
                    "{path}: resident or attribute-list data is not written in place"
                ));
            };
            let mut extents = Vec::new();
            let mut file_off = 0u64;
            for run in nr.data_runs() {
                let run = run.map_err(|e| format!("{path}: data run: {e}"))?;
                let size = run.allocated_size();
                let Some(pos) = run.data_position().value() else {
                    return Err(format!("{path}: sparse data run at file offset {file_off}"));
                };
                if file_off < len {
                    extents.push((file_off, pos.get(), size.min(len - file_off)));
                }
                file_off = file_off.saturating_add(size);
            }
            if file_off < len {
                return Err(format!("{path}: data runs cover {file_off} of {len} bytes"));
            }
            Ok((len, extents))
        })
    }
}
