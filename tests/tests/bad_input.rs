//! Bad input to `rehost run`: one line naming the file or value and what
//! is wrong, a non-zero exit, never a panic. Only the --firmware-log case
//! and the forbidden-/dev/kvm case need KVM.

use std::time::Duration;

use rehost_tests::run;

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

fn fails_with(args: &[&str], needles: &[&str]) {
    let (code, out, err) = run(REHOST, args, Duration::from_secs(20));
    assert_eq!(
        code,
        Some(1),
        "args {args:?}: stdout {out:?} stderr {err:?}"
    );
    assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err:?}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
}

#[test]
fn missing_and_malformed_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();

    fails_with(
        &["run", "--firmware", &d("missing.bin")],
        &["missing.bin", "cannot read firmware"],
    );
    std::fs::write(d("short.bin"), vec![0u8; 1000]).unwrap();
    fails_with(
        &["run", "--firmware", &d("short.bin")],
        &["short.bin", "1000 bytes", "64 KiB"],
    );
    fails_with(
        &["run", "--option-rom", &d("nope.rom")],
        &["nope.rom", "cannot read option ROM"],
    );
    std::fs::write(d("bad.rom"), vec![0x12u8; 512]).unwrap();
    fails_with(
        &["run", "--option-rom", &d("bad.rom")],
        &["bad.rom", "signature"],
    );
    let mut rom = vec![0u8; 512];
    rom[0] = 0x55;
    rom[1] = 0xaa;
    rom[2] = 1;
    rom[100] = 7;
    std::fs::write(d("sum.rom"), &rom).unwrap();
    fails_with(
        &["run", "--option-rom", &d("sum.rom")],
        &["sum.rom", "checksum"],
    );
    fails_with(
        &["run", "--kernel", &d("vmlinuz")],
        &["vmlinuz", "cannot read kernel"],
    );
    std::fs::write(d("vmlinuz"), b"not a kernel").unwrap();
    fails_with(
        &[
            "run",
            "--kernel",
            &d("vmlinuz"),
            "--initrd",
            &d("initrd.img"),
        ],
        &["initrd.img", "cannot read initrd"],
    );
    fails_with(&["run", "--memory", "1M"], &["--memory", "too small"]);
    fails_with(&["run", "--memory", "64T"], &["--memory", "64T"]);
    fails_with(&["run", "--memory", "lots"], &["--memory", "not a size"]);
    fails_with(&["run", "--cpus", "0"], &["--cpus 0"]);
    // A bad --comN SPEC does not stop the machine (one warning, the port
    // disconnected): tests/serial_ports.rs covers it.
    // rehost opens /dev/kvm before the firmware log, so this one needs it.
    if rehost_tests::kvm_available("missing_and_malformed_inputs_are_named (--firmware-log)") {
        fails_with(
            &["run", "--firmware-log", &d("no/such/dir/fw.log")],
            &["fw.log", "firmware log"],
        );
    }
}

#[test]
fn help_explains_every_option_and_the_exit_codes() {
    let (code, out, _) = run(REHOST, &["run", "--help"], Duration::from_secs(10));
    assert_eq!(code, Some(0));
    for opt in [
        "--memory",
        "--cpus",
        "--firmware",
        "--option-rom",
        "--kernel",
        "--initrd",
        "--cmdline",
        "--com1",
        "--firmware-log",
        "--no-reboot",
        "Exit codes",
        "130",
    ] {
        assert!(out.contains(opt), "run --help lacks {opt}: {out}");
    }
    let (code, _, err) = run(REHOST, &["run", "--bogus"], Duration::from_secs(10));
    assert_eq!(code, Some(2), "{err}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// No /dev/kvm, and no permission on it: one line that says what to do.
/// Uses a private mount namespace (hiding /dev/kvm) and an unprivileged
/// user, so it needs root; elsewhere it is reported skipped.
#[test]
fn missing_or_forbidden_dev_kvm_is_explained() {
    if !is_root() {
        rehost_tests::skip(
            "missing_or_forbidden_dev_kvm_is_explained",
            "needs root to hide /dev/kvm",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The binary is copied somewhere every user can execute it.
    let bin = dir.path().join("rehost");
    std::fs::copy(REHOST, &bin).unwrap();
    let bin = bin.to_str().unwrap();

    // An empty /dev in a private mount namespace: no /dev/kvm at all.
    let script = format!("mount -t tmpfs none /dev && exec {bin} run --memory 16M");
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/dev/kvm") && err.contains("no such device"),
        "{err}"
    );
    // The permission check needs a /dev/kvm to be refused.
    if !rehost_tests::kvm_available("missing_or_forbidden_dev_kvm_is_explained") {
        return;
    }

    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin,
            "run",
            "--memory",
            "16M",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/dev/kvm") && err.contains("permission denied"),
        "{err}"
    );
}
