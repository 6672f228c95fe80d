//! `rehost p2v check`: reads a disk image and predicts, per storage
//! controller, whether the Windows on it will find its boot disk.

use std::path::Path;

use rehost_disk::{BlockDevice, OpenOptions};
use serde_json::{json, Map, Value as Json};

use super::hive::{Hive, HiveError, Key};
use super::hive_log::LogFormat;
use super::partition::{self, MbrPartition};
use super::partition_spec::{SECTOR, TYPE_EXTENDED};
use super::volume::NtfsVolume;

/// A storage controller rehost presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// PIIX3 IDE, PCI 8086:7010, class 0101.
    Ide,
    /// ICH9 AHCI, PCI 8086:2922, class 010601.
    Ahci,
}

impl Controller {
    pub fn label(self) -> &'static str {
        match self {
            Controller::Ide => "IDE",
            Controller::Ahci => "AHCI",
        }
    }
    pub fn key(self) -> &'static str {
        match self {
            Controller::Ide => "ide",
            Controller::Ahci => "ahci",
        }
    }
    /// Device IDs of the controller as Windows' CriticalDeviceDatabase
    /// names them, most specific first, and of the channel devices below
    /// it that need their own driver.
    fn critical_device_ids(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Controller::Ide => (
                &["pci#ven_8086&dev_7010", "pci#cc_0101"],
                &["primary_ide_channel"],
            ),
            Controller::Ahci => (&["pci#ven_8086&dev_2922", "pci#cc_010601"], &[]),
        }
    }
    /// The same as DriverDatabase\DeviceIds paths (Windows 8 and later).
    fn driver_database_ids(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Controller::Ide => (
                &["PCI\\VEN_8086&DEV_7010", "PCI\\CC_0101"],
                &["Primary_IDE_Channel"],
            ),
            Controller::Ahci => (&["PCI\\VEN_8086&DEV_2922", "PCI\\CC_010601"], &[]),
        }
    }
}

/// One check's result with its evidence.
#[derive(Debug, Clone)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    pub evidence: Map<String, Json>,
    /// Only matters for this controller (storage drivers); `None`: for all.
    pub controller: Option<Controller>,
}

/// The driver chain's judgement for one controller.
#[derive(Debug, Clone)]
pub struct DriverVerdict {
    pub ok: bool,
    /// The services the controller binds to, joined with "+".
    pub service: String,
    pub reason: String,
}

/// The verdict for one controller.
#[derive(Debug, Clone)]
pub struct ControllerVerdict {
    pub controller: Controller,
    pub boots: bool,
    pub storage_driver: DriverVerdict,
    /// The one-line verdict.
    pub line: String,
}

/// Everything `p2v check` found.
#[derive(Debug, Clone)]
pub struct Report {
    pub image: String,
    pub findings: Vec<Finding>,
    pub controllers: Vec<ControllerVerdict>,
}

impl Report {
    /// Whether every chosen controller should boot.
    pub fn boots(&self) -> bool {
        self.controllers.iter().all(|c| c.boots)
    }

    /// The JSON object of `p2v check --json`.
    pub fn to_json(&self) -> Json {
        let findings: Vec<Json> = self
            .findings
            .iter()
            .map(|f| {
                json!({"check": f.check, "ok": f.ok, "detail": f.detail,
                       "evidence": Json::Object(f.evidence.clone())})
            })
            .collect();
        let mut controllers = Map::new();
        for c in &self.controllers {
            controllers.insert(
                c.controller.key().into(),
                json!({"boots": c.boots, "verdict": c.line, "storage_driver": {
                    "ok": c.storage_driver.ok, "service": c.storage_driver.service,
                    "reason": c.storage_driver.reason}}),
            );
        }
        json!({"image": self.image, "findings": findings, "controllers": controllers})
    }

    /// The human-readable report: verdict lines, then the evidence.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.controllers {
            out.push_str(&c.line);
            out.push('\n');
        }
        out.push('\n');
        for f in &self.findings {
            let mark = if f.ok { "ok  " } else { "FAIL" };
            out.push_str(&format!("{mark} {}: {}\n", f.check, f.detail));
            for (k, v) in &f.evidence {
                let v = match v {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.push_str(&format!("       {k}: {v}\n"));
            }
        }
        out
    }
}

/// Why the image could not be inspected at all (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Disk(#[from] rehost_disk::BlockError),
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
}

