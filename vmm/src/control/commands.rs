//! The commands: QEMU's names, arguments and reply shapes, carried out on
//! the [`VmControl`] of the running VM.

use std::sync::Arc;
use std::time::Duration;

use rehost_disk::dirty::DirtyTracker;
use rehost_disk::{DiskImage, ImageFormat, ImageInfo, OpenOptions};
use serde_json::{json, Value};

use super::protocol::{Args, QmpError, Request};
use super::state::{HostRequest, RunState, VmControl};
use crate::nbd::{Export, ListenAddr, NbdServer, RemoveMode, ServerOptions};
use crate::serial::ComSpec;
use crate::storage::{drive_name, DriveKind};
use crate::usb::UsbDeviceSpec;

/// Every command rehost answers, for `query-commands`.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "query-status",
    "stop",
    "cont",
    "system_reset",
    "system_powerdown",
    "quit",
    "query-block",
    "eject",
    "blockdev-change-medium",
    "query-chardev",
    "block-dirty-bitmap-add",
    "block-dirty-bitmap-remove",
    "block-dirty-bitmap-clear",
    "object-add",
    "object-del",
    "nbd-server-start",
    "nbd-server-add",
    "nbd-server-remove",
    "nbd-server-stop",
    "screendump",
    "send-key",
    "device_add",
    "device_del",
];

/// How long `stop` waits for the vCPUs to leave the guest.
const PAUSE_LIMIT: Duration = Duration::from_secs(2);

