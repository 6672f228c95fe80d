//! `rehost p2v fix`: makes the controller's storage drivers start at boot
//! (Start = 0, every StartOverride value = 0) and optionally marks a
//! partition active and puts rehost's own MBR boot code in place (see
//! [`super::mbr_code`]), writing only into a new differencing child of the
//! image. The image the user gave is only ever opened read-only.

use std::path::{Path, PathBuf};

use rehost_disk::{BlockDevice, CreateOptions, ImageFormat, OpenOptions, Subformat, SECTOR_SIZE};

use super::check::{bound_services, current_control_set, start_overrides, Controller};
use super::hive::Hive;
use super::mbr_code::REHOST_MBR_CODE;
use super::partition::{self, MbrPartition};
use super::partition_spec::{
    MBR_BOOT_CODE_END, MBR_ENTRIES, MBR_ENTRY_SIZE, MBR_PARTITION_TABLE, PE_STATUS, SECTOR,
};
use super::volume::NtfsVolume;

const SYSTEM: &str = "Windows\\System32\\config\\SYSTEM";

/// Why a fix was not made.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error(transparent)]
    Disk(#[from] rehost_disk::BlockError),
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
}

/// What the fix wrote into the child.
#[derive(Debug, Clone, Default)]
pub struct FixOutcome {
    /// One line per edit ("ControlSet001\Services\msahci\Start: 3 -> 0").
    pub edits: Vec<String>,
}

/// One DWORD to set to 0: its value cell, where it is, its old value.
struct Edit {
    cell: u32,
    path: String,
    old: u32,
}

/// Creates `out` as a differencing image over `image` (VHDX over VHDX, VHD
/// over VHD) and writes the fix into it.
pub fn fix_image(
    image: &Path,
    out: &Path,
    controller: Controller,
    active: Option<u8>,
    boot_code: bool,
) -> Result<FixOutcome, FixError> {
    let refuse = |reason: String| FixError::Refused {
        path: image.to_owned(),
        reason,
    };
    if let Some(n) = active {
        if !(1..=MBR_ENTRIES as u8).contains(&n) {
            return Err(refuse(format!(
                "--active {n}: partitions are numbered 1 to 4"
            )));
        }
    }
    // A raw file cannot be the parent of a differencing image; the child
    // has the parent's format.
    let format = rehost_disk::detect_format(image)?;
    if format == ImageFormat::Raw {
        return Err(refuse(
            "a raw image cannot have a differencing child: convert it to VHDX first \
             (rehost disk convert)"
                .into(),
        ));
    }
    // Plan everything from the read-only image first.
    let parent = rehost_disk::open(
        image,
        &OpenOptions {
            read_only: true,
            format: None,
        },
    )?;
    let dev: &dyn BlockDevice = parent.as_ref();
    let mut sector0 = vec![0u8; SECTOR];
    dev.read_at(0, &mut sector0)?;
    let mbr = partition::parse_mbr(&sector0)
        .filter(|m| m.boot_signature_ok && !m.is_protective())
        .ok_or_else(|| refuse("not an MBR-partitioned disk".into()))?;
    let (part, hive, extents) = find_system_hive(dev, &mbr).map_err(refuse)?;
    if hive.base_block().is_dirty() {
        return Err(refuse(
            "the SYSTEM hive is dirty (its sequence numbers differ): its last changes are in \
             SYSTEM.LOG1/.LOG2, and editing it in place would lose them"
                .into(),
        ));
    }
    let set = current_control_set(&hive).map_err(refuse)?;
    let (services, _) =
        bound_services(&hive, &set, controller).map_err(|e| refuse(e.to_string()))?;
    if services.is_empty() {
        return Err(refuse(format!(
            "no driver is bound to the {} controller's PCI IDs: nothing to enable",
            controller.label()
        )));
    }
    let edits = plan_edits(&hive, &set, &services).map_err(refuse)?;
    let mut outcome = FixOutcome::default();
    let mut fixed = hive.clone();
    for e in &edits {
        fixed
            .set_dword_in_place(e.cell, 0)
            .map_err(|err| refuse(err.to_string()))?;
        outcome.edits.push(format!("{}: {} -> 0", e.path, e.old));
    }
    if !edits.is_empty() {
        fixed.bump_sequence();
    }
    // Changed sectors of the hive file, mapped to disk offsets.
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    let (old, new) = (hive.bytes(), fixed.bytes());
    for (i, (a, b)) in old.chunks(SECTOR).zip(new.chunks(SECTOR)).enumerate() {
        if a == b {
            continue;
        }
        let file_off = (i * SECTOR) as u64;
        let vol_off = extents
            .iter()
            .find(|(f, _, len)| file_off >= *f && file_off + SECTOR as u64 <= f + len)
            .map(|(f, v, _)| v + (file_off - f))
            .ok_or_else(|| {
                refuse(format!(
                    "{SYSTEM}: file offset {file_off} is in no whole data run"
                ))
            })?;
        if b.len() != SECTOR {
            return Err(refuse(format!(
                "{SYSTEM}: the file does not end on a sector"
            )));
        }
        writes.push((part.start_bytes() + vol_off, b.to_vec()));
    }
    let mut s0 = sector0.clone();
    if boot_code {
        s0[..MBR_BOOT_CODE_END].copy_from_slice(&REHOST_MBR_CODE);
        if s0 != sector0 {
            outcome.edits.push(format!(
                "MBR: boot code replaced by rehost's (was {})",
                partition::classify_boot_code(&sector0).name()
            ));
        }
    }
    if let Some(n) = active {
        if !mbr.partitions.iter().any(|p| p.number == n) {
            return Err(refuse(format!("--active {n}: partition {n} is empty")));
        }
        let before = s0.clone();
        for i in 0..MBR_ENTRIES {
            let at = MBR_PARTITION_TABLE + i * MBR_ENTRY_SIZE + PE_STATUS;
            s0[at] = if i + 1 == n as usize { 0x80 } else { 0 };
        }
        if s0 != before {
            outcome
                .edits
                .push(format!("MBR: partition {n} marked active"));
        }
    }
    if s0 != sector0 {
        writes.push((0, s0));
    }
    drop(parent);
    // Only now the child: created over the image, written, flushed.
    rehost_disk::create(
        out,
        &CreateOptions {
            format,
            subformat: Subformat::Differencing,
            size: 0,
            block_size: None,
            parent: Some(image.to_owned()),
        },
    )?;
    let child = rehost_disk::open(
        out,
        &OpenOptions {
            read_only: false,
            format: Some(format),
        },
    )?;
    for (offset, data) in &writes {
        debug_assert!(offset % SECTOR_SIZE == 0);
        child.write_at(*offset, data)?;
    }
    child.flush()?;
    Ok(outcome)
}

