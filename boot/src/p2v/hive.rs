//! A read-only reader of Windows registry hives ("regf"), with in-memory
//! replay of transaction logs (see [`super::hive_log`]) and in-place edits
//! of existing DWORD values for `rehost p2v fix`.
//!
//! Every offset and length read from the file is checked against the hive
//! before use; a damaged hive gives a [`HiveError`] naming the structure,
//! its offset and the reason, never a panic.

use super::hive_spec::*;

/// A problem in a hive: which hive, which structure at which file offset,
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{hive}: {structure} at file offset {offset:#x}: {reason}")]
pub struct HiveError {
    pub hive: String,
    pub structure: &'static str,
    pub offset: u64,
    pub reason: String,
}

/// The base block's fields that matter for reading and judging a hive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseBlock {
    pub primary_sequence: u32,
    pub secondary_sequence: u32,
    pub major_version: u32,
    pub minor_version: u32,
    pub file_type: u32,
    pub root_cell: u32,
    pub hive_bins_size: u32,
    pub checksum: u32,
    /// The stored checksum equals the one computed over the block.
    pub checksum_ok: bool,
}

impl BaseBlock {
    /// A hive whose two sequence numbers differ was not written out
    /// completely: its last changes are in the transaction logs.
    pub fn is_dirty(&self) -> bool {
        self.primary_sequence != self.secondary_sequence
    }
}

