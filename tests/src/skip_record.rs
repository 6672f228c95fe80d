//! The skip record `scripts/test` counts: one file, std only, so that the
//! test crates that cannot depend on `rehost-tests` (disk's and vmm's own
//! integration tests) include it with `#[path]` and write the same record.

/// The environment variable naming the file `scripts/test` collects skip
/// records in.
pub const SKIP_LOG_ENV: &str = "REHOST_SKIP_LOG";

/// The running test's name as libtest reports it, prefixed with its test
/// binary (`firmware_boot::seabios_posts`); `fallback` when not on a test
/// thread.
pub fn current_test(fallback: &str) -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
            _ => stem,
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => fallback.to_owned(),
    };
    format!("{binary}::{test}")
}

/// Reports that the running test skips what it checks (all of it, or the
/// part named in `reason`): a `SKIPPED: <binary>::<test>: <reason>` line on
/// stderr and, when `scripts/test` set [`SKIP_LOG_ENV`], the same line
/// appended to that file, so that the test is counted and listed as
/// skipped instead of passed. `test` names it when it is not called on
/// the test's own thread.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED: {}: {reason}", current_test(test));
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        // The whole line in one write: with O_APPEND it cannot interleave
        // with the record of a test running on another thread (writeln!
        // may write the line and its newline separately).
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            panic!(
                "{line}; recording it in {}: {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}