fn finding(check: &'static str, ok: bool, detail: impl Into<String>) -> Finding {
    Finding {
        check,
        ok,
        detail: detail.into(),
        evidence: Map::new(),
        controller: None,
    }
}

impl Finding {
    fn with(mut self, key: &str, value: impl Into<Json>) -> Self {
        self.evidence.insert(key.to_owned(), value.into());
        self
    }
}

/// Opens the image read-only (any format and chain the block stack reads)
/// and checks it for the given controllers.
pub fn check_image(path: &Path, controllers: &[Controller]) -> Result<Report, CheckError> {
    let disk = rehost_disk::open(
        path,
        &OpenOptions {
            read_only: true,
            format: None,
        },
    )?;
    check_device(&path.display().to_string(), disk.as_ref(), controllers)
}

/// The check over an already opened device.
pub fn check_device(
    image: &str,
    dev: &dyn BlockDevice,
    controllers: &[Controller],
) -> Result<Report, CheckError> {
    let size = dev.geometry().size;
    let mut sector0 = vec![0u8; SECTOR];
    dev.read_at(0, &mut sector0)?;
    let mbr = partition::parse_mbr(&sector0).ok_or_else(|| CheckError::Unreadable {
        path: image.to_owned(),
        reason: "the disk is shorter than one sector".into(),
    })?;
    let mut findings = Vec::new();
    let mut walk = Walk {
        dev,
        findings: &mut findings,
    };
    walk.run(&mbr, size, controllers);
    let verdicts = controllers.iter().map(|&c| judge(c, &findings)).collect();
    Ok(Report {
        image: image.to_owned(),
        findings,
        controllers: verdicts,
    })
}

fn judge(controller: Controller, findings: &[Finding]) -> ControllerVerdict {
    let driver = findings
        .iter()
        .find(|f| f.check == "storage_driver" && f.controller == Some(controller));
    let storage_driver = match driver {
        Some(f) => DriverVerdict {
            ok: f.ok,
            service: f
                .evidence
                .get("service")
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_owned(),
            reason: f.detail.clone(),
        },
        None => DriverVerdict {
            ok: false,
            service: String::new(),
            reason: "no Windows SYSTEM hive was read, so no driver could be judged".into(),
        },
    };
    let blocking: Vec<&Finding> = findings
        .iter()
        .filter(|f| !f.ok && f.controller.is_none_or(|c| c == controller))
        .collect();
    let boots = storage_driver.ok && blocking.is_empty();
    let label = controller.label();
    let line = if boots {
        format!("{label}: boots")
    } else if !storage_driver.ok && driver.is_some() && blocking.len() == 1 {
        format!("{label}: will stop with 0x7B: {}", storage_driver.reason)
    } else {
        let first = blocking
            .iter()
            .find(|f| f.check != "storage_driver")
            .or(blocking.first());
        match first {
            Some(f) => format!("{label}: will not boot: {}: {}", f.check, f.detail),
            None => format!("{label}: will not boot: {}", storage_driver.reason),
        }
    };
    ControllerVerdict {
        controller,
        boots,
        storage_driver,
        line,
    }
}

struct Walk<'a, 'd> {
    dev: &'d dyn BlockDevice,
    findings: &'a mut Vec<Finding>,
}

impl Walk<'_, '_> {
    fn push(&mut self, f: Finding) {
        self.findings.push(f);
    }

