//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::disk_cmd::DiskCommand;

/// Exit codes, documented in `--help`.
pub mod exit {
    /// The guest powered the machine off.
    pub const POWER_OFF: u8 = 0;
    /// rehost could not start or run the VM (bad input, KVM error).
    pub const ERROR: u8 = 1;
    /// The command line could not be parsed.
    pub const USAGE: u8 = 2;
    /// The guest asked for a reset and `--no-reboot` was given.
    pub const RESET: u8 = 3;
    /// The guest crashed: triple fault or an exit rehost cannot handle.
    pub const GUEST_CRASH: u8 = 4;
    /// Stopped by SIGINT (128 + 2) or SIGTERM (128 + 15) after an orderly shutdown.
    pub const SIGINT: u8 = 130;
    pub const SIGTERM: u8 = 143;
}

const EXIT_CODES_HELP: &str = "\
Exit codes of `rehost run`:
  0    the guest powered the machine off (ACPI S5), or `quit` on the --qmp socket
  1    rehost could not start or continue the VM (bad input, KVM error)
  2    the command line could not be parsed
  3    the guest reset the machine and --no-reboot was given
  4    the guest crashed (triple fault, or a VM exit rehost cannot handle)
  130  stopped by SIGINT, 143 stopped by SIGTERM (after an orderly shutdown)";

/// `rehost run --help`'s closing text: COM port SPECs, console keys, exit
/// codes.
fn run_after_help() -> String {
    format!(
        "{}\n\n{}\n\n{EXIT_CODES_HELP}",
        crate::serial::spec::SPEC_HELP,
        crate::serial::stdio::ESCAPE_HELP
    )
}