/// Runs one command (not `qmp_capabilities`, which the connection
/// handles) and returns its `return` value.
pub fn execute(ctl: &VmControl, req: &Request) -> Result<Value, QmpError> {
    let no_args = |known: &[&str]| Args::new(&req.arguments, known).map(|_| ());
    match req.execute.as_str() {
        "query-version" => {
            no_args(&[])?;
            Ok(super::protocol::version())
        }
        "query-commands" => {
            no_args(&[])?;
            Ok(Value::Array(
                COMMANDS.iter().map(|c| json!({ "name": c })).collect(),
            ))
        }
        "query-status" => {
            no_args(&[])?;
            let s = ctl.run_state();
            Ok(json!({ "status": s.name(), "running": s == RunState::Running }))
        }
        "stop" => {
            no_args(&[])?;
            stop(ctl)
        }
        "cont" => {
            no_args(&[])?;
            cont(ctl)
        }
        "system_reset" => {
            no_args(&[])?;
            ctl.request(HostRequest::Reset);
            Ok(json!({}))
        }
        "system_powerdown" => {
            no_args(&[])?;
            let pressed = ctl.with_machine(|m| {
                m.pm.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .press_power_button()
            });
            if pressed.is_none() {
                return Err(QmpError::generic("The machine is not running"));
            }
            ctl.emit("POWERDOWN", None);
            Ok(json!({}))
        }
        "quit" => {
            no_args(&[])?;
            ctl.request(HostRequest::Quit);
            Ok(json!({}))
        }
        "query-block" => {
            no_args(&[])?;
            Ok(query_block(ctl))
        }
        "eject" => {
            let a = Args::new(&req.arguments, &["device", "id", "force"])?;
            let name = drive_arg(&a)?;
            eject(ctl, name, a.opt_bool("force")?.unwrap_or(false))
        }
        "blockdev-change-medium" => {
            let a = Args::new(
                &req.arguments,
                &[
                    "device",
                    "id",
                    "filename",
                    "format",
                    "force",
                    "read-only-mode",
                ],
            )?;
            let name = drive_arg(&a)?;
            let filename = a.str("filename")?;
            let format = a.opt_str("format")?;
            let force = a.opt_bool("force")?.unwrap_or(false);
            match a.opt_str("read-only-mode")? {
                None | Some("retain") | Some("read-only") => {}
                Some(other) => {
                    return Err(QmpError::generic(format!(
                        "read-only-mode {other}: a CD-ROM medium is always read-only"
                    )))
                }
            }
            change_medium(ctl, name, filename, format, force)
        }
        "query-chardev" => {
            no_args(&[])?;
            Ok(query_chardev(ctl))
        }
        "block-dirty-bitmap-add" => {
            let a = Args::new(
                &req.arguments,
                &["node", "name", "granularity", "persistent", "disabled"],
            )?;
            if a.opt_bool("disabled")? == Some(true) {
                return Err(QmpError::generic(
                    "rehost bitmaps always record: 'disabled' must be false",
                ));
            }
            // 'persistent' is accepted either way: every rehost bitmap
            // lives in the image's sidecar and survives crashes.
            a.opt_bool("persistent")?;
            let granularity = a
                .opt_u64("granularity")?
                .unwrap_or(rehost_disk::dirty::DEFAULT_GRANULARITY);
            let (t, _) = tracker_of(ctl, a.str("node")?)?;
            t.add_bitmap(a.str("name")?, granularity)
                .map_err(|e| QmpError::generic(e.to_string()))?;
            Ok(json!({}))
        }
        "block-dirty-bitmap-remove" | "block-dirty-bitmap-clear" => {
            let a = Args::new(&req.arguments, &["node", "name"])?;
            let (t, node) = tracker_of(ctl, a.str("node")?)?;
            let name = a.str("name")?;
            if !t.bitmaps().iter().any(|b| b.name == name) {
                return Err(QmpError::generic(format!(
                    "Dirty bitmap '{name}' not found in node '{node}'"
                )));
            }
            let done = if req.execute == "block-dirty-bitmap-remove" {
                t.remove_bitmap(name)
            } else {
                t.clear_bitmap(name).map(|_| ())
            };
            done.map_err(|e| QmpError::generic(e.to_string()))?;
            Ok(json!({}))
        }
        "nbd-server-start" => {
            let a = Args::new(
                &req.arguments,
                &["addr", "tls-creds", "tls-authz", "max-connections"],
            )?;
            if a.opt_str("tls-authz")?.is_some() {
                return Err(QmpError::generic(
                    "tls-authz is not supported: with tls-creds (verify-peer on), every client whose certificate the credentials' CA signed is served",
                ));
            }
            let tls = match a.opt_str("tls-creds")? {
                None => None,
                Some(id) => Some(
                    ctl.tls_creds
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(id)
                        .cloned()
                        .ok_or_else(|| {
                            QmpError::generic(format!("No TLS credentials with id '{id}'"))
                        })?,
                ),
            };
            let max = a.opt_u64("max-connections")?;
            let addr = req
                .arguments
                .get("addr")
                .ok_or_else(|| QmpError::generic("Parameter 'addr' is missing"))?;
            nbd_start(ctl, addr, max, tls)
        }
        "object-add" => object_add(ctl, &req.arguments),
        "object-del" => {
            let a = Args::new(&req.arguments, &["id"])?;
            let id = a.str("id")?;
            ctl.tls_creds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id)
                .ok_or_else(|| QmpError::generic(format!("object '{id}' not found")))?;
            Ok(json!({}))
        }
        "nbd-server-add" => {
            let a = Args::new(
                &req.arguments,
                &[
                    "device",
                    "name",
                    "description",
                    "writable",
                    "bitmap",
                    "x-overlay-dir",
                ],
            )?;
            nbd_add(ctl, &a)
        }
        "nbd-server-remove" => {
            let a = Args::new(&req.arguments, &["name", "mode"])?;
            let mode = match a.opt_str("mode")? {
                None | Some("safe") => RemoveMode::Safe,
                Some("hard") => RemoveMode::Hard,
                Some(m) => {
                    return Err(QmpError::generic(format!(
                        "Parameter 'mode' does not accept value '{m}'"
                    )))
                }
            };
            let name = a.str("name")?;
            with_nbd(ctl, |s| s.remove_export(name, mode))?;
            Ok(json!({}))
        }
        "nbd-server-stop" => {
            no_args(&[])?;
            let server = ctl
                .nbd
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or_else(|| QmpError::generic("NBD server not running"))?;
            server.stop();
            Ok(json!({}))
        }
        "screendump" => {
            let a = Args::new(&req.arguments, &["filename", "device", "head", "format"])?;
            screendump(
                ctl,
                a.str("filename")?,
                a.opt_str("device")?,
                a.opt_u64("head")?,
                a.opt_str("format")?,
            )
        }
        "send-key" => {
            let a = Args::new(&req.arguments, &["keys", "hold-time"])?;
            super::send_key::send_key(&ctl.typist, &a)
        }
        "device_add" => super::devices::device_add(ctl, &req.arguments),
        "device_del" => {
            let a = Args::new(&req.arguments, &["id"])?;
            super::devices::device_del(ctl, a.str("id")?)
        }
        "qmp_capabilities" => Err(QmpError::not_found(
            "Capabilities negotiation is already complete, command ignored",
        )),
        other => Err(QmpError::not_found(format!(
            "The command {other} has not been found"
        ))),
    }
}