    fn run(&mut self, mbr: &partition::Mbr, size: u64, controllers: &[Controller]) {
        let sectors = size / SECTOR as u64;
        // Partition table.
        let table = if !mbr.boot_signature_ok {
            finding(
                "partition_table",
                false,
                "sector 0 has no 55 AA boot signature: no MBR",
            )
        } else if mbr.is_protective() {
            let mut sector1 = vec![0u8; SECTOR];
            let gpt = self
                .dev
                .read_at(SECTOR as u64, &mut sector1)
                .ok()
                .and_then(|_| partition::parse_gpt_header(&sector1));
            let f = finding(
                "partition_table",
                false,
                "GPT disk behind a protective MBR: it boots with UEFI, rehost's machine has a BIOS",
            )
            .with("style", "gpt");
            match gpt {
                Some(h) => f
                    .with("gpt_header", "EFI PART at LBA 1")
                    .with("gpt_entries", h.entry_count),
                None => f.with("gpt_header", "missing at LBA 1"),
            }
        } else if mbr.partitions.is_empty() {
            finding("partition_table", false, "the MBR has no partitions")
        } else {
            let outside: Vec<String> = mbr
                .partitions
                .iter()
                .filter(|p| {
                    u64::from(p.lba_start) + u64::from(p.sectors) > sectors || p.sectors == 0
                })
                .map(|p| {
                    format!(
                        "partition {} ({}+{} sectors)",
                        p.number, p.lba_start, p.sectors
                    )
                })
                .collect();
            if outside.is_empty() {
                finding(
                    "partition_table",
                    true,
                    format!(
                        "MBR with {} partitions, all inside the disk",
                        mbr.partitions.len()
                    ),
                )
            } else {
                finding(
                    "partition_table",
                    false,
                    format!(
                        "outside the {sectors}-sector disk or empty: {}",
                        outside.join(", ")
                    ),
                )
            }
            .with("style", "mbr")
        };
        let partitions: Vec<Json> = mbr
            .partitions
            .iter()
            .map(|p| json!({"number": p.number, "active": p.active(), "type": format!("{:#04x}", p.partition_type),
                             "start_lba": p.lba_start, "sectors": p.sectors}))
            .collect();
        let gpt = mbr.is_protective();
        self.push(
            table
                .with("disk_signature", format!("{:08x}", mbr.disk_signature))
                .with("partitions", partitions),
        );
        if gpt || !mbr.boot_signature_ok {
            return;
        }
        // Boot code.
        let class = mbr.boot_code;
        let code = match class.loads_active_partition() {
            Some(true) => finding(
                "mbr_boot_code",
                true,
                format!(
                    "{} boot code: loads the active partition's boot sector",
                    class.name()
                ),
            ),
            Some(false) => finding(
                "mbr_boot_code",
                false,
                format!(
                    "{} boot code: does not load the active partition's boot sector",
                    class.name()
                ),
            ),
            None => finding(
                "mbr_boot_code",
                true,
                "boot code of an unknown kind: cannot tell whether it loads the active partition",
            ),
        };
        self.push(code.with("class", class.name()).with("offset", "0..440"));
        // Active partition.
        let active = mbr.active();
        let chosen = match active.as_slice() {
            [one] => {
                self.push(
                    finding(
                        "active_partition",
                        true,
                        format!("partition {} is the only active one", one.number),
                    )
                    .with("partition", one.number),
                );
                Some(*one)
            }
            [] => {
                self.push(finding(
                    "active_partition",
                    false,
                    "no partition is marked active (status 0x80): the MBR code has nothing to load",
                ));
                None
            }
            many => {
                let n: Vec<String> = many.iter().map(|p| p.number.to_string()).collect();
                self.push(finding("active_partition", false, format!("{} partitions are marked active ({}): Microsoft's MBR stops with \"Invalid partition table\"", many.len(), n.join(", "))));
                None
            }
        };
        let mut boot_volume_ok = false;
        if let Some(p) = chosen {
            boot_volume_ok = self.boot_sector(&p);
        }
        // Windows: the active volume first, then the other NTFS partitions.
        let mut order: Vec<MbrPartition> = chosen.into_iter().collect();
        order.extend(
            mbr.partitions
                .iter()
                .filter(|p| Some(**p) != chosen && !TYPE_EXTENDED.contains(&p.partition_type))
                .copied(),
        );
        let mut found_windows = false;
        for p in order {
            let Ok(mut vol) = NtfsVolume::open(self.dev, p.start_bytes(), p.len_bytes()) else {
                continue;
            };
            if boot_volume_ok && Some(p) == chosen {
                self.boot_files(&mut vol, &p, mbr);
            }
            match vol.exists("Windows\\System32\\config") {
                Ok(true) => {
                    found_windows = true;
                    self.push(
                        finding(
                            "windows_install",
                            true,
                            format!("Windows\\System32\\config on partition {}", p.number),
                        )
                        .with("partition", p.number),
                    );
                    self.windows(&mut vol, controllers);
                    break;
                }
                Ok(false) => {}
                Err(e) => self.push(finding(
                    "windows_install",
                    false,
                    format!("partition {}: {e}", p.number),
                )),
            }
        }
        if !found_windows {
            self.push(finding(
                "windows_install",
                false,
                "no NTFS partition holds Windows\\System32\\config",
            ));
        }
    }

