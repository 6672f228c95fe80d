//! Shared helpers for rehost's end-to-end tests: running the program under
//! test against real guests, building guest artifacts from `resources/`,
//! and deciding honestly when a test cannot run on this host.

mod skip_record;
pub use skip_record::{skip, SKIP_LOG_ENV};

pub mod display;
pub mod int13_bench;
pub mod pki;
pub mod qmp;
pub mod storage;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Where generated guest artifacts are cached (under `target/`, never in
/// git).
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("guest-artifacts")
}

/// are installed, so a missing one is a failure rather than a skip.
pub fn on_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// [`skip`], except under `CI=true`, where what is missing must be there
/// and the test fails instead.
pub fn skip_unless_ci(test: &str, reason: &str) {
    if on_ci() {
        panic!("{test}: {reason} (required under CI=true)");
    }
    skip(test, reason);
}

/// True when `/dev/kvm` can be opened. Otherwise the test is reported
/// skipped ([`skip`]), or fails under `CI=true`: CI machines have it.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip_unless_ci(test, &format!("needs /dev/kvm: {e}"));
            false
        }
    }
}

/// True when the host can run 64-bit guests (hardware virtualization).
/// The PVM backend cannot, whatever /proc/cpuinfo says.
pub fn hardware_virtualization() -> bool {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return false;
    }
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")))
        })
        .unwrap_or(false)
}

/// The skip line for tests that need hardware virtualization.
pub const NO_HW_VIRT: &str = "skipped: no hardware virtualization (KVM backend is PVM)";

/// Builds the test option ROMs (resources/build-roms.sh) once per process.
pub fn roms_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = artifacts_dir().join("roms");
        let status = Command::new(workspace_root().join("resources/build-roms.sh"))
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .expect("running resources/build-roms.sh");
        assert!(status.success(), "resources/build-roms.sh failed");
        out
    })
    .clone()
}

pub fn rom(name: &str) -> PathBuf {
    let p = roms_dir().join(format!("{name}.rom"));
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// A running rehost whose stdout (the COM1 console with `--com1 stdio`)
/// and stderr are collected as they arrive.
pub struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    started: Instant,
}

fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