/// rehost: a KVM virtual machine monitor for machines that were never meant
/// to be virtual. It boots physical machines' VHD, VHDX and raw disks through
/// PC firmware (SeaBIOS) on emulated IDE or AHCI controllers, redirects COM
/// ports, and works on the disk images themselves.
#[derive(Debug, Parser)]
#[command(name = "rehost", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a virtual PC.
    #[command(after_help = run_after_help())]
    Run(Box<RunArgs>),
    /// Create, inspect, check, convert and merge disk images.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Send one command to a running VM's control socket (`run --qmp`), or
    /// follow its events.
    Qmp(crate::control::client::QmpArgs),
    /// Check a captured physical machine's disk (P2V) for booting on
    /// rehost's IDE or AHCI controller.
    #[command(subcommand)]
    P2v(crate::p2v_cmd::P2vCommand),
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Guest RAM, with an optional K, M, G or T suffix (powers of 1024).
    #[arg(long, short = 'm', default_value = "512M", value_name = "SIZE")]
    pub memory: String,
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u8,
    /// PC firmware image (SeaBIOS), mapped below 4 GiB. Default: Debian's
    /// /usr/share/seabios/bios.bin (package `seabios`), or its
    /// bios-256k.bin with `--usb-controller xhci` (only that build has the
    /// xHCI driver).
    #[arg(long, value_name = "PATH")]
    pub firmware: Option<PathBuf>,
    /// An option ROM the firmware runs during POST, handed over as the
    /// fw_cfg file `genroms/NAME` (like QEMU's -option-rom). Repeatable.
    #[arg(long = "option-rom", value_name = "PATH")]
    pub option_roms: Vec<PathBuf>,
    /// Boot a Linux kernel (bzImage or ELF vmlinux) directly, without
    /// firmware.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk for --kernel.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for --kernel.
    #[arg(long, value_name = "STR", requires = "kernel")]
    pub cmdline: Option<String>,
    /// Where COM1 (0x3F8, IRQ 4) goes: stdio, null, none, file:PATH, pty,
    /// unix:PATH[,server], tcp:HOST:PORT[,server], tty:DEVICE or
    /// rfc2217:HOST:PORT, with ,buffer=SIZE (see "COM port SPECs" below).
    #[arg(long, default_value = "stdio", value_name = "SPEC")]
    pub com1: String,
    /// Where COM2 (0x2F8, IRQ 3) goes; default none (no port).
    #[arg(long, default_value = "none", value_name = "SPEC")]
    pub com2: String,
    /// Where COM3 (0x3E8, IRQ 4, shared with COM1) goes; default none.
    #[arg(long, default_value = "none", value_name = "SPEC")]
    pub com3: String,
    /// Where COM4 (0x2E8, IRQ 3, shared with COM2) goes; default none.
    #[arg(long, default_value = "none", value_name = "SPEC")]
    pub com4: String,
    /// Write what the firmware prints on its debug port (0x402) to PATH.
    #[arg(long = "firmware-log", value_name = "PATH")]
    pub firmware_log: Option<PathBuf>,
    /// Exit (code 3) instead of restarting when the guest resets the machine.
    #[arg(long = "no-reboot")]
    pub no_reboot: bool,
    /// Do not run the P2V check before booting. By default every IDE and
    /// AHCI hard disk that holds Windows is checked as `rehost p2v check`
    /// does (read-only, a fraction of a second), and when Windows is
    /// predicted not to boot on that disk's controller (e.g. STOP 0x7B: its
    /// driver disabled) one warning line says why before the machine
    /// starts; it boots anyway.
    #[arg(long = "no-p2v-check")]
    pub no_p2v_check: bool,
    /// A hard disk: a raw, VHD or VHDX image (the format is read from the
    /// file), on the PIIX3 IDE controller (default) or the ICH9 AHCI
    /// controller; `readonly=on` makes guest writes fail with ATA errors.
    /// Repeatable; drives take the controller's free slots in order.
    /// `id=NAME` names the drive on the control socket. A file that looks
    /// like a damaged VHD or VHDX is refused rather than used as raw;
    /// `format=raw` (or `vhd`, `vhdx`) opens it as that format instead of
    /// detecting one.
    #[arg(
        long = "disk",
        value_name = "PATH[,controller=ide|ahci][,readonly=on][,id=NAME][,format=raw|vhd|vhdx]"
    )]
    pub disks: Vec<String>,
    /// A CD/DVD-ROM drive with this ISO image inserted (read-only), on IDE
    /// (default: secondary master) or AHCI. Repeatable. The medium can be
    /// changed at run time through the control socket (--qmp).
    #[arg(long = "cdrom", value_name = "PATH[,controller=ide|ahci][,id=NAME]")]
    pub cdroms: Vec<String>,
    /// What the firmware boots first: `disk` (IDE/AHCI disks), `cdrom`,
    /// or `usb` (the USB disks given with --usb); the others follow in the
    /// firmware's boot order.
    #[arg(long, value_enum, default_value = "disk")]
    pub boot: crate::storage::BootDevice,
    /// Let SeaBIOS offer its interactive boot menu: it prints "Press ESC
    /// for boot menu." (Debian's 1.16; F12 in later releases; on COM1
    /// too) and waits --boot-menu-wait ms for the key (from a COM1
    /// terminal, QMP send-key or VNC); the menu lists every boot device
    /// (USB disks as "USB MSC Drive ...") in boot order, and a digit key
    /// boots one.
    #[arg(long = "boot-menu")]
    pub boot_menu: bool,
    /// How long SeaBIOS waits for the boot menu key, in milliseconds
    /// (with --boot-menu; SeaBIOS's own default is 2500).
    #[arg(
        long = "boot-menu-wait",
        value_name = "MS",
        default_value = "2500",
        requires = "boot_menu"
    )]
    pub boot_menu_wait: u16,
    /// The USB host controller the --usb devices hang off; present when
    /// given or when any --usb device is. `uhci`: the PIIX3 USB function
    /// (8086:7020) at 00:01.2 with two full-speed root ports, driven by
    /// SeaBIOS (Debian's bios.bin and bios-256k.bin alike), GRUB's `uhci`
    /// module and every Windows since 2000. `ehci`: the ICH9 EHCI
    /// (8086:293a) at 00:1d.7 with six root ports and three UHCI
    /// companions at 00:1d.0-2; USB disks run at high speed on the EHCI,
    /// keyboards are handed to a companion. Driven by SeaBIOS (bios.bin
    /// has UHCI and EHCI drivers, as does bios-256k.bin; it often misses
    /// a USB keyboard on ehci, scanning the companions before the EHCI
    /// hands it over), GRUB's `ehci` (plus `uhci` for the companions) and
    /// meant for Windows' inbox usbehci (not tried here).
    /// `xhci`: an xHCI controller
    /// (QEMU's qemu-xhci, 1b36:000d) at 00:05.0, USB 2 root ports 1-4 and
    /// USB 3 ports 5-8; SeaBIOS drives it only in
    /// /usr/share/seabios/bios-256k.bin, which rehost then loads unless
    /// --firmware names another; GRUB 2.06 has no xHCI driver; Windows 8
    /// and later and Linux drive it.
    #[arg(long = "usb-controller", value_enum, value_name = "KIND")]
    pub usb_controller: Option<crate::usb::UsbController>,
    /// A USB device on the --usb-controller (default uhci), repeatable:
    /// `disk:PATH` is a USB mass-storage disk (bulk-only transport, SCSI)
    /// on a raw, VHD or VHDX image (differencing children too), with
    /// `readonly=on` to refuse guest writes; `keyboard` is a HID boot
    /// keyboard. `port=N` picks the root port (1 or 2 on uhci, 1 to 6 on
    /// ehci); otherwise devices take the free ports in order. `id=NAME` names the device on the
    /// control socket (QMP `device_del` unplugs it; `device_add` plugs
    /// more while the guest runs).
    #[arg(
        long = "usb",
        value_name = "disk:PATH[,readonly=on][,port=N][,id=NAME] | keyboard[,port=N][,id=NAME]"
    )]
    pub usb: Vec<String>,
    /// Create a QMP-compatible control socket at PATH (a Unix socket,
    /// mode 0600): power, media and status commands and events, for
    /// `rehost qmp`, QEMU's `qemu.qmp` library or `socat`. rehost refuses
    /// a PATH that exists and is not a stale socket.
    #[arg(long, value_name = "PATH")]
    pub qmp: Option<PathBuf>,
    /// The display adapter: `std` is the standard VGA with VBE (PCI
    /// 1234:1111 at 00:02.0, QEMU's -vga std) with Debian's
    /// /usr/share/seabios/vgabios-stdvga.bin as its VGA BIOS, for text
    /// modes, 16- and 256-colour VGA modes and VBE modes up to 32 bpp;
    /// `none` has no display. Default: `std` when a display is asked for
    /// (a VNC server), otherwise `none`. The picture is read with the
    /// control socket's `screendump` (PPM or PNG).
    #[arg(long, value_enum, value_name = "std|none")]
    pub vga: Option<crate::display::VgaKind>,
    /// Serve the console to VNC viewers (RFB 3.8; 3.3 and 3.7 viewers
    /// too): HOST:PORT, :PORT or PORT (HOST defaults to 127.0.0.1, this
    /// machine only), or unix:PATH. `password=FILE` (or
    /// --vnc-password-file) asks viewers for the password on FILE's first
    /// line (VNC Authentication: only its first 8 bytes count). A HOST
    /// other machines can reach is refused without a password unless
    /// --vnc-insecure is given. Keys and the pointer reach the guest
    /// through the PS/2 keyboard and mouse; at most 16 viewers at once.
    #[arg(long, value_name = "HOST:PORT|unix:PATH[,password=FILE]")]
    pub vnc: Option<String>,
    /// The VNC password file (its first line), as --vnc's password=FILE.
    #[arg(long = "vnc-password-file", value_name = "FILE", requires = "vnc")]
    pub vnc_password_file: Option<PathBuf>,
    /// Serve VNC without a password on an address other machines can
    /// reach (anyone who connects can type into the machine).
    #[arg(long = "vnc-insecure", requires = "vnc")]
    pub vnc_insecure: bool,
}

impl RunArgs {
    /// Whether something shows the guest's display, so a VGA is wanted
    /// unless `--vga none` says otherwise.
    pub fn wants_display(&self) -> bool {
        self.vnc.is_some()
    }
}

/// The whole program: parse, run, exit code.
pub fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    crate::logging::init();
    std::process::ExitCode::from(execute(cli))
}

/// Runs a parsed command line and returns the process exit code.
pub fn execute(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Run(args) => crate::run(*args),
        Command::Disk(cmd) => crate::disk_cmd::execute(cmd),
        Command::Qmp(args) => crate::control::client::execute(args),
        Command::P2v(cmd) => crate::p2v_cmd::execute(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rehost: {e:#}");
            exit::ERROR
        }
    }
}
