//! `rehost run --disk/--cdrom/--boot`: bad input is refused before KVM is
//! touched, with one line naming the file or option.

use std::time::Duration;

use rehost_tests::run;

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

fn refused(args: &[&str], expect: &[&str]) {
    let mut all = vec!["run", "--memory", "64M"];
    all.extend_from_slice(args);
    let (code, out, err) = run(REHOST, &all, Duration::from_secs(30));
    assert_eq!(code, Some(1), "{args:?}: stdout {out} stderr {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    for e in expect {
        assert!(lines[0].contains(e), "{e:?} not in {err}");
    }
}

#[test]
fn bad_drive_options_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.raw");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let img = img.to_str().unwrap();
    refused(
        &["--disk", "/nonexistent/disk.vhdx"],
        &["--disk", "/nonexistent/disk.vhdx"],
    );
    refused(
        &["--cdrom", "/nonexistent/x.iso"],
        &["--cdrom", "/nonexistent/x.iso"],
    );
    refused(
        &["--disk", &format!("{img},controller=scsi")],
        &["controller=scsi", "ide or ahci"],
    );
    refused(&["--disk", &format!("{img},cache=none")], &["cache=none"]);
    refused(&["--disk", img, "--disk", img], &["attached twice", img]);
    let empty = dir.path().join("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    refused(&["--disk", empty.to_str().unwrap()], &["empty"]);
    let mut many = Vec::new();
    for i in 0..5 {
        let p = dir.path().join(format!("d{i}.raw"));
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        many.push("--disk".to_owned());
        many.push(p.to_str().unwrap().to_owned());
    }
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    refused(&many, &["no free slot", "ide"]);
    let (code, _, err) = run(
        REHOST,
        &["run", "--boot", "floppy"],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{err}");
}
