//! `rehost disk ...`: create, inspect, check, convert, compare, commit and
//! benchmark disk images.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use rehost_disk::delta;
use rehost_disk::dirty::{self, BitmapInfo, DirtyTracker, TrackerOptions};
use rehost_disk::{
    bench, ops, BlockError, CreateOptions, DiskImage, ImageFormat, ImageInfo, OpenOptions, Problem,
    Subformat,
};

/// Image formats on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Raw,
    Vhd,
    Vhdx,
}

impl From<FormatArg> for ImageFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Raw => ImageFormat::Raw,
            FormatArg::Vhd => ImageFormat::Vhd,
            FormatArg::Vhdx => ImageFormat::Vhdx,
        }
    }
}

/// Subformats on the command line (differencing comes from `--parent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubformatArg {
    Fixed,
    Dynamic,
}

impl From<SubformatArg> for Subformat {
    fn from(s: SubformatArg) -> Self {
        match s {
            SubformatArg::Fixed => Subformat::Fixed,
            SubformatArg::Dynamic => Subformat::Dynamic,
        }
    }
}

/// Benchmark patterns on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PatternArg {
    SeqRead,
    SeqWrite,
    #[value(name = "rand-read-4k")]
    RandRead4k,
    #[value(name = "rand-write-4k")]
    RandWrite4k,
    // 4 KiB every 64 KiB from the start (qemu-img bench -s 4K -S 64K).
    #[value(name = "stride-read-4k")]
    StrideRead4k,
    #[value(name = "stride-write-4k")]
    StrideWrite4k,
}

impl From<PatternArg> for bench::Pattern {
    fn from(p: PatternArg) -> Self {
        match p {
            PatternArg::SeqRead => bench::Pattern::SeqRead,
            PatternArg::SeqWrite => bench::Pattern::SeqWrite,
            PatternArg::RandRead4k => bench::Pattern::RandRead4k,
            PatternArg::RandWrite4k => bench::Pattern::RandWrite4k,
            PatternArg::StrideRead4k => bench::Pattern::StrideRead4k,
            PatternArg::StrideWrite4k => bench::Pattern::StrideWrite4k,
        }
    }
}

const SIZE_HELP: &str = "Sizes are bytes, or a number with a K, M, G or T suffix \
(powers of 1024; KiB, MiB, GiB and TiB are accepted too).";

const CHECK_EXIT: &str = "\
Exit codes:
  0  the image and every parent are consistent
  1  the check could not be done (missing file, I/O error)
  2  problems were found; each is printed on its own line";

const COMPARE_EXIT: &str = "\
Exit codes (as qemu-img compare):
  0  the images have the same content
  1  the content differs; the first differing byte offset is printed
  2  an error kept the comparison from finishing";

const COMMIT_HELP: &str = "\
CHILD's own data is copied into its parent, which is opened read-write for
this and flushed. Then CHILD is emptied and re-linked to the changed parent,
so it stays a valid differencing image with the same content (qemu-img's
behaviour; Hyper-V leaves it unusable instead). Images layered on CHILD stay
valid. Any other differencing image made over the same parent no longer
matches it and is refused when opened: the parent changed under it.
A format that cannot empty its images leaves CHILD as it was, which is
reported.";

const BITMAP_HELP: &str = "\
Bitmaps live in a sidecar file next to the image (IMAGE.rehost-bitmaps).
`rehost run` (a writable --disk), `rehost disk bench` and `rehost disk
commit` (into the image) keep them up to date. A write by any other program is
detected from the image's size, modification time and, for VHDX, its
DataWriteGuid, and turns every bitmap to resync-required (every block dirty),
never to clean. After a crash, the blocks of the extents in the activity log
are dirty as well.";

#[derive(Debug, Subcommand)]
pub enum BitmapCommand {
    /// Add a bitmap with every block clean and a new generation.
    #[command(after_help = SIZE_HELP)]
    Add {
        /// Bytes one bit covers: a power of two from 4K to 16M.
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64K")]
        granularity: u64,
        /// Activity-log extents (1 to 505; default 505) used when the
        /// sidecar is created: after a crash, at most this many extents are
        /// reported dirty beyond what was written. Writes scattered over
        /// more than this many extents between flushes are slowed by log
        /// updates.
        #[arg(long, value_name = "N")]
        al_extents: Option<u32>,
        /// Activity-log extent size (a power of two from 64K to 1G;
        /// default 4M) used when the sidecar is created.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        al_extent_size: Option<u64>,
        /// The image file.
        image: PathBuf,
        /// The bitmap's name: 1 to 64 letters, digits, '-', '_' or '.'.
        name: String,
    },
    /// Remove a bitmap.
    Remove {
        /// The image file.
        image: PathBuf,
        /// The bitmap's name.
        name: String,
    },
    /// Mark every block of a bitmap clean and give it a new generation
    /// (after a full copy of the disk was taken).
    Clear {
        /// The image file.
        image: PathBuf,
        /// The bitmap's name.
        name: String,
    },
    /// List the bitmaps: name, granularity, dirty bytes, generation, state
    /// (tracking, or resync-required when continuity was lost).
    List {
        /// Print JSON: {"path", "bitmaps": [{"name", "granularity",
        /// "dirty_bytes", "generation" (32 hex digits), "state"}],
        /// "problem"}.
        #[arg(long)]
        json: bool,
        /// With --json, also each bitmap's dirty byte ranges as
        /// "extents": [[offset, length], ...].
        #[arg(long, requires = "json")]
        extents: bool,
        /// The image file.
        image: PathBuf,
    },
}

