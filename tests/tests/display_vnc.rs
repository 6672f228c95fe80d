//! The console's input end to end: QMP `send-key` and a VNC client type
//! into GRUB's command line, and GRUB prints on COM1 what it ran.
//!
//! GRUB reads the keyboard with its own i8042 driver (`at_keyboard`,
//! which polls the controller and sets scan code set 2 itself), not
//! through SeaBIOS's INT 16h (`terminal_input console`): here (KVM on
//! PVM, every real-mode instruction emulated) the keyboard interrupt is
//! not taken in the two-instruction `sti; nop` window SeaBIOS opens while
//! GRUB polls INT 16h, so keys sit in the controller until GRUB happens to
//! halt. On hardware virtualization both paths work the same.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rehost_tests::qmp::{send_text, Qmp};
use rehost_tests::storage::{grub_disk, require_tools, scratch};
use rehost_tests::{kvm_available, Running};
use serde_json::json;

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");
/// GRUB loads and prints its first line in this time (emulated here).
const GRUB: Duration = Duration::from_secs(400);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// GRUB prints on COM1 (stdout) and reads the PC keyboard; `v` lets a
/// typed `echo X${v}Y` prove the command ran (the answer is not in what
/// was typed).
const GRUB_CFG: &str = "serial --unit=0 --speed=115200\n\
insmod at_keyboard\n\
terminal_input at_keyboard\n\
terminal_output serial\n\
set v=42\n\
echo \"rehost-keys: ready\"\n";

fn keys_disk(dir: &Path) -> PathBuf {
    let disk = dir.join("keys.raw");
    grub_disk(&disk, GRUB_CFG, &[]);
    disk
}

struct Vm {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    run: Running,
}

impl Vm {
    fn start(disk: &Path, more: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rehost-vnc")
            .tempdir()
            .unwrap();
        let sock = dir.path().join("vm.sock");
        let vnc = format!("unix:{}", dir.path().join("vnc.sock").display());
        let mut args = vec![
            "run",
            "--memory",
            "64M",
            "--disk",
            s(disk),
            "--qmp",
            s(&sock),
            "--vnc",
            &vnc,
        ];
        args.extend_from_slice(more);
        let run = Running::start(REHOST, &args);
        Self {
            _dir: dir,
            sock,
            run,
        }
    }

    fn vnc(&self) -> PathBuf {
        self.sock.with_file_name("vnc.sock")
    }

    fn wait_text(&mut self, text: &str, count: usize, timeout: Duration) {
        self.run.expect(text, count, timeout);
    }
}

/// A small RFB 3.8 client: enough to log in and type.
struct Rfb<S: Read + Write> {
    s: S,
}

impl<S: Read + Write> Rfb<S> {
    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    fn read_u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read_n(4).try_into().unwrap())
    }

    /// Version 3.8, security None, shared; returns the picture's size.
    fn login(s: S) -> (Self, u16, u16) {
        let mut c = Rfb { s };
        assert_eq!(c.read_n(12), b"RFB 003.008\n");
        c.s.write_all(b"RFB 003.008\n").unwrap();
        let n = c.read_n(1)[0];
        assert_eq!(c.read_n(usize::from(n)), [1], "security None only");
        c.s.write_all(&[1]).unwrap();
        assert_eq!(c.read_u32(), 0, "SecurityResult OK");
        c.s.write_all(&[1]).unwrap();
        let init = c.read_n(20);
        let name_len = c.read_u32();
        assert_eq!(c.read_n(name_len as usize), b"rehost");
        let w = u16::from_be_bytes([init[0], init[1]]);
        let h = u16::from_be_bytes([init[2], init[3]]);
        (c, w, h)
    }

    fn key(&mut self, down: bool, keysym: u32) {
        let mut m = vec![4, u8::from(down), 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    /// Types text as a viewer does: one keysym per character (Return for
    /// a newline), no Shift sent (the server adds it).
    fn type_text(&mut self, text: &str) {
        for c in text.chars() {
            let sym = if c == '\n' { 0xff0d } else { c as u32 };
            self.key(true, sym);
            std::thread::sleep(Duration::from_millis(20));
            self.key(false, sym);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn send_key_and_a_vnc_viewer_type_into_grubs_command_line() {
    if !kvm_available("display_vnc send-key") {
        return;
    }
    require_tools(&["grub-mkimage", "sfdisk", "mke2fs"]);
    let dir = scratch("send-key");
    let disk = keys_disk(&dir);
    let mut vm = Vm::start(&disk, &[]);
    vm.wait_text("rehost-keys: ready", 1, GRUB);
    vm.wait_text("grub>", 1, Duration::from_secs(60));
    let mut q = Qmp::connect(&vm.sock, true);
    send_text(&mut q, "echo X${v}Y\n");
    vm.wait_text("X42Y", 1, Duration::from_secs(60));
    // A VNC viewer types too (keysyms, shifted ones without Shift).
    let vnc = UnixStream::connect(vm.vnc()).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; files: {:?}\nstderr: {}",
            vm.vnc().display(),
            std::fs::read_dir(vm.sock.parent().unwrap())
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
            vm.run.stderr()
        )
    });
    let (mut rfb, w, h) = Rfb::login(vnc);
    assert!(w > 0 && h > 0);
    rfb.type_text("echo Y${v}Z\n");
    vm.wait_text("Y42Z", 1, Duration::from_secs(60));
    assert_eq!(q.ok("quit", None), json!({}));
    vm.run.wait(Duration::from_secs(20));
}