    /// Checks the active partition's boot sector; true when it is NTFS.
    fn boot_sector(&mut self, p: &MbrPartition) -> bool {
        let mut vbr = vec![0u8; SECTOR];
        if let Err(e) = self.dev.read_at(p.start_bytes(), &mut vbr) {
            self.push(finding(
                "boot_sector",
                false,
                format!("cannot read partition {}'s boot sector: {e}", p.number),
            ));
            return false;
        }
        let Some(bs) = partition::parse_boot_sector(&vbr) else {
            return false;
        };
        let offset = format!("{:#x}", p.start_bytes());
        let f = if !bs.ntfs {
            finding(
                "boot_sector",
                false,
                format!(
                    "active partition {} is not NTFS (type {:#04x}, no \"NTFS    \" OEM ID)",
                    p.number, p.partition_type
                ),
            )
        } else if !bs.boot_signature_ok {
            finding(
                "boot_sector",
                false,
                "the NTFS boot sector has no 55 AA signature",
            )
        } else if bs.hidden_sectors != p.lba_start {
            finding("boot_sector", false, format!(
                "hidden sectors {} != partition start {}: the boot code reads the wrong sectors", bs.hidden_sectors, p.lba_start))
        } else {
            finding(
                "boot_sector",
                true,
                format!(
                    "NTFS, hidden sectors {} == partition start",
                    bs.hidden_sectors
                ),
            )
        };
        self.push(
            f.with("offset", offset)
                .with("hidden_sectors", bs.hidden_sectors)
                .with("partition_start", p.lba_start),
        );
        bs.ntfs
    }

    fn boot_files(&mut self, vol: &mut NtfsVolume<'_>, p: &MbrPartition, mbr: &partition::Mbr) {
        let bootmgr = vol.exists("bootmgr").unwrap_or(false);
        let ntldr = vol.exists("ntldr").unwrap_or(false);
        let f = if bootmgr || ntldr {
            finding(
                "boot_manager",
                true,
                format!(
                    "{} in the root of partition {}",
                    if bootmgr { "BOOTMGR" } else { "NTLDR" },
                    p.number
                ),
            )
        } else {
            finding(
                "boot_manager",
                false,
                format!(
                    "neither BOOTMGR nor NTLDR in the root of partition {}",
                    p.number
                ),
            )
        };
        self.push(f.with("bootmgr", bootmgr).with("ntldr", ntldr));
        if bootmgr {
            match vol.read_file("Boot\\BCD") {
                Ok(Some(data)) => self.bcd(data, p, mbr),
                Ok(None) => self.push(finding("bcd", false, "BOOTMGR without \\Boot\\BCD")),
                Err(e) => self.push(finding("bcd", false, e)),
            }
        }
    }

    fn bcd(&mut self, data: Vec<u8>, p: &MbrPartition, mbr: &partition::Mbr) {
        let hive = match Hive::parse("\\Boot\\BCD", data) {
            Ok(h) => h,
            Err(e) => return self.push(finding("bcd", false, e.to_string())),
        };
        match super::bcd::default_loader_devices(&hive) {
            Ok(devs) => {
                let mut bad = Vec::new();
                let mut f = finding("bcd", true, "");
                for (name, dev) in &devs {
                    f = f.with(name, dev.describe());
                    if let Some(why) = dev.mismatch(mbr.disk_signature, p.start_bytes()) {
                        bad.push(format!("{name}: {why}"));
                    }
                }
                if devs.is_empty() {
                    f.ok = false;
                    f.detail = "the default loader has no application or OS device element".into();
                } else if bad.is_empty() {
                    f.detail = format!(
                        "the default loader's devices point at disk signature {:08x}, offset {:#x}",
                        mbr.disk_signature,
                        p.start_bytes()
                    );
                } else {
                    f.ok = false;
                    f.detail = bad.join("; ");
                }
                self.push(f);
            }
            Err(e) => self.push(finding("bcd", false, e.to_string())),
        }
    }

