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
            // Tests in one process may build the same program at once:
            // each assembles into its own file and renames it into place.
            static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = out.with_extension(format!("{}.{n}.tmp", std::process::id()));
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

/// Deterministic file content: a linear congruential generator from
/// `seed`.
pub fn lcg_data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// Checks that `image` (read through its chain with `rehost disk convert`
/// of the binary `bin`) is `disk_bytes` long and holds the program at LBA
/// 0, the program's data in its range, and zeros everywhere else.
pub fn assert_int13_content(
    bin: &str,
    image: &Path,
    prog: &Int13Program,
    dir: &Path,
    disk_bytes: u64,
) {
    let flat = dir.join("flat.raw");
    let _ = std::fs::remove_file(&flat);
    rehost_disk(
        bin,
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            flat.to_str().unwrap(),
        ],
    );
    let data = std::fs::read(&flat).unwrap();
    assert_eq!(data.len() as u64, disk_bytes);
    let code = prog.build();
    assert_eq!(&data[..code.len()], &code[..], "the program at LBA 0");
    let end = prog.start_lba + prog.sectors;
    for lba in prog.start_lba..end {
        let at = lba as usize * 512;
        assert!(
            data[at..at + 512] == prog.expected_sector(lba),
            "sector {lba} differs from what the guest wrote"
        );
    }
    assert!(
        data[code.len()..prog.start_lba as usize * 512]
            .iter()
            .chain(&data[end as usize * 512..])
            .all(|&b| b == 0),
        "bytes outside the written range changed"
    );
}

/// Runs the INT 13h exerciser on a differencing VHDX child (over a VHDX
/// parent) of a `disk_bytes` disk, attached with the options `attach`
/// gives for the child's path: it must write and read back `sectors`
/// sectors, SeaBIOS must log `driver_line`, the parent must not change
/// and the child must hold exactly the guest's bytes.
pub fn int13_on_child(
    bin: &str,
    test: &str,
    sectors: u64,
    disk_bytes: u64,
    driver_line: &str,
    attach: impl Fn(&str) -> Vec<String>,
) {
    if !crate::kvm_available(test) {
        return;
    }
    require_tools(&["nasm"]);
    let dir = scratch(test);
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let prog = Int13Program {
        sectors,
        ..Default::default()
    };
    let raw = dir.join("base.raw");
    prog.raw_disk(&raw, disk_bytes);
    let parent = dir.join("parent.vhdx");
    rehost_disk(bin, &["convert", "-O", "vhdx", &s(&raw), &s(&parent)]);
    let parent_sha = sha256(&parent);
    let child = dir.join("child.vhdx");
    rehost_disk(bin, &["create", "--parent", &s(&parent), &s(&child)]);
    let fw_log = dir.join("firmware.log");
    let mut args: Vec<String> = ["run", "--memory", "64M", "--firmware-log"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.push(s(&fw_log));
    args.extend(attach(&s(&child)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = crate::run(bin, &args, std::time::Duration::from_secs(900));
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(
        out.contains(&format!("int13: ok sectors={:08x}", prog.sectors)),
        "{out}"
    );
    let fw = std::fs::read_to_string(&fw_log).unwrap();
    assert!(
        fw.contains(driver_line),
        "SeaBIOS did not use {driver_line:?}: {fw}"
    );
    assert_eq!(sha256(&parent), parent_sha, "the parent changed");
    let info = rehost_disk(bin, &["info", &s(&child)]);
    assert!(info.contains("differencing"), "{info}");
    rehost_disk(bin, &["check", &s(&child)]);
    assert_int13_content(bin, &child, &prog, &dir, disk_bytes);
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

/// A Debian kernel and an initramfs that loads `ata_piix`, `ahci` and
/// `sd_mod` (with what they depend on) from the same kernel package, lists
/// /proc/partitions on the console and powers off. Built once under
/// target/guest-artifacts from `apt-get download linux-image-amd64
/// busybox-static` (the packages are only unpacked, never installed).
pub fn linux_storage_guest() -> (PathBuf, PathBuf) {
    let dir = artifacts_dir().join("linux-storage");
    let initramfs = dir.join("initramfs.cpio");
    let kernel = dir.join("vmlinuz");
    if initramfs.exists() && kernel.exists() {
        return (kernel, initramfs);
    }
    let root = dir.join("pkg");
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("sh").current_dir(&dir).args([
        "-c",
        "set -e; pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}'); \
         apt-get download \"$pkg\" busybox-static >/dev/null; \
         dpkg-deb -x \"$pkg\"_*.deb pkg; dpkg-deb -x busybox-static_*.deb pkg; \
         cp pkg/boot/vmlinuz-* vmlinuz",
    ]));
    let modules = find_modules(&root.join("lib/modules"));
    let order = module_order(
        &modules,
        &[
            "crct10dif_generic",
            "crc64_rocksoft_generic",
            "ata_piix",
            "ahci",
            "sd_mod",
        ],
    );
    let init = format!(
        "#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
for m in {}; do /bin/busybox insmod /lib/$m.ko || echo \"rehost-initramfs: insmod $m failed\"; done
/bin/busybox sleep 3
echo \"rehost-initramfs: partitions\"
/bin/busybox cat /proc/partitions
echo \"rehost-initramfs: done\"
/bin/busybox poweroff -f
",
        order.join(" ")
    );
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "lib"] {
        cpio.entry(d, 0o040_755, &[], (0, 0));
    }
    cpio.entry("dev/console", 0o020_600, &[], (5, 1));
    cpio.entry("init", 0o100_755, init.as_bytes(), (0, 0));
    let busybox = std::fs::read(root.join("bin/busybox")).unwrap();
    cpio.entry("bin/busybox", 0o100_755, &busybox, (0, 0));
    for m in &order {
        let data = std::fs::read(&modules[m]).unwrap();
        cpio.entry(&format!("lib/{m}.ko"), 0o100_644, &data, (0, 0));
    }
    std::fs::write(&initramfs, cpio.finish()).unwrap();
    (kernel, initramfs)
}

/// Module name (dashes as underscores) to .ko path, under `dir`.
fn find_modules(dir: &Path) -> std::collections::HashMap<String, PathBuf> {
    let mut found = std::collections::HashMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = name.strip_suffix(".ko") {
                    found.insert(stem.replace('-', "_"), p);
                }
            }
        }
    }
    found
}

/// The `depends=` list of a module's .modinfo section.
fn module_depends(ko: &Path) -> Vec<String> {
    let data = std::fs::read(ko).unwrap();
    let key = b"depends=";
    let Some(at) = data.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &data[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// `wanted` and their dependencies, each after what it depends on.
fn module_order(
    modules: &std::collections::HashMap<String, PathBuf>,
    wanted: &[&str],
) -> Vec<String> {
    fn visit(m: &str, modules: &std::collections::HashMap<String, PathBuf>, out: &mut Vec<String>) {
        if out.iter().any(|o| o == m) {
            return;
        }
        let Some(path) = modules.get(m) else {
            // Built into the kernel.
            return;
        };
        for d in module_depends(path) {
            visit(&d, modules, out);
        }
        out.push(m.to_owned());
    }
    let mut out = Vec::new();
    for w in wanted {
        visit(w, modules, &mut out);
    }
    out
}

/// A cpio archive in the "newc" format the kernel unpacks as initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}
