//! Test scratch space on tmpfs. Shared by the disk crate's unit tests and
//! the `rehost disk` end-to-end tests (included there by path).
//!
//! Tests whose files need no real stable storage (crashes simulated in the
//! process, or processes killed with SIGKILL, whose writes are in the page
//! cache on any file system) see the same files on tmpfs, without the cost
//! of every fsync and of freeing the extents of every removed image, which
//! on a disk file system take most of their time.

use std::path::Path;
use std::process::Command;

/// A new directory on tmpfs (`/dev/shm`) when it exists and `df` says it
/// has at least `room` bytes available; `None` otherwise (a container's
/// small default /dev/shm, no tmpfs at all).
pub fn tmpfs_dir(room: u64) -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return None;
    }
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(shm)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    if avail < room {
        return None;
    }
    tempfile::tempdir_in(shm).ok()
}
