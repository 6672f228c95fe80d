//! The host files under images and dirty-bitmap sidecars.
//!
//! Every change the block stack makes to a host file or to a directory goes
//! through [`HostFile`] or the functions of this module. In release builds
//! they are the plain system calls. In test builds they also go through the
//! crash simulator ([`sim`]), so that the crash tests of every format and of
//! the sidecar stop a workload at any file operation and then model what a
//! killed process or a power loss leaves on disk.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A host file. Reads go straight to the file; writes, size changes, hole
/// punches and syncs are the operations the crash simulator counts.
#[derive(Debug)]
pub(crate) struct HostFile {
    file: File,
}

impl HostFile {
    pub fn new(file: File) -> HostFile {
        HostFile { file }
    }

    /// The underlying file, for locks and reads only: every change must go
    /// through the methods of [`HostFile`].
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn metadata(&self) -> io::Result<Metadata> {
        self.file.metadata()
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(test)]
        sim::before_write(&self.file, offset, buf)?;
        self.file.write_all_at(buf, offset)
    }

    pub fn set_len(&self, len: u64) -> io::Result<()> {
        #[cfg(test)]
        sim::before_set_len(&self.file, len)?;
        self.file.set_len(len)
    }

    /// Deallocates `len` bytes at `offset` (they read as zeros afterwards)
    /// without changing the file's length.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        use vmm_sys_util::fallocate::{fallocate, FallocateMode};
        #[cfg(test)]
        sim::before_punch(&self.file, offset, len)?;
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len).map_err(io::Error::from)
    }

    pub fn set_modified(&self, t: std::time::SystemTime) -> io::Result<()> {
        #[cfg(test)]
        sim::tick()?;
        self.file.set_modified(t)
    }

    /// fdatasync: the data and the size reach stable storage.
    pub fn sync_data(&self) -> io::Result<()> {
        #[cfg(test)]
        sim::before_sync(&self.file)?;
        self.file.sync_data()
    }

    /// fsync: data and every piece of metadata of the file.
    pub fn sync_all(&self) -> io::Result<()> {
        #[cfg(test)]
        sim::before_sync(&self.file)?;
        self.file.sync_all()
    }
}

/// Opens `path` read-write, creating it when it does not exist and
/// emptying it when it does.
pub(crate) fn create_truncated(path: &Path) -> io::Result<HostFile> {
    #[cfg(test)]
    let existed = {
        sim::tick()?;
        path.exists()
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    #[cfg(test)]
    if !existed {
        sim::created(path);
    }
    let file = HostFile::new(file);
    file.set_len(0)?;
    Ok(file)
}

/// Renames `from` to `to`, replacing `to`. Durable only once the directory
/// is synced ([`sync_dir`]).
pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(test)]
    let displaced = sim::before_rename(to)?;
    std::fs::rename(from, to)?;
    #[cfg(test)]
    sim::renamed(from, to, displaced);
    Ok(())
}

/// Removes the file `path`. Durable only once its directory is synced
/// ([`sync_dir`]).
pub(crate) fn remove_file(path: &Path) -> io::Result<()> {
    #[cfg(test)]
    let kept = sim::before_remove(path)?;
    std::fs::remove_file(path)?;
    #[cfg(test)]
    sim::removed(path, kept);
    Ok(())
}

/// Writes a [`HostFile`] from its start onwards, one write after another:
/// an [`io::Write`] for buffered writers of whole files.
#[derive(Debug)]
pub(crate) struct Appender<'a> {
    file: &'a HostFile,
    at: u64,
}

impl<'a> Appender<'a> {
    pub fn new(file: &'a HostFile) -> Appender<'a> {
        Appender { file, at: 0 }
    }
}

impl io::Write for Appender<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all_at(buf, self.at)?;
        self.at += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// fsyncs the directory `dir`, making the creations, renames and removals
/// in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    sim::tick()?;
    File::open(dir)?.sync_all()?;
    #[cfg(test)]
    sim::dir_synced(dir);
    Ok(())
}

