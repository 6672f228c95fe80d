//! From the command line to a validated machine configuration. Every
//! problem is reported here, naming the file or value, before KVM is
//! touched.

use std::path::PathBuf;

use anyhow::{bail, Context};
use rehost_boot::firmware::{self, Firmware};
use rehost_boot::layout::{parse_size, MemoryLayout, MIB};
use rehost_boot::option_rom::{self, OptionRom};

use crate::cli::RunArgs;
use crate::serial::ComSpec;

/// Direct Linux boot inputs.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// Most vCPUs rehost starts (the MADT and the firmware handle more, but
/// each is a host thread).
pub const MAX_CPUS: u8 = 64;

#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub layout: MemoryLayout,
    pub cpus: u8,
    /// `None` with direct kernel boot.
    pub firmware: Option<Firmware>,
    pub option_roms: Vec<OptionRom>,
    pub kernel: Option<KernelConfig>,
    /// COM1 to COM4.
    pub com_ports: [ComSpec; 4],
    pub firmware_log: Option<PathBuf>,
    pub no_reboot: bool,
    /// Disks and CD-ROMs, opened, with their controller slots.
    pub drives: Vec<crate::storage::DriveConfig>,
    pub boot: crate::storage::BootDevice,
    /// SeaBIOS's boot menu wait (ms), when the menu is offered.
    pub boot_menu_wait: Option<u16>,
    /// The USB controller and its devices, if any.
    pub usb: Option<crate::usb::UsbConfig>,
    /// The control socket's path (`--qmp`).
    pub qmp: Option<PathBuf>,
    /// The display adapter (`--vga`).
    pub display: crate::display::DisplayConfig,
}

fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl MachineConfig {
    pub fn from_args(args: &RunArgs) -> anyhow::Result<Self> {
        let total = parse_size(&args.memory).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
        let layout = MemoryLayout::new(total)
            .map_err(|e| anyhow::anyhow!("--memory {}: {e}", args.memory))?;
        if let Some(host) = host_memory() {
            if total > host {
                bail!(
                    "--memory {}: more than this host's {} MiB of RAM",
                    args.memory,
                    host / MIB
                );
            }
        }
        if args.cpus == 0 || args.cpus > MAX_CPUS {
            bail!("--cpus {}: must be between 1 and {MAX_CPUS}", args.cpus);
        }
        let kernel = match &args.kernel {
            Some(k) => {
                for (p, what) in
                    std::iter::once((k, "kernel")).chain(args.initrd.iter().map(|i| (i, "initrd")))
                {
                    std::fs::File::open(p)
                        .with_context(|| format!("{}: cannot read {what}", p.display()))?;
                }
                Some(KernelConfig {
                    kernel: k.clone(),
                    initrd: args.initrd.clone(),
                    cmdline: args
                        .cmdline
                        .clone()
                        .unwrap_or_else(|| "console=ttyS0".to_owned()),
                })
            }
            None => None,
        };
        if kernel.is_some() && (args.firmware.is_some() || !args.option_roms.is_empty()) {
            bail!("--kernel boots without firmware: it cannot be combined with --firmware or --option-rom");
        }
        let firmware = if kernel.is_none() {
            // A controller whose driver only the bigger SeaBIOS build has
            // picks that build when no firmware is named.
            let default = args
                .usb_controller
                .and_then(|c| c.default_firmware())
                .unwrap_or(firmware::DEFAULT_FIRMWARE);
            Some(firmware::load_or(args.firmware.as_deref(), default)?)
        } else {
            None
        };
        let option_roms = args
            .option_roms
            .iter()
            .map(|p| option_rom::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut com_ports: [ComSpec; 4] = Default::default();
        for (i, spec) in [&args.com1, &args.com2, &args.com3, &args.com4]
            .into_iter()
            .enumerate()
        {
            // A bad SPEC is one message; the guest still gets the UART,
            // with nothing behind it, and the machine runs.
            com_ports[i] = spec.parse().unwrap_or_else(|e| {
                crate::serial::warn_disconnected(i, &format!("--com{} {spec}: {e}", i + 1));
                ComSpec::Null
            });
        }
        crate::serial::settle_specs(&mut com_ports);
        let drives = crate::storage::open_drives(&args.disks, &args.cdroms)?;
        if !args.no_p2v_check {
            for w in crate::p2v_cmd::boot_warnings(&drives) {
                tracing::warn!("{w}");
            }
        }
        let in_use: Vec<PathBuf> = drives
            .iter()
            .filter_map(|d| std::fs::canonicalize(&d.spec.path).ok())
            .collect();
        let usb = crate::usb::open_usb(args.usb_controller, &args.usb, &in_use)?;
        let usb_disks = usb.as_ref().map(crate::usb::boot_order).unwrap_or_default();
        if args.boot == crate::storage::BootDevice::Usb && usb_disks.is_empty() {
            bail!("--boot usb: no USB disk is given (--usb disk:PATH)");
        }
        Ok(Self {
            layout,
            cpus: args.cpus,
            firmware,
            option_roms,
            kernel,
            com_ports,
            firmware_log: args.firmware_log.clone(),
            no_reboot: args.no_reboot,
            drives,
            boot: args.boot,
            boot_menu_wait: args.boot_menu.then_some(args.boot_menu_wait),
            usb,
            qmp: args.qmp.clone(),
            display: crate::display::DisplayConfig::new(args.vga, args.wants_display())?,
        })
    }
}
