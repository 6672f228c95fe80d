//! The display adapter choice (`--vga`), the VGA BIOS it needs, attaching
//! the adapter to a machine, and QMP `screendump`'s image files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use anyhow::Context;
use kvm_ioctls::VmFd;
use rehost_devices::bus::Bus;
use rehost_devices::display::vga::vga_spec::{WINDOW_BASE, WINDOW_LEN};
use rehost_devices::display::vga::{
    LfbListener, Vga, VgaLegacyWindow, VgaPci, VgaPorts, VgaScreen, WindowListener,
};
use rehost_devices::display::{Console, Frame};
use rehost_devices::pci::{DevFn, PciRoot};

/// The VGA BIOS of the standard VGA (Debian package `seabios`).
pub const STDVGA_BIOS: &str = "/usr/share/seabios/vgabios-stdvga.bin";
/// Where the VGA sits on PCI bus 0 (QEMU's i440FX machine puts it at 02.0).
pub const VGA_SLOT: DevFn = DevFn::new(2, 0);
/// The largest VGA BIOS accepted (PCI expansion ROMs on a PC are below
/// the 128 KiB option ROM area).
const MAX_VGA_BIOS: u64 = 128 * 1024;

/// `--vga`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VgaKind {
    /// The standard VGA with VBE (PCI 1234:1111), QEMU's `-vga std`.
    Std,
    /// No display adapter.
    None,
}

/// The display part of a machine's configuration.
#[derive(Debug, Clone)]
pub struct DisplayConfig {
    /// The VGA BIOS image, when a VGA is present.
    pub vga_bios: Option<Vec<u8>>,
}

impl DisplayConfig {
    /// `--vga` when given; otherwise a VGA exactly when something wants to
    /// show the display (`wants_display`: a VNC server, say), so a
    /// serial-only machine stays as lean as without one.
    pub fn new(vga: Option<VgaKind>, wants_display: bool) -> anyhow::Result<Self> {
        let kind = vga.unwrap_or(if wants_display {
            VgaKind::Std
        } else {
            VgaKind::None
        });
        let vga_bios = match kind {
            VgaKind::None => None,
            VgaKind::Std => Some(load_vga_bios(Path::new(STDVGA_BIOS))?),
        };
        Ok(Self { vga_bios })
    }
}

fn load_vga_bios(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "{}: cannot read the VGA BIOS for --vga std (Debian package `seabios`)",
            path.display()
        )
    })?;
    if meta.len() > MAX_VGA_BIOS {
        anyhow::bail!(
            "{}: {} bytes is too large for a VGA BIOS (at most {MAX_VGA_BIOS})",
            path.display(),
            meta.len()
        );
    }
    let image = std::fs::read(path).with_context(|| format!("{}: reading", path.display()))?;
    if image.len() < 3 || image[0] != 0x55 || image[1] != 0xaa {
        anyhow::bail!(
            "{}: not an option ROM (no 55 AA signature at offset 0)",
            path.display()
        );
    }
    Ok(image)
}

/// Video memory mapped into the guest through a KVM slot, so the guest's
/// accesses run at memory speed instead of exiting one by one to the
/// device: the whole of it at BAR 0 (the linear framebuffer), and a part
/// of it at the A0000h window in chain-4 modes (mode 13h, VBE banked
/// modes; QEMU maps the same "vga.chain4" alias). KVM's dirty page log
/// would say which pages changed, but under PVM (this project's hosts)
/// KVM_GET_DIRTY_LOG reports no page at all while the guest draws; the
/// renderer compares what it shows with video memory instead (a few
/// hundred microseconds for 1024x768x32).
struct VramSlot {
    /// Weak: the console keeps the adapter (and with it this slot) past
    /// the machine's end, and must not keep the VM.
    vm: Weak<VmFd>,
    slot: u32,
    /// What the slot shows, for the log.
    what: &'static str,
    /// Host address of video memory and its length.
    host: u64,
    len: usize,
    /// The guest address where the slot is mapped now.
    mapped: Mutex<Option<u64>>,
}

