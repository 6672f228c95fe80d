//! Helpers shared by the disk integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether `qemu-img` and `qemu-io` (Debian `qemu-utils`) are installed.
/// With `CI=true` their absence fails the test; elsewhere the test says it
/// is skipped and returns early.
pub fn have_qemu(test: &str) -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: qemu-img/qemu-io not installed (apt-get install qemu-utils)");
        }
        skip(&format!(
            "{test}: qemu-img/qemu-io not installed (apt-get install qemu-utils)"
        ));
    }
    ok
}

#[path = "../../../tests/src/skip_record.rs"]
mod skip_record;

/// [`skip_record::skip`] for the running test.
pub fn skip(reason: &str) {
    skip_record::skip("main", reason);
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// Runs a command and returns (exit code, stdout + stderr).
pub fn run_status(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn sha256_file(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_string()
}

pub fn sha256_bytes(dir: &Path, bytes: &[u8]) -> String {
    let p = dir.join(".sha-input");
    std::fs::write(&p, bytes).unwrap();
    let s = sha256_file(&p);
    std::fs::remove_file(&p).unwrap();
    s
}

/// The project's shared folder of third-party samples: `REHOST_SAMPLES`
/// when set, else `shared/samples` beside the checkout, else the
/// machine-wide `/work/shared/samples` (for a clone made elsewhere).
pub fn samples_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REHOST_SAMPLES") {
        return PathBuf::from(dir);
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/samples");
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared/samples")
}

/// Decompresses a sample into `dir` and returns its path; the original is
/// only read.
pub fn sample(dir: &Path, name: &str) -> PathBuf {
    let src = samples_dir().join(format!("{name}.bz2"));
    assert!(
        src.exists(),
        "sample {} is missing (set REHOST_SAMPLES to the folder of samples)",
        src.display()
    );
    let dst = dir.join(name);
    let data = Command::new("bzip2").arg("-dc").arg(&src).output().unwrap();
    assert!(data.status.success());
    std::fs::write(&dst, &data.stdout).unwrap();
    dst
}

/// A fresh temporary directory under the target directory.
pub fn tempdir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}
