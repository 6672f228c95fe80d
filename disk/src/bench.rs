//! The in-process benchmark behind `rehost disk bench`, and the writer of
//! the crash-safety tests: deterministic request streams from a seed, so
//! that a comparison run (qemu-io) and a checker can replay exactly the
//! same offsets and data.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{BlockDevice, BlockError, Result};

/// Request size of the sequential patterns.
pub const SEQ_REQUEST: u64 = 1 << 20;
/// Request size of the random and strided patterns.
pub const RAND_REQUEST: u64 = 4096;
/// Distance between the starts of two strided requests (`qemu-img bench
/// -S`): one 4 KiB request every 64 KiB.
pub const STRIDE: u64 = 64 << 10;
/// The byte every written request is filled with (qemu-io's `-P 0xab`);
/// rehost's requests also carry their index and seed in their first 16
/// bytes, so a checker can tell them apart.
pub const FILL: u8 = 0xab;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    SeqRead,
    SeqWrite,
    RandRead4k,
    RandWrite4k,
    StrideRead4k,
    StrideWrite4k,
}

impl Pattern {
    pub const ALL: [Pattern; 6] = [
        Pattern::SeqRead,
        Pattern::SeqWrite,
        Pattern::RandRead4k,
        Pattern::RandWrite4k,
        Pattern::StrideRead4k,
        Pattern::StrideWrite4k,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pattern::SeqRead => "seq-read",
            Pattern::SeqWrite => "seq-write",
            Pattern::RandRead4k => "rand-read-4k",
            Pattern::RandWrite4k => "rand-write-4k",
            Pattern::StrideRead4k => "stride-read-4k",
            Pattern::StrideWrite4k => "stride-write-4k",
        }
    }

    pub fn parse(s: &str) -> Option<Pattern> {
        Pattern::ALL.into_iter().find(|p| p.name() == s)
    }

    pub fn is_write(self) -> bool {
        matches!(
            self,
            Pattern::SeqWrite | Pattern::RandWrite4k | Pattern::StrideWrite4k
        )
    }

    pub fn request_size(self) -> u64 {
        match self {
            Pattern::SeqRead | Pattern::SeqWrite => SEQ_REQUEST,
            Pattern::RandRead4k
            | Pattern::RandWrite4k
            | Pattern::StrideRead4k
            | Pattern::StrideWrite4k => RAND_REQUEST,
        }
    }
}

/// splitmix64: a small, well-mixed generator whose stream is fixed by its
/// seed on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The requests of a run: `(offset, length)` in order. Sequential patterns
/// walk the disk from 0 in 1 MiB requests (wrapping when `bytes` exceeds
/// the disk); random ones pick 4 KiB-aligned offsets from the seed;
/// strided ones take 4 KiB every [`STRIDE`] bytes from 0 (wrapping).
pub fn requests(pattern: Pattern, bytes: u64, disk_size: u64, seed: u64) -> Vec<(u64, u64)> {
    let req = pattern.request_size().min(disk_size - disk_size % 512);
    if req == 0 {
        return Vec::new();
    }
    let count = bytes.div_ceil(req);
    let mut out = Vec::with_capacity(count as usize);
    match pattern {
        Pattern::SeqRead | Pattern::SeqWrite => {
            let slots = disk_size / req;
            for i in 0..count {
                out.push(((i % slots) * req, req));
            }
        }
        Pattern::StrideRead4k | Pattern::StrideWrite4k => {
            let slots = (disk_size / STRIDE).max(1);
            for i in 0..count {
                out.push(((i % slots) * STRIDE, req));
            }
        }
        Pattern::RandRead4k | Pattern::RandWrite4k => {
            let slots = disk_size / req;
            let mut rng = Rng::new(seed);
            for _ in 0..count {
                out.push(((rng.next_u64() % slots) * req, req));
            }
        }
    }
    out
}

/// Fills `buf` with the data of write request `index`: [`FILL`] bytes with
/// the request's index and the seed (little-endian) in front.
pub fn request_data(index: u64, seed: u64, buf: &mut [u8]) {
    buf.fill(FILL);
    stamp(index, seed, buf);
}

fn stamp(index: u64, seed: u64, buf: &mut [u8]) {
    if buf.len() >= 16 {
        buf[..8].copy_from_slice(&index.to_le_bytes());
        buf[8..16].copy_from_slice(&seed.to_le_bytes());
    }
}