    fn windows(&mut self, vol: &mut NtfsVolume<'_>, controllers: &[Controller]) {
        const CONFIG: &str = "Windows\\System32\\config\\";
        let system = match load_hive(vol, "SYSTEM") {
            Ok(h) => h,
            Err(e) => return self.push(finding("system_hive", false, e)),
        };
        let (hive, state) = system;
        self.push(state);
        match vol.read_file(&format!("{CONFIG}SOFTWARE")) {
            Ok(Some(software)) => self.version(software),
            Ok(None) => self.push(finding(
                "windows_version",
                true,
                format!("{CONFIG}SOFTWARE is missing: version unknown"),
            )),
            Err(e) => self.push(finding(
                "windows_version",
                true,
                format!("version unknown: {e}"),
            )),
        }
        let set = match current_control_set(&hive) {
            Ok(s) => s,
            Err(e) => return self.push(finding("control_set", false, e)),
        };
        self.push(
            finding(
                "control_set",
                true,
                format!("Select\\Current = {}: {set}", &set[10..]),
            )
            .with("key", "Select\\Current"),
        );
        let mut damaged = false;
        for &c in controllers {
            let mut f = match storage_chain(&hive, &set, c, vol) {
                Ok(f) => f,
                Err(e) => {
                    if !damaged {
                        damaged = true;
                        self.push(finding("system_hive", false, format!("damaged: {e}")));
                    }
                    finding(
                        "storage_driver",
                        false,
                        "not judged: the SYSTEM hive is damaged (see system_hive)",
                    )
                }
            };
            f.controller = Some(c);
            f = f.with("controller", c.key());
            self.push(f);
        }
    }

    fn version(&mut self, software: Vec<u8>) {
        const KEY: &str = "Microsoft\\Windows NT\\CurrentVersion";
        let hive = match Hive::parse("SOFTWARE", software) {
            Ok(h) => h,
            Err(e) => {
                return self.push(finding(
                    "windows_version",
                    true,
                    format!("SOFTWARE hive unreadable ({e}); version unknown"),
                ))
            }
        };
        let key = match hive.open(KEY) {
            Ok(Some(k)) => k,
            Ok(None) => {
                return self.push(finding(
                    "windows_version",
                    true,
                    format!("SOFTWARE has no {KEY} key; version unknown"),
                ))
            }
            Err(e) => {
                return self.push(finding(
                    "windows_version",
                    true,
                    format!("SOFTWARE hive unreadable ({e}); version unknown"),
                ))
            }
        };
        let get = |n: &str| key.string(n).ok().flatten().unwrap_or_default();
        let name = get("ProductName");
        let version = get("CurrentVersion");
        let mut build = get("CurrentBuildNumber");
        if build.is_empty() {
            build = get("CurrentBuild");
        }
        self.push(
            finding(
                "windows_version",
                true,
                format!("{name} (version {version}, build {build})"),
            )
            .with("key", format!("SOFTWARE\\{KEY}"))
            .with("ProductName", name.clone())
            .with("CurrentVersion", version)
            .with("CurrentBuildNumber", build)
            .with("CSDVersion", get("CSDVersion")),
        );
    }
}

