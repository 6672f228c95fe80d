//! The fw_cfg items and files the firmware reads (SeaBIOS
//! `src/fw/paravirt.c`, QEMU `docs/specs/fw_cfg.rst`).

use crate::layout::MemoryLayout;

// Numbered items (match rehost_devices::legacy::fw_cfg's constants).
pub const FW_CFG_RAM_SIZE: u16 = 0x0003;
pub const FW_CFG_NOGRAPHIC: u16 = 0x0004;
pub const FW_CFG_NB_CPUS: u16 = 0x0005;
pub const FW_CFG_BOOT_MENU: u16 = 0x000e;
pub const FW_CFG_MAX_CPUS: u16 = 0x000f;

/// What goes into fw_cfg for one boot.
#[derive(Debug, Default, Clone)]
pub struct FwCfgContent {
    pub items: Vec<(u16, Vec<u8>)>,
    pub files: Vec<(String, Vec<u8>)>,
}

impl FwCfgContent {
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
    }
}

/// Firmware settings that do not depend on devices.
#[derive(Debug, Clone)]
pub struct FirmwareSettings {
    pub layout: MemoryLayout,
    pub cpus: u8,
    /// I/O port of the serial console SeaBIOS should mirror its screen to.
    pub serial_console_port: Option<u16>,
    /// OpenFirmware device paths, first choice first.
    pub boot_order: Vec<String>,
    /// SeaBIOS's interactive boot menu: how long (ms) it offers its menu
    /// key before booting; `None` boots without offering it.
    pub boot_menu_wait: Option<u16>,
}

/// `etc/e820` entries: little-endian address, length, type.
pub fn e820_file(layout: &MemoryLayout) -> Vec<u8> {
    let mut v = Vec::new();
    for e in layout.firmware_e820() {
        v.extend_from_slice(&e.addr.to_le_bytes());
        v.extend_from_slice(&e.size.to_le_bytes());
        v.extend_from_slice(&e.kind.to_le_bytes());
    }
    v
}

pub fn build(settings: &FirmwareSettings) -> FwCfgContent {
    let mut c = FwCfgContent::default();
    c.items.push((
        FW_CFG_RAM_SIZE,
        settings.layout.total().to_le_bytes().to_vec(),
    ));
    c.items
        .push((FW_CFG_NOGRAPHIC, 1u16.to_le_bytes().to_vec()));
    c.items.push((
        FW_CFG_NB_CPUS,
        u16::from(settings.cpus).to_le_bytes().to_vec(),
    ));
    c.items.push((
        FW_CFG_MAX_CPUS,
        u16::from(settings.cpus).to_le_bytes().to_vec(),
    ));
    // The interactive boot menu only when asked for: it waits for a key
    // on every boot (SeaBIOS src/boot.c interactive_bootmenu reads
    // etc/show-boot-menu and etc/boot-menu-wait, as QEMU's -boot
    // menu=on,splash-time=MS sets them).
    let menu = u16::from(settings.boot_menu_wait.is_some());
    c.items
        .push((FW_CFG_BOOT_MENU, menu.to_le_bytes().to_vec()));
    c.files
        .push(("etc/e820".into(), e820_file(&settings.layout)));
    c.files
        .push(("etc/show-boot-menu".into(), menu.to_le_bytes().to_vec()));
    if let Some(ms) = settings.boot_menu_wait {
        c.files
            .push(("etc/boot-menu-wait".into(), ms.to_le_bytes().to_vec()));
    }
    // With no bootable device, say so and stay (QEMU's default); never
    // loop through reboots.
    c.files
        .push(("etc/boot-fail-wait".into(), u32::MAX.to_le_bytes().to_vec()));
    if let Some(port) = settings.serial_console_port {
        c.files
            .push(("etc/sercon-port".into(), port.to_le_bytes().to_vec()));
    }
    if !settings.boot_order.is_empty() {
        let mut order = settings.boot_order.join("\n").into_bytes();
        order.push(0);
        c.files.push(("bootorder".into(), order));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MIB;

    #[test]
    fn content_for_seabios() {
        let c = build(&FirmwareSettings {
            layout: MemoryLayout::new(64 * MIB).unwrap(),
            cpus: 2,
            serial_console_port: Some(0x3f8),
            boot_order: vec!["/pci@i0cf8/ide@1,1/drive@0/disk@0".into()],
            boot_menu_wait: None,
        });
        let e820 = c.file("etc/e820").unwrap();
        assert_eq!(e820.len(), 20);
        assert_eq!(&e820[8..16], &(64 * MIB).to_le_bytes());
        assert_eq!(&e820[16..20], &1u32.to_le_bytes());
        assert_eq!(c.file("etc/sercon-port"), Some(&[0xf8, 0x03][..]));
        assert_eq!(
            c.file("bootorder"),
            Some(&b"/pci@i0cf8/ide@1,1/drive@0/disk@0\0"[..])
        );
        assert!(c.items.contains(&(FW_CFG_NB_CPUS, vec![2, 0])));
        assert_eq!(c.file("etc/show-boot-menu"), Some(&[0, 0][..]));
        assert_eq!(c.file("etc/boot-menu-wait"), None);
        let c = build(&FirmwareSettings {
            layout: MemoryLayout::new(64 * MIB).unwrap(),
            cpus: 1,
            serial_console_port: None,
            boot_order: Vec::new(),
            boot_menu_wait: Some(5000),
        });
        assert_eq!(c.file("etc/show-boot-menu"), Some(&[1, 0][..]));
        assert_eq!(
            c.file("etc/boot-menu-wait"),
            Some(&5000u16.to_le_bytes()[..])
        );
        assert!(c.items.contains(&(FW_CFG_BOOT_MENU, vec![1, 0])));
    }
}
