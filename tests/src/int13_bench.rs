//! One round of the INT 13h benchmarks (bench-storage, bench-usb) on one
//! side: the real-mode program (resources/storage/int13-rw.asm) writes then
//! reads its range through the firmware's disk driver, timed from the host
//! by the moments its console lines arrive; then the page cache is dropped,
//! checked to be cold, and a read-only build of the program reads the same
//! range again.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::bench::make_cold;
use crate::storage::Int13Program;

/// QEMU started as both INT 13h benchmarks start it: KVM, no default
/// devices, COM1 on stdout, 64 MiB, firmware `bios`, and `image` as the
/// raw drive `d0` for the caller's `-device` to take.
pub fn qemu_command(qemu: &str, bios: &Path, image: &Path) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-enable-kvm",
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-m",
        "64",
        "-bios",
    ])
    .arg(bios)
    .arg("-drive")
    .arg(format!("file={},format=raw,if=none,id=d0", image.display()));
    c
}

/// A run that takes longer than this is killed (and reported as failed).
const RUN_LIMIT: Duration = Duration::from_secs(1800);

/// Seconds of the write pass (if the program wrote) and the read pass of
/// one run.
#[derive(Debug, Clone, Copy)]
pub struct Passes {
    pub write: Option<f64>,
    pub read: f64,
}

/// Runs a VMM to completion, timing the program's console lines. `Err`
/// says why there is no figure (the program failed, a line is missing),
/// with the console.
pub fn timed_run(mut cmd: Command, label: &str) -> Result<Passes, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {label}: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| format!("{label}: no stdout"))?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).into_owned();
            let _ = tx.send((Instant::now(), text.clone()));
            all.push_str(&text);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let mut marks: Vec<(Instant, String)> = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => marks.push(m),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("{label}: waiting for it: {e}"))?;
    let out = reader.join().unwrap_or_default();
    if !out.contains("int13: ok") || out.contains("FAIL") {
        return Err(format!(
            "{label}: the program failed (exit {status}); console:\n{out}"
        ));
    }
    let at = |what: &str| {
        marks
            .iter()
            .find(|(_, l)| l.contains(what))
            .map(|(t, _)| *t)
            .ok_or_else(|| format!("{label}: no {what:?} line (exit {status}); console:\n{out}"))
    };
    let write = if marks.iter().any(|(_, l)| l.contains("int13: write start")) {
        Some((at("int13: write done")? - at("int13: write start")?).as_secs_f64())
    } else {
        None
    };
    Ok(Passes {
        write,
        read: (at("int13: read done")? - at("int13: read start")?).as_secs_f64(),
    })
}

/// What one side did in one round, in seconds.
pub struct Round {
    /// The write-then-read run.
    pub rw: Passes,
    /// The read-only run after the page cache was dropped, or why there is
    /// no cold figure.
    pub cold_read: Result<f64, String>,
}

/// One round of one side on `image` (rewritten to `size` bytes with `prog`
/// first): `cmd` starts the VMM on the image, twice. `Err`: a run failed.
pub fn round(
    prog: &Int13Program,
    image: &Path,
    size: u64,
    cmd: impl Fn() -> Command,
    label: &str,
) -> Result<Round, String> {
    prog.raw_disk(image, size);
    let rw = timed_run(cmd(), label)?;
    if rw.write.is_none() && !prog.read_only {
        return Err(format!("{label}: the write pass did not run"));
    }
    // The read-only build fits before the program's range: it goes to LBA
    // 0 of the written image.
    let reader = Int13Program {
        read_only: true,
        ..*prog
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .and_then(|f| f.write_all_at(&reader.build(), 0))
        .map_err(|e| format!("{}: writing the read-only program: {e}", image.display()))?;
    let cold_read = match make_cold(&[image]) {
        Ok(()) => {
            let ro = timed_run(cmd(), label)?;
            if ro.write.is_some() {
                return Err(format!("{label}: the read-only run wrote"));
            }
            Ok(ro.read)
        }
        Err(e) => Err(e),
    };
    Ok(Round { rw, cold_read })
}

/// Every figure of one side, in MiB/s.
#[derive(Default)]
pub struct Figures {
    pub write: Vec<f64>,
    pub warm_read: Vec<f64>,
    pub cold_read: Vec<f64>,
    /// Why a cold read could not be made cold (then no cold figure).
    pub not_cold: Option<String>,
}

impl Figures {
    /// Adds a round that moved `mib` MiB per pass.
    pub fn add(&mut self, r: &Round, mib: f64) {
        if let Some(w) = r.rw.write {
            self.write.push(mib / w);
        }
        self.warm_read.push(mib / r.rw.read);
        match &r.cold_read {
            Ok(s) => self.cold_read.push(mib / s),
            Err(e) => self.not_cold = Some(e.clone()),
        }
    }

    /// The figures of pass `write`, `read-warm` or `read-cold`.
    pub fn pass(&self, pass: &str) -> &[f64] {
        match pass {
            "write" => &self.write,
            "read-warm" => &self.warm_read,
            _ => &self.cold_read,
        }
    }
}

/// The passes every INT 13h benchmark prints.
pub const PASSES: [&str; 3] = ["write", "read-warm", "read-cold"];