fn stop(ctl: &VmControl) -> Result<Value, QmpError> {
    if ctl.run_state() != RunState::Running {
        return Ok(json!({}));
    }
    let parked = ctl.with_machine(|m| {
        let kick = || {
            for &t in &m.vcpus {
                // SAFETY: the thread is alive: the machine unregisters
                // itself (under the lock `with_machine` holds) before it
                // joins its vCPU threads.
                unsafe { libc::pthread_kill(t, crate::vcpu::kick_signal()) };
            }
        };
        ctl.gate.pause(m.vcpus.len(), &kick, PAUSE_LIMIT)
    });
    if parked.is_none() {
        // Between two boots: the next machine's vCPUs park at once.
        ctl.gate.pause(0, &|| {}, PAUSE_LIMIT);
    } else if parked == Some(false) {
        tracing::warn!("stop: not every vCPU left the guest within {PAUSE_LIMIT:?}");
    }
    ctl.set_run_state(RunState::Paused);
    ctl.emit("STOP", None);
    Ok(json!({}))
}

fn cont(ctl: &VmControl) -> Result<Value, QmpError> {
    match ctl.run_state() {
        RunState::Running => Ok(json!({})),
        RunState::Shutdown => Err(QmpError::generic(
            "The machine has shut down and cannot continue",
        )),
        RunState::Paused => {
            ctl.set_run_state(RunState::Running);
            ctl.gate.resume();
            ctl.emit("RESUME", None);
            Ok(json!({}))
        }
    }
}

/// `device` (QEMU's older name) or `id`, exactly one.
fn drive_arg<'a>(a: &Args<'a>) -> Result<&'a str, QmpError> {
    match (a.opt_str("device")?, a.opt_str("id")?) {
        (Some(d), None) => Ok(d),
        (None, Some(i)) => Ok(i),
        (Some(_), Some(_)) => Err(QmpError::generic("Cannot specify both 'device' and 'id'")),
        (None, None) => Err(QmpError::generic("Need exactly one of 'device' and 'id'")),
    }
}

/// QEMU's `drv` names for the formats.
fn qemu_driver(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Raw => "raw",
        ImageFormat::Vhd => "vpc",
        ImageFormat::Vhdx => "vhdx",
    }
}

/// QEMU's `ImageInfo` for one image and, nested, its parents.
fn image_info(info: &ImageInfo) -> Value {
    let mut v = json!({
        "filename": info.path.display().to_string(),
        "format": qemu_driver(info.format),
        "virtual-size": info.virtual_size,
        "actual-size": info.allocated_bytes,
        "dirty-flag": false,
        "rehost-format": info.format.name(),
        "rehost-subformat": format!("{:?}", info.subformat).to_lowercase(),
    });
    if let Some(bs) = info.block_size {
        v["cluster-size"] = json!(bs);
    }
    if let Some(p) = &info.parent {
        v["backing-filename"] = json!(p.path.display().to_string());
        v["full-backing-filename"] = json!(p.path.display().to_string());
        v["backing-filename-format"] = json!(qemu_driver(p.format));
        v["backing-image"] = image_info(p);
    }
    v
}