/// The crash simulator of the test builds.
///
/// A test starts a [`sim::Sim`] on its thread; from then on every file
/// operation of this module on that thread (write, size change, hole punch,
/// file or directory sync, creation, rename, removal) is counted, and after the
/// chosen number every further one fails, as if the process had died
/// there. The simulator remembers every change not yet made durable: file
/// contents in 4 KiB pieces (with their old bytes) and size changes until
/// the file's next sync, creations and renames until the next sync of
/// their directory, and so do removals. Ending the simulation then models the crash:
///
/// - [`sim::Sim::kill`]: the process died; everything it wrote stays (the
///   page cache survives a process).
/// - [`sim::Sim::power_loss`]: the machine lost power; every change not
///   yet durable is undone, then each is redone or not as the caller's
///   `keep` decides (in the order they were made): the storage may have
///   written any subset of its pieces, and a rename or creation not
///   followed by a directory sync may or may not have happened.
///
/// File modification times are left as they were at the crash.
#[cfg(test)]
pub(crate) mod sim {
    use std::cell::RefCell;
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::path::{Path, PathBuf};

    thread_local! {
        static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
    }

    #[derive(Debug, Default)]
    struct World {
        /// File operations left before the crash (`None`: never).
        left: Option<u64>,
        crashed: bool,
        /// File operations performed.
        ops: u64,
        files: Vec<FileRecord>,
        dir_ops: Vec<DirOp>,
        hidden: u64,
    }

    #[derive(Debug)]
    struct FileRecord {
        key: (u64, u64),
        handle: File,
        changes: Vec<Change>,
    }

    #[derive(Debug)]
    enum Change {
        Write {
            offset: u64,
            old: Vec<u8>,
            new: Vec<u8>,
        },
        Len {
            old: u64,
            new: u64,
        },
    }

    #[derive(Debug)]
    enum DirOp {
        Create {
            path: PathBuf,
        },
        /// `displaced`: a second name, made before the rename, of the file
        /// `to` replaced (so that undoing the rename can bring it back).
        Rename {
            from: PathBuf,
            to: PathBuf,
            displaced: Option<PathBuf>,
        },
        /// `kept`: a second name, made before the removal, of the removed
        /// file (so that undoing the removal can bring it back).
        Remove {
            path: PathBuf,
            kept: PathBuf,
        },
    }

    impl DirOp {
        fn dir(&self) -> Option<&Path> {
            match self {
                DirOp::Create { path } => path.parent(),
                DirOp::Rename { to, .. } => to.parent(),
                DirOp::Remove { path, .. } => path.parent(),
            }
        }
    }

    fn crashed_err() -> io::Error {
        io::Error::other("injected crash (test)")
    }

    fn with<T>(f: impl FnOnce(&mut World) -> T) -> Option<T> {
        WORLD.with(|w| w.borrow_mut().as_mut().map(f))
    }

    impl World {
        fn tick(&mut self) -> io::Result<()> {
            if self.crashed {
                return Err(crashed_err());
            }
            match &mut self.left {
                Some(0) => {
                    self.crashed = true;
                    return Err(crashed_err());
                }
                Some(n) => *n -= 1,
                None => {}
            }
            self.ops += 1;
            Ok(())
        }

        fn record(&mut self, file: &File) -> io::Result<&mut FileRecord> {
            let m = file.metadata()?;
            let key = (m.dev(), m.ino());
            let i = match self.files.iter().position(|r| r.key == key) {
                Some(i) => i,
                None => {
                    self.files.push(FileRecord {
                        key,
                        handle: file.try_clone()?,
                        changes: Vec::new(),
                    });
                    self.files.len() - 1
                }
            };
            Ok(&mut self.files[i])
        }

        fn hidden_name(&mut self, near: &Path) -> PathBuf {
            self.hidden += 1;
            let mut s = near.as_os_str().to_owned();
            s.push(format!(".crashsim-{}", self.hidden));
            PathBuf::from(s)
        }
    }

    impl FileRecord {
        fn write(&mut self, offset: u64, new: &[u8]) -> io::Result<()> {
            let len = self.handle.metadata()?.len();
            let end = offset + new.len() as u64;
            if end > len {
                self.changes.push(Change::Len { old: len, new: end });
            }
            let mut at = 0usize;
            while at < new.len() {
                let off = offset + at as u64;
                let n = ((4096 - off % 4096) as usize).min(new.len() - at);
                let mut old = vec![0u8; n];
                let mut got = 0;
                while got < n {
                    match self.handle.read_at(&mut old[got..], off + got as u64)? {
                        0 => break,
                        k => got += k,
                    }
                }
                self.changes.push(Change::Write {
                    offset: off,
                    old,
                    new: new[at..at + n].to_vec(),
                });
                at += n;
            }
            Ok(())
        }
    }