const DELTA_HELP: &str = "\
A delta stream holds the blocks of a disk that changed since a dirty
bitmap's generation (or, with --full, every block), each record with a
CRC-32C and zstd-compressed (raw when that does not pay), zero stretches as
zero records, and a trailer over the whole stream. The byte layout is
documented in the rehost-disk crate (module delta).

Generations: an incremental stream starts from its bitmap's generation.
With --clear the bitmap is cleared once the stream is on disk and the
stream moves the replica to the bitmap's new generation; without --clear
the stream is cumulative (the replica stays at the same generation and
takes any later cumulative stream of that bitmap). A --full stream is taken
by any target of the right size: it seeds a replica.

A replica records the generation it holds in TARGET.rehost-replica.
Typical use:
  rehost disk bitmap add disk.vhdx repl
  rehost disk delta export --full --bitmap repl --clear disk.vhdx seed.rhd
  rehost disk delta apply seed.rhd replica.vhdx
  ... the disk is used ...
  rehost disk delta export --bitmap repl --clear disk.vhdx d1.rhd
  rehost disk delta apply d1.rhd replica.vhdx";

const DELTA_EXPORT_HELP: &str = "\
OUT is written as OUT.tmp, synced, then put in place; an existing OUT is
never overwritten. A bitmap in the resync-required state refuses an
incremental export: export with --full (and --clear) instead. The image is
only read, through its whole parent chain; nobody may write it meanwhile.
A progress bar is drawn on stderr when it is a terminal.";

const DELTA_APPLY_HELP: &str = "\
The whole stream is verified first (every checksum, bound and the
trailer); a truncated or damaged stream, one for another disk size, or an
incremental stream whose source generation is not the one TARGET holds
(or whose TARGET was written since its last apply) is refused with the
reason and TARGET is left untouched. The stream is then copied into a
journal next to TARGET (TARGET.rehost-delta-journal) before TARGET is
written, so a crash leaves TARGET as it was or lets the next apply (or
`rehost disk delta recover`) finish the job; until then rehost refuses to
open TARGET. TARGET's dirty bitmaps record every block written. Applying
the same stream twice does nothing the second time.

Exit codes: 0 applied (or already applied), 1 refused or failed.";

const DELTA_INFO_EXIT: &str = "\
Exit codes:
  0  the stream verifies
  1  the file cannot be read or its header is damaged
  2  the header reads but the stream does not verify (the reason is shown)";

