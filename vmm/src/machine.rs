//! One boot of the virtual PC: a KVM VM with its memory, interrupt
//! controllers, platform devices and vCPU threads, run until the guest
//! powers off, resets or crashes, or the host asks it to stop.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_pit_config, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use rehost_boot::acpi::AcpiConfig;
use rehost_boot::fw_cfg::{self as fw_cfg_content, FirmwareSettings};
use rehost_boot::linux::LinuxBootSpec;
use rehost_boot::smbios::SmbiosConfig;
use rehost_devices::bus::{Bus, SharedDevice};
use rehost_devices::events::{MachineEvents, MachineRequest};
use rehost_devices::irq::{IrqLine, SharedIrqLine};
use rehost_devices::legacy::cmos::{Cmos, NvramConfig, CMOS_PORT};
use rehost_devices::legacy::debugcon::DEBUGCON_PORT;
use rehost_devices::legacy::fw_cfg::{FwCfg, FW_CFG_PORT_LEN, FW_CFG_PORT_SEL};
use rehost_devices::legacy::i8042::{Ps2Input, COMMAND_PORT, DATA_PORT, I8042};
use rehost_devices::legacy::port92::{Port92, PORT92};
use rehost_devices::pci::i440fx::{I440fx, PamListener};
use rehost_devices::pci::piix3::{Piix3Isa, PIRQRC};
use rehost_devices::pci::piix4_pm::{Piix4Pm, PMBA, PMREGMISC};
use rehost_devices::pci::{
    DevFn, PciInterruptRouter, PciRoot, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN,
};
use rehost_devices::serial::COM_PORTS;
use vmm_sys_util::eventfd::EventFd;

use crate::config::MachineConfig;
use crate::control::{HostRequest, MachineHandle, VmControl};
use crate::host::HostSide;
use crate::memory::{GuestRam, PamArea};
use crate::signals::ShutdownSignals;
use crate::storage::{drive_name, DriveKind};
use crate::vcpu::{self, VcpuContext, VcpuFailure, VcpuReport};
use rehost_devices::storage::atapi::TrayObserver;

/// Where SeaBIOS puts the PIIX4 PM block when it runs the table loader,
/// and where rehost puts it when no firmware does.
const PM_BASE: u16 = 0x600;
/// The ISA IRQs SeaBIOS routes PIRQA-D to (and rehost does without firmware).
const PIRQ_IRQS: [u8; 4] = [10, 10, 11, 11];

/// How a boot ended.
#[derive(Debug)]
pub enum Outcome {
    PowerOff,
    Reset,
    /// `system_reset` on the control socket.
    HostReset,
    /// `quit` on the control socket.
    Quit,
    HostStop,
    Signal(i32),
    Crash(VcpuFailure),
}

/// An ISA interrupt line of the in-kernel PIC/I/O APIC.
struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, level: bool) {
        if let Err(e) = self.vm.set_irq_line(self.gsi, level) {
            tracing::error!(gsi = self.gsi, "KVM_IRQ_LINE failed: {e}");
        }
    }
}

pub struct Machine {
    // Fields drop in order: threads first (already joined), then devices,
    // then the VM, then its memory.
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    reports: Receiver<VcpuReport>,
    report_wake: Arc<EventFd>,
    events: Arc<MachineEvents>,
    storage: crate::storage::Attached,
    usb: Option<crate::usb::AttachedUsb>,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    _vm: Arc<VmFd>,
    _ram: Arc<GuestRam>,
}

