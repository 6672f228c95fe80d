//! End-to-end: the stock SeaBIOS (Debian `seabios`) boots on rehost's PC,
//! prints through our 16550A on COM1, runs option ROMs handed over as
//! fw_cfg `genroms/` files, and powers off, resets or crashes the machine
//! with the documented exit codes.

use std::time::Duration;

use rehost_tests::{kvm_available, rom, run, start_rom, Running};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");
const BANNER: &str = "SeaBIOS (version";
const ROM_MARKER: &str = "rehost-test-rom: option ROM ran during POST";

/// What one boot printed and how it ended.
struct Boot {
    code: Option<i32>,
    out: String,
    err: String,
    /// The firmware's debug log.
    fw: String,
}

/// Boots SeaBIOS with the test option ROM `rom_name` and `extra` options
/// (COM1 on stdout, the firmware log captured, 64 MiB unless `extra` says),
/// to its end or 60 s.
fn boot_rom(rom_name: &str, extra: &[&str]) -> Boot {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("fw.log");
    let rom = rom(rom_name);
    let mut args = vec!["run"];
    if !extra.contains(&"--memory") {
        args.extend_from_slice(&["--memory", "64M"]);
    }
    args.extend_from_slice(&[
        "--firmware-log",
        log.to_str().unwrap(),
        "--option-rom",
        rom.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    let (code, out, err) = run(REHOST, &args, Duration::from_secs(60));
    let fw = std::fs::read_to_string(&log).unwrap_or_default();
    Boot { code, out, err, fw }
}

#[test]
fn seabios_without_disks_prints_banner_and_no_bootable_device_on_com1() {
    if !kvm_available("seabios_without_disks") {
        return;
    }
    let mut vm = Running::start(REHOST, &["run", "--memory", "64M", "--com1", "stdio"]);
    assert!(
        vm.wait_for("No bootable device", 1, Duration::from_secs(60)),
        "COM1 output: {:?}\nstderr: {}",
        vm.stdout(),
        vm.stderr()
    );
    let out = vm.stdout();
    assert!(out.contains(BANNER), "no SeaBIOS banner in {out:?}");
    assert!(out.find(BANNER) < out.find("No bootable device"));
    // SIGTERM: orderly shutdown with the documented code.
    vm.signal(libc::SIGTERM);
    let status = vm
        .wait(Duration::from_secs(10))
        .expect("rehost exits on SIGTERM");
    assert_eq!(status.code(), Some(143), "stderr: {}", vm.stderr());
}

#[test]
fn option_rom_runs_during_post_and_powers_off_with_exit_0() {
    if !kvm_available("option_rom_poweroff") {
        return;
    }
    let b = boot_rom("poweroff", &[]);
    assert_eq!(b.code, Some(0), "stdout: {:?}\nstderr: {}", b.out, b.err);
    assert!(b.out.contains(BANNER), "{:?}", b.out);
    assert!(b.out.contains(ROM_MARKER), "{:?}", b.out);
    assert!(
        !b.out.contains("power-off did not happen"),
        "the ROM kept running after S5: {:?}",
        b.out
    );
    assert!(
        b.err.is_empty(),
        "nothing on stderr for a clean power-off: {}",
        b.err
    );
}

#[test]
fn several_cpus_start_under_firmware() {
    if !kvm_available("several_cpus") {
        return;
    }
    let b = boot_rom("poweroff", &["--cpus", "4", "--memory", "128M"]);
    assert_eq!(b.code, Some(0), "stdout: {:?}\nstderr: {}", b.out, b.err);
    assert!(
        b.fw.contains("Found 4 cpu(s) max supported 4 cpu(s)"),
        "SeaBIOS did not bring up all CPUs: {}",
        b.fw
    );
}

#[test]
fn guest_reset_restarts_firmware_and_no_reboot_exits_3() {
    if !kvm_available("guest_reset") {
        return;
    }
    let marker = "rehost-test-rom: resetting the machine";
    let mut vm = start_rom(REHOST, "reset", &[]);
    assert!(
        vm.wait_for(marker, 2, Duration::from_secs(60)),
        "firmware did not run twice: {:?} {}",
        vm.stdout(),
        vm.stderr()
    );
    assert!(vm.stdout().matches(BANNER).count() >= 2);
    drop(vm);

    let b = boot_rom("reset", &["--no-reboot"]);
    assert_eq!(b.code, Some(3), "stdout: {:?}\nstderr: {}", b.out, b.err);
    assert_eq!(b.out.matches(marker).count(), 1, "{:?}", b.out);
}

#[test]
fn guest_crash_exits_4_with_one_line_naming_the_instruction_pointer() {
    if !kvm_available("guest_crash") {
        return;
    }
    let b = boot_rom("triple-fault", &[]);
    assert!(
        b.out.contains("rehost-test-rom: triple fault next"),
        "{:?}",
        b.out
    );
    assert_eq!(b.code, Some(4), "stdout: {:?}\nstderr: {}", b.out, b.err);
    let lines: Vec<&str> = b.err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", b.err);
    assert!(
        lines[0].contains("vCPU 0") && lines[0].contains("RIP 0x"),
        "{}",
        b.err
    );
}

#[test]
fn firmware_debug_port_goes_to_the_firmware_log() {
    if !kvm_available("firmware_log") {
        return;
    }
    let b = boot_rom("poweroff", &["--com1", "null"]);
    assert_eq!(b.code, Some(0), "{}", b.err);
    assert!(b.out.is_empty(), "COM1 is null: {:?}", b.out);
    for line in [
        "Running on QEMU (i440fx)",
        "Found QEMU fw_cfg",
        "QEMU fw_cfg DMA interface supported",
        "genroms/poweroff.rom",
    ] {
        assert!(b.fw.contains(line), "{line:?} not in {}", b.fw);
    }
}

#[test]
fn acpi_tables_read_back_from_guest_memory_are_consistent() {
    if !kvm_available("acpi_tables") {
        return;
    }
    // The acpi-check ROM walks RSDP -> RSDT/XSDT -> FADT -> DSDT/FACS and
    // the MADT in guest memory after the firmware ran the table loader, and
    // prints a verdict per table.
    let b = boot_rom("acpi-check", &["--cpus", "2", "--memory", "96M"]);
    assert_eq!(b.code, Some(0), "stdout: {:?}\nstderr: {}", b.out, b.err);
    let lines: Vec<&str> = b.out.lines().filter(|l| l.starts_with("acpi: ")).collect();
    assert!(lines.contains(&"acpi: done"), "{}", b.out);
    assert!(!b.out.contains("BAD"), "{}", b.out);
    for expected in [
        "acpi: RSDP rev 02 ok ok",
        "acpi: FACP len 00F4 ok",
        "acpi: FACS len 0040 ok",
        "acpi: XSDT entries match RSDT ok",
    ] {
        assert!(
            lines.contains(&expected),
            "{expected:?} missing from {lines:#?}"
        );
    }
    for sig in ["RSDT", "XSDT", "DSDT", "APIC"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("acpi: {sig} len ")) && l.ends_with(" ok")),
            "{sig} not verified: {lines:#?}"
        );
    }
}