pub(crate) fn le_u16(data: &[u8], at: usize) -> Option<u16> {
    let b = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

pub(crate) fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub(crate) fn le_u64(data: &[u8], at: usize) -> Option<u64> {
    let b = data.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// The base block checksum: XOR of its first 127 dwords, with 0 and
/// 0xFFFFFFFF replaced as Windows does.
pub fn base_block_checksum(block: &[u8]) -> Option<u32> {
    let covered = block.get(..CHECKSUM_COVERED)?;
    let mut sum = 0u32;
    for chunk in covered.chunks_exact(4) {
        sum ^= u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    Some(match sum {
        0xFFFF_FFFF => 0xFFFF_FFFE,
        0 => 1,
        s => s,
    })
}

/// Parses a base block (of the primary file or of a log file).
pub fn parse_base_block(hive: &str, data: &[u8]) -> Result<BaseBlock, HiveError> {
    let err = |reason: String| HiveError {
        hive: hive.to_owned(),
        structure: "base block",
        offset: 0,
        reason,
    };
    if data.len() < CHECKSUM_COVERED + 4 {
        return Err(err(format!(
            "the file has {} bytes, fewer than a base block's {}",
            data.len(),
            CHECKSUM_COVERED + 4
        )));
    }
    if &data[..4] != REGF_SIGNATURE {
        return Err(err(format!(
            "signature is {:02x?}, not \"regf\"",
            &data[..4]
        )));
    }
    let field = |at| le_u32(data, at).unwrap_or(0);
    let checksum = field(BB_CHECKSUM);
    Ok(BaseBlock {
        primary_sequence: field(BB_PRIMARY_SEQUENCE),
        secondary_sequence: field(BB_SECONDARY_SEQUENCE),
        major_version: field(BB_MAJOR_VERSION),
        minor_version: field(BB_MINOR_VERSION),
        file_type: field(BB_FILE_TYPE),
        root_cell: field(BB_ROOT_CELL),
        hive_bins_size: field(BB_HIVE_BINS_SIZE),
        checksum,
        checksum_ok: base_block_checksum(data) == Some(checksum),
    })
}

/// A hive held in memory.
#[derive(Debug, Clone)]
pub struct Hive {
    name: String,
    data: Vec<u8>,
    base: BaseBlock,
    /// End of the hive bins data in `data` (file offset).
    bins_end: usize,
}

/// A value's data type and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueData {
    pub value_type: u32,
    pub data: Vec<u8>,
}

impl ValueData {
    /// The value as a DWORD, when it is one.
    pub fn as_dword(&self) -> Option<u32> {
        if self.value_type == REG_DWORD && self.data.len() >= 4 {
            le_u32(&self.data, 0)
        } else {
            None
        }
    }

    /// REG_SZ / REG_EXPAND_SZ as text (UTF-16LE up to the first NUL).
    pub fn as_string(&self) -> Option<String> {
        if self.value_type != REG_SZ && self.value_type != REG_EXPAND_SZ {
            return None;
        }
        Some(utf16_until_nul(&self.data))
    }

    /// REG_MULTI_SZ as its strings.
    pub fn as_multi_string(&self) -> Option<Vec<String>> {
        if self.value_type != REG_MULTI_SZ {
            return None;
        }
        let units: Vec<u16> = self
            .data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Some(
            units
                .split(|&u| u == 0)
                .filter(|s| !s.is_empty())
                .map(String::from_utf16_lossy)
                .collect(),
        )
    }
}

fn utf16_until_nul(data: &[u8]) -> String {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// A key of a hive: the offset of its "nk" cell.
#[derive(Debug, Clone, Copy)]
pub struct Key<'h> {
    hive: &'h Hive,
    cell: u32,
}

/// A value of a key: the offset of its "vk" cell.
#[derive(Debug, Clone, Copy)]
pub struct Value<'h> {
    hive: &'h Hive,
    cell: u32,
}

/// Deepest nesting of "ri" index lists followed (Windows writes one level).
const MAX_LIST_DEPTH: u32 = 4;

impl Hive {
    /// Parses a hive from its bytes. `name` is used in errors.
    pub fn parse(name: &str, data: Vec<u8>) -> Result<Hive, HiveError> {
        let base = parse_base_block(name, &data)?;
        let bins_end = BASE_BLOCK_SIZE
            .checked_add(base.hive_bins_size as usize)
            .filter(|&end| end <= data.len())
            .ok_or_else(|| HiveError {
                hive: name.to_owned(),
                structure: "base block",
                offset: BB_HIVE_BINS_SIZE as u64,
                reason: format!(
                    "hive bins data size {} reaches past the end of the {}-byte file",
                    base.hive_bins_size,
                    data.len()
                ),
            })?;
        let hive = Hive {
            name: name.to_owned(),
            data,
            base,
            bins_end,
        };
        hive.check_first_bin()?;
        let root = hive.root()?;
        root.name()?;
        Ok(hive)
    }

    fn check_first_bin(&self) -> Result<(), HiveError> {
        if self.bins_end < BASE_BLOCK_SIZE + HBIN_HEADER_SIZE
            || &self.data[BASE_BLOCK_SIZE..BASE_BLOCK_SIZE + 4] != HBIN_SIGNATURE
        {
            return Err(self.error(
                "hive bin",
                BASE_BLOCK_SIZE as u64,
                "the first hive bin has no \"hbin\" signature".into(),
            ));
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn base_block(&self) -> BaseBlock {
        self.base
    }

    /// The whole file as it is now held (after any log replay or edit).
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    fn error(&self, structure: &'static str, offset: u64, reason: String) -> HiveError {
        HiveError {
            hive: self.name.clone(),
            structure,
            offset,
            reason,
        }
    }

    /// The data of the allocated cell at `cell` (offset relative to the
    /// start of the hive bins), without its size field.
    fn cell(&self, cell: u32, structure: &'static str) -> Result<&[u8], HiveError> {
        let start = BASE_BLOCK_SIZE as u64 + u64::from(cell);
        let bad = |reason: String| self.error(structure, start, reason);
        if !cell.is_multiple_of(8) {
            return Err(bad(format!("cell offset {cell:#x} is not 8-byte aligned")));
        }
        let start_us = start as usize;
        let raw = le_u32(&self.data, start_us)
            .filter(|_| start_us + 4 <= self.bins_end)
            .ok_or_else(|| {
                bad(format!(
                    "cell offset {cell:#x} is outside the hive bins data ({} bytes)",
                    self.base.hive_bins_size
                ))
            })?;
        let size = raw as i32;
        if size >= 0 {
            return Err(bad(format!(
                "the cell is not allocated (size field {size})"
            )));
        }
        let len = size.unsigned_abs() as usize;
        if len < 8 || start_us + len > self.bins_end {
            return Err(bad(format!(
                "cell size {len} is smaller than 8 or reaches past the hive bins data"
            )));
        }
        Ok(&self.data[start_us + 4..start_us + len])
    }

    /// The root key.
    pub fn root(&self) -> Result<Key<'_>, HiveError> {
        let key = Key {
            hive: self,
            cell: self.base.root_cell,
        };
        key.node()?;
        Ok(key)
    }

    /// Opens a key by a backslash-separated path below the root
    /// (case-insensitive). `Ok(None)` when a component does not exist.
    pub fn open(&self, path: &str) -> Result<Option<Key<'_>>, HiveError> {
        let mut key = self.root()?;
        for part in path.split('\\').filter(|p| !p.is_empty()) {
            match key.subkey(part)? {
                Some(k) => key = k,
                None => return Ok(None),
            }
        }
        Ok(Some(key))
    }

    /// Overwrites the 4-byte inline data of an existing REG_DWORD value.
    /// Call [`Hive::bump_sequence`] once after the last edit. Returns the
    /// file offset written.
    pub fn set_dword_in_place(&mut self, value_cell: u32, new: u32) -> Result<u64, HiveError> {
        let (value_type, size, _) = {
            let v = Value {
                hive: self,
                cell: value_cell,
            };
            v.header()?
        };
        if value_type != REG_DWORD || size != (VK_DATA_INLINE | 4) {
            return Err(self.error(
                "key value",
                BASE_BLOCK_SIZE as u64 + u64::from(value_cell),
                format!(
                    "not an inline REG_DWORD (type {value_type}, size field {size:#x}); only those are edited in place"
                ),
            ));
        }
        let at = BASE_BLOCK_SIZE + value_cell as usize + 4 + VK_DATA_OFFSET;
        self.data[at..at + 4].copy_from_slice(&new.to_le_bytes());
        Ok(at as u64)
    }

    /// Marks the hive as cleanly written after edits, as Windows does when
    /// it writes a hive out: both sequence numbers one past the larger,
    /// checksum recomputed.
    pub fn bump_sequence(&mut self) {
        let next = self
            .base
            .primary_sequence
            .max(self.base.secondary_sequence)
            .wrapping_add(1);
        self.data[BB_PRIMARY_SEQUENCE..BB_PRIMARY_SEQUENCE + 4]
            .copy_from_slice(&next.to_le_bytes());
        self.data[BB_SECONDARY_SEQUENCE..BB_SECONDARY_SEQUENCE + 4]
            .copy_from_slice(&next.to_le_bytes());
        if let Some(sum) = base_block_checksum(&self.data) {
            self.data[BB_CHECKSUM..BB_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
        }
        if let Ok(base) = parse_base_block(&self.name, &self.data) {
            self.base = base;
        }
    }
}

impl<'h> Key<'h> {
    fn node(&self) -> Result<&'h [u8], HiveError> {
        let data = self.hive.cell(self.cell, "key node")?;
        if data.len() < NK_NAME || &data[..2] != NK_SIGNATURE {
            return Err(self.hive.error(
                "key node",
                self.file_offset(),
                "no \"nk\" signature or shorter than a key node".into(),
            ));
        }
        Ok(data)
    }

    fn file_offset(&self) -> u64 {
        BASE_BLOCK_SIZE as u64 + u64::from(self.cell)
    }

    /// The key's name.
    pub fn name(&self) -> Result<String, HiveError> {
        let node = self.node()?;
        let flags = le_u16(node, NK_FLAGS).unwrap_or(0);
        let len = le_u16(node, NK_NAME_LENGTH).unwrap_or(0) as usize;
        let bytes = node.get(NK_NAME..NK_NAME + len).ok_or_else(|| {
            self.hive.error(
                "key node",
                self.file_offset(),
                format!("name length {len} reaches past the cell"),
            )
        })?;
        Ok(decode_name(bytes, flags & NK_FLAG_COMP_NAME != 0))
    }

    /// The key's path-independent identity: its cell offset.
    pub fn cell_offset(&self) -> u32 {
        self.cell
    }

    /// Every subkey, in the order the lists hold them.
    pub fn subkeys(&self) -> Result<Vec<Key<'h>>, HiveError> {
        let node = self.node()?;
        let count = le_u32(node, NK_SUBKEY_COUNT).unwrap_or(0);
        if count == 0 {
            return Ok(Vec::new());
        }
        let list = le_u32(node, NK_SUBKEY_LIST).unwrap_or(u32::MAX);
        let mut out = Vec::new();
        self.collect_list(list, 0, &mut out)?;
        if out.len() != count as usize {
            return Err(self.hive.error(
                "key node",
                self.file_offset(),
                format!("says {count} subkeys but its lists hold {}", out.len()),
            ));
        }
        Ok(out)
    }

    fn collect_list(&self, list: u32, depth: u32, out: &mut Vec<Key<'h>>) -> Result<(), HiveError> {
        let hive = self.hive;
        let data = hive.cell(list, "subkey list")?;
        let at = BASE_BLOCK_SIZE as u64 + u64::from(list);
        let count = le_u16(data, LIST_COUNT).unwrap_or(0) as usize;
        let sig = data.get(..2).unwrap_or(&[]);
        let stride = match sig {
            b"lf" | b"lh" => 8,
            b"li" | b"ri" => 4,
            _ => {
                return Err(hive.error(
                    "subkey list",
                    at,
                    format!("unknown list signature {sig:02x?}"),
                ))
            }
        };
        let needed = LIST_ITEMS + count * stride;
        if needed > data.len() {
            return Err(hive.error(
                "subkey list",
                at,
                format!(
                    "{count} items need {needed} bytes, the cell has {}",
                    data.len()
                ),
            ));
        }
        // A hive holds at most one subkey per 8 bytes of bins.
        if out.len() + count > hive.base.hive_bins_size as usize / 8 {
            return Err(hive.error(
                "subkey list",
                at,
                "more subkeys than the hive can hold".into(),
            ));
        }
        for i in 0..count {
            let item = le_u32(data, LIST_ITEMS + i * stride).unwrap_or(u32::MAX);
            if sig == b"ri" {
                if depth >= MAX_LIST_DEPTH {
                    return Err(hive.error(
                        "subkey list",
                        at,
                        format!("index lists nested deeper than {MAX_LIST_DEPTH}"),
                    ));
                }
                self.collect_list(item, depth + 1, out)?;
            } else {
                let key = Key { hive, cell: item };
                key.node()?;
                out.push(key);
            }
        }
        Ok(())
    }

    /// The subkey named `name` (case-insensitive).
    pub fn subkey(&self, name: &str) -> Result<Option<Key<'h>>, HiveError> {
        for key in self.subkeys()? {
            if key.name()?.eq_ignore_ascii_case(name) {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// Every value of the key.
    pub fn values(&self) -> Result<Vec<Value<'h>>, HiveError> {
        let node = self.node()?;
        let count = le_u32(node, NK_VALUE_COUNT).unwrap_or(0) as usize;
        if count == 0 {
            return Ok(Vec::new());
        }
        let list = le_u32(node, NK_VALUE_LIST).unwrap_or(u32::MAX);
        let data = self.hive.cell(list, "value list")?;
        if count.checked_mul(4).is_none_or(|n| n > data.len()) {
            return Err(self.hive.error(
                "value list",
                BASE_BLOCK_SIZE as u64 + u64::from(list),
                format!("{count} values do not fit in a {}-byte cell", data.len()),
            ));
        }
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let cell = le_u32(data, i * 4).unwrap_or(u32::MAX);
            let v = Value {
                hive: self.hive,
                cell,
            };
            v.header()?;
            out.push(v);
        }
        Ok(out)
    }

    /// The value named `name` (case-insensitive; "" is the default value).
    pub fn value(&self, name: &str) -> Result<Option<Value<'h>>, HiveError> {
        for v in self.values()? {
            if v.name()?.eq_ignore_ascii_case(name) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Shortcut: the DWORD value `name`, if present and a DWORD.
    pub fn dword(&self, name: &str) -> Result<Option<u32>, HiveError> {
        Ok(match self.value(name)? {
            Some(v) => v.data()?.as_dword(),
            None => None,
        })
    }

    /// Shortcut: the string value `name`, if present and a string.
    pub fn string(&self, name: &str) -> Result<Option<String>, HiveError> {
        Ok(match self.value(name)? {
            Some(v) => v.data()?.as_string(),
            None => None,
        })
    }
}

fn decode_name(bytes: &[u8], latin1: bool) -> String {
    if latin1 {
        bytes.iter().map(|&b| b as char).collect()
    } else {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    }
}

impl<'h> Value<'h> {
    fn record(&self) -> Result<&'h [u8], HiveError> {
        let data = self.hive.cell(self.cell, "key value")?;
        if data.len() < VK_NAME || &data[..2] != VK_SIGNATURE {
            return Err(self.hive.error(
                "key value",
                self.file_offset(),
                "no \"vk\" signature or shorter than a key value".into(),
            ));
        }
        Ok(data)
    }

    fn file_offset(&self) -> u64 {
        BASE_BLOCK_SIZE as u64 + u64::from(self.cell)
    }

    /// (type, raw data size field, data offset field)
    fn header(&self) -> Result<(u32, u32, u32), HiveError> {
        let r = self.record()?;
        Ok((
            le_u32(r, VK_TYPE).unwrap_or(0),
            le_u32(r, VK_DATA_SIZE).unwrap_or(0),
            le_u32(r, VK_DATA_OFFSET).unwrap_or(0),
        ))
    }

    pub fn cell_offset(&self) -> u32 {
        self.cell
    }

    /// The value's name ("" for the default value).
    pub fn name(&self) -> Result<String, HiveError> {
        let r = self.record()?;
        let len = le_u16(r, VK_NAME_LENGTH).unwrap_or(0) as usize;
        let flags = le_u16(r, VK_FLAGS).unwrap_or(0);
        let bytes = r.get(VK_NAME..VK_NAME + len).ok_or_else(|| {
            self.hive.error(
                "key value",
                self.file_offset(),
                format!("name length {len} reaches past the cell"),
            )
        })?;
        Ok(decode_name(bytes, flags & VK_FLAG_COMP_NAME != 0))
    }

    /// The value's type and data, big-data segments joined.
    pub fn data(&self) -> Result<ValueData, HiveError> {
        let (value_type, size_field, offset) = self.header()?;
        let hive = self.hive;
        if size_field & VK_DATA_INLINE != 0 {
            let len = (size_field & !VK_DATA_INLINE) as usize;
            if len > 4 {
                return Err(hive.error(
                    "key value",
                    self.file_offset(),
                    format!("inline data size {len} is larger than 4"),
                ));
            }
            return Ok(ValueData {
                value_type,
                data: offset.to_le_bytes()[..len].to_vec(),
            });
        }
        let len = size_field as usize;
        let cell = hive.cell(offset, "value data")?;
        let at = BASE_BLOCK_SIZE as u64 + u64::from(offset);
        if len > BIG_DATA_THRESHOLD
            && hive.base.minor_version > 3
            && cell.get(..2) == Some(DB_SIGNATURE)
        {
            let segments = le_u16(cell, DB_SEGMENT_COUNT).unwrap_or(0) as usize;
            let list = le_u32(cell, DB_SEGMENT_LIST).unwrap_or(u32::MAX);
            let list_data = hive.cell(list, "big data segment list")?;
            if segments * 4 > list_data.len() {
                return Err(hive.error(
                    "big data segment list",
                    BASE_BLOCK_SIZE as u64 + u64::from(list),
                    format!(
                        "{segments} segments do not fit in a {}-byte cell",
                        list_data.len()
                    ),
                ));
            }
            let mut data = Vec::with_capacity(len.min(hive.data.len()));
            for i in 0..segments {
                let seg = le_u32(list_data, i * 4).unwrap_or(u32::MAX);
                let seg_data = hive.cell(seg, "big data segment")?;
                let take = seg_data.len().min(BIG_DATA_THRESHOLD).min(len - data.len());
                data.extend_from_slice(&seg_data[..take]);
                if data.len() == len {
                    break;
                }
            }
            if data.len() != len {
                return Err(hive.error(
                    "big data",
                    at,
                    format!("segments hold {} of the value's {len} bytes", data.len()),
                ));
            }
            return Ok(ValueData { value_type, data });
        }
        if len > cell.len() {
            return Err(hive.error(
                "value data",
                at,
                format!(
                    "data size {len} is larger than its {}-byte cell",
                    cell.len()
                ),
            ));
        }
        Ok(ValueData {
            value_type,
            data: cell[..len].to_vec(),
        })
    }
}