fn chain_depth(info: &ImageInfo) -> usize {
    info.parent.as_ref().map_or(0, |p| 1 + chain_depth(p))
}

fn inserted(image: &dyn DiskImage, read_only: bool) -> Value {
    let info = image.info();
    let mut v = json!({
        "file": info.path.display().to_string(),
        "node-name": info.path.display().to_string(),
        "ro": read_only,
        "drv": qemu_driver(info.format),
        "encrypted": false,
        "detect_zeroes": "off",
        "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
        "write_threshold": 0,
        "cache": { "writeback": true, "direct": false, "no-flush": false },
        "backing_file_depth": chain_depth(&info),
        "image": image_info(&info),
    });
    if let Some(p) = &info.parent {
        v["backing_file"] = json!(p.path.display().to_string());
    }
    v
}

/// QEMU's `BlockDirtyInfo` for each bitmap, with rehost's generation and
/// state (`tracking` or `resync-required`).
fn dirty_bitmaps(t: &DirtyTracker) -> Value {
    Value::Array(
        t.bitmaps()
            .iter()
            .map(|b| {
                json!({
                    "name": b.name,
                    "count": b.dirty_bytes,
                    "granularity": b.granularity,
                    "recording": true,
                    "busy": false,
                    "persistent": true,
                    "generation": format!("{:032x}", b.generation),
                    "state": b.state.name(),
                })
            })
            .collect(),
    )
}

fn query_block(ctl: &VmControl) -> Value {
    let drives = ctl.drives().clone();
    let list = drives
        .iter()
        .map(|d| {
            let c = &d.config;
            let name = drive_name(c);
            let removable = c.kind == DriveKind::Cdrom;
            let (locked, guest_open) = if removable {
                ctl.with_machine(|m| {
                    m.storage.with_cdrom(c.spec.controller, c.slot, |cd| {
                        (cd.locked(), cd.guest_opened_tray())
                    })
                })
                .flatten()
                .unwrap_or((false, false))
            } else {
                (false, false)
            };
            let mut v = json!({
                "device": name,
                "qdev": name,
                "type": "unknown",
                "removable": removable,
                "locked": locked,
                "io-status": "ok",
                "controller": c.spec.controller.name(),
                "slot": c.slot,
                "media": if removable { "cdrom" } else { "disk" },
            });
            if removable {
                v["tray_open"] = json!(d.tray_open || guest_open);
            }
            if let Some(img) = &c.image {
                if !guest_open {
                    v["inserted"] = inserted(img.as_ref(), c.spec.read_only);
                    if let Some(t) = &c.tracker {
                        v["inserted"]["dirty-bitmaps"] = dirty_bitmaps(t);
                    }
                }
            }
            v
        })
        .chain(usb_disks(ctl))
        .collect();
    Value::Array(list)
}

/// `query-block` entries of the USB disks (`--usb disk:` and
/// `device_add usb-storage`), in root port order: named by their id, or
/// `usb0-hdPORT` without one.
fn usb_disks(ctl: &VmControl) -> Vec<Value> {
    let usb = ctl.usb();
    let mut disks: Vec<_> = usb
        .iter()
        .flat_map(|cfg| cfg.devices.iter())
        .filter_map(|d| match (&d.spec, &d.image) {
            (UsbDeviceSpec::Disk { read_only, .. }, Some(image)) => Some((d, *read_only, image)),
            _ => None,
        })
        .collect();
    disks.sort_by_key(|(d, _, _)| d.port);
    disks
        .into_iter()
        .map(|(d, read_only, image)| {
            let name = d.id.clone().unwrap_or_else(|| format!("usb0-hd{}", d.port));
            let mut v = json!({
                "device": name,
                "qdev": name,
                "type": "unknown",
                "removable": false,
                "locked": false,
                "io-status": "ok",
                "controller": "usb",
                "slot": d.port,
                "media": "disk",
                "inserted": inserted(image.as_ref(), read_only),
            });
            if let Some(t) = &d.tracker {
                v["inserted"]["dirty-bitmaps"] = dirty_bitmaps(t);
            }
            v
        })
        .collect()
}

