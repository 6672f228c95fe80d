//! The BCD store (a registry hive at \Boot\BCD): the default boot loader's
//! application and OS device elements.

use super::hive::{le_u32, Hive, HiveError};

/// The {bootmgr} object and its "default object" element.
const BOOTMGR_OBJECT: &str = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}";
const ELEMENT_DEFAULT_OBJECT: &str = "23000003";
const ELEMENT_APPLICATION_DEVICE: &str = "11000001";
const ELEMENT_OS_DEVICE: &str = "21000001";

// Device element layout (partition device): partition style at 0x34; MBR:
// partition offset (bytes) at 0x20, disk signature at 0x38; GPT: partition
// GUID at 0x20, disk GUID at 0x38.
const DEV_PARTITION_OFFSET: usize = 0x20;
const DEV_PARTITION_STYLE: usize = 0x34;
const DEV_DISK_ID: usize = 0x38;
const DEV_MIN_LEN: usize = 0x48;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BcdDevice {
    Mbr {
        signature: u32,
        offset: u64,
    },
    Gpt {
        partition_guid: String,
        disk_guid: String,
    },
    Other {
        len: usize,
    },
}

fn guid(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

impl BcdDevice {
    pub fn parse(data: &[u8]) -> BcdDevice {
        if data.len() < DEV_MIN_LEN {
            return BcdDevice::Other { len: data.len() };
        }
        match le_u32(data, DEV_PARTITION_STYLE) {
            Some(1) => {
                let mut o = [0u8; 8];
                o.copy_from_slice(&data[DEV_PARTITION_OFFSET..DEV_PARTITION_OFFSET + 8]);
                BcdDevice::Mbr {
                    signature: le_u32(data, DEV_DISK_ID).unwrap_or(0),
                    offset: u64::from_le_bytes(o),
                }
            }
            Some(0) => BcdDevice::Gpt {
                partition_guid: guid(&data[DEV_PARTITION_OFFSET..DEV_PARTITION_OFFSET + 16]),
                disk_guid: guid(&data[DEV_DISK_ID..DEV_DISK_ID + 16]),
            },
            _ => BcdDevice::Other { len: data.len() },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            BcdDevice::Mbr { signature, offset } => {
                format!("MBR disk signature {signature:08x}, partition offset {offset:#x}")
            }
            BcdDevice::Gpt {
                partition_guid,
                disk_guid,
            } => format!("GPT disk {{{disk_guid}}}, partition {{{partition_guid}}}"),
            BcdDevice::Other { len } => format!("not a partition device ({len} bytes)"),
        }
    }

    /// Why the device does not name this disk's partition, if it does not.
    pub fn mismatch(&self, signature: u32, offset: u64) -> Option<String> {
        match self {
            BcdDevice::Mbr {
                signature: s,
                offset: o,
            } => {
                if *s != signature {
                    Some(format!(
                        "disk signature {s:08x} != the MBR's {signature:08x}"
                    ))
                } else if *o != offset {
                    Some(format!(
                        "partition offset {o:#x} != the active partition's {offset:#x}"
                    ))
                } else {
                    None
                }
            }
            BcdDevice::Gpt { disk_guid, .. } => Some(format!(
                "points at GPT disk {{{disk_guid}}}, this disk is MBR-partitioned"
            )),
            BcdDevice::Other { .. } => None,
        }
    }
}

/// The default loader's application and OS devices, by element name.
pub fn default_loader_devices(bcd: &Hive) -> Result<Vec<(&'static str, BcdDevice)>, HiveError> {
    let missing = |what: String| HiveError {
        hive: bcd.name().to_owned(),
        structure: "BCD object",
        offset: 0,
        reason: what,
    };
    let default = bcd
        .open(&format!(
            "Objects\\{BOOTMGR_OBJECT}\\Elements\\{ELEMENT_DEFAULT_OBJECT}"
        ))?
        .ok_or_else(|| missing("{bootmgr} has no default object element".into()))?
        .string("Element")?
        .ok_or_else(|| missing("{bootmgr}'s default object element is not a string".into()))?;
    let loader = bcd
        .open(&format!("Objects\\{default}\\Elements"))?
        .ok_or_else(|| missing(format!("default object {default} does not exist")))?;
    let mut out = Vec::new();
    for (name, element) in [
        ("application_device", ELEMENT_APPLICATION_DEVICE),
        ("os_device", ELEMENT_OS_DEVICE),
    ] {
        if let Some(k) = loader.subkey(element)? {
            if let Some(v) = k.value("Element")? {
                out.push((name, BcdDevice::parse(&v.data()?.data)));
            }
        }
    }
    Ok(out)
}