#[derive(Debug, Subcommand)]
pub enum DeltaCommand {
    /// Write the blocks changed since a bitmap's generation (or, with
    /// --full, every allocated block) into a delta stream file.
    #[command(after_help = DELTA_EXPORT_HELP)]
    Export {
        /// The dirty bitmap whose changed blocks are exported; with
        /// --full, the bitmap whose generation the stream carries as its
        /// target generation.
        #[arg(long, value_name = "NAME")]
        bitmap: Option<String>,
        /// Clear the bitmap (a new generation, which becomes the stream's
        /// target generation) once the stream is safely on disk.
        #[arg(long, requires = "bitmap")]
        clear: bool,
        /// Export every allocated block (and the rest of the disk as zero
        /// records), with no source generation: seeds a replica.
        #[arg(long)]
        full: bool,
        /// The image to export from (opened read-only).
        image: PathBuf,
        /// The stream file to write; must not exist.
        out: PathBuf,
    },
    /// Apply a delta stream to a replica image, all or nothing.
    #[command(after_help = DELTA_APPLY_HELP)]
    Apply {
        /// The stream file.
        delta: PathBuf,
        /// The replica image (raw, VHD, VHDX or a differencing child).
        target: PathBuf,
    },
    /// Finish an interrupted `delta apply` on TARGET (rolls its journal
    /// forward); does nothing when none is pending.
    Recover {
        /// The replica image.
        target: PathBuf,
    },
    /// Show a stream's header, record counts, sizes, compression ratio and
    /// whether the whole stream verifies.
    #[command(after_help = DELTA_INFO_EXIT)]
    Info {
        /// Print JSON: {"path", "version", "full", "disk_size",
        /// "granularity", "source_generation", "target_generation" (32 hex
        /// digits or null), "stream_id", "created", "image": {"format",
        /// "file_size", "data_write_guid"}, "records", "raw_records",
        /// "zstd_records", "zero_records", "data_bytes", "stored_bytes",
        /// "zero_bytes", "stream_bytes", "compression_ratio", "verified",
        /// "error"}.
        #[arg(long)]
        json: bool,
        /// The stream file.
        delta: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Manage the image's dirty bitmaps (which blocks changed since each
    /// bitmap was added or cleared).
    #[command(subcommand, after_help = BITMAP_HELP)]
    Bitmap(BitmapCommand),
    /// Export, apply and inspect delta streams (the changed blocks of a
    /// disk, for replicas and incremental backups).
    #[command(subcommand, after_help = DELTA_HELP)]
    Delta(DeltaCommand),
    /// Create a new image (raw, VHD or VHDX; fixed, dynamic or differencing).
    #[command(after_help = SIZE_HELP)]
    Create {
        /// Format of the new image. Default: vhdx, or the parent's format
        /// with --parent.
        #[arg(short = 'f', long = "format", value_enum)]
        format: Option<FormatArg>,
        /// fixed: all space reserved up front; dynamic: grows as data is
        /// written (default). Ignored with --parent, which makes a
        /// differencing image.
        #[arg(long, value_enum, default_value = "dynamic")]
        subformat: SubformatArg,
        /// Allocation unit of dynamic and differencing images (a power of
        /// two). Default: 2 MiB for VHD; the parent's for a differencing
        /// image; the VHDX driver's own default for VHDX.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        block_size: Option<u64>,
        /// Make a differencing image over this parent. Its size is the
        /// parent's; the parent is only read, never changed.
        #[arg(long, value_name = "PATH")]
        parent: Option<PathBuf>,
        /// The file to create; an existing file is never overwritten.
        path: PathBuf,
        /// Virtual size of the disk (not with --parent).
        #[arg(value_parser = parse_size)]
        size: Option<u64>,
    },
    /// Show format, subformat, sizes and the whole parent chain of an image.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The image file.
        path: PathBuf,
    },
    /// Check every consistency rule of the image's format, for the image and
    /// each of its parents. Nothing is written.
    #[command(after_help = CHECK_EXIT)]
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The image file.
        path: PathBuf,
    },
    /// Copy an image (through its whole parent chain) into a new flat
    /// image. Ranges that are unallocated or zero in the source are not
    /// written, so the new image is sparse where the source is. A progress
    /// bar is drawn on stderr when it is a terminal.
    #[command(after_help = SIZE_HELP)]
    Convert {
        /// Format of the new image.
        #[arg(short = 'O', long = "output-format", value_enum)]
        output_format: FormatArg,
        /// Subformat of the new image (default: dynamic; raw is always
        /// flat).
        #[arg(long, value_enum)]
        subformat: Option<SubformatArg>,
        /// Block size of a dynamic output image.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        block_size: Option<u64>,
        /// The source image (opened read-only).
        src: PathBuf,
        /// The new image; an existing file is never overwritten.
        dst: PathBuf,
    },
    /// Compare the content two images present (through their chains).
    #[command(after_help = COMPARE_EXIT)]
    Compare {
        /// Images of different sizes are different. Without it, the extra
        /// part of the larger image must read as zeros (like qemu-img).
        #[arg(short = 's', long)]
        strict: bool,
        a: PathBuf,
        b: PathBuf,
    },
    /// Merge a differencing image into its parent.
    #[command(after_help = COMMIT_HELP)]
    Commit {
        /// The differencing image whose data goes into its parent.
        child: PathBuf,
    },
    /// Export the image over NBD until SIGINT or SIGTERM, then flush and
    /// close it. Without --tls-creds anyone who can connect can read (and,
    /// without --read-only, write) the disk; with it only TLS clients (with
    /// a certificate from the CA, unless --tls-verify-peer off) are served.
    /// A unix socket is made mode 0600 and serves only this user (and
    /// root); TCP listens on loopback unless HOST says otherwise.
    #[command(after_help = crate::disk_serve::SERVE_HELP)]
    Serve(crate::disk_serve::ServeArgs),
    /// Run a read or write pattern through rehost's block stack, in this
    /// process, one request at a time, and print MiB/s and IOPS. Writing
    /// patterns change the image and end with a flush (timed). An image
    /// with dirty bitmaps is written through its tracker (they stay up to
    /// date) and the tracker's own cost is printed: activity log updates,
    /// persists and the time spent in the tracker (recording writes and
    /// persisting, without the image's own flush; with --json as
    /// "tracking": {"log_updates", "persists", "seconds"}).
    #[command(after_help = SIZE_HELP)]
    Bench {
        /// seq-read and seq-write: 1 MiB requests from offset 0;
        /// rand-read-4k and rand-write-4k: 4 KiB requests at random 4 KiB
        /// aligned offsets drawn from --seed; stride-read-4k and
        /// stride-write-4k: 4 KiB at every 64 KiB from offset 0.
        #[arg(long, value_enum, default_value = "seq-read")]
        pattern: PatternArg,
        /// Bytes to transfer. Default: the disk's size for sequential
        /// patterns, 64 MiB for random and strided ones.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        bytes: Option<u64>,
        /// Seed of the random offsets (same seed, same offsets).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Flush after every N requests of a writing pattern.
        #[arg(long, value_name = "N")]
        flush_every: Option<u64>,
        /// Append `flushed N` to this file each time a flush has completed
        /// (N requests are then on stable storage).
        #[arg(long, value_name = "PATH")]
        flush_log: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The image file.
        path: PathBuf,
    },
}