/// Routes GSIs as a PC does: 0-15 to the PICs and the I/O APIC, with the
/// timer (GSI 0) on I/O APIC pin 2, and 16-23 to the I/O APIC only.
fn set_pc_irq_routing(vm: &VmFd) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    let entry = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    for gsi in 0..24u32 {
        if gsi < 8 {
            entries.push(entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            entries.push(entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        match gsi {
            0 => entries.push(entry(0, KVM_IRQCHIP_IOAPIC, 2)),
            2 => {}
            _ => entries.push(entry(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
        }
    }
    let routing = KvmIrqRouting::from_entries(&entries)
        .map_err(|e| anyhow!("building the IRQ routing table: {e:?}"))?;
    vm.set_gsi_routing(&routing)
        .context("KVM_SET_GSI_ROUTING")?;
    Ok(())
}

fn setup_cpuid(kvm: &Kvm, vcpu: &kvm_ioctls::VcpuFd, id: u8, cpus: u8) -> anyhow::Result<()> {
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .context("KVM_GET_SUPPORTED_CPUID")?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // Initial APIC ID and logical processor count.
                e.ebx = (e.ebx & 0x0000_ffff) | u32::from(id) << 24 | u32::from(cpus) << 16;
                if cpus > 1 {
                    e.edx |= 1 << 28;
                }
            }
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
    Ok(())
}

impl Machine {
    pub fn build(
        kvm: &Kvm,
        cfg: &MachineConfig,
        host: &HostSide,
        ctl: &Arc<VmControl>,
    ) -> anyhow::Result<Self> {
        // The USB devices as the control socket left them (hot-plugged
        // ones stay across resets). The guard is held until this machine
        // is registered with the control socket, so a `device_add` waits
        // and then plugs into this machine.
        let usb_cfg = ctl.usb();
        // The drives as the control socket left them (a changed CD-ROM
        // medium stays changed across resets).
        let drives = ctl.drive_configs();
        let vm = Arc::new(kvm.create_vm().context("KVM_CREATE_VM")?);
        // Best effort: Intel VMX needs these below 4 GiB; other backends
        // ignore or refuse them harmlessly.
        if let Err(e) = vm.set_identity_map_address(0xfeff_c000) {
            tracing::debug!("KVM_SET_IDENTITY_MAP_ADDR: {e}");
        }
        if let Err(e) = vm.set_tss_address(0xfeff_d000) {
            tracing::debug!("KVM_SET_TSS_ADDR: {e}");
        }
        vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .context("KVM_CREATE_PIT2")?;
        set_pc_irq_routing(&vm)?;

        let readonly = vm.check_extension(Cap::ReadonlyMem);
        let ram = Arc::new(GuestRam::new(cfg.layout, cfg.firmware.as_ref(), readonly)?);
        ram.register(&vm)?;

        let events = Arc::new(MachineEvents::new()?);
        let io_bus = Arc::new(Bus::new());
        let mmio_bus = Arc::new(Bus::new());
        let isa: Vec<Arc<dyn IrqLine>> = (0..16)
            .map(|gsi| {
                Arc::new(KvmIrqLine {
                    vm: vm.clone(),
                    gsi,
                }) as Arc<dyn IrqLine>
            })
            .collect();

        // Chipset.
        let router = PciInterruptRouter::new(isa.clone());
        let mut pci = PciRoot::new(io_bus.clone(), mmio_bus.clone(), events.clone());
        let pam_ram = ram.clone();
        let pam_vm = vm.clone();
        let listener: PamListener = Arc::new(move |modes| pam_ram.apply_pam(&pam_vm, modes));
        let mut host_bridge = I440fx::new(Some(listener));
        host_bridge.set_initial_pam(&ram.initial_pam());
        pci.add(DevFn::new(0, 0), Arc::new(Mutex::new(host_bridge)))?;
        pci.add(
            DevFn::new(1, 0),
            Arc::new(Mutex::new(Piix3Isa::new(router.clone()))),
        )?;
        let pm = Arc::new(Mutex::new(Piix4Pm::new(isa[9].clone(), events.clone())));
        pci.add(DevFn::new(1, 3), pm.clone())?;
        if cfg.kernel.is_some() {
            // No firmware will set up the chipset: do what SeaBIOS would, so
            // the ACPI tables describe the machine as it is.
            pci.config_write(DevFn::new(1, 0), PIRQRC, &PIRQ_IRQS);
            pci.config_write(
                DevFn::new(1, 3),
                PMBA,
                &u32::from(PM_BASE | 1).to_le_bytes(),
            );
            pci.config_write(DevFn::new(1, 3), PMREGMISC, &[1]);
        }
        let storage = crate::storage::attach(
            &drives,
            &ram.mem,
            &mut pci,
            &io_bus,
            &isa,
            &router,
            Arc::new(crate::storage::KvmMsi { vm: vm.clone() }),
        )?;
        let usb = match usb_cfg.as_ref() {
            Some(u) => Some(crate::usb::attach(
                u.controller,
                &u.devices,
                &ram.mem,
                &mut pci,
                &router,
                Arc::new(crate::storage::KvmMsi { vm: vm.clone() }),
            )?),
            None => None,
        };
        crate::display::attach(
            &cfg.display,
            &vm,
            &mut pci,
            &io_bus,
            &mmio_bus,
            &ctl.console,
        )?;
        let pci: SharedDevice = Arc::new(Mutex::new(pci));
        io_bus.insert(PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN, pci)?;
        mmio_bus.insert(
            PamArea::BASE,
            PamArea::LEN,
            Arc::new(Mutex::new(ram.pam_area())),
        )?;

        // Legacy devices.
        let cmos = Cmos::new(
            NvramConfig {
                ram_below_4g: cfg.layout.below_4g,
                ram_above_4g: cfg.layout.above_4g,
                cpus: cfg.cpus,
            },
            isa[8].clone(),
        );
        io_bus.insert(CMOS_PORT, 2, Arc::new(Mutex::new(cmos)))?;
        let kbc = Arc::new(Mutex::new(I8042::new(
            isa[1].clone(),
            isa[12].clone(),
            events.clone(),
        )));
        // The console (kept by the control state across resets) types
        // into this machine's PS/2 keyboard and mouse.
        ctl.console.clear_inputs();
        ctl.console.add_input(Arc::new(Ps2Input(kbc.clone())));
        // USB keyboards take the same keys (send-key, VNC).
        for k in usb.iter().flat_map(|u| u.keyboards()) {
            ctl.console.add_input(k);
        }
        let kbc: SharedDevice = kbc;
        io_bus.insert(DATA_PORT, 1, kbc.clone())?;
        io_bus.insert(COMMAND_PORT, 1, kbc)?;
        io_bus.insert(PORT92, 1, Arc::new(Mutex::new(Port92::new(events.clone()))))?;
        // The debug port answers only when its output goes somewhere: SeaBIOS
        // probes it and, if present, writes its whole log there, a port
        // exit per character.
        if cfg.firmware_log.is_some() {
            io_bus.insert(DEBUGCON_PORT, 1, host.debugcon.clone())?;
        }

        // COM ports. COM1/COM3 share IRQ 4 and COM2/COM4 IRQ 3: each line
        // is the OR of its UARTs' outputs.
        let mut com_irqs: Vec<(u32, Arc<SharedIrqLine>)> = Vec::new();
        for port in &host.com_ports {
            let (base, irq) = COM_PORTS[port.index];
            let line = match com_irqs.iter().find(|(i, _)| *i == irq) {
                Some((_, l)) => l.clone(),
                None => {
                    let l = SharedIrqLine::new(isa[irq as usize].clone());
                    com_irqs.push((irq, l.clone()));
                    l
                }
            };
            {
                let mut uart = port.uart.lock().unwrap_or_else(|e| e.into_inner());
                uart.set_irq(line.input());
                uart.reset();
            }
            io_bus.insert(base, 8, port.uart.clone())?;
        }
        let com_resources: Vec<(u16, u8)> = host
            .com_ports
            .iter()
            .map(|p| (COM_PORTS[p.index].0 as u16, COM_PORTS[p.index].1 as u8))
            .collect();

        // Firmware configuration.
        let mut fw_cfg = FwCfg::new(ram.mem.clone());
        let content = fw_cfg_content::build(&FirmwareSettings {
            layout: cfg.layout,
            cpus: cfg.cpus,
            serial_console_port: com_resources.first().map(|&(port, _)| port),
            boot_order: {
                let drives = crate::storage::boot_order(&drives, cfg.boot);
                let usb = usb_cfg
                    .as_ref()
                    .map(crate::usb::boot_order)
                    .unwrap_or_default();
                if cfg.boot == crate::storage::BootDevice::Usb {
                    usb.into_iter().chain(drives).collect()
                } else {
                    drives.into_iter().chain(usb).collect()
                }
            },
            boot_menu_wait: cfg.boot_menu_wait,
        });
        for (key, data) in content.items {
            fw_cfg.add_item(key, data)?;
        }
        for (name, data) in content.files {
            fw_cfg.add_file(&name, data)?;
        }
        let acpi = rehost_boot::acpi::build(&AcpiConfig {
            pm_base: PM_BASE,
            pirq_irqs: PIRQ_IRQS,
            ..AcpiConfig::pc(cfg.layout, cfg.cpus, com_resources.clone())
        });
        let entry = match &cfg.kernel {
            Some(k) => Some(rehost_boot::linux::load(
                &ram.mem,
                &cfg.layout,
                &LinuxBootSpec {
                    kernel: &k.kernel,
                    initrd: k.initrd.as_deref(),
                    cmdline: &k.cmdline,
                    acpi: Some(&acpi),
                },
            )?),
            None => {
                let smbios =
                    rehost_boot::smbios::build(&SmbiosConfig::rehost(cfg.layout, cfg.cpus));
                fw_cfg.add_file(rehost_boot::smbios::ANCHOR_FILE, smbios.anchor)?;
                fw_cfg.add_file(rehost_boot::smbios::TABLES_FILE, smbios.tables)?;
                fw_cfg.add_file(rehost_boot::acpi::TABLES_FILE, acpi.tables)?;
                fw_cfg.add_file(rehost_boot::acpi::RSDP_FILE, acpi.rsdp)?;
                fw_cfg.add_file(rehost_boot::acpi::LOADER_FILE, acpi.loader)?;
                None
            }
        };
        for rom in &cfg.option_roms {
            fw_cfg
                .add_file(&rom.fw_cfg_name, rom.image.clone())
                .with_context(|| format!("adding option ROM {}", rom.fw_cfg_name))?;
        }
        io_bus.insert(
            FW_CFG_PORT_SEL,
            FW_CFG_PORT_LEN,
            Arc::new(Mutex::new(fw_cfg)),
        )?;

        // vCPUs.
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, reports) = channel();
        let report_wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let mut threads = Vec::new();
        for id in 0..cfg.cpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .with_context(|| format!("KVM_CREATE_VCPU {id}"))?;
            setup_cpuid(kvm, &fd, id, cfg.cpus)?;
            if let (0, Some(entry)) = (id, &entry) {
                crate::cpu_state::enter_long_mode(&fd, entry)?;
            }
            let ctx = VcpuContext {
                id,
                fd,
                io_bus: io_bus.clone(),
                mmio_bus: mmio_bus.clone(),
                events: events.clone(),
                stop: stop.clone(),
                gate: ctl.gate.clone(),
                reports: tx.clone(),
                report_wake: report_wake.clone(),
            };
            let t = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || ctx.run())
                .context("spawning a vCPU thread")?;
            threads.push(t);
        }
        // Tray moves the guest makes are events on the control socket.
        for d in drives.iter().filter(|d| d.kind == DriveKind::Cdrom) {
            let c = Arc::downgrade(ctl);
            let name = drive_name(d);
            let observer = TrayObserver(Arc::new(move |open| {
                if let Some(c) = c.upgrade() {
                    crate::control::commands::tray_event(&c, &name, open);
                }
            }));
            storage.with_cdrom(d.spec.controller, d.slot, |cd| {
                cd.set_tray_observer(observer)
            });
        }
        ctl.set_machine(Some(MachineHandle {
            pm,
            storage: storage.clone(),
            usb: usb.as_ref().map(|u| u.handle()),
            vcpus: threads.iter().map(|t| t.as_pthread_t()).collect(),
        }));
        drop(usb_cfg);

        Ok(Self {
            threads,
            stop,
            reports,
            report_wake,
            events,
            storage,
            usb,
            io_bus,
            mmio_bus,
            _vm: vm,
            _ram: ram,
        })
    }

    /// Waits for the end of this boot, then stops every vCPU.
    pub fn run(mut self, signals: &ShutdownSignals, host: &HostSide, ctl: &VmControl) -> Outcome {
        let fds = [
            self.events.eventfd().as_raw_fd(),
            signals.eventfd().as_raw_fd(),
            self.report_wake.as_raw_fd(),
            host.host_requests.eventfd().as_raw_fd(),
            ctl.request_eventfd().as_raw_fd(),
        ];
        let outcome = loop {
            if let Some(sig) = signals.received() {
                break Outcome::Signal(sig);
            }
            if let Some(req) = self.events.pending() {
                break match req {
                    MachineRequest::PowerOff => Outcome::PowerOff,
                    MachineRequest::Reset => Outcome::Reset,
                    MachineRequest::HostStop => Outcome::HostStop,
                };
            }
            if host.host_requests.pending().is_some() {
                break Outcome::HostStop;
            }
            match ctl.take_request() {
                Some(HostRequest::Quit) => break Outcome::Quit,
                Some(HostRequest::Reset) => break Outcome::HostReset,
                None => {}
            }
            if let Ok(VcpuReport::Failed(f)) = self.reports.try_recv() {
                break Outcome::Crash(f);
            }
            let mut pfds: Vec<libc::pollfd> = fds
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: poll reads and writes only the array it is given.
            unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
            let _ = self.report_wake.read();
        };
        // USB devices are neither plugged nor unplugged until this
        // machine's device models are gone: a `device_del` now must find
        // the image held by nobody else, to close it.
        let usb_cfg = ctl.usb();
        // The control socket lets go of this machine before its vCPU
        // threads end (it kicks them by thread id).
        ctl.set_machine(None);
        ctl.console.clear_inputs();
        vcpu::stop_all(&self.stop, std::mem::take(&mut self.threads));
        self.storage.flush();
        if let Some(u) = self.usb.as_mut() {
            u.stop();
        }
        for d in usb_cfg.iter().flat_map(|u| u.devices.iter()) {
            crate::usb::flush_device(d);
        }
        // Break the PCI root <-> bus cycle so every device, and every disk
        // image the devices hold, is dropped with this machine.
        self.io_bus.clear();
        self.mmio_bus.clear();
        drop(self.usb.take());
        drop(usb_cfg);
        outcome
    }
}

use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