/// Reads a hive from Windows\System32\config, replays its logs when it is
/// dirty, and returns it with the "<name>_hive" state finding.
fn load_hive(vol: &mut NtfsVolume<'_>, name: &'static str) -> Result<(Hive, Finding), String> {
    let dir = "Windows\\System32\\config\\";
    let data = vol
        .read_file(&format!("{dir}{name}"))?
        .ok_or_else(|| format!("{dir}{name} is missing"))?;
    let hive = Hive::parse(name, data).map_err(|e| e.to_string())?;
    let base = hive.base_block();
    let seq = format!("{} / {}", base.primary_sequence, base.secondary_sequence);
    if !base.is_dirty() {
        let f = finding(
            "system_hive",
            true,
            format!("clean: sequence numbers {seq}"),
        )
        .with("sequence", seq)
        .with("checksum_ok", base.checksum_ok);
        return Ok((hive, f));
    }
    let mut logs = Vec::new();
    for ext in ["LOG1", "LOG2", "LOG"] {
        if let Ok(Some(log)) = vol.read_file(&format!("{dir}{name}.{ext}")) {
            logs.push((format!("{name}.{ext}"), log));
        }
    }
    if logs.is_empty() {
        let f = finding(
            "system_hive",
            true,
            format!("dirty (sequence numbers {seq}) and its .LOG1/.LOG2/.LOG are missing: the verdict may be stale"),
        )
        .with("sequence", seq)
        .with("logs", "missing");
        return Ok((hive, f));
    }
    let present = logs.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    match super::hive_log::replay(&hive, &logs) {
        Ok((replayed, r)) if r.entries > 0 => {
            let after = replayed.base_block();
            let what = match r.format {
                LogFormat::New => format!(
                    "replayed {} log entries ({} dirty pages)",
                    r.entries, r.pages
                ),
                LogFormat::Old => format!(
                    "replayed the old-format log {} ({} dirty 512-byte pages)",
                    r.used.join(", "),
                    r.pages
                ),
            };
            let stale = match &r.stopped {
                Some(why) => format!("; recovery stopped early ({why}): the verdict may be stale"),
                None => String::new(),
            };
            let f = finding(
                "system_hive",
                true,
                format!(
                    "dirty (sequence numbers {seq}); {what} in memory: now {} / {}{stale}",
                    after.primary_sequence, after.secondary_sequence
                ),
            )
            .with("sequence_before", seq)
            .with(
                "log_format",
                match r.format {
                    LogFormat::New => "new",
                    LogFormat::Old => "old",
                },
            )
            .with("log_entries_applied", r.entries)
            .with("log_pages_applied", r.pages)
            .with(
                "log_sequences",
                format!(
                    "{:?}..={:?}",
                    r.first_sequence.unwrap_or(0),
                    r.last_sequence.unwrap_or(0)
                ),
            )
            .with("logs", present)
            .with("logs_applied", r.used.clone())
            .with("stale", r.stopped.is_some());
            Ok((replayed, f))
        }
        Ok((_, r)) => {
            let why = r.stopped.map(|w| format!(" ({w})")).unwrap_or_default();
            let f = finding(
                "system_hive",
                true,
                format!("dirty (sequence numbers {seq}); its logs hold no entry to apply{why}: the verdict may be stale"),
            )
            .with("sequence", seq)
            .with("logs", present)
            .with("stale", true);
            Ok((hive, f))
        }
        Err(e) => {
            let f = finding(
                "system_hive",
                true,
                format!("dirty (sequence numbers {seq}); its logs could not be replayed ({e}): the verdict may be stale"),
            )
            .with("sequence", seq)
            .with("logs", present)
            .with("stale", true);
            Ok((hive, f))
        }
    }
}

pub(crate) fn current_control_set(hive: &Hive) -> Result<String, String> {
    let select = hive
        .open("Select")
        .map_err(|e| e.to_string())?
        .ok_or("SYSTEM has no Select key")?;
    let current = select
        .dword("Current")
        .map_err(|e| e.to_string())?
        .ok_or("Select\\Current is missing or not a DWORD")?;
    if !(1..=999).contains(&current) {
        return Err(format!(
            "Select\\Current = {current} is not a control set number"
        ));
    }
    let set = format!("ControlSet{current:03}");
    if hive.open(&set).map_err(|e| e.to_string())?.is_none() {
        return Err(format!(
            "Select\\Current = {current} but {set} does not exist"
        ));
    }
    Ok(set)
}

/// A service bound to a device: (service, how the binding was found).
pub(crate) type Binding = (String, String);

/// The services bound to the controller and the database they came from.
pub(crate) fn bound_services(
    hive: &Hive,
    set: &str,
    controller: Controller,
) -> Result<(Vec<Binding>, &'static str), HiveError> {
    let cdd_path = format!("{set}\\Control\\CriticalDeviceDatabase");
    if let Some(cdd) = hive.open(&cdd_path)? {
        let (ctrl, chans) = controller.critical_device_ids();
        let mut out = Vec::new();
        for group in [ctrl, chans] {
            for id in group {
                if let Some(k) = cdd.subkey(id)? {
                    if let Some(s) = k.string("Service")? {
                        out.push((s, format!("{cdd_path}\\{id}")));
                        break;
                    }
                }
            }
        }
        return Ok((out, "CriticalDeviceDatabase"));
    }
    let mut out = Vec::new();
    let (ctrl, chans) = controller.driver_database_ids();
    for group in [ctrl, chans] {
        for id in group {
            if let Some(found) = driver_database_service(hive, id)? {
                out.push(found);
                break;
            }
        }
    }
    Ok((out, "DriverDatabase"))
}