/// Parses `512`, `64K`, `1M`, `1.5G`, `2TiB`, ... (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("unknown size suffix {unit:?} in {s:?}")),
    };
    let bad = || format!("{s:?} is not a size");
    if num.is_empty() {
        return Err(bad());
    }
    let value = if num.contains('.') {
        let f: f64 = num.parse().map_err(|_| bad())?;
        let v = f * (1u64 << shift) as f64;
        if !(0.0..1.8e19).contains(&v) || v.fract() != 0.0 {
            return Err(format!("{s:?} is not a whole number of bytes"));
        }
        v as u64
    } else {
        let n: u64 = num.parse().map_err(|_| bad())?;
        n.checked_mul(1u64 << shift)
            .ok_or_else(|| format!("{s:?} is too large"))?
    };
    Ok(value)
}

/// Runs a disk subcommand and returns the process exit code. Errors come
/// back as one line: the block stack's messages already name the file, the
/// structure, the offset and the reason.
pub fn execute(cmd: DiskCommand) -> anyhow::Result<u8> {
    run(cmd).map_err(|e| anyhow::anyhow!("{e}"))
}

fn run(cmd: DiskCommand) -> anyhow::Result<u8> {
    match cmd {
        DiskCommand::Create {
            format,
            subformat,
            block_size,
            parent,
            path,
            size,
        } => create(format, subformat, block_size, parent, &path, size),
        DiskCommand::Info { json, path } => {
            let image = open_ro(&path)?;
            let info = image.info();
            if json {
                println!("{}", info_json(&info));
            } else {
                print_info(&info, 0);
            }
            Ok(0)
        }
        DiskCommand::Check { json, path } => check(&path, json),
        DiskCommand::Bitmap(cmd) => bitmap(cmd),
        DiskCommand::Serve(args) => crate::disk_serve::serve(args),
        DiskCommand::Delta(cmd) => delta_cmd(cmd),
        DiskCommand::Convert {
            output_format,
            subformat,
            block_size,
            src,
            dst,
        } => {
            let source = open_ro(&src)?;
            let format = ImageFormat::from(output_format);
            let options = CreateOptions {
                format,
                subformat: subformat
                    .map(Subformat::from)
                    .unwrap_or_else(|| ops::default_subformat(format)),
                size: 0,
                block_size,
                parent: None,
            };
            let mut bar = ProgressBar::new("converting");
            let stats = ops::convert(source.as_ref(), &dst, &options, &mut |d, t| bar.show(d, t));
            bar.finish();
            let stats = stats?;
            eprintln!(
                "{}: {} bytes of data written ({} read) of a {} byte disk",
                dst.display(),
                stats.bytes_written,
                stats.bytes_read,
                stats.virtual_size
            );
            Ok(0)
        }
        DiskCommand::Compare { strict, a, b } => {
            let result = (|| -> anyhow::Result<ops::Comparison> {
                let ia = open_ro(&a)?;
                let ib = open_ro(&b)?;
                if ia.geometry().size != ib.geometry().size && !strict {
                    eprintln!(
                        "Warning: Image size mismatch! ({}: {} bytes, {}: {} bytes)",
                        a.display(),
                        ia.geometry().size,
                        b.display(),
                        ib.geometry().size
                    );
                }
                let mut bar = ProgressBar::new("comparing");
                let r = ops::compare(ia.as_ref(), ib.as_ref(), strict, &mut |d, t| bar.show(d, t));
                bar.finish();
                Ok(r?)
            })();
            match result {
                Ok(ops::Comparison::Identical) => {
                    println!("Images are identical.");
                    Ok(0)
                }
                Ok(ops::Comparison::DifferAt(off)) => {
                    println!("Content mismatch at offset {off}!");
                    Ok(1)
                }
                Ok(ops::Comparison::SizeMismatch { a: sa, b: sb }) => {
                    println!("Strict mode: Image size mismatch! ({sa} and {sb} bytes)");
                    Ok(1)
                }
                Err(e) => {
                    eprintln!("rehost: {e:#}");
                    Ok(2)
                }
            }
        }
        DiskCommand::Commit { child } => {
            let mut bar = ProgressBar::new("committing");
            let report = ops::commit(&child, &mut |d, t| bar.show(d, t));
            bar.finish();
            let report = report?;
            println!(
                "Image committed: {} bytes of {} merged into {}.",
                report.bytes_copied,
                child.display(),
                report.parent.display()
            );
            if report.child_emptied {
                println!(
                    "{} is now empty and reads through to its parent.",
                    child.display()
                );
            } else {
                println!(
                    "{} was left as it was; it no longer matches its changed parent and should be discarded.",
                    child.display()
                );
            }
            Ok(0)
        }
        DiskCommand::Bench {
            pattern,
            bytes,
            seed,
            flush_every,
            flush_log,
            json,
            path,
        } => {
            let pattern = bench::Pattern::from(pattern);
            let image = rehost_disk::open(
                &path,
                &OpenOptions {
                    read_only: !pattern.is_write(),
                    ..Default::default()
                },
            )?;
            let bytes = bytes.unwrap_or(match pattern {
                bench::Pattern::SeqRead | bench::Pattern::SeqWrite => image.geometry().size,
                _ => 64 << 20,
            });
            let options = bench::BenchOptions {
                pattern,
                bytes,
                seed,
                flush_every,
                flush_log,
            };
            // Writes go through the dirty tracker when the image has
            // bitmaps, so they stay up to date.
            let tracked = pattern.is_write() && dirty::sidecar_path(&path).exists();
            let (r, cost) = if tracked {
                let tracker = DirtyTracker::open_image(
                    std::sync::Arc::from(image),
                    &TrackerOptions::default(),
                )?;
                let r = bench::run(&tracker, &options);
                // Taken before closing: the run ends with a flush, after
                // which closing has nothing more to persist.
                let cost = tracker.cost();
                tracker.close()?;
                (r?, Some(cost))
            } else {
                let r = bench::run(image.as_ref(), &options)?;
                drop(image);
                (r, None)
            };
            if json {
                let tracking = cost.map_or(String::new(), |c| {
                    format!(
                        ",\"tracking\":{{\"log_updates\":{},\"persists\":{},\"seconds\":{:.6}}}",
                        c.log_updates,
                        c.persists,
                        c.seconds()
                    )
                });
                println!(
                    "{{\"pattern\":\"{}\",\"requests\":{},\"bytes\":{},\"seconds\":{:.6},\"mib_per_sec\":{:.2},\"iops\":{:.1}{tracking}}}",
                    pattern.name(),
                    r.requests,
                    r.bytes,
                    r.elapsed.as_secs_f64(),
                    r.mib_per_sec(),
                    r.iops()
                );
            } else {
                println!(
                    "{}: {} requests, {} bytes in {:.3} s: {:.1} MiB/s, {:.0} IOPS",
                    pattern.name(),
                    r.requests,
                    r.bytes,
                    r.elapsed.as_secs_f64(),
                    r.mib_per_sec(),
                    r.iops()
                );
                if let Some(c) = cost {
                    println!(
                        "dirty tracking: {} activity log updates, {} persists, {:.3} s in the tracker",
                        c.log_updates,
                        c.persists,
                        c.seconds()
                    );
                }
            }
            Ok(0)
        }
    }
}

