//! `device_add` and `device_del`: USB devices plugged in and out while the
//! guest runs, with QEMU's command and event shapes and rehost's own
//! arguments where QEMU would need a `-drive` first (see the module docs
//! of [`super`] for the table).
//!
//! Every check happens before anything changes: a refused command leaves
//! the controller, its ports and every image as they were.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::protocol::{Args, QmpError};
use super::state::VmControl;
use crate::storage::drive_name;
use crate::usb::{
    self, UsbDeviceConfig, UsbDeviceSpec, DRIVER_KEYBOARD, DRIVER_STORAGE, USB_BUS_NAME,
};

/// The members `device_add` accepts.
pub const DEVICE_ADD_ARGS: &[&str] = &["driver", "id", "bus", "port", "file", "readonly", "drive"];

/// `port`: QEMU gives USB port paths as strings ("1"); a number is taken
/// too.
fn port_arg(args: &Map<String, Value>) -> Result<Option<usize>, QmpError> {
    let bad = |v: &dyn std::fmt::Display| {
        QmpError::generic(format!(
            "Error: usb port {v} (bus {USB_BUS_NAME}) not found (in use?)"
        ))
    };
    let n = match args.get("port") {
        None => return Ok(None),
        Some(Value::String(s)) => s.parse::<u64>().map_err(|_| bad(s))?,
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| bad(n))?,
        Some(_) => {
            return Err(QmpError::generic(
                "Invalid parameter type for 'port', expected: string",
            ))
        }
    };
    match usize::try_from(n) {
        Ok(p) if (1..=usb::MAX_PORTS).contains(&p) => Ok(Some(p)),
        _ => Err(bad(&n)),
    }
}

/// `readonly`: a boolean, or QEMU's property strings "on"/"off".
fn readonly_arg(args: &Map<String, Value>) -> Result<Option<bool>, QmpError> {
    match args.get("readonly") {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => match s.as_str() {
            "on" | "yes" | "true" => Ok(Some(true)),
            "off" | "no" | "false" => Ok(Some(false)),
            _ => Err(QmpError::generic(format!(
                "Parameter 'readonly' expects 'on' or 'off', not '{s}'"
            ))),
        },
        Some(_) => Err(QmpError::generic(
            "Invalid parameter type for 'readonly', expected: boolean",
        )),
    }
}

/// The canonical paths of every image a drive or a USB disk has open.
fn images_in_use(ctl: &VmControl, devices: &[UsbDeviceConfig]) -> Vec<PathBuf> {
    let drives = ctl
        .drives()
        .iter()
        .filter(|d| d.config.image.is_some())
        .map(|d| d.config.spec.path.clone())
        .collect::<Vec<_>>();
    let usb_disks = devices.iter().filter_map(|d| match &d.spec {
        UsbDeviceSpec::Disk { path, .. } => Some(path.clone()),
        UsbDeviceSpec::Keyboard { .. } => None,
    });
    drives
        .into_iter()
        .chain(usb_disks)
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect()
}