/// DeviceIds\<id> -> INF -> DriverInfFiles\<inf>\Active -> package ->
/// Descriptors\<id>\Configuration -> Configurations\<cfg>\Service.
fn driver_database_service(hive: &Hive, id: &str) -> Result<Option<(String, String)>, HiveError> {
    let Some(ids) = hive.open(&format!("DriverDatabase\\DeviceIds\\{id}"))? else {
        return Ok(None);
    };
    for v in ids.values()? {
        let inf = v.name()?;
        if inf.is_empty() {
            continue;
        }
        let Some(package) = hive
            .open(&format!("DriverDatabase\\DriverInfFiles\\{inf}"))?
            .map(|k| k.string("Active"))
            .transpose()?
            .flatten()
        else {
            continue;
        };
        let pkg = format!("DriverDatabase\\DriverPackages\\{package}");
        let Some(config) = hive
            .open(&format!("{pkg}\\Descriptors\\{id}"))?
            .map(|k| k.string("Configuration"))
            .transpose()?
            .flatten()
        else {
            continue;
        };
        let cfg_path = format!("{pkg}\\Configurations\\{config}");
        if let Some(service) = hive
            .open(&cfg_path)?
            .map(|k| k.string("Service"))
            .transpose()?
            .flatten()
        {
            return Ok(Some((
                service,
                format!("DriverDatabase\\DeviceIds\\{id} -> {inf} -> {cfg_path}"),
            )));
        }
    }
    Ok(None)
}

/// Judges the controller's driver chain: every bound service must start at
/// boot (Start 0, every StartOverride value 0) and have its .sys file.
fn storage_chain(
    hive: &Hive,
    set: &str,
    controller: Controller,
    vol: &mut NtfsVolume<'_>,
) -> Result<Finding, HiveError> {
    let (services, source) = bound_services(hive, set, controller)?;
    if services.is_empty() {
        return Ok(finding(
            "storage_driver",
            false,
            format!(
                "no driver is bound to the {} controller's PCI IDs in {source}",
                controller.label()
            ),
        )
        .with("source", source));
    }
    let mut problems = Vec::new();
    let mut evidence = Vec::new();
    for (service, binding) in &services {
        let key_path = format!("{set}\\Services\\{service}");
        let Some(key) = hive.open(&key_path)? else {
            problems.push(format!("{service} has no service key in {set}"));
            continue;
        };
        let start = key.dword("Start")?;
        let typ = key.dword("Type")?;
        let overrides = start_overrides(&key)?;
        let image = key.string("ImagePath")?;
        let sys = sys_path(service, image.as_deref());
        let sys_present = vol.exists(&sys).unwrap_or(false);
        match start {
            Some(0) => {}
            Some(n) => problems.push(format!("{service} Start = {n} in {set}")),
            None => problems.push(format!("{service} has no Start value in {set}")),
        }
        for (name, v) in &overrides {
            if *v != 0 {
                problems.push(format!("{service} StartOverride\\{name} = {v} in {set}"));
            }
        }
        if !sys_present {
            problems.push(format!("{service}: {sys} is missing"));
        }
        let ov: Map<String, Json> = overrides
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        evidence.push(json!({"service": service, "bound_by": binding, "key": key_path,
            "Start": start, "Type": typ, "StartOverride": ov, "sys": sys, "sys_present": sys_present}));
    }
    let names: Vec<&str> = services.iter().map(|(s, _)| s.as_str()).collect();
    let service = names.join("+");
    let f = if problems.is_empty() {
        finding(
            "storage_driver",
            true,
            format!(
                "{} {} at boot ({source})",
                names.join(" and "),
                if names.len() == 1 { "starts" } else { "start" }
            ),
        )
    } else {
        finding("storage_driver", false, problems.join("; "))
    };
    Ok(f.with("service", service)
        .with("source", source)
        .with("drivers", evidence))
}

pub(crate) fn start_overrides(key: &Key<'_>) -> Result<Vec<(String, u32)>, HiveError> {
    let mut out = Vec::new();
    if let Some(ov) = key.subkey("StartOverride")? {
        for v in ov.values()? {
            if let Some(d) = v.data()?.as_dword() {
                out.push((v.name()?, d));
            }
        }
    }
    Ok(out)
}

/// Where a service's driver file is, relative to the volume root.
fn sys_path(service: &str, image_path: Option<&str>) -> String {
    if let Some(p) = image_path {
        let p = p.trim_start_matches('\\');
        let lower = p.to_ascii_lowercase();
        let rest = if let Some(r) = lower.strip_prefix("systemroot\\") {
            Some(&p[p.len() - r.len()..])
        } else if lower.starts_with("system32\\") {
            Some(p)
        } else {
            None
        };
        if let Some(r) = rest {
            return format!("Windows\\{r}");
        }
    }
    format!("Windows\\System32\\drivers\\{service}.sys")
}