fn bitmap(cmd: BitmapCommand) -> anyhow::Result<u8> {
    // The image is only read; the tracker writes the sidecar.
    let tracker = |image: &Path, opts: &TrackerOptions| -> anyhow::Result<DirtyTracker> {
        Ok(DirtyTracker::open_image(
            std::sync::Arc::from(open_ro(image)?),
            opts,
        )?)
    };
    match cmd {
        BitmapCommand::Add {
            granularity,
            al_extents,
            al_extent_size,
            image,
            name,
        } => {
            let defaults = TrackerOptions::default();
            let opts = TrackerOptions {
                al_capacity: al_extents.unwrap_or(defaults.al_capacity),
                al_extent_size: al_extent_size.unwrap_or(defaults.al_extent_size),
            };
            let t = tracker(&image, &opts)?;
            let info = t.add_bitmap(&name, granularity)?;
            t.close()?;
            println!(
                "{}: bitmap {} added (granularity {}, generation {:032x})",
                image.display(),
                info.name,
                info.granularity,
                info.generation
            );
        }
        BitmapCommand::Remove { image, name } => {
            let t = tracker(&image, &TrackerOptions::default())?;
            t.remove_bitmap(&name)?;
            t.close()?;
        }
        BitmapCommand::Clear { image, name } => {
            let t = tracker(&image, &TrackerOptions::default())?;
            let info = t.clear_bitmap(&name)?;
            t.close()?;
            println!(
                "{}: bitmap {} cleared (generation {:032x})",
                image.display(),
                info.name,
                info.generation
            );
        }
        BitmapCommand::List {
            json,
            extents,
            image,
        } => {
            let size = open_ro(&image)?.geometry().size;
            let loaded = dirty::inspect(&image, size)?;
            let (bitmaps, ranges, problem) = match loaded {
                Some(l) => (l.bitmaps, l.extents, l.problem),
                None => (Vec::new(), Vec::new(), None),
            };
            if json {
                println!(
                    "{{\"path\":{},\"bitmaps\":[{}],\"problem\":{}}}",
                    js(&image.display().to_string()),
                    bitmaps
                        .iter()
                        .zip(&ranges)
                        .map(|(b, r)| bitmap_json(b, extents.then_some(r.as_slice())))
                        .collect::<Vec<_>>()
                        .join(","),
                    problem.as_deref().map(js).unwrap_or_else(|| "null".into())
                );
            } else {
                if let Some(p) = &problem {
                    println!("warning: {p}");
                }
                if bitmaps.is_empty() {
                    println!("{}: no bitmaps", image.display());
                }
                for b in &bitmaps {
                    println!(
                        "{}: granularity {}, {} dirty bytes, generation {:032x}, {}",
                        b.name,
                        b.granularity,
                        b.dirty_bytes,
                        b.generation,
                        b.state.name()
                    );
                }
            }
        }
    }
    Ok(0)
}

