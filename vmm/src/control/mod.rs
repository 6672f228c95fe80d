//! # The control socket: a QMP-compatible subset
//!
//! `rehost run --qmp PATH` creates a Unix socket (mode 0600) at `PATH` that
//! speaks the QEMU Machine Protocol as QEMU documents it
//! (`docs/interop/qmp-spec.rst`), so the scripts and libraries that drive
//! QEMU (such as PyPI `qemu.qmp`) drive rehost. `rehost qmp PATH COMMAND
//! [ARGS-AS-JSON]` is a command-line client.
//!
//! ## The conversation
//!
//! On connecting, a client receives the greeting
//! `{"QMP": {"version": {"qemu": {"major": 0, "minor": 1, "micro": 0},
//! "package": "rehost 0.1.0"}, "capabilities": []}}` (the `qemu` member
//! carries rehost's own version). It must then send
//! `{"execute": "qmp_capabilities"}`; any other command before that is
//! answered with `CommandNotFound` ("Expecting capabilities negotiation
//! with 'qmp_capabilities'"). After it, requests
//! `{"execute": NAME, "arguments": {...}, "id": ANY}` are answered in order
//! with `{"return": VALUE, "id": ANY}` or
//! `{"error": {"class": CLASS, "desc": TEXT}, "id": ANY}`; `id` is echoed
//! whatever JSON value it is. Messages are framed as JSON values, not
//! lines (a message may span reads, several may share one), and every
//! reply or event is one line ending in CRLF.
//!
//! Several clients may be connected at once (up to 128); each negotiated
//! client receives every event.
//!
//! ## Commands
//!
//! | command | arguments | returns |
//! |---|---|---|
//! | `qmp_capabilities` | `enable`: an empty array (rehost offers no optional capability) | `{}` |
//! | `query-version` | | `{"qemu": {"major", "minor", "micro"}, "package"}` |
//! | `query-commands` | | `[{"name": ...}, ...]` |
//! | `query-status` | | `{"status": "running" \| "paused" \| "shutdown", "running": bool}` |
//! | `stop` | | `{}` once every vCPU has left the guest; event `STOP` |
//! | `cont` | | `{}`; event `RESUME` |
//! | `system_reset` | | `{}`; the machine restarts as after the reset button; event `RESET` |
//! | `system_powerdown` | | `{}`; the ACPI power button: PM1 status PWRBTN_STS is set and an SCI raised when the OS enabled it; event `POWERDOWN` |
//! | `quit` | | `{}`; then every vCPU stops, every disk is flushed, every COM backend closed, event `SHUTDOWN`, and rehost exits 0 |
//! | `query-block` | | one object per disk and CD-ROM drive (below) |
//! | `eject` | `device` or `id`, `force` (bool) | `{}`; the tray opens and the medium is removed; event `DEVICE_TRAY_MOVED` |
//! | `blockdev-change-medium` | `device` or `id`, `filename`, `format` (optional: `raw`, `vpc`/`vhd`, `vhdx`; checked against the file's own bytes), `force`, `read-only-mode` (`retain` or `read-only`) | `{}`; tray opened, medium swapped, tray closed: two `DEVICE_TRAY_MOVED` events, and the guest's next ATAPI command gets UNIT ATTENTION (ASC 28h, medium may have changed) |
//! | `block-dirty-bitmap-add` | `node` (a drive's name or `node-name`), `name`, `granularity` (bytes, a power of two from 4 KiB to 16 MiB; default 64 KiB), `persistent` (accepted; every rehost bitmap persists), `disabled` (only `false`) | `{}`; the bitmap starts clean and records every later write of the guest, in the image's sidecar (`IMAGE.rehost-bitmaps`, created now if the image had none) |
//! | `block-dirty-bitmap-remove` | `node`, `name` | `{}` |
//! | `block-dirty-bitmap-clear` | `node`, `name` | `{}`; every granule clean, a new generation |
//! | `nbd-server-start` | `addr`: QEMU's `{"type": "unix", "data": {"path"}}` or `{"type": "inet", "data": {"host", "port"}}` (or the same without `data`), `max-connections` (at most 64; 0 means 64), `tls-creds` (the id of an `object-add`ed `tls-creds-x509`: the server then speaks only TLS and, with `verify-peer`, serves only clients with a certificate its CA signed); `tls-authz` is refused | `{}`; the NBD server of `rehost disk serve` (module `nbd`) listens; without TLS a unix socket is mode 0600 and serves the same user only |
//! | `object-add` | `qom-type` (only `tls-creds-x509`), `id`, `dir` (QEMU's layout: `server-cert.pem`, `server-key.pem`, `ca-cert.pem`), `endpoint` (only `server`), `verify-peer` (default true), `sanity-check` (accepted) | `{}` once the credentials are loaded (errors name the file); at most 16 objects |
//! | `object-del` | `id` | `{}`; a running NBD server keeps the credentials it started with |
//! | `nbd-server-add` | `device` (a writable disk), `name` (default: `device`), `description`, `writable` (default false), `bitmap`, rehost's `x-overlay-dir` | `{}`. Read-only: a point-in-time view of the disk as of this command while the guest keeps writing (old data is copied aside before each change, into an unnamed file in `x-overlay-dir`, default the image's directory), with `bitmap` frozen at the same moment as `qemu:dirty-bitmap:NAME`. Writable: the live disk, its writes tracked |
//! | `nbd-server-remove` | `name`, `mode` (`safe`: refused while clients are connected; `hard`: disconnects them) | `{}` |
//! | `nbd-server-stop` | | `{}`; every client is closed, the socket file removed |
//! | `screendump` | `filename`, `format` (`ppm`, QEMU's default, or `png`), `device` (only `vga`), `head` (only 0) | `{}` once the console's current picture (rendered now) is written to `filename`; an error without `--vga std` |
//! | `send-key` | `keys`: 1 to 16 of `{"type": "qcode", "data": NAME}` (QEMU's `QKeyCode` names of PC keys) or `{"type": "number", "data": N}` (set 1 code, 0x80 added for 0xE0 keys), `hold-time` (ms, default 100, at most 10000) | `{}` at once; the keys are pressed in order, held, released in reverse; requests type one after another (at most 64 waiting). Which keyboard: the USB keyboard the guest configured last (SET_CONFIGURATION) takes the keys alone; while the guest has configured none, the PS/2 keyboard gets them (QEMU gives them to the last `usb-kbd` added, configured or not; rehost waits for the guest, so keys typed before a guest drives USB still reach PS/2, and a guest that drives both, as SeaBIOS does, or two USB keyboards, sees each key once); a release goes to the keyboard that got the press |
//! | `query-chardev` | | one object per COM port: `label` (`com1`..`com4`), `filename` (its SPEC, e.g. `unix:/tmp/c1,server=on`), `frontend-open`, and rehost's `connected` |
//! | `device_add` | `driver` (`usb-storage` or `usb-kbd`), `id` (required here: 1 to 64 letters, digits, `-`, `_`, `.`), `bus` (only `usb-bus.0`), `port` (the root port, `"1"` or `"2"`, or a number; default the first free one); for `usb-storage` rehost's `file` (the image's path: raw, VHD or VHDX, opened as `--usb disk:` opens it, through its dirty bitmaps when writable) and `readonly` (bool, or `"on"`/`"off"`) instead of QEMU's `drive` | `{}` once the device is on its port: the guest sees a connect status change and enumerates it; a keyboard takes `send-key`'s keys. Needs a USB controller (`--usb-controller uhci` or any `--usb`) |
//! | `device_del` | `id` (a `device_add` id or a `--usb ...,id=NAME`) | `{}` once the device is off its port (the guest sees the disconnect; transfers it had in flight end with errors) and its image is flushed and closed, dirty bitmaps saved; event `DEVICE_DELETED` |
//!
//! `query-block` entries have QEMU's members `device` and `qdev` (the
//! drive's `id=` from `--disk`/`--cdrom`, or `ide0-hd0`, `ide1-cd0`,
//! `ahci0-hd2`... after its place), `type`, `removable`, `locked`,
//! `tray_open` (CD-ROMs), `io-status`, and while a medium is in,
//! `inserted` with `file`, `ro`, `drv`, `backing_file`,
//! `backing_file_depth` and `image` (QEMU's `ImageInfo`: `filename`,
//! `format`, `virtual-size`, `actual-size`, `cluster-size`, and
//! `backing-image` nested down the whole differencing chain). rehost adds
//! `controller` (`ide` or `ahci`), `slot`, `media` (`disk` or `cdrom`),
//! and in each image `rehost-format` and `rehost-subformat`. A disk with
//! dirty bitmaps (`rehost disk bitmap add`) lists them in
//! `inserted.dirty-bitmaps` in QEMU's `BlockDirtyInfo` shape (`name`,
//! `count` in dirty bytes, `granularity`, `recording`, `busy`,
//! `persistent`) plus `generation` and `state` (`tracking` or
//! `resync-required`). USB disks (`--usb disk:`, `device_add
//! usb-storage`) follow the drives, in root port order, named by their id
//! (or `usb0-hdPORT`), with `controller` `usb` and `slot` the root port.
//! Every writable disk can carry bitmaps: they are
//! added offline with `rehost disk bitmap add` or live with
//! `block-dirty-bitmap-add` (IDE and AHCI disks; a USB disk's bitmaps are
//! added offline); a CD-ROM or a `readonly=on` disk cannot.
//!
//! ## An incremental backup while the guest runs
//!
//! Bitmap `b1` counts the changes since the last backup. Add `b2` first, so
//! no write falls between two backups, then export the moment with `b1`
//! frozen, copy its dirty blocks (`nbdinfo --map=qemu:dirty-bitmap:b1`, or
//! any NBD backup tool), and retire `b1`:
//!
//! ```text
//! block-dirty-bitmap-add {"node": "sys", "name": "b2"}
//! nbd-server-start {"addr": {"type": "unix", "data": {"path": "/run/vm/nbd.sock"}}}
//! nbd-server-add {"device": "sys", "name": "backup", "bitmap": "b1"}
//!   ... copy nbd+unix:///backup?socket=/run/vm/nbd.sock ...
//! nbd-server-remove {"name": "backup"}
//! block-dirty-bitmap-remove {"node": "sys", "name": "b1"}
//! ```
//!
//! Writes between the two first commands are in both bitmaps: copied twice,
//! never missed.
//!
//! ## Events
//!
//! `{"event": NAME, "data": {...}, "timestamp": {"seconds", "microseconds"}}`:
//!
//! - `SHUTDOWN` `{"guest": bool, "reason": ...}`: `guest-shutdown` (ACPI
//!   power-off), `guest-reset` (a reset with `--no-reboot`), `guest-panic`
//!   (triple fault or an exit rehost cannot handle), `host-qmp-quit`,
//!   `host-signal`, `host-ui` (the console's Ctrl-A x).
//! - `RESET` `{"guest": bool, "reason": "guest-reset" | "host-qmp-system-reset"}`.
//! - `POWERDOWN`, `STOP`, `RESUME`.
//! - `DEVICE_TRAY_MOVED` `{"device", "id", "tray-open": bool}`.
//! - `DEVICE_DELETED` `{"device": ID, "path": "/machine/peripheral/ID"}`:
//!   `device_del` unplugged the device.
//! - `SERIAL_PORT_CHANGE` `{"id": "com1", "open": bool}` (rehost's own,
//!   shaped like QEMU's `VSERPORT_CHANGE`): a COM port's backend peer
//!   connected or left (a socket client, a pty reader, a host serial port
//!   plugged in or out).
//!
//! ## Errors
//!
//! - Malformed JSON, a message that is not an object, a missing or
//!   non-string `execute`, non-object `arguments`, unknown members:
//!   `GenericError` (QEMU's wording), with the `id` when one was readable.
//! - An unknown command: `CommandNotFound` ("The command X has not been
//!   found").
//! - A missing, mistyped or unexpected argument: `GenericError`
//!   ("Parameter 'id' is missing", "Invalid parameter type for 'force',
//!   expected: boolean", "Parameter 'x' is unexpected").
//! - A bitmap command naming no drive: "Cannot find device='X' nor
//!   node-name='X'"; an unknown bitmap: "Dirty bitmap 'B' not found in
//!   node 'X'"; a name in use or out of rule, a bad granularity: the
//!   reason, as `GenericError`.
//! - A drive that does not exist: `DeviceNotFound`; `eject` of a hard disk:
//!   "Device 'ide0-hd0' is not removable"; a medium the guest has locked:
//!   the guest gets an eject request and the command fails unless `force`.
//! - `device_add`: an unknown driver ("'X' is not a valid device model
//!   name"), an id in use ("Duplicate device ID 'X'"), a port that does
//!   not exist or is taken ("Error: usb port N (bus usb-bus.0) not found
//!   (in use?)"), no free port, no USB controller ("No 'usb-bus' bus
//!   found for device 'X'"), a missing or unreadable `file` or one already
//!   attached: `GenericError`, and nothing changes. `device_del` of an
//!   unknown id: `DeviceNotFound` ("Device 'X' not found").
//! - A message over 1 MiB or nested deeper than 64 levels: one
//!   `GenericError`, then the connection is closed (the stream cannot be
//!   resynchronised).
//!
//! ## Where rehost differs from QEMU
//!
//! - No out-of-band execution (`exec-oob`) and no capability to enable.
//! - A subset of commands; everything else is `CommandNotFound`.
//! - The greeting's and `query-version`'s `qemu` member is rehost's version.
//! - `system_reset` restarts the machine even with `--no-reboot` (which is
//!   about resets the guest asks for).
//! - Only processes of the same user (or root) may connect, and a client
//!   that has not negotiated within 30 s, or leaves a message half-sent for
//!   30 s, is closed. A client that does not read while more than 8 MiB of
//!   replies and events wait for it is closed.
//! - COM port labels are `com1`..`com4` (QEMU's are `serial0`...).
//! - `device_add` knows the USB devices only, takes the image as `file`
//!   (QEMU needs a `-drive` or `blockdev-add` node and `drive`), and wants
//!   an `id`. Hot-plugged devices stay plugged across resets, as in QEMU.
//! - `DEVICE_TRAY_MOVED` is sent for tray moves from the host and from the
//!   guest (START STOP UNIT), as QEMU does.

pub mod client;
pub mod commands;
pub mod devices;
pub mod protocol;
pub mod send_key;
pub mod server;
pub mod state;

pub use server::ControlServer;
pub use state::{HostRequest, MachineHandle, RunState, VmControl};