/// The dirty tracker of the writable disk that `node` names (its drive
/// name, as `query-block` lists in `device`, or its `node-name`), and the
/// drive's name.
fn tracker_of(ctl: &VmControl, node: &str) -> Result<(Arc<DirtyTracker>, String), QmpError> {
    let drives = ctl.drives();
    let d = drives
        .iter()
        .find(|d| {
            drive_name(&d.config) == node
                || d.config
                    .image
                    .as_ref()
                    .is_some_and(|i| i.info().path.display().to_string() == node)
        })
        .ok_or_else(|| {
            QmpError::generic(format!(
                "Cannot find device='{node}' nor node-name='{node}'"
            ))
        })?;
    let name = drive_name(&d.config);
    match &d.config.tracker {
        Some(t) => Ok((t.clone(), name)),
        None => Err(QmpError::generic(format!(
            "Node '{name}' is read-only: dirty bitmaps track writable disks only"
        ))),
    }
}

/// QEMU's `SocketAddressLegacy` (`{"type": "unix", "data": {"path"}}`,
/// `{"type": "inet", "data": {"host", "port"}}`) or the flat
/// `SocketAddress` (the same members without `data`).
fn socket_addr(addr: &Value) -> Result<ListenAddr, QmpError> {
    let bad = |why: &str| QmpError::generic(format!("Invalid parameter 'addr': {why}"));
    let obj = addr.as_object().ok_or_else(|| bad("expected an object"))?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("'type' (unix or inet) is missing"))?;
    let data = match obj.get("data") {
        Some(d) => d
            .as_object()
            .ok_or_else(|| bad("'data' must be an object"))?,
        None => obj,
    };
    let text = |k: &str| -> Result<String, QmpError> {
        match data.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(bad(&format!("'{k}' is missing"))),
        }
    };
    let spec = match kind {
        "unix" => format!("unix:{}", text("path")?),
        "inet" => format!("tcp:{}:{}", text("host")?, text("port")?),
        other => return Err(bad(&format!("type '{other}' is not served (unix or inet)"))),
    };
    spec.parse()
        .map_err(|e: crate::nbd::NbdError| QmpError::generic(e.to_string()))
}

/// `object-add`: only `tls-creds-x509` objects (server endpoint), for
/// `nbd-server-start`'s `tls-creds`; the credentials are loaded now, so
/// a bad directory is reported here, as QEMU does.
fn object_add(ctl: &VmControl, args: &serde_json::Map<String, Value>) -> Result<Value, QmpError> {
    // The type first: other types take other members.
    let kind = match args.get("qom-type") {
        Some(Value::String(k)) => k.as_str(),
        Some(_) => {
            return Err(QmpError::generic(
                "Invalid parameter type for 'qom-type', expected: string",
            ))
        }
        None => return Err(QmpError::generic("Parameter 'qom-type' is missing")),
    };
    if kind != "tls-creds-x509" {
        return Err(QmpError::generic(format!(
            "Invalid parameter 'qom-type': rehost's object-add makes only tls-creds-x509 objects, not '{kind}'"
        )));
    }
    let a = Args::new(
        args,
        &[
            "qom-type",
            "id",
            "dir",
            "endpoint",
            "verify-peer",
            "sanity-check",
        ],
    )?;
    let id = a.str("id")?;
    if !crate::usb::valid_id(id) {
        return Err(QmpError::generic(format!(
            "Parameter 'id' expects an identifier (letters, digits, '-', '_', '.'; at most 64), not '{id}'"
        )));
    }
    match a.opt_str("endpoint")? {
        None | Some("server") => {}
        Some("client") => {
            return Err(QmpError::generic(
                "Expecting TLS credentials with a server endpoint: rehost is never an NBD client",
            ))
        }
        Some(e) => {
            return Err(QmpError::generic(format!(
                "Parameter 'endpoint' does not accept value '{e}'"
            )))
        }
    }
    let dir = a.str("dir")?;
    let verify = a.opt_bool("verify-peer")?.unwrap_or(true);
    let _ = a.opt_bool("sanity-check")?;
    let mut creds = ctl.tls_creds.lock().unwrap_or_else(|e| e.into_inner());
    if creds.contains_key(id) {
        return Err(QmpError::generic(format!(
            "attempt to add duplicate property '{id}' to object (type 'container')"
        )));
    }
    if creds.len() >= 16 {
        return Err(QmpError::generic("too many objects (at most 16)"));
    }
    let config = crate::nbd::tls::load(std::path::Path::new(dir), verify)
        .map_err(|e| QmpError::generic(e.to_string()))?;
    creds.insert(id.to_owned(), config);
    Ok(json!({}))
}