fn generation(g: Option<u128>) -> String {
    g.map(|g| format!("{g:032x}"))
        .unwrap_or_else(|| "none".into())
}

fn rate(bytes: u64, secs: f64) -> String {
    format!(
        "{:.1} MiB/s",
        bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
    )
}

fn delta_cmd(cmd: DeltaCommand) -> anyhow::Result<u8> {
    match cmd {
        DeltaCommand::Export {
            bitmap,
            clear,
            full,
            image,
            out,
        } => {
            let started = std::time::Instant::now();
            let mut bar = ProgressBar::new("exporting");
            let r = delta::export(
                &image,
                &out,
                &delta::ExportOptions {
                    bitmap,
                    clear,
                    full,
                },
                &mut |d, t| bar.show(d, t),
            );
            bar.finish();
            let r = r?;
            let secs = started.elapsed().as_secs_f64();
            let c = &r.counts;
            println!(
                "{}: {} records ({} data bytes in {} zstd + {} raw records, stored as {} bytes; {} zero bytes in {} zero records), {} stream bytes for {} {} bytes; source generation {}, target generation {}; {:.3} s, {}",
                out.display(),
                c.records(),
                c.data_bytes,
                c.zstd_records,
                c.raw_records,
                c.stored_bytes,
                c.zero_bytes,
                c.zero_records,
                c.stream_bytes,
                r.extent_bytes,
                if full { "allocated" } else { "dirty" },
                generation(r.header.source_generation),
                generation(r.header.target_generation),
                secs,
                rate(r.extent_bytes, secs)
            );
            Ok(0)
        }
        DeltaCommand::Apply { delta: d, target } => {
            let started = std::time::Instant::now();
            let mut bar = ProgressBar::new("applying");
            let r = delta::apply(&d, &target, &mut |x, t| bar.show(x, t));
            bar.finish();
            let r = r?;
            let secs = started.elapsed().as_secs_f64();
            if let Some(c) = &r.recovered {
                println!(
                    "{}: finished an interrupted apply first ({} records)",
                    target.display(),
                    c.records()
                );
            }
            if r.already_applied {
                println!(
                    "{}: {} was already applied; nothing to do (generation {})",
                    target.display(),
                    d.display(),
                    generation(r.generation)
                );
            } else {
                let c = &r.counts;
                println!(
                    "{}: applied {}: {} records, {} data bytes, {} zero bytes; now at generation {}; {:.3} s, {}",
                    target.display(),
                    d.display(),
                    c.records(),
                    c.data_bytes,
                    c.zero_bytes,
                    generation(r.generation),
                    secs,
                    rate(c.data_bytes + c.zero_bytes, secs)
                );
            }
            Ok(0)
        }
        DeltaCommand::Recover { target } => {
            let mut bar = ProgressBar::new("recovering");
            let r = delta::recover(&target, &mut |x, t| bar.show(x, t));
            bar.finish();
            match r? {
                Some(c) => println!(
                    "{}: interrupted apply finished ({} records)",
                    target.display(),
                    c.records()
                ),
                None => println!("{}: no interrupted apply", target.display()),
            }
            Ok(0)
        }
        DeltaCommand::Info { json, delta: d } => {
            let i = delta::info(&d)?;
            print_delta_info(&d, &i, json);
            Ok(if i.verified.is_ok() { 0 } else { 2 })
        }
    }
}