/// `device_add`: plugs a USB disk (`usb-storage` with `file`) or keyboard
/// (`usb-kbd`) into a free root port (or `port`).
pub fn device_add(ctl: &VmControl, args: &Map<String, Value>) -> Result<Value, QmpError> {
    let a = Args::new(args, DEVICE_ADD_ARGS)?;
    let driver = a.str("driver")?;
    let disk = match driver {
        DRIVER_STORAGE => true,
        DRIVER_KEYBOARD => false,
        other => {
            return Err(QmpError::generic(format!(
                "'{other}' is not a valid device model name (rehost has {DRIVER_STORAGE} and {DRIVER_KEYBOARD})"
            )))
        }
    };
    if args.contains_key("drive") {
        return Err(QmpError::generic(
            "rehost has no -drive or blockdev nodes: give the image's path in 'file'",
        ));
    }
    let id = a.str("id")?;
    if !usb::valid_id(id) {
        return Err(QmpError::generic(
            "Parameter 'id' expects an identifier (1 to 64 letters, digits, '-', '_' or '.')",
        ));
    }
    if let Some(bus) = a.opt_str("bus")? {
        if bus != USB_BUS_NAME {
            return Err(QmpError::generic(format!("Bus '{bus}' not found")));
        }
    }
    let port = port_arg(args)?;
    let read_only = readonly_arg(args)?;
    let file = a.opt_str("file")?;
    let spec = if disk {
        let file = file.ok_or_else(|| QmpError::generic("Parameter 'file' is missing"))?;
        UsbDeviceSpec::Disk {
            path: PathBuf::from(file),
            read_only: read_only.unwrap_or(false),
            port,
        }
    } else {
        if file.is_some() {
            return Err(QmpError::generic("Parameter 'file' is unexpected"));
        }
        if read_only.is_some() {
            return Err(QmpError::generic("Parameter 'readonly' is unexpected"));
        }
        UsbDeviceSpec::Keyboard { port }
    };

    // From here on the USB state is locked: two clients adding at once
    // cannot take the same port or id.
    let mut usb = ctl.usb();
    let Some(cfg) = usb.as_mut() else {
        return Err(QmpError::generic(format!(
            "No 'usb-bus' bus found for device '{driver}' (start rehost with --usb-controller uhci)"
        )));
    };
    let taken_id = cfg.devices.iter().any(|d| d.id.as_deref() == Some(id))
        || ctl.drives().iter().any(|d| drive_name(&d.config) == id);
    if taken_id {
        return Err(QmpError::generic(format!("Duplicate device ID '{id}'")));
    }
    let in_use = |p: usize| cfg.devices.iter().any(|d| d.port == p);
    let port = match port {
        Some(p) if in_use(p) => {
            return Err(QmpError::generic(format!(
                "Error: usb port {p} (bus {USB_BUS_NAME}) not found (in use?)"
            )))
        }
        Some(p) if p > cfg.controller.ports() => {
            return Err(QmpError::generic(format!(
                "Error: usb port {p} (bus {USB_BUS_NAME}) not found"
            )))
        }
        Some(p) => p,
        None => (1..=cfg.controller.ports())
            .find(|p| !in_use(*p))
            .ok_or_else(|| {
                QmpError::generic(format!(
                "Error: tried to attach usb device {id} to a bus with no free ports (it has {})",
                cfg.controller.ports()
            ))
            })?,
    };
    let mut opened = images_in_use(ctl, &cfg.devices);
    let what = match (&spec, file) {
        (UsbDeviceSpec::Disk { .. }, Some(f)) => format!("device_add {id}: {f}"),
        _ => format!("device_add {id}"),
    };
    let (image, tracker) = usb::open_device(&what, &spec, &mut opened)
        .map_err(|e| QmpError::generic(format!("{e:#}")))?;
    let device = UsbDeviceConfig {
        spec,
        id: Some(id.to_owned()),
        port,
        image,
        tracker,
    };
    let plugged = ctl
        .with_machine(|m| m.usb.as_ref().map(|h| h.plug(&device, &ctl.console)))
        .flatten();
    if let Some(Err(e)) = plugged {
        usb::close_device(device);
        return Err(QmpError::generic(format!("device_add {id}: {e:#}")));
    }
    // Between two boots there is no machine: the next one is built with
    // the device.
    cfg.devices.push(device);
    Ok(json!({}))
}

