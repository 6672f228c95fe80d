//! Guest artifacts for the storage tests and benchmark: the INT 13h
//! real-mode disk exerciser, GRUB disks and El Torito ISOs built from
//! `resources/storage`, and the data the exerciser writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{artifacts_dir, workspace_root};

/// Parameters of `resources/storage/int13-rw.asm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int13Program {
    pub start_lba: u64,
    pub sectors: u64,
    /// Sectors per INT 13h call (at most 127).
    pub chunk: u64,
    pub seed: u8,
    /// Compare every byte read back (otherwise only each sector's stamp).
    pub verify: bool,
    /// Skip the write pass.
    pub read_only: bool,
}

impl Default for Int13Program {
    fn default() -> Self {
        Self {
            start_lba: 2048,
            sectors: 8192,
            chunk: 64,
            seed: 0x5a,
            verify: true,
            read_only: false,
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Int13Program {
    /// Assembles the program (cached under target/guest-artifacts).
    pub fn build(&self) -> Vec<u8> {
        let dir = artifacts_dir().join("storage");
        std::fs::create_dir_all(&dir).unwrap();
        let name = format!(
            "int13-{}-{}-{}-{}-{}{}.img",
            self.start_lba,
            self.sectors,
            self.chunk,
            self.seed,
            u8::from(self.verify),
            if self.read_only { "-ro" } else { "" }
        );
        let out = dir.join(name);
        if !out.exists() {
            let tmp = out.with_extension("tmp");
            let mut cmd = Command::new("nasm");
            cmd.args(["-f", "bin"])
                .arg(format!("-DSTART_LBA={}", self.start_lba))
                .arg(format!("-DSECTORS={}", self.sectors))
                .arg(format!("-DCHUNK={}", self.chunk))
                .arg(format!("-DSEED={}", self.seed))
                .arg(format!("-DVERIFY={}", u8::from(self.verify)));
            if self.read_only {
                cmd.arg("-DREAD_ONLY");
            }
            cmd.arg("-o")
                .arg(&tmp)
                .arg(workspace_root().join("resources/storage/int13-rw.asm"));
            run(&mut cmd);
            std::fs::rename(&tmp, &out).unwrap();
        }
        std::fs::read(&out).unwrap()
    }

    /// The 512 bytes the program writes to sector `lba`.
    pub fn expected_sector(&self, lba: u64) -> [u8; 512] {
        let mut s = [0u8; 512];
        let base = ((lba - self.start_lba) % self.chunk) * 512;
        for (i, b) in s.iter_mut().enumerate() {
            *b = ((base + i as u64) * 7 + u64::from(self.seed)) as u8;
        }
        s[..4].copy_from_slice(&(lba as u32).to_le_bytes());
        s
    }

    /// Writes a raw disk of `size` bytes with the program at LBA 0.
    pub fn raw_disk(&self, path: &Path, size: u64) {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&self.build(), 0).unwrap();
    }
}

/// Builds a GRUB disk (raw) whose ext2 partition holds `grub_cfg` as
/// /boot/grub/grub.cfg and `files` at its root.
pub fn grub_disk(out: &Path, grub_cfg: &str, files: &[&Path]) {
    let cfg = out.with_extension("cfg");
    std::fs::write(&cfg, grub_cfg).unwrap();
    let mut cmd = Command::new(workspace_root().join("resources/storage/make-grub-disk.sh"));
    cmd.arg(out).arg(&cfg).args(files);
    run(&mut cmd);
}

/// Builds an El Torito ISO with grub-mkrescue whose grub.cfg is `grub_cfg`.
pub fn grub_iso(out: &Path, grub_cfg: &str) {
    let root = out.with_extension("d");
    std::fs::create_dir_all(root.join("boot/grub")).unwrap();
    std::fs::write(root.join("boot/grub/grub.cfg"), grub_cfg).unwrap();
    run(Command::new("grub-mkrescue")
        .arg("-o")
        .arg(out)
        .args(["--locales=", "--fonts=", "--themes="])
        .arg(&root));
}

/// The sha256 of a file, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Runs `rehost disk ARGS` with the binary under test; panics on failure.
pub fn rehost_disk(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).arg("disk").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "rehost disk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics, naming the Debian package list to install, unless every tool
/// is on PATH (scripts/setup installs them).
pub fn require_tools(tools: &[&str]) {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false)
            || Path::new("/usr/sbin").join(t).is_file()
            || Path::new("/sbin").join(t).is_file();
        assert!(found, "{t} not found: run scripts/setup");
    }
}

/// A scratch directory under target/ (kept on failure for inspection).
pub fn scratch(test: &str) -> PathBuf {
    let d = artifacts_dir().join("storage-tests").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