impl VramSlot {
    /// Maps `len` bytes of video memory from `offset` at guest address
    /// `base` (or removes the slot); true when mapped. If KVM refuses, the
    /// guest reaches that memory through MMIO exits to the device.
    fn place(&self, at: Option<(u64, usize, usize)>) -> bool {
        let Some(vm) = self.vm.upgrade() else {
            return false;
        };
        let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        if mapped.is_some() {
            if let Err(e) = crate::memory::set_slot(&vm, self.slot, 0, 0, 0, 0) {
                tracing::warn!("VGA: removing the {} slot: {e}", self.what);
            }
            *mapped = None;
        }
        let Some((base, len, offset)) = at else {
            return false;
        };
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            tracing::warn!(
                "VGA: the {} ({len} bytes from video memory offset {offset:#x}) is outside video memory",
                self.what
            );
            return false;
        }
        match crate::memory::set_slot(
            &vm,
            self.slot,
            base,
            len as u64,
            self.host + offset as u64,
            0,
        ) {
            Ok(()) => {
                tracing::debug!("VGA: {} mapped at {base:#x}", self.what);
                *mapped = Some(base);
                true
            }
            Err(e) => {
                tracing::warn!(
                    "VGA: {} at {base:#x} stays on MMIO exits (KVM refused the slot: {e})",
                    self.what
                );
                false
            }
        }
    }
}

/// Puts the VGA on the machine's buses and makes it the console's screen.
pub fn attach(
    cfg: &DisplayConfig,
    vm: &Arc<VmFd>,
    pci: &mut PciRoot,
    io_bus: &Bus,
    mmio_bus: &Bus,
    console: &Console,
) -> anyhow::Result<()> {
    let Some(bios) = &cfg.vga_bios else {
        return Ok(());
    };
    let vga = Vga::shared()?;
    let (host, len) = vga
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .vram_host_range();
    let slot = |slot, what| VramSlot {
        vm: Arc::downgrade(vm),
        slot,
        what,
        host,
        len,
        mapped: Mutex::new(None),
    };
    let lfb = slot(crate::memory::SLOT_VRAM, "framebuffer");
    let window = slot(crate::memory::SLOT_VGA_WINDOW, "chain-4 window");
    let mut function = VgaPci::new(vga.clone(), bios.clone());
    let listener: LfbListener = Arc::new(move |base| lfb.place(base.map(|b| (b, len, 0))));
    function.set_lfb_listener(listener);
    let listener: WindowListener =
        Arc::new(move |alias| window.place(alias.map(|a| (a.base, a.len, a.vram_offset))));
    vga.lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_window_listener(listener);
    pci.add(VGA_SLOT, Arc::new(Mutex::new(function)))
        .context("adding the VGA to PCI")?;
    let ports = Arc::new(Mutex::new(VgaPorts(vga.clone())));
    for (base, len) in VgaPorts::RANGES {
        io_bus
            .insert(base, len, ports.clone())
            .with_context(|| format!("VGA ports {base:#x}+{len:#x}"))?;
    }
    mmio_bus
        .insert(
            WINDOW_BASE,
            WINDOW_LEN,
            Arc::new(Mutex::new(VgaLegacyWindow(vga.clone()))),
        )
        .context("VGA memory window")?;
    console.set_screen(Box::new(VgaScreen::new(vga)));
    Ok(())
}

/// `screendump`'s image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Ppm,
    Png,
}

/// Writes `frame` to `path` as a binary PPM (P6) or an 8-bit RGB PNG.
pub fn write_image(frame: &Frame, path: &PathBuf, format: ImageFormat) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let rgb = frame.to_rgb8();
    match format {
        ImageFormat::Ppm => {
            write!(out, "P6\n{} {}\n255\n", frame.width, frame.height)
                .and_then(|_| out.write_all(&rgb))
                .with_context(|| format!("{}: writing", path.display()))?;
        }
        ImageFormat::Png => {
            let mut enc = png::Encoder::new(&mut out, frame.width, frame.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc
                .write_header()
                .with_context(|| format!("{}: writing the PNG header", path.display()))?;
            w.write_image_data(&rgb)
                .with_context(|| format!("{}: writing the PNG image", path.display()))?;
            w.finish()
                .with_context(|| format!("{}: finishing the PNG", path.display()))?;
        }
    }
    out.flush()
        .with_context(|| format!("{}: writing", path.display()))?;
    Ok(())
}
