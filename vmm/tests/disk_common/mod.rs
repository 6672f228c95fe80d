//! Helpers of the `rehost disk` end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rehost_disk::{CreateOptions, ImageFormat, OpenOptions, Subformat};

mod served;
#[allow(unused_imports)]
pub use served::Served;

#[path = "../../../disk/src/scratch.rs"]
mod scratch;

pub const REHOST: &str = env!("CARGO_BIN_EXE_rehost");

/// `rehost ARGS...`: (exit code, stdout, stderr).
pub fn rehost(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String, String) {
    let mut cmd = Command::new(REHOST);
    for a in args {
        cmd.arg(a);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("rehost: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `rehost disk bench --pattern PATTERN --bytes BYTES --seed SEED
/// [--json] IMG`, which must succeed; returns stdout. Writes go through the
/// image's dirty tracker when it has bitmaps.
pub fn disk_bench(img: &Path, pattern: &str, bytes: &str, seed: &str, json: bool) -> String {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"disk",
        &"bench",
        &"--pattern",
        &pattern,
        &"--bytes",
        &bytes,
        &"--seed",
        &seed,
    ];
    if json {
        args.push(&"--json");
    }
    args.push(&img);
    rehost_ok(&args)
}

/// `rehost ARGS...`, which must succeed; returns stdout.
pub fn rehost_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let (code, out, err) = rehost(args);
    assert_eq!(
        code,
        0,
        "rehost {:?} failed:\n{out}{err}",
        args.iter()
            .map(|a| a.as_ref().to_owned())
            .collect::<Vec<_>>()
    );
    assert!(!err.contains("panicked"), "{err}");
    out
}

pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Whether `qemu-img` is installed for the cross-checks. With `CI=true`
/// its absence fails the test; elsewhere the test is reported skipped
/// (its cross-checks against qemu-img did not run) and goes on without
/// them.
pub fn have_qemu() -> bool {
    have_tools(
        &["qemu-img"],
        "qemu-img not installed: its cross-checks did not run (apt-get install qemu-utils)",
    )
}

/// Whether every tool answers `--version`. With `CI=true` a missing one
/// fails the test; elsewhere the test is reported skipped with `why`.
pub fn have_tools(tools: &[&str], why: &str) -> bool {
    let ok = tools.iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why} (scripts/setup installs it)");
        }
        skip(why);
    }
    ok
}

#[path = "../../../tests/src/skip_record.rs"]
mod skip_record;

/// [`skip_record::skip`] for the running test.
pub fn skip(reason: &str) {
    skip_record::skip("main", reason);
}

/// `qemu-img compare -f FMT -F raw IMG RAW` (FMT as QEMU names it: vpc,
/// vhdx) must find the same content.
pub fn assert_qemu_reads_as(format: ImageFormat, img: &Path, raw: &Path, what: &str) {
    let qfmt = match format {
        ImageFormat::Vhd => "vpc",
        f => f.name(),
    };
    let o = Command::new("qemu-img")
        .args(["compare", "-f", qfmt, "-F", "raw"])
        .arg(img)
        .arg(raw)
        .output()
        .unwrap();
    assert!(o.status.success(), "{what}: qemu-img compare: {o:?}");
}

pub fn tempdir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

pub fn ext(format: ImageFormat) -> &'static str {
    format.name()
}

/// A scratch directory for tests that only kill processes (SIGKILL), never
/// need stable storage: on tmpfs when it has room, else under the target
/// directory (see the scratch module for why).
pub fn kill_only_scratch_dir() -> tempfile::TempDir {
    scratch::tmpfs_dir(4 << 30).unwrap_or_else(tempdir)
}

/// Whether rehost can create and open images of `format` yet. A format
/// whose driver is still a stub reports "not supported"; anything else is
/// a failure of the test.
pub fn format_works(format: ImageFormat, dir: &Path) -> bool {
    let probe = dir.join(format!("probe.{}", ext(format)));
    let r = rehost_disk::create(
        &probe,
        &CreateOptions {
            format,
            subformat: Subformat::Dynamic,
            size: 8 << 20,
            block_size: None,
            parent: None,
        },
    )
    .and_then(|_| {
        rehost_disk::open(
            &probe,
            &OpenOptions {
                read_only: false,
                ..Default::default()
            },
        )
        .map(|_| ())
    });
    let _ = std::fs::remove_file(&probe);
    match r {
        Ok(()) => true,
        Err(rehost_disk::BlockError::Unsupported { reason, .. })
            if reason.contains("not supported yet") =>
        {
            skip(&format!("{}: {reason}", format.name()));
            false
        }
        Err(e) => panic!("{}: {e}", format.name()),
    }
}

/// Writes through the library (the CLI has no write command).
pub fn write(path: &Path, writes: &[(u64, Vec<u8>)]) {
    let d = rehost_disk::open(
        path,
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
    )
    .unwrap();
    for (off, data) in writes {
        d.write_at(*off, data).unwrap();
    }
    d.flush().unwrap();
}

pub fn read_all(path: &Path) -> Vec<u8> {
    let d = rehost_disk::open(
        path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut buf = vec![0u8; d.geometry().size as usize];
    d.read_at(0, &mut buf).unwrap();
    buf
}