fn print_delta_info(path: &Path, i: &delta::StreamInfo, json: bool) {
    let h = &i.header;
    let c = &i.counts;
    let ratio = if c.stored_bytes > 0 {
        c.data_bytes as f64 / c.stored_bytes as f64
    } else {
        1.0
    };
    let format = match h.identity.format {
        delta::stream_spec::FORMAT_VHD => "vhd",
        delta::stream_spec::FORMAT_VHDX => "vhdx",
        _ => "raw",
    };
    let guid: String = h
        .identity
        .data_write_guid
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let gen_json = |g: Option<u128>| {
        g.map(|g| format!("\"{g:032x}\""))
            .unwrap_or_else(|| "null".into())
    };
    if json {
        println!(
            "{{\"path\":{},\"version\":{},\"full\":{},\"disk_size\":{},\"granularity\":{},\"source_generation\":{},\"target_generation\":{},\"stream_id\":\"{:032x}\",\"created\":\"{}.{:09}\",\"image\":{{\"format\":\"{format}\",\"file_size\":{},\"data_write_guid\":\"{guid}\"}},\"records\":{},\"raw_records\":{},\"zstd_records\":{},\"zero_records\":{},\"data_bytes\":{},\"stored_bytes\":{},\"zero_bytes\":{},\"stream_bytes\":{},\"compression_ratio\":{ratio:.3},\"verified\":{},\"error\":{}}}",
            js(&path.display().to_string()),
            delta::stream_spec::VERSION,
            h.source_generation.is_none(),
            h.disk_size,
            h.granularity,
            gen_json(h.source_generation),
            gen_json(h.target_generation),
            h.stream_id,
            h.created_sec,
            h.created_nsec,
            h.identity.file_size,
            c.records(),
            c.raw_records,
            c.zstd_records,
            c.zero_records,
            c.data_bytes,
            c.stored_bytes,
            c.zero_bytes,
            c.stream_bytes,
            i.verified.is_ok(),
            i.verified
                .as_ref()
                .err()
                .map(|e| js(e))
                .unwrap_or_else(|| "null".into())
        );
        return;
    }
    println!("stream: {}", path.display());
    println!("version: {}", delta::stream_spec::VERSION);
    println!(
        "kind: {}",
        if h.source_generation.is_none() {
            "full"
        } else {
            "incremental"
        }
    );
    println!("disk size: {} ({} bytes)", human(h.disk_size), h.disk_size);
    println!("granularity: {}", h.granularity);
    println!("source generation: {}", generation(h.source_generation));
    println!("target generation: {}", generation(h.target_generation));
    println!("stream id: {:032x}", h.stream_id);
    println!(
        "created: {}.{:09} (Unix time)",
        h.created_sec, h.created_nsec
    );
    println!(
        "exported image: {format}, file size {}{}",
        h.identity.file_size,
        if h.identity.data_write_guid != [0; 16] {
            format!(", DataWriteGuid {guid}")
        } else {
            String::new()
        }
    );
    println!(
        "records: {} ({} zstd, {} raw, {} zero)",
        c.records(),
        c.zstd_records,
        c.raw_records,
        c.zero_records
    );
    println!(
        "data bytes: {} (stored as {}, compression ratio {ratio:.2})",
        c.data_bytes, c.stored_bytes
    );
    println!("zero bytes: {}", c.zero_bytes);
    println!("stream bytes: {}", c.stream_bytes);
    match &i.verified {
        Ok(()) => println!("verified: yes"),
        Err(e) => println!("verified: no: {e}"),
    }
}

fn bitmap_json(b: &BitmapInfo, extents: Option<&[std::ops::Range<u64>]>) -> String {
    let extents = extents
        .map(|r| {
            let list: Vec<String> = r
                .iter()
                .map(|e| format!("[{},{}]", e.start, e.end - e.start))
                .collect();
            format!(",\"extents\":[{}]", list.join(","))
        })
        .unwrap_or_default();
    format!(
        "{{\"name\":{},\"granularity\":{},\"dirty_bytes\":{},\"generation\":\"{:032x}\",\"state\":{}{extents}}}",
        js(&b.name),
        b.granularity,
        b.dirty_bytes,
        b.generation,
        js(b.state.name())
    )
}

fn open_ro(path: &Path) -> anyhow::Result<Box<dyn DiskImage>> {
    Ok(rehost_disk::open(
        path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )?)
}

fn create(
    format: Option<FormatArg>,
    subformat: SubformatArg,
    block_size: Option<u64>,
    parent: Option<PathBuf>,
    path: &Path,
    size: Option<u64>,
) -> anyhow::Result<u8> {
    let format = match (format, &parent) {
        (Some(f), _) => ImageFormat::from(f),
        (None, Some(p)) => rehost_disk::detect_format(p)?,
        (None, None) => ImageFormat::Vhdx,
    };
    let (size, subformat) = match (&parent, size) {
        (Some(_), Some(_)) => {
            anyhow::bail!(
                "{}: a differencing image takes its size from its parent; drop SIZE",
                path.display()
            )
        }
        (Some(_), None) => (0, Subformat::Differencing),
        (None, Some(s)) => (s, Subformat::from(subformat)),
        (None, None) => anyhow::bail!("{}: SIZE is required without --parent", path.display()),
    };
    rehost_disk::create(
        path,
        &CreateOptions {
            format,
            subformat,
            size,
            block_size,
            parent,
        },
    )?;
    let image = open_ro(path)?;
    let info = image.info();
    println!(
        "Formatting '{}', fmt={} subformat={} size={}{}",
        path.display(),
        info.format.name(),
        info.subformat.name(),
        info.virtual_size,
        info.parent
            .as_ref()
            .map(|p| format!(" parent={}", p.path.display()))
            .unwrap_or_default()
    );
    Ok(0)
}

fn human(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.3} {}", units[u])
            .replace(".000 ", " ")
            .to_string()
    }
}