impl Running {
    pub fn start(bin: &str, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until stdout contains `text` `count` times; false on timeout
    /// or if the process ended first.
    pub fn wait_for(&mut self, text: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().matches(text).count() >= count {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                // Let the reader threads drain what is left.
                std::thread::sleep(Duration::from_millis(50));
                return self.stdout().matches(text).count() >= count;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`Running::wait_for`] that must succeed: panics with what COM1
    /// (stdout) and stderr hold.
    pub fn expect(&mut self, text: &str, count: usize, timeout: Duration) {
        assert!(
            self.wait_for(text, count, timeout),
            "no {text:?} (x{count}) on COM1: {:?}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
    }

    /// Waits for the process to exit, which it must with `code` within
    /// `timeout`.
    pub fn expect_exit(&mut self, code: i32, timeout: Duration) {
        let status = self.wait(timeout);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(code),
            "stdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
    }

    /// Waits for the process to exit; kills it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs rehost to completion (or `timeout`) and returns its exit code
/// (`None` if killed), stdout and stderr.
pub fn run(bin: &str, args: &[&str], timeout: Duration) -> (Option<i32>, String, String) {
    let mut r = Running::start(bin, args);
    let status = r.wait(timeout);
    (status.and_then(|s| s.code()), r.stdout(), r.stderr())
}

/// `rehost run` with 64 MiB and the test option ROM `rom_name` (see
/// [`rom`]), then `more` options.
fn rom_args(rom_name: &str, more: &[&str]) -> Vec<String> {
    let rom = rom(rom_name);
    let mut args: Vec<String> = ["run", "--memory", "64M", "--option-rom"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(rom.to_string_lossy().into_owned());
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

/// Starts rehost on the test option ROM `rom_name` with 64 MiB and `more`
/// options.
pub fn start_rom(bin: &str, rom_name: &str, more: &[&str]) -> Running {
    let args = rom_args(rom_name, more);
    Running::start(bin, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// [`run`] on the test option ROM `rom_name` with 64 MiB and `more` options.
pub fn run_rom(
    bin: &str,
    rom_name: &str,
    more: &[&str],
    timeout: Duration,
) -> (Option<i32>, String, String) {
    let args = rom_args(rom_name, more);
    run(
        bin,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        timeout,
    )
}

/// Helpers shared by the benchmark programs in `src/bin`: one discipline
/// for all of them. The sides alternate run by run and which side goes
/// first rotates every round ([`round_order`]), each side runs
/// [`DEFAULT_RUNS`] times unless told otherwise, every figure is printed as
/// a median with its min-max ([`Spread`]), and a read pass that claims to
/// be cold first drops the page cache and checks that the file really left
/// it ([`make_cold`]).
pub mod bench {
    use std::path::{Path, PathBuf};

    /// Runs per side when the command line does not say.
    pub const DEFAULT_RUNS: usize = 5;

    /// The median (the mean of the two middle ones for an even count).
    pub fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// The median of some runs with their smallest and largest value.
    #[derive(Debug, Clone, Copy)]
    pub struct Spread {
        pub median: f64,
        pub min: f64,
        pub max: f64,
    }

    impl Spread {
        pub fn of(v: &[f64]) -> Spread {
            Spread {
                median: median(v.to_vec()),
                min: v.iter().copied().fold(f64::INFINITY, f64::min),
                max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            }
        }

        /// `median (min-max)` with `decimals` digits after the point.
        pub fn show(&self, decimals: usize) -> String {
            format!(
                "{:.d$} ({:.d$}-{:.d$})",
                self.median,
                self.min,
                self.max,
                d = decimals
            )
        }
    }

    /// The order in which `sides` sides run in round `round` (0-based):
    /// every round runs each side once, and the first side rotates, so with
    /// two sides the runs go A B, B A, A B, ... and neither side always has
    /// the first (or last) slot of a round.
    pub fn round_order(round: usize, sides: usize) -> Vec<usize> {
        (0..sides).map(|i| (round + i) % sides).collect()
    }

    /// `sync`, then drops the page cache (needs root). The error says why
    /// it could not be done.
    pub fn drop_caches() -> Result<(), String> {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        std::fs::write("/proc/sys/vm/drop_caches", "3")
            .map_err(|e| format!("writing /proc/sys/vm/drop_caches: {e}"))
    }

    /// How many bytes of `path` are in the page cache (mincore(2) over a
    /// read-only mapping of the whole file).
    pub fn cached_bytes(path: &Path) -> std::io::Result<u64> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(0);
        }
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        let pages = len.div_ceil(page) as usize;
        // SAFETY: a fresh shared read-only mapping of an open file; it is
        // only passed to mincore and unmapped below, never dereferenced.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut vec = vec![0u8; pages];
        // SAFETY: `map` covers `len` bytes and `vec` has one byte per page.
        let r = unsafe { libc::mincore(map, len as usize, vec.as_mut_ptr()) };
        let err = std::io::Error::last_os_error();
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(map, len as usize) };
        if r != 0 {
            return Err(err);
        }
        Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page)
    }

    /// Drops the page cache and checks that at most 1% of each of `files`
    /// is still cached. `Err` says what failed: a bench prints it and
    /// refuses to report a cold-read figure for that pass.
    pub fn make_cold(files: &[&Path]) -> Result<(), String> {
        drop_caches()?;
        for f in files {
            let cached = cached_bytes(f).map_err(|e| format!("mincore on {}: {e}", f.display()))?;
            let len = std::fs::metadata(f)
                .map_err(|e| format!("{}: {e}", f.display()))?
                .len();
            if cached > len / 100 {
                return Err(format!(
                    "{} still has {cached} of {len} bytes in the page cache after dropping it",
                    f.display()
                ));
            }
        }
        Ok(())
    }

    /// The release rehost to measure: `arg`, or target/release/rehost,
    /// which must exist.
    pub fn release_rehost(arg: Option<String>) -> PathBuf {
        let rehost = arg
            .map(PathBuf::from)
            .unwrap_or_else(|| super::workspace_root().join("target/release/rehost"));
        assert!(
            rehost.exists(),
            "{} not found: cargo build --release -p rehost",
            rehost.display()
        );
        rehost
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn medians_spreads_and_orders() {
            assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
            assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
            assert!(median(Vec::new()).is_nan());
            let s = Spread::of(&[5.0, 1.0, 3.0]);
            assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
            assert_eq!(s.show(1), "3.0 (1.0-5.0)");
            assert_eq!(round_order(0, 2), vec![0, 1]);
            assert_eq!(round_order(1, 2), vec![1, 0]);
            assert_eq!(round_order(4, 3), vec![1, 2, 0]);
        }

        #[test]
        fn a_file_just_written_is_cached() {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("f");
            std::fs::write(&f, vec![1u8; 1 << 20]).unwrap();
            assert_eq!(cached_bytes(&f).unwrap(), 1 << 20);
            std::fs::write(&f, b"").unwrap();
            assert_eq!(cached_bytes(&f).unwrap(), 0);
        }
    }
}