/// Visits up to `limit` keys breadth-first from the root, reading every
/// name, value and value's data: what the fuzz targets and property tests
/// drive the reader with. Returns how many keys were visited.
pub fn walk_for_fuzzing(hive: &Hive, limit: usize) -> usize {
    let Ok(root) = hive.root() else { return 0 };
    let mut queue = std::collections::VecDeque::from([root]);
    let mut seen = 0;
    while let Some(key) = queue.pop_front() {
        seen += 1;
        if seen >= limit {
            break;
        }
        let _ = key.name();
        if let Ok(values) = key.values() {
            for v in values {
                let _ = v.name();
                if let Ok(d) = v.data() {
                    let _ = (d.as_dword(), d.as_string(), d.as_multi_string());
                }
            }
        }
        if let Ok(sub) = key.subkeys() {
            queue.extend(sub);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(name: &str) -> Option<Vec<u8>> {
        let dir = std::env::var_os("REHOST_HIVES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                let beside = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../shared/samples/hives");
                if beside.is_dir() {
                    beside
                } else {
                    "/work/shared/samples/hives".into()
                }
            });
        let out = std::process::Command::new("xz")
            .arg("-dc")
            .arg(dir.join(format!("{name}.xz")))
            .output()
            .ok()?;
        out.status.success().then_some(out.stdout)
    }

    /// A hand-made hive: base block, one bin, a root key with one subkey
    /// "Sub" holding a DWORD "Start" = 3 and a 20000-byte big-data value.
    fn tiny_hive() -> Vec<u8> {
        let mut bins = vec![0u8; 4096 * 12];
        bins[..4].copy_from_slice(b"hbin");
        let bins_len = bins.len() as u32;
        bins[8..12].copy_from_slice(&bins_len.to_le_bytes());
        let mut at = 32usize;
        let mut cell = |bins: &mut Vec<u8>, body: &[u8]| -> u32 {
            let size = (body.len() + 4).div_ceil(8) * 8;
            let off = at;
            bins[off..off + 4].copy_from_slice(&(-(size as i32)).to_le_bytes());
            bins[off + 4..off + 4 + body.len()].copy_from_slice(body);
            at += size;
            off as u32
        };
        let nk = |name: &str, subkeys: u32, list: u32, values: u32, vlist: u32| {
            let mut b = vec![0u8; 76];
            b[..2].copy_from_slice(b"nk");
            b[2..4].copy_from_slice(&0x20u16.to_le_bytes());
            b[20..24].copy_from_slice(&subkeys.to_le_bytes());
            b[28..32].copy_from_slice(&list.to_le_bytes());
            b[36..40].copy_from_slice(&values.to_le_bytes());
            b[40..44].copy_from_slice(&vlist.to_le_bytes());
            b[72..74].copy_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b
        };
        let vk = |name: &str, size: u32, data: u32, ty: u32| {
            let mut b = vec![0u8; 20];
            b[..2].copy_from_slice(b"vk");
            b[2..4].copy_from_slice(&(name.len() as u16).to_le_bytes());
            b[4..8].copy_from_slice(&size.to_le_bytes());
            b[8..12].copy_from_slice(&data.to_le_bytes());
            b[12..16].copy_from_slice(&ty.to_le_bytes());
            b[16..18].copy_from_slice(&1u16.to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b
        };
        let start = cell(&mut bins, &vk("Start", 0x8000_0004, 3, REG_DWORD));
        let seg1 = cell(&mut bins, &[0xAB; BIG_DATA_THRESHOLD]);
        let seg2 = cell(&mut bins, &[0xCD; 20000 - BIG_DATA_THRESHOLD]);
        let mut seglist = Vec::new();
        seglist.extend_from_slice(&seg1.to_le_bytes());
        seglist.extend_from_slice(&seg2.to_le_bytes());
        let seglist = cell(&mut bins, &seglist);
        let mut db = b"db".to_vec();
        db.extend_from_slice(&2u16.to_le_bytes());
        db.extend_from_slice(&seglist.to_le_bytes());
        let db = cell(&mut bins, &db);
        let big = cell(&mut bins, &vk("Big", 20000, db, REG_BINARY));
        let mut vlist = Vec::new();
        vlist.extend_from_slice(&start.to_le_bytes());
        vlist.extend_from_slice(&big.to_le_bytes());
        let vlist = cell(&mut bins, &vlist);
        let sub = cell(&mut bins, &nk("Sub", 0, u32::MAX, 2, vlist));
        let mut lf = b"lf".to_vec();
        lf.extend_from_slice(&1u16.to_le_bytes());
        lf.extend_from_slice(&sub.to_le_bytes());
        lf.extend_from_slice(b"Sub\0");
        let lf = cell(&mut bins, &lf);
        let root = cell(&mut bins, &nk("ROOT", 1, lf, 0, u32::MAX));
        let mut base = vec![0u8; BASE_BLOCK_SIZE];
        base[..4].copy_from_slice(REGF_SIGNATURE);
        base[4..8].copy_from_slice(&7u32.to_le_bytes());
        base[8..12].copy_from_slice(&7u32.to_le_bytes());
        base[20..24].copy_from_slice(&1u32.to_le_bytes());
        base[24..28].copy_from_slice(&5u32.to_le_bytes());
        base[36..40].copy_from_slice(&root.to_le_bytes());
        base[40..44].copy_from_slice(&(bins.len() as u32).to_le_bytes());
        let sum = base_block_checksum(&base).unwrap();
        base[508..512].copy_from_slice(&sum.to_le_bytes());
        base.extend_from_slice(&bins);
        base
    }

    #[test]
    fn tiny_hive_reads_and_edits_in_place() {
        let hive = Hive::parse("tiny", tiny_hive()).unwrap();
        assert!(hive.base_block().checksum_ok);
        assert!(!hive.base_block().is_dirty());
        let sub = hive.open("sub").unwrap().unwrap();
        assert_eq!(sub.name().unwrap(), "Sub");
        assert_eq!(sub.dword("START").unwrap(), Some(3));
        let big = sub.value("Big").unwrap().unwrap().data().unwrap();
        assert_eq!(big.data.len(), 20000);
        assert!(big.data[..BIG_DATA_THRESHOLD].iter().all(|&b| b == 0xAB));
        assert!(big.data[BIG_DATA_THRESHOLD..].iter().all(|&b| b == 0xCD));
        assert!(hive.open("Sub\\Missing").unwrap().is_none());
        let cell = sub.value("Start").unwrap().unwrap().cell_offset();
        let mut edited = hive.clone();
        edited.set_dword_in_place(cell, 0).unwrap();
        edited.bump_sequence();
        let again = Hive::parse("tiny", edited.bytes().to_vec()).unwrap();
        assert_eq!(
            again.open("Sub").unwrap().unwrap().dword("Start").unwrap(),
            Some(0)
        );
        let b = again.base_block();
        assert_eq!((b.primary_sequence, b.secondary_sequence), (8, 8));
        assert!(b.checksum_ok);
        // Only inline DWORDs are edited in place.
        let big_cell = sub.value("Big").unwrap().unwrap().cell_offset();
        assert!(edited.set_dword_in_place(big_cell, 0).is_err());
    }

    #[test]
    fn bad_offsets_are_named() {
        let mut data = tiny_hive();
        // Root cell offset past the bins.
        data[36..40].copy_from_slice(&0x7fff_fff8u32.to_le_bytes());
        let e = Hive::parse("tiny", data).unwrap_err();
        assert_eq!(e.structure, "key node");
        assert!(e.reason.contains("outside the hive bins data"), "{e}");
        let mut data = tiny_hive();
        data[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = Hive::parse("tiny", data).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("tiny: base block at file offset 0x28: hive bins data size"),
            "{e}"
        );
        let e = Hive::parse("tiny", b"regf".to_vec()).unwrap_err();
        assert!(e.reason.contains("fewer than a base block"), "{e}");
    }

    #[test]
    fn sample_hives_read_as_the_readme_says() {
        let data = sample("SYSTEM").expect("sample hive SYSTEM (set REHOST_HIVES)");
        let hive = Hive::parse("SYSTEM", data).unwrap();
        let b = hive.base_block();
        assert_eq!((b.primary_sequence, b.secondary_sequence), (13983, 13983));
        assert_eq!(
            hive.open("Select")
                .unwrap()
                .unwrap()
                .dword("Current")
                .unwrap(),
            Some(1)
        );
        let start = |svc: &str| {
            hive.open(&format!("ControlSet001\\Services\\{svc}"))
                .unwrap()
                .and_then(|k| k.dword("Start").unwrap())
        };
        assert_eq!(start("atapi"), Some(0));
        assert_eq!(start("intelide"), Some(0));
        assert_eq!(start("pciide"), Some(3));
        assert_eq!(start("msahci"), Some(3));
        assert_eq!(start("storahci"), None);
        assert_eq!(start("iaStorV"), Some(3));
        let b = Hive::parse("B", sample("SYSTEM_B").unwrap()).unwrap();
        assert!(b.base_block().is_dirty());
        let logs = vec![
            ("LOG1".to_string(), sample("SYSTEM_B.LOG1").unwrap()),
            ("LOG2".to_string(), sample("SYSTEM_B.LOG2").unwrap()),
        ];
        let (replayed, r) = crate::p2v::hive_log::replay(&b, &logs).unwrap();
        assert_eq!(r.pages, 315);
        assert_eq!(
            (r.entries, r.first_sequence, r.last_sequence),
            (24, Some(2107), Some(2130))
        );
        // A flipped byte in LOG2's first entry fails its hash: only LOG1's
        // four entries apply.
        let mut bad = logs.clone();
        bad[1].1[512 + 4096] ^= 1;
        let (_, r) = crate::p2v::hive_log::replay(&b, &bad).unwrap();
        assert_eq!((r.entries, r.last_sequence), (4, Some(2110)));
        assert!(!replayed.base_block().is_dirty());
        assert!(walk_for_fuzzing(&replayed, 2000) >= 2000);
        // The damaged hive opens, and walking it meets the named error the
        // p2v check reports, without panicking.
        let c = Hive::parse("C", sample("corrupted_system_hive").unwrap()).unwrap();
        let e = c.open("ControlSet001\\Services\\storahci").unwrap_err();
        assert_eq!(e.structure, "key node", "{e}");
        assert!(e.offset >= 4096 && e.offset < 3_444_736, "{e}");
        assert!(walk_for_fuzzing(&c, usize::MAX) > 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn damaged_hives_never_panic(
            flips in proptest::collection::vec((0usize..4096 * 13, any::<u8>()), 1..32),
        ) {
            let mut data = tiny_hive();
            for (at, b) in flips {
                let n = data.len();
                data[at % n] = b;
            }
            if let Ok(h) = Hive::parse("p", data) {
                walk_for_fuzzing(&h, 1000);
            }
        }

        #[test]
        fn logs_never_panic(log in proptest::collection::vec(any::<u8>(), 0..4096), seq in any::<u32>()) {
            let hive = Hive::parse("p", tiny_hive()).unwrap();
            let mut l = tiny_hive()[..512].to_vec();
            l[28..32].copy_from_slice(&6u32.to_le_bytes());
            l.extend_from_slice(b"HvLE");
            l.extend_from_slice(&(512u32).to_le_bytes());
            l.extend_from_slice(&0u32.to_le_bytes());
            l.extend_from_slice(&seq.to_le_bytes());
            l.extend_from_slice(&log);
            l.resize(l.len().max(1024), 0);
            if let Ok((h, _)) = crate::p2v::hive_log::replay(&hive, &[("l".into(), l)]) {
                walk_for_fuzzing(&h, 1000);
            }
        }
    }
}