fn print_info(info: &ImageInfo, depth: usize) {
    let pad = "  ".repeat(depth);
    println!("{pad}image: {}", info.path.display());
    println!("{pad}file format: {}", info.format.name());
    println!("{pad}subformat: {}", info.subformat.name());
    println!(
        "{pad}virtual size: {} ({} bytes)",
        human(info.virtual_size),
        info.virtual_size
    );
    println!(
        "{pad}disk size: {} ({} bytes allocated)",
        human(info.allocated_bytes),
        info.allocated_bytes
    );
    if let Some(bs) = info.block_size {
        println!("{pad}block size: {bs}");
    }
    println!("{pad}logical sector size: {}", info.logical_sector_size);
    println!("{pad}physical sector size: {}", info.physical_sector_size);
    if let Some(parent) = &info.parent {
        println!("{pad}parent: {}", parent.path.display());
        print_info(parent, depth + 1);
    }
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn info_json(info: &ImageInfo) -> String {
    format!(
        "{{\"path\":{},\"format\":{},\"subformat\":{},\"virtual_size\":{},\"block_size\":{},\"logical_sector_size\":{},\"physical_sector_size\":{},\"allocated_bytes\":{},\"parent\":{}}}",
        js(&info.path.display().to_string()),
        js(info.format.name()),
        js(info.subformat.name()),
        info.virtual_size,
        info.block_size.map(|b| b.to_string()).unwrap_or_else(|| "null".into()),
        info.logical_sector_size,
        info.physical_sector_size,
        info.allocated_bytes,
        info.parent
            .as_ref()
            .map(|p| info_json(p))
            .unwrap_or_else(|| "null".into())
    )
}

fn problem_json(p: &Problem) -> String {
    format!(
        "{{\"path\":{},\"structure\":{},\"offset\":{},\"reason\":{}}}",
        js(&p.path.display().to_string()),
        js(&p.structure),
        p.offset,
        js(&p.reason)
    )
}

fn check(path: &Path, json: bool) -> anyhow::Result<u8> {
    let mut checked: Vec<PathBuf> = Vec::new();
    let mut problems: Vec<Problem> = Vec::new();
    match rehost_disk::open(
        path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    ) {
        Ok(image) => {
            let mut layer: Option<&dyn DiskImage> = Some(image.as_ref());
            let mut reopened: Vec<Box<dyn DiskImage>> = Vec::new();
            while let Some(l) = layer {
                let info = l.info();
                checked.push(info.path.clone());
                problems.extend(l.check()?);
                layer = match (l.parent(), &info.parent) {
                    (Some(p), _) => Some(p),
                    // A driver that does not hand out its parent: open the
                    // parent on its own to check it.
                    (None, Some(p)) => {
                        reopened.push(open_ro(&p.path)?);
                        reopened.last().map(|b| b.as_ref())
                    }
                    (None, None) => None,
                };
            }
        }
        // An image too damaged to open is a finding, not a failure to check.
        Err(BlockError::Corrupt {
            path: p,
            structure,
            offset,
            reason,
        }) => problems.push(Problem {
            path: p,
            structure: structure.to_string(),
            offset,
            reason,
        }),
        Err(e @ (BlockError::Open { .. } | BlockError::Damaged { .. })) => problems.push(Problem {
            path: path.to_owned(),
            structure: "image".into(),
            offset: 0,
            reason: e.to_string(),
        }),
        Err(e) => return Err(e.into()),
    }
    if json {
        println!(
            "{{\"path\":{},\"checked\":[{}],\"problems\":[{}]}}",
            js(&path.display().to_string()),
            checked
                .iter()
                .map(|p| js(&p.display().to_string()))
                .collect::<Vec<_>>()
                .join(","),
            problems
                .iter()
                .map(problem_json)
                .collect::<Vec<_>>()
                .join(",")
        );
    } else if problems.is_empty() {
        for p in &checked {
            println!("{}: no problems found", p.display());
        }
    } else {
        for p in &problems {
            println!("{p}");
        }
        println!("{} problem(s) found", problems.len());
    }
    Ok(if problems.is_empty() { 0 } else { 2 })
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
struct ProgressBar {
    label: &'static str,
    enabled: bool,
    last_percent: Option<u64>,
}

impl ProgressBar {
    fn new(label: &'static str) -> Self {
        ProgressBar {
            label,
            enabled: std::io::stderr().is_terminal(),
            last_percent: None,
        }
    }

    fn show(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let percent = (done.saturating_mul(100))
            .checked_div(total)
            .unwrap_or(100)
            .min(100);
        if self.last_percent == Some(percent) {
            return;
        }
        self.last_percent = Some(percent);
        let filled = (percent / 2) as usize;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} [{}{}] {percent:3}%",
            self.label,
            "#".repeat(filled),
            " ".repeat(50 - filled)
        );
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if self.enabled && self.last_percent.is_some() {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("2mb"), Ok(2 << 20));
        assert!(parse_size("1.3").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(human(1 << 30), "1 GiB");
        assert_eq!(human(1536), "1.500 KiB");
        assert_eq!(js("a\"b\\\n"), "\"a\\\"b\\\\\\n\"");
    }
}
