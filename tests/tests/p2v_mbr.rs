//! End-to-end: rehost's own MBR boot code (`rehost p2v fix --mbr`,
//! assembled from resources/p2v/mbr.asm) boots the active partition under
//! SeaBIOS on IDE and on AHCI, handing its boot sector the drive in DL and
//! the partition's table entry in DS:SI, as syslinux's generic mbr.bin
//! (the reference, Debian `syslinux-common`) does on the same disk. The
//! partitions' boot sectors are resources/p2v/vbr-probe.asm, which prints
//! what it was given on COM1 and powers off.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rehost_tests::storage::{require_tools, scratch};
use rehost_tests::{kvm_available, run, workspace_root};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");
const SYSLINUX_MBR: &str = "/usr/lib/syslinux/mbr/mbr.bin";

fn nasm(src: &str, out: &Path) -> Vec<u8> {
    let st = Command::new("nasm")
        .args(["-f", "bin", "-o"])
        .arg(out)
        .arg(workspace_root().join(src))
        .status()
        .expect("nasm");
    assert!(st.success(), "nasm {src}");
    std::fs::read(out).unwrap()
}

/// An 8 MiB raw disk: `code` as the MBR boot code, partitions at LBA 2048
/// (tag A) and 4096 (tag B), each starting with the probe boot sector;
/// `active` (1, 2 or none) marked active.
fn disk(dir: &Path, name: &str, code: &[u8], active: Option<usize>) -> PathBuf {
    let probe = nasm("resources/p2v/vbr-probe.asm", &dir.join("probe.bin"));
    let mut img = vec![0u8; 8 << 20];
    img[..code.len().min(440)].copy_from_slice(&code[..code.len().min(440)]);
    img[440..444].copy_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    for (i, (lba, tag)) in [(2048u32, b'A'), (4096, b'B')].into_iter().enumerate() {
        let e = 446 + i * 16;
        img[e] = if active == Some(i + 1) { 0x80 } else { 0 };
        // CHS fields as partitioners write them past 1024 cylinders; the
        // MBR is expected to use the LBA.
        img[e + 1..e + 4].copy_from_slice(&[0xfe, 0xff, 0xff]);
        img[e + 4] = 0x07;
        img[e + 5..e + 8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        img[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
        img[e + 12..e + 16].copy_from_slice(&2048u32.to_le_bytes());
        let at = lba as usize * 512;
        img[at..at + 512].copy_from_slice(&probe);
        img[at + 0x1f0] = tag;
    }
    img[510] = 0x55;
    img[511] = 0xaa;
    let path = dir.join(name);
    std::fs::write(&path, img).unwrap();
    path
}

fn boot(disk: &Path, controller: &str) -> (Option<i32>, String, String) {
    let d = format!("{},format=raw,controller={controller}", disk.display());
    run(
        REHOST,
        &["run", "--memory", "32M", "--disk", &d],
        Duration::from_secs(120),
    )
}

#[test]
fn rehost_mbr_boots_the_active_partition_as_syslinux_mbr_does() {
    if !kvm_available("p2v_mbr") {
        return;
    }
    require_tools(&["nasm"]);
    assert!(
        Path::new(SYSLINUX_MBR).exists(),
        "{SYSLINUX_MBR} missing (apt-get install syslinux-common)"
    );
    let dir = scratch("p2v_mbr");
    let ours = nasm("resources/p2v/mbr.asm", &dir.join("mbr.bin"));
    let reference = std::fs::read(SYSLINUX_MBR).unwrap();
    for controller in ["ide", "ahci"] {
        for (active, tag, lba) in [(2, 'B', "00001000"), (1, 'A', "00000800")] {
            let want = format!("vbr-probe: tag={tag} dl=80 entry={lba}");
            for (who, code) in [("rehost", &ours), ("syslinux", &reference)] {
                let img = disk(&dir, &format!("{who}.raw"), code, Some(active));
                let (status, out, err) = boot(&img, controller);
                assert!(
                    out.contains(&want),
                    "{who} MBR on {controller}, partition {active} active: want {want:?}\nstdout: {out}\nstderr: {err}"
                );
                assert_eq!(status, Some(0), "{who} on {controller}: {err}");
            }
        }
    }
    // No active partition: the probe never runs and the MBR says why on
    // the firmware's console (SeaBIOS copies INT 10h text to COM1).
    let img = disk(&dir, "none.raw", &ours, None);
    let d = format!("{},format=raw", img.display());
    let mut vm = rehost_tests::Running::start(REHOST, &["run", "--memory", "32M", "--disk", &d]);
    let seen = vm.wait_for(
        "rehost-mbr: no active partition",
        1,
        Duration::from_secs(60),
    );
    let out = vm.stdout();
    drop(vm);
    assert!(seen, "{out}");
    assert!(!out.contains("vbr-probe"), "{out}");
}