    pub(super) fn tick() -> io::Result<()> {
        with(|w| w.tick()).unwrap_or(Ok(()))
    }

    pub(super) fn before_write(file: &File, offset: u64, buf: &[u8]) -> io::Result<()> {
        with(|w| {
            w.tick()?;
            w.record(file)?.write(offset, buf)
        })
        .unwrap_or(Ok(()))
    }

    pub(super) fn before_punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
        with(|w| {
            w.tick()?;
            let r = w.record(file)?;
            let n = len.min(r.handle.metadata()?.len().saturating_sub(offset));
            r.write(offset, &vec![0u8; n as usize])
        })
        .unwrap_or(Ok(()))
    }

    pub(super) fn before_set_len(file: &File, len: u64) -> io::Result<()> {
        with(|w| {
            w.tick()?;
            let r = w.record(file)?;
            let old = r.handle.metadata()?.len();
            r.changes.push(Change::Len { old, new: len });
            Ok(())
        })
        .unwrap_or(Ok(()))
    }

    pub(super) fn before_sync(file: &File) -> io::Result<()> {
        with(|w| {
            w.tick()?;
            w.record(file)?.changes.clear();
            Ok(())
        })
        .unwrap_or(Ok(()))
    }

    pub(super) fn created(path: &Path) {
        with(|w| {
            w.dir_ops.push(DirOp::Create {
                path: path.to_owned(),
            })
        });
    }

    /// Counts the rename and keeps a second name of the file it replaces.
    pub(super) fn before_rename(to: &Path) -> io::Result<Option<PathBuf>> {
        with(|w| {
            w.tick()?;
            if !to.exists() {
                return Ok(None);
            }
            let hidden = w.hidden_name(to);
            std::fs::hard_link(to, &hidden)?;
            Ok(Some(hidden))
        })
        .unwrap_or(Ok(None))
    }

    pub(super) fn renamed(from: &Path, to: &Path, displaced: Option<PathBuf>) {
        with(|w| {
            w.dir_ops.push(DirOp::Rename {
                from: from.to_owned(),
                to: to.to_owned(),
                displaced,
            })
        });
    }

    /// Counts the removal and keeps a second name of the file.
    pub(super) fn before_remove(path: &Path) -> io::Result<Option<PathBuf>> {
        with(|w| {
            w.tick()?;
            let kept = w.hidden_name(path);
            std::fs::hard_link(path, &kept)?;
            Ok(Some(kept))
        })
        .unwrap_or(Ok(None))
    }

    pub(super) fn removed(path: &Path, kept: Option<PathBuf>) {
        if let Some(kept) = kept {
            with(|w| {
                w.dir_ops.push(DirOp::Remove {
                    path: path.to_owned(),
                    kept,
                })
            });
        }
    }

    pub(super) fn dir_synced(dir: &Path) {
        with(|w| {
            let (done, pending) = std::mem::take(&mut w.dir_ops)
                .into_iter()
                .partition(|op| op.dir() == Some(dir));
            w.dir_ops = pending;
            forget(done);
        });
    }

    /// Drops the second names kept for undoing `ops`.
    fn forget(ops: Vec<DirOp>) {
        for op in ops {
            match op {
                DirOp::Rename {
                    displaced: Some(d), ..
                }
                | DirOp::Remove { kept: d, .. } => {
                    let _ = std::fs::remove_file(d);
                }
                _ => {}
            }
        }
    }

    /// A running simulation on this thread; dropping it is [`Sim::kill`].
    #[derive(Debug)]
    pub(crate) struct Sim(());

    impl Sim {
        /// Starts counting file operations; after `crash_after` of them
        /// (`None`: never) every further one fails.
        pub fn start(crash_after: Option<u64>) -> Sim {
            WORLD.with(|w| {
                let mut w = w.borrow_mut();
                assert!(w.is_none(), "a crash simulation is already running");
                *w = Some(World {
                    left: crash_after,
                    ..World::default()
                });
            });
            Sim(())
        }

        /// Whether the crash point was reached.
        pub fn crashed(&self) -> bool {
            with(|w| w.crashed).unwrap_or(false)
        }

        /// Crashes now: every further file operation fails.
        pub fn crash_now(&self) {
            with(|w| w.crashed = true);
        }

        fn take(&self) -> World {
            WORLD.with(|w| w.borrow_mut().take()).unwrap_or_default()
        }

        /// The process died: what it wrote stays.
        pub fn kill(self) {
            drop(self);
        }

        /// The power failed. Returns the number of undurable changes the
        /// storage had to choose from.
        pub fn power_loss(self, mut keep: impl FnMut(usize) -> bool) -> usize {
            let w = self.take();
            let mut i = 0usize;
            for r in &w.files {
                let mtime = r.handle.metadata().and_then(|m| m.modified()).ok();
                for c in r.changes.iter().rev() {
                    match c {
                        Change::Write { offset, old, .. } => {
                            r.handle.write_all_at(old, *offset).unwrap()
                        }
                        Change::Len { old, .. } => r.handle.set_len(*old).unwrap(),
                    }
                }
                for c in &r.changes {
                    i += 1;
                    if !keep(i - 1) {
                        continue;
                    }
                    match c {
                        Change::Write { offset, new, .. } => {
                            r.handle.write_all_at(new, *offset).unwrap()
                        }
                        Change::Len { new, .. } => r.handle.set_len(*new).unwrap(),
                    }
                }
                if let Some(t) = mtime {
                    r.handle.set_modified(t).unwrap();
                }
            }
            // Directory entries: undo every creation and rename not made
            // durable (a created file moves to a hidden name, so that
            // redoing it can bring the same file back), then redo those
            // the storage kept.
            let mut hidden_for_create = Vec::new();
            let mut n = 0u64;
            for op in w.dir_ops.iter().rev() {
                match op {
                    DirOp::Create { path } => {
                        n += 1;
                        let mut s = path.as_os_str().to_owned();
                        s.push(format!(".crashsim-created-{n}"));
                        let hidden = PathBuf::from(s);
                        if path.exists() {
                            std::fs::rename(path, &hidden).unwrap();
                            hidden_for_create.push(Some(hidden));
                        } else {
                            hidden_for_create.push(None);
                        }
                    }
                    DirOp::Rename {
                        from,
                        to,
                        displaced,
                    } => {
                        if to.exists() {
                            std::fs::rename(to, from).unwrap();
                        }
                        if let Some(d) = displaced {
                            std::fs::rename(d, to).unwrap();
                        }
                    }
                    DirOp::Remove { path, kept } => {
                        if !path.exists() {
                            std::fs::hard_link(kept, path).unwrap();
                        }
                    }
                }
            }
            hidden_for_create.reverse();
            let mut creates = hidden_for_create.into_iter();
            for op in &w.dir_ops {
                let kept = keep(i);
                i += 1;
                match op {
                    DirOp::Create { path } => {
                        if let Some(hidden) = creates.next().flatten() {
                            if kept {
                                std::fs::rename(&hidden, path).unwrap();
                            } else {
                                std::fs::remove_file(&hidden).unwrap();
                            }
                        }
                    }
                    DirOp::Rename { from, to, .. } => {
                        if kept && from.exists() {
                            std::fs::rename(from, to).unwrap();
                        }
                    }
                    DirOp::Remove { path, kept: second } => {
                        if kept && path.exists() {
                            std::fs::remove_file(path).unwrap();
                        }
                        std::fs::remove_file(second).unwrap();
                    }
                }
            }
            i
        }
    }

    impl Drop for Sim {
        fn drop(&mut self) {
            let w = self.take();
            forget(w.dir_ops);
        }
    }

    /// How a simulated crash ends.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Crash {
        /// The process dies: everything written so far persists.
        Kill,
        /// The power fails: nothing made durable since the last sync
        /// persists...
        LoseAll,
        /// ...or an arbitrary subset of it (4 KiB pieces, size changes,
        /// creations and renames), chosen from a seed.
        LoseSome,
    }

    impl Crash {
        /// The crashes to try at each crash point, each with the seed to
        /// end it with (given the point's number `n`): a kill, a power loss
        /// keeping nothing, and
        /// `REHOST_CRASH_SUBSETS` (default 1) different subsets kept.
        pub fn at_point(n: u64) -> Vec<(Crash, u64)> {
            let subsets = std::env::var("REHOST_CRASH_SUBSETS")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            let mut out = vec![(Crash::Kill, n), (Crash::LoseAll, n)];
            out.extend((0..subsets).map(|i| (Crash::LoseSome, n ^ (i << 32))));
            out
        }

        /// Crashes `sim` now (if it did not already), closes `still_open`
        /// (whatever has the files open: its file operations fail, as the
        /// crash came first) and ends the simulation this way. Returns the
        /// number of changes that were not durable.
        pub fn end<T>(self, sim: Sim, seed: u64, still_open: T) -> usize {
            sim.crash_now();
            drop(still_open);
            match self {
                Crash::Kill => {
                    sim.kill();
                    0
                }
                Crash::LoseAll => sim.power_loss(|_| false),
                Crash::LoseSome => {
                    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    sim.power_loss(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x & 1 == 1
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sim::Sim;
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// A sidecar-style replacement: the new file is written and fsynced,
    /// renamed over the old one, and the directory synced only if `sync`.
    fn replace(d: &Path, sync: bool) {
        let tmp = d.join("f.tmp");
        let f = create_truncated(&tmp).unwrap();
        f.write_all_at(b"new", 0).unwrap();
        f.sync_all().unwrap();
        rename(&tmp, &d.join("f")).unwrap();
        if sync {
            sync_dir(d).unwrap();
        }
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_rename_without_a_directory_sync_may_be_lost() {
        let d = dir();
        std::fs::write(d.path().join("f"), b"old").unwrap();
        let sim = Sim::start(None);
        replace(d.path(), false);
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"new");
        sim.power_loss(|_| false);
        // Neither the rename nor the creation of the new file happened.
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"old");
        assert_eq!(names(d.path()), ["f"]);

        let sim = Sim::start(None);
        replace(d.path(), false);
        sim.power_loss(|_| true);
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"new");
        assert_eq!(names(d.path()), ["f"]);
    }

    #[test]
    fn a_synced_directory_keeps_its_rename() {
        let d = dir();
        std::fs::write(d.path().join("f"), b"old").unwrap();
        let sim = Sim::start(None);
        replace(d.path(), true);
        sim.power_loss(|_| false);
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"new");
        assert_eq!(names(d.path()), ["f"]);
    }

    fn open_rw(path: &std::path::Path) -> HostFile {
        HostFile::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap(),
        )
    }

    #[test]
    fn unsynced_pieces_are_kept_as_chosen_and_synced_ones_always() {
        let d = dir();
        let path = d.path().join("img");
        std::fs::write(&path, vec![1u8; 8192]).unwrap();
        let f = open_rw(&path);
        let sim = Sim::start(None);
        f.write_all_at(&[2u8; 4096], 0).unwrap();
        f.sync_data().unwrap();
        // Two pieces and an extension of the file, then the power fails
        // keeping only the second piece.
        f.write_all_at(&[3u8; 8192], 0).unwrap();
        f.write_all_at(&[4u8; 4096], 8192).unwrap();
        let mut i = 0;
        let n = sim.power_loss(|_| {
            i += 1;
            i == 2
        });
        assert_eq!(n, 4, "two pieces, one size change, one piece");
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 8192);
        assert!(got[..4096].iter().all(|&b| b == 2), "synced data lost");
        assert!(got[4096..].iter().all(|&b| b == 3));
    }

    #[test]
    fn a_removal_without_a_directory_sync_may_be_lost() {
        let d = dir();
        let f = d.path().join("f");
        for (sync, keep, there) in [
            (false, false, true),
            (false, true, false),
            (true, false, false),
        ] {
            std::fs::write(&f, b"journal").unwrap();
            let sim = Sim::start(None);
            remove_file(&f).unwrap();
            if sync {
                sync_dir(d.path()).unwrap();
            }
            assert!(!f.exists());
            sim.power_loss(|_| keep);
            assert_eq!(f.exists(), there, "sync {sync} keep {keep}");
            if there {
                assert_eq!(std::fs::read(&f).unwrap(), b"journal");
            }
            // No second name is left behind.
            let want: &[&str] = if there { &["f"] } else { &[] };
            assert_eq!(names(d.path()), want, "sync {sync} keep {keep}");
        }
    }

    #[test]
    fn after_the_crash_point_every_operation_fails() {
        let d = dir();
        let path = d.path().join("img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let f = open_rw(&path);
        let sim = Sim::start(Some(2));
        f.write_all_at(b"a", 0).unwrap();
        f.sync_data().unwrap();
        assert!(!sim.crashed());
        assert!(f.write_all_at(b"b", 1).is_err());
        assert!(sim.crashed());
        assert!(f.sync_data().is_err());
        assert!(rename(&path, &d.path().join("x")).is_err());
        assert!(remove_file(&path).is_err());
        sim.kill();
        assert_eq!(&std::fs::read(&path).unwrap()[..2], b"a\0");
    }
}