fn nbd_start(
    ctl: &VmControl,
    addr: &Value,
    max: Option<u64>,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> Result<Value, QmpError> {
    let addr = socket_addr(addr)?;
    let mut nbd = ctl.nbd.lock().unwrap_or_else(|e| e.into_inner());
    if nbd.is_some() {
        return Err(QmpError::generic("NBD server already running"));
    }
    let mut options = ServerOptions {
        tls,
        ..ServerOptions::default()
    };
    // QEMU's 0 is "unlimited"; rehost keeps its bound.
    if let Some(m) = max.filter(|&m| m > 0) {
        options.max_clients = (m as usize).min(options.max_clients);
    }
    let server = NbdServer::start(&addr, options).map_err(|e| QmpError::generic(e.to_string()))?;
    *nbd = Some(server);
    Ok(json!({}))
}

fn with_nbd<T>(
    ctl: &VmControl,
    f: impl FnOnce(&NbdServer) -> Result<T, crate::nbd::NbdError>,
) -> Result<T, QmpError> {
    let nbd = ctl.nbd.lock().unwrap_or_else(|e| e.into_inner());
    let server = nbd
        .as_ref()
        .ok_or_else(|| QmpError::generic("NBD server not running"))?;
    f(server).map_err(|e| QmpError::generic(e.to_string()))
}

/// `nbd-server-add`: a read-only export is a point-in-time view of the
/// disk as of this command (the guest keeps writing; old data is copied
/// aside first) with `bitmap` frozen at the same moment; a writable one
/// serves the live disk, its writes tracked by the disk's bitmaps.
fn nbd_add(ctl: &VmControl, a: &Args) -> Result<Value, QmpError> {
    let device = a.str("device")?;
    let name = a.opt_str("name")?.unwrap_or(device);
    let writable = a.opt_bool("writable")?.unwrap_or(false);
    let bitmap = a.opt_str("bitmap")?;
    let (tracker, _) = tracker_of(ctl, device)?;
    let image = {
        let drives = ctl.drives();
        drives
            .iter()
            .find(|d| {
                d.config
                    .tracker
                    .as_ref()
                    .is_some_and(|t| Arc::ptr_eq(t, &tracker))
            })
            .and_then(|d| d.config.image.clone())
            .ok_or_else(|| QmpError::generic(format!("Device '{device}' has no medium")))?
    };
    if let Some(b) = bitmap {
        if !tracker.bitmaps().iter().any(|i| i.name == b) {
            return Err(QmpError::generic(format!("Bitmap '{b}' is not found")));
        }
    }
    with_nbd(ctl, |_| Ok(()))?;
    let bitmaps: Vec<&str> = bitmap.into_iter().collect();
    let source: Arc<dyn crate::nbd::ExportSource> = if writable {
        Arc::new(
            crate::nbd::image::ImageSource::new(
                image,
                Some(tracker),
                bitmaps.iter().map(|b| b.to_string()).collect(),
                false,
            )
            .map_err(|e| QmpError::generic(e.to_string()))?,
        )
    } else {
        let dir = match a.opt_str("x-overlay-dir")? {
            Some(d) => std::path::PathBuf::from(d),
            None => image
                .info()
                .path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(std::path::Path::to_path_buf)
                .unwrap_or_else(|| ".".into()),
        };
        let view = tracker
            .point_in_time(&bitmaps, &dir)
            .map_err(|e| QmpError::generic(e.to_string()))?;
        Arc::new(
            crate::nbd::image::PointInTimeSource::new(view, image.as_ref())
                .map_err(|e| QmpError::generic(e.to_string()))?,
        )
    };
    let mut export = Export::new(name, source).read_only(!writable);
    if let Some(d) = a.opt_str("description")? {
        export = export.description(d);
    }
    with_nbd(ctl, |s| s.add_export(export))?;
    Ok(json!({}))
}

/// The drive called `name`, which must be a CD-ROM.
fn find_cdrom(ctl: &VmControl, name: &str) -> Result<usize, QmpError> {
    let drives = ctl.drives();
    let i = drives
        .iter()
        .position(|d| drive_name(&d.config) == name)
        .ok_or_else(|| QmpError::device_not_found(format!("Device '{name}' not found")))?;
    if drives[i].config.kind != DriveKind::Cdrom {
        return Err(QmpError::generic(format!(
            "Device '{name}' is not removable"
        )));
    }
    Ok(i)
}

/// `DEVICE_TRAY_MOVED` for drive `name`.
pub fn tray_event(ctl: &VmControl, name: &str, open: bool) {
    ctl.emit(
        "DEVICE_TRAY_MOVED",
        Some(json!({ "device": name, "id": name, "tray-open": open })),
    );
}

/// Opens the tray of drive `i` and takes its medium out, unless the guest
/// locked it and `force` is not given (then the guest gets an eject
/// request, as when a user presses a real drive's button).
fn open_tray(ctl: &VmControl, i: usize, name: &str, force: bool) -> Result<(), QmpError> {
    let (controller, slot, already_open) = {
        let d = &ctl.drives()[i];
        (d.config.spec.controller, d.config.slot, d.tray_open)
    };
    let refused = ctl
        .with_machine(|m| {
            m.storage.with_cdrom(controller, slot, |cd| {
                if cd.locked() && !force {
                    cd.request_eject();
                    true
                } else {
                    if !already_open {
                        cd.change_medium(None);
                    }
                    false
                }
            })
        })
        .flatten()
        .unwrap_or(false);
    if refused {
        return Err(QmpError::generic(format!(
            "Device '{name}' is locked and force was not specified, wait for tray to open and try again"
        )));
    }
    let mut drives = ctl.drives();
    drives[i].config.image = None;
    if !already_open {
        drives[i].tray_open = true;
        drop(drives);
        tray_event(ctl, name, true);
    }
    Ok(())
}

fn eject(ctl: &VmControl, name: &str, force: bool) -> Result<Value, QmpError> {
    let i = find_cdrom(ctl, name)?;
    open_tray(ctl, i, name, force)?;
    Ok(json!({}))
}

fn change_medium(
    ctl: &VmControl,
    name: &str,
    filename: &str,
    format: Option<&str>,
    force: bool,
) -> Result<Value, QmpError> {
    let i = find_cdrom(ctl, name)?;
    // Open the new medium first: a bad file leaves the drive as it was.
    let image = rehost_disk::open(
        std::path::Path::new(filename),
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .map_err(|e| QmpError::generic(format!("Could not open '{filename}': {e}")))?;
    let detected = image.info().format;
    if let Some(f) = format {
        let matches = f == detected.name() || f == qemu_driver(detected);
        if !matches {
            return Err(QmpError::generic(format!(
                "'{filename}' is a {} image, not {f}",
                detected.name()
            )));
        }
    }
    if image.geometry().size == 0 {
        return Err(QmpError::generic(format!("'{filename}' is empty")));
    }
    let image: Arc<dyn DiskImage> = Arc::from(image);
    open_tray(ctl, i, name, force)?;
    let (controller, slot) = {
        let mut drives = ctl.drives();
        drives[i].config.image = Some(image.clone());
        drives[i].config.spec.path = filename.into();
        drives[i].tray_open = false;
        (drives[i].config.spec.controller, drives[i].config.slot)
    };
    ctl.with_machine(|m| {
        m.storage.with_cdrom(controller, slot, |cd| {
            cd.change_medium(Some(image.clone()));
        })
    });
    tray_event(ctl, name, false);
    Ok(json!({}))
}

/// QEMU-style `filename` of a COM port's backend.
fn chardev_filename(spec: &ComSpec) -> String {
    let server = |s: bool| if s { ",server=on" } else { "" };
    match spec {
        ComSpec::None => "none".into(),
        ComSpec::Null => "null".into(),
        ComSpec::Stdio => "stdio".into(),
        ComSpec::File(p) => format!("file:{}", p.display()),
        ComSpec::Pty { .. } => "pty".into(),
        ComSpec::Unix {
            path, server: s, ..
        } => format!("unix:{}{}", path.display(), server(*s)),
        ComSpec::Tcp {
            host,
            port,
            server: s,
            ..
        } => format!("tcp:{host}:{port}{}", server(*s)),
        ComSpec::Tty { device, .. } => format!("tty:{}", device.display()),
        ComSpec::Rfc2217 { host, port, .. } => format!("rfc2217:{host}:{port}"),
    }
}

fn query_chardev(ctl: &VmControl) -> Value {
    Value::Array(
        ctl.chardevs()
            .iter()
            .map(|c| {
                let connected = c.shared.as_ref().is_some_and(|s| s.is_connected());
                json!({
                    "label": format!("com{}", c.index + 1),
                    "filename": chardev_filename(&c.spec),
                    "frontend-open": true,
                    "connected": connected,
                })
            })
            .collect(),
    )
}

/// The name of the event for a COM port whose peer came or went.
pub const SERIAL_EVENT: &str = "SERIAL_PORT_CHANGE";

/// `SERIAL_PORT_CHANGE` data for COM`index + 1`.
pub fn serial_event_data(index: usize, open: bool) -> Value {
    json!({ "id": format!("com{}", index + 1), "open": open })
}

/// The id `screendump`'s `device` argument names the VGA by.
pub const VGA_DEVICE_ID: &str = "vga";

/// `screendump`: renders the console now and writes it to `filename` as
/// PPM (QEMU's default) or PNG.
fn screendump(
    ctl: &VmControl,
    filename: &str,
    device: Option<&str>,
    head: Option<u64>,
    format: Option<&str>,
) -> Result<Value, QmpError> {
    let format = match format {
        None | Some("ppm") => crate::display::ImageFormat::Ppm,
        Some("png") => crate::display::ImageFormat::Png,
        Some(other) => {
            return Err(QmpError::generic(format!(
                "Parameter 'format' does not accept value '{other}' (ppm or png)"
            )))
        }
    };
    if let Some(d) = device {
        if d != VGA_DEVICE_ID || !ctl.console.has_screen() {
            return Err(QmpError::device_not_found(format!(
                "Device '{d}' not found"
            )));
        }
    }
    if head.unwrap_or(0) != 0 {
        return Err(QmpError::generic(format!(
            "Device '{}' has no head {}",
            device.unwrap_or(VGA_DEVICE_ID),
            head.unwrap_or(0)
        )));
    }
    if !ctl.console.has_screen() {
        return Err(QmpError::generic(
            "There is no console to take a screendump from (start rehost with --vga std)",
        ));
    }
    ctl.console.refresh();
    let path = std::path::PathBuf::from(filename);
    ctl.console
        .with_frame(|frame, _| crate::display::write_image(frame, &path, format))
        .map_err(|e| QmpError::generic(format!("{e:#}")))?;
    Ok(json!({}))
}