/// The partition holding Windows, its SYSTEM hive and the hive file's
/// extents on that volume.
fn find_system_hive(
    dev: &dyn BlockDevice,
    mbr: &partition::Mbr,
) -> Result<(MbrPartition, Hive, Vec<super::volume::Extent>), String> {
    let mut order = mbr.active();
    order.extend(mbr.partitions.iter().filter(|p| !p.active()).copied());
    for p in order {
        let Ok(mut vol) = NtfsVolume::open(dev, p.start_bytes(), p.len_bytes()) else {
            continue;
        };
        let Some(data) = vol.read_file(SYSTEM)? else {
            continue;
        };
        let (_, extents) = vol
            .file_extents(SYSTEM)?
            .ok_or_else(|| format!("{SYSTEM} vanished"))?;
        let hive = Hive::parse("SYSTEM", data).map_err(|e| e.to_string())?;
        return Ok((p, hive, extents));
    }
    Err(format!("no NTFS partition holds {SYSTEM}"))
}

/// Every Start and StartOverride value of the bound services that is not
/// 0 yet.
fn plan_edits(hive: &Hive, set: &str, services: &[(String, String)]) -> Result<Vec<Edit>, String> {
    let mut edits = Vec::new();
    let mut seen = Vec::new();
    for (service, _) in services {
        if seen.contains(service) {
            continue;
        }
        seen.push(service.clone());
        let path = format!("{set}\\Services\\{service}");
        let key = hive
            .open(&path)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{path} does not exist; only existing values are edited"))?;
        let start = key
            .value("Start")
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{path} has no Start value; only existing values are edited"))?;
        let old = start
            .data()
            .map_err(|e| e.to_string())?
            .as_dword()
            .ok_or_else(|| format!("{path}\\Start is not a DWORD"))?;
        if old != 0 {
            edits.push(Edit {
                cell: start.cell_offset(),
                path: format!("{path}\\Start"),
                old,
            });
        }
        if let Some(ov) = key.subkey("StartOverride").map_err(|e| e.to_string())? {
            let nonzero: Vec<String> = start_overrides(&key)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|(_, v)| *v != 0)
                .map(|(n, _)| n)
                .collect();
            for name in nonzero {
                let v = ov
                    .value(&name)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{path}\\StartOverride\\{name} vanished"))?;
                let old = v.data().map_err(|e| e.to_string())?.as_dword().unwrap_or(0);
                edits.push(Edit {
                    cell: v.cell_offset(),
                    path: format!("{path}\\StartOverride\\{name}"),
                    old,
                });
            }
        }
    }
    Ok(edits)
}