/// `device_del`: unplugs the USB device `id`; its image is flushed and
/// closed (dirty bitmaps saved) before the reply, then `DEVICE_DELETED`.
pub fn device_del(ctl: &VmControl, id: &str) -> Result<Value, QmpError> {
    let mut usb = ctl.usb();
    let not_found = || QmpError::device_not_found(format!("Device '{id}' not found"));
    let cfg = usb.as_mut().ok_or_else(not_found)?;
    let i = cfg
        .devices
        .iter()
        .position(|d| d.id.as_deref() == Some(id))
        .ok_or_else(not_found)?;
    let port = cfg.devices[i].port;
    let unplugged = ctl
        .with_machine(|m| m.usb.as_ref().map(|h| h.unplug(port, &ctl.console)))
        .flatten();
    if let Some(Err(e)) = unplugged {
        return Err(QmpError::generic(format!("device_del {id}: {e:#}")));
    }
    let device = cfg.devices.remove(i);
    drop(usb);
    usb::close_device(device);
    ctl.emit(
        "DEVICE_DELETED",
        Some(json!({ "device": id, "path": format!("/machine/peripheral/{id}") })),
    );
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usb::{UsbConfig, UsbController};

    fn ctl_with_usb() -> std::sync::Arc<VmControl> {
        ctl_with(UsbController::Uhci)
    }

    fn ctl_with(controller: UsbController) -> std::sync::Arc<VmControl> {
        let c = VmControl::new(&[]).unwrap();
        c.set_usb(Some(UsbConfig {
            controller,
            devices: Vec::new(),
        }));
        c.enable_events();
        c
    }

    #[test]
    fn ports_follow_the_controller() {
        let kbd = |id: &str, port: &str| args(json!({"driver": "usb-kbd", "id": id, "port": port}));
        // UHCI has ports 1 and 2; EHCI has 1 to 6.
        let c = ctl_with(UsbController::Uhci);
        let e = device_add(&c, &kbd("k5", "5")).unwrap_err();
        assert!(format!("{e:?}").contains("usb port 5"), "{e:?}");
        let c = ctl_with(UsbController::Ehci);
        device_add(&c, &kbd("k5", "5")).unwrap();
        for n in 0..5 {
            device_add(
                &c,
                &args(json!({"driver": "usb-kbd", "id": format!("k{n}")})),
            )
            .unwrap();
        }
        assert_eq!(
            ids(&c),
            vec![
                ("k5".into(), 5),
                ("k0".into(), 1),
                ("k1".into(), 2),
                ("k2".into(), 3),
                ("k3".into(), 4),
                ("k4".into(), 6)
            ]
        );
        let e = device_add(&c, &args(json!({"driver": "usb-kbd", "id": "k6"}))).unwrap_err();
        assert!(
            format!("{e:?}").contains("no free ports (it has 6)"),
            "{e:?}"
        );
        assert!(device_add(&c, &kbd("k7", "7")).is_err());
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn ids(c: &VmControl) -> Vec<(String, usize)> {
        c.usb()
            .as_ref()
            .unwrap()
            .devices
            .iter()
            .map(|d| (d.id.clone().unwrap_or_default(), d.port))
            .collect()
    }

    #[test]
    fn add_and_del_between_boots_keep_the_device_list() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("stick.raw");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let c = ctl_with_usb();
        let file = img.to_str().unwrap();
        device_add(
            &c,
            &args(json!({"driver": "usb-storage", "id": "stick", "file": file, "port": "2"})),
        )
        .unwrap();
        device_add(&c, &args(json!({"driver": "usb-kbd", "id": "kbd"}))).unwrap();
        assert_eq!(ids(&c), vec![("stick".into(), 2), ("kbd".into(), 1)]);
        device_del(&c, "stick").unwrap();
        assert_eq!(ids(&c), vec![("kbd".into(), 1)]);
        let ev = c.take_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["event"], "DEVICE_DELETED");
        assert_eq!(ev[0]["data"]["device"], "stick");
        assert_eq!(ev[0]["data"]["path"], "/machine/peripheral/stick");
        // Closed: the image can be attached again.
        device_add(
            &c,
            &args(json!({"driver": "usb-storage", "id": "stick2", "file": file, "readonly": true})),
        )
        .unwrap();
        assert_eq!(ids(&c), vec![("kbd".into(), 1), ("stick2".into(), 2)]);
    }

    #[test]
    fn an_unplugged_disk_is_closed_with_its_bitmaps_saved() {
        use rehost_disk::dirty::{BitmapState, DirtyTracker, TrackerOptions};
        use rehost_disk::{BlockDevice, OpenOptions};
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("stick.raw");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let c = ctl_with_usb();
        let file = img.to_str().unwrap();
        device_add(
            &c,
            &args(json!({"driver": "usb-storage", "id": "stick", "file": file})),
        )
        .unwrap();
        let t = c.usb().as_ref().unwrap().devices[0]
            .tracker
            .clone()
            .unwrap();
        t.add_bitmap("b1", 65536).unwrap();
        t.write_at(3 * 65536, &[0xa5; 512]).unwrap();
        drop(t);
        device_del(&c, "stick").unwrap();
        assert_eq!(std::fs::read(&img).unwrap()[3 * 65536], 0xa5);
        let image = rehost_disk::open(&img, &OpenOptions::default()).unwrap();
        let t = DirtyTracker::open_image(image.into(), &TrackerOptions::default()).unwrap();
        assert_eq!(t.problem(), None);
        let b = &t.bitmaps()[0];
        assert_eq!(
            (b.name.as_str(), b.dirty_bytes, b.state),
            ("b1", 65536, BitmapState::Tracking),
            "the bitmap was not saved cleanly at unplug"
        );
    }

    #[test]
    fn refused_commands_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("stick.raw");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let file = img.to_str().unwrap();
        let c = ctl_with_usb();
        device_add(
            &c,
            &args(json!({"driver": "usb-storage", "id": "stick", "file": file})),
        )
        .unwrap();
        let before = ids(&c);
        let missing = dir.path().join("nope.raw");
        for (a, want) in [
            (
                json!({"driver": "usb-mouse", "id": "m"}),
                "not a valid device model",
            ),
            (
                json!({"driver": "usb-kbd", "id": "stick"}),
                "Duplicate device ID 'stick'",
            ),
            (
                json!({"driver": "usb-kbd", "id": "k", "port": 1}),
                "usb port 1",
            ),
            (
                json!({"driver": "usb-kbd", "id": "k", "port": "3"}),
                "usb port 3",
            ),
            (
                json!({"driver": "usb-kbd", "id": "k", "port": "x"}),
                "usb port x",
            ),
            (
                json!({"driver": "usb-kbd", "id": "k", "port": true}),
                "'port'",
            ),
            (
                json!({"driver": "usb-kbd", "id": "a b"}),
                "expects an identifier",
            ),
            (json!({"driver": "usb-kbd"}), "Parameter 'id' is missing"),
            (
                json!({"driver": "usb-kbd", "id": "k", "bus": "usb-bus.7"}),
                "Bus 'usb-bus.7'",
            ),
            (
                json!({"driver": "usb-kbd", "id": "k", "file": file}),
                "'file' is unexpected",
            ),
            (
                json!({"driver": "usb-storage", "id": "d"}),
                "'file' is missing",
            ),
            (
                json!({"driver": "usb-storage", "id": "d", "drive": "x"}),
                "'file'",
            ),
            (
                json!({"driver": "usb-storage", "id": "d", "file": missing.to_str().unwrap()}),
                "nope.raw",
            ),
            (
                json!({"driver": "usb-storage", "id": "d", "file": file}),
                "attached twice",
            ),
            (
                json!({"driver": "usb-storage", "id": "d", "file": file, "readonly": "maybe"}),
                "'readonly'",
            ),
            (
                json!({"driver": "usb-kbd", "id": "k", "speed": 3}),
                "'speed' is unexpected",
            ),
        ] {
            let e = device_add(&c, &args(a.clone())).unwrap_err();
            assert_eq!(e.class.name(), "GenericError", "{a}: {e:?}");
            assert!(e.desc.contains(want), "{a}: {:?} lacks {want:?}", e.desc);
            assert_eq!(ids(&c), before, "{a} changed the devices");
        }
        let e = device_del(&c, "nobody").unwrap_err();
        assert_eq!(e.class.name(), "DeviceNotFound");
        assert_eq!(e.desc, "Device 'nobody' not found");
        assert_eq!(ids(&c), before);
        // Both ports full.
        device_add(&c, &args(json!({"driver": "usb-kbd", "id": "k"}))).unwrap();
        let e = device_add(&c, &args(json!({"driver": "usb-kbd", "id": "k2"}))).unwrap_err();
        assert!(e.desc.contains("no free ports"), "{}", e.desc);
        assert!(c.take_events().is_empty(), "nothing was deleted");
    }

    #[test]
    fn clients_racing_for_one_id_or_port_get_one_device() {
        let c = ctl_with_usb();
        let results: Vec<_> = (0..8)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let id = if i % 2 == 0 { "same" } else { "other" };
                    device_add(
                        &c,
                        &args(json!({"driver": "usb-kbd", "id": id, "port": "1"})),
                    )
                    .is_ok()
                })
            })
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{results:?}");
        assert_eq!(ids(&c).len(), 1);
        assert_eq!(ids(&c)[0].1, 1);
    }

    #[test]
    fn without_a_usb_controller_nothing_can_be_added() {
        let c = VmControl::new(&[]).unwrap();
        let e = device_add(&c, &args(json!({"driver": "usb-kbd", "id": "k"}))).unwrap_err();
        assert!(e.desc.contains("No 'usb-bus' bus"), "{}", e.desc);
        let e = device_del(&c, "k").unwrap_err();
        assert_eq!(e.class.name(), "DeviceNotFound");
    }
}