/// The commands that make `qemu-io` run the same requests. Each is quiet
/// (`-q`): qemu-io then formats no report per request, work rehost's loop
/// does not do either.
pub fn qemu_io_commands(requests: &[(u64, u64)], write: bool) -> Vec<String> {
    requests
        .iter()
        .map(|&(off, len)| {
            if write {
                format!("write -q -P 0x{FILL:02x} {off} {len}")
            } else {
                format!("read -q {off} {len}")
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub pattern: Pattern,
    /// Bytes to transfer.
    pub bytes: u64,
    pub seed: u64,
    /// Flush after every this many requests (and always at the end of a
    /// writing run).
    pub flush_every: Option<u64>,
    /// Appends `flushed N` (N requests are on stable storage) to this file
    /// after each completed flush: the crash tests' record of what was
    /// acknowledged.
    pub flush_log: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub requests: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl BenchResult {
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn iops(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs a pattern against a device, single-threaded, one request at a
/// time. A writing run ends with a flush, inside the timed part.
pub fn run(device: &dyn BlockDevice, options: &BenchOptions) -> Result<BenchResult> {
    let size = device.geometry().size;
    let reqs = requests(options.pattern, options.bytes, size, options.seed);
    let mut log = match &options.flush_log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| log_err(p, e))?,
        ),
        None => None,
    };
    let mut buf = vec![FILL; options.pattern.request_size() as usize];
    let write = options.pattern.is_write();
    let start = Instant::now();
    let mut bytes = 0;
    for (i, &(off, len)) in reqs.iter().enumerate() {
        let data = &mut buf[..len as usize];
        if write {
            stamp(i as u64, options.seed, data);
            device.write_at(off, data)?;
        } else {
            device.read_at(off, data)?;
        }
        bytes += len;
        let n = i as u64 + 1;
        if write
            && options
                .flush_every
                .is_some_and(|every| every > 0 && n.is_multiple_of(every))
        {
            device.flush()?;
            record_flush(&mut log, options, n)?;
        }
    }
    if write {
        device.flush()?;
        record_flush(&mut log, options, reqs.len() as u64)?;
    }
    Ok(BenchResult {
        requests: reqs.len() as u64,
        bytes,
        elapsed: start.elapsed(),
    })
}

fn log_err(p: &Path, e: std::io::Error) -> BlockError {
    BlockError::Io {
        path: p.to_owned(),
        offset: 0,
        source: e,
    }
}

fn record_flush(log: &mut Option<std::fs::File>, options: &BenchOptions, n: u64) -> Result<()> {
    if let (Some(f), Some(p)) = (log.as_mut(), &options.flush_log) {
        writeln!(f, "flushed {n}").map_err(|e| log_err(p, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_fixed_by_the_seed() {
        let a = requests(Pattern::RandWrite4k, 1 << 20, 1 << 30, 7);
        assert_eq!(a.len(), 256);
        assert_eq!(a, requests(Pattern::RandWrite4k, 1 << 20, 1 << 30, 7));
        assert_ne!(a, requests(Pattern::RandWrite4k, 1 << 20, 1 << 30, 8));
        assert!(a.iter().all(|&(o, l)| o % 4096 == 0 && o + l <= 1 << 30));
        let s = requests(Pattern::SeqRead, 3 << 20, 2 << 20, 0);
        assert_eq!(s, vec![(0, 1 << 20), (1 << 20, 1 << 20), (0, 1 << 20)]);
        assert_eq!(
            qemu_io_commands(&s[..1], true),
            vec!["write -q -P 0xab 0 1048576"]
        );
        let mut buf = [0u8; 32];
        request_data(3, 9, &mut buf);
        assert_eq!(buf[0], 3);
        assert_eq!(buf[8], 9);
        assert_eq!(buf[20], FILL);
        assert!(requests(Pattern::SeqRead, 1 << 20, 0, 0).is_empty());
        // Strided: 4 KiB every 64 KiB, wrapping at the end of the disk.
        let t = requests(Pattern::StrideWrite4k, 5 * 4096, 3 * STRIDE, 0);
        let starts: Vec<u64> = t.iter().map(|&(o, _)| o / STRIDE).collect();
        assert_eq!(starts, [0, 1, 2, 0, 1]);
        assert!(t.iter().all(|&(_, l)| l == 4096));
        assert!(Pattern::StrideWrite4k.is_write() && !Pattern::StrideRead4k.is_write());
        assert_eq!(
            Pattern::parse("stride-read-4k"),
            Some(Pattern::StrideRead4k)
        );
    }
}
