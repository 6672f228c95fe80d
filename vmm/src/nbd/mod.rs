//! An NBD server: exports disks to third-party readers and writers
//! (`nbdinfo`, `nbdcopy`, `qemu-img`, libnbd, backup tools) over the
//! newstyle fixed handshake of the NBD project's `doc/proto.md`, with
//! structured replies and the `base:allocation` and QEMU
//! `qemu:dirty-bitmap:NAME` metadata contexts.
//!
//! # Using it
//!
//! ```no_run
//! use std::sync::Arc;
//! use rehost::nbd::{Export, ListenAddr, MemorySource, NbdServer, RemoveMode, ServerOptions};
//!
//! let addr: ListenAddr = "unix:/run/rehost/nbd.sock".parse().unwrap();
//! let server = NbdServer::start(&addr, ServerOptions::default()).unwrap();
//! let disk = Arc::new(MemorySource::new(vec![0; 1 << 20]));
//! server.add_export(Export::new("disk0", disk).read_only(true)).unwrap();
//! // ... clients connect to nbd+unix:///disk0?socket=/run/rehost/nbd.sock
//! server.remove_export("disk0", RemoveMode::Hard).unwrap();
//! server.stop();
//! ```
//!
//! - [`NbdServer::start`] listens on `unix:PATH` (created mode 0600; only
//!   peers of the same user, or root, are served, checked with
//!   SO_PEERCRED) or `tcp:HOST:PORT` (`tcp:PORT` listens on 127.0.0.1).
//!   One thread accepts; each client gets its own thread.
//! - Exports are added and removed at runtime ([`NbdServer::add_export`],
//!   [`NbdServer::remove_export`]): QEMU's `nbd-server-add` and
//!   `nbd-server-remove` (`mode` safe or hard). A client keeps the export
//!   it opened until it disconnects (safe) or is disconnected (hard).
//! - [`NbdServer::stop`] (also on drop) closes every client, joins the
//!   threads and removes the unix socket file: QEMU's `nbd-server-stop`.
//! - An export's data comes from an [`ExportSource`]: read, optional
//!   write/trim/zero, flush, size, which ranges are allocated, and named
//!   dirty bitmaps with their dirty ranges. [`image::ImageSource`] serves
//!   an image file (through its dirty tracker when it has bitmaps);
//!   [`MemorySource`] serves a byte vector. A point-in-time view of a
//!   running disk (copy-before-write) is another implementation.
//!
//! # Limits (every one bounds what a peer can make the server hold)
//!
//! [`ServerOptions`]: at most `max_clients` connected (more are accepted
//! and closed at once), requests of at most `max_payload` bytes (a longer
//! READ or BLOCK_STATUS gets `NBD_EINVAL`, a longer WRITE gets `NBD_EINVAL`
//! and the connection is closed: its data cannot be skipped cheaply),
//! option data of at most [`MAX_OPTION_DATA`] bytes (longer:
//! `NBD_REP_ERR_TOO_BIG`, then closed), at most [`MAX_DESCRIPTORS`] block
//! status descriptors per context in one reply. A peer that stalls in the
//! handshake, in the middle of a request or while a reply is sent to it
//! for `idle_timeout` is closed; a peer that is idle between requests is
//! not (NBD clients keep their connection open), and the handshake as a
//! whole must end within `idle_timeout` of connecting.
//!
//! # Semantics
//!
//! - Requests may have any alignment: unaligned reads and writes are
//!   widened to [`ExportSource::block_size`] (writes read-modify-write
//!   under the export's lock). `NBD_INFO_BLOCK_SIZE` advertises the block
//!   size as minimum, 4 KiB as preferred and `max_payload` as maximum.
//! - Errors: beyond the end `NBD_EINVAL` (READ, BLOCK_STATUS) or
//!   `NBD_ENOSPC` (WRITE, TRIM, WRITE_ZEROES); a write to a read-only
//!   export `NBD_EPERM`; an unknown command or bad flags `NBD_EINVAL`; an
//!   I/O error `NBD_EIO`. The connection stays usable after each.
//! - `base:allocation`: ranges no image of the chain holds are
//!   `NBD_STATE_HOLE | NBD_STATE_ZERO` (they read as zeros); the rest 0.
//!   `qemu:dirty-bitmap:NAME`: dirty ranges have bit 0 set (QEMU's
//!   `docs/interop/nbd.rst`).
//! - TLS: with [`ServerOptions::tls`] set (credentials loaded by
//!   [`tls::load`], QEMU's `tls-creds-x509` directory layout) the server
//!   serves only over TLS (`NBD_OPT_STARTTLS`; every other option before
//!   it gets `NBD_REP_ERR_TLS_REQD`) and, with peer verification, only
//!   clients whose certificate its CA signed: the protocol's one form of
//!   authentication. Without it `NBD_OPT_STARTTLS` gets
//!   `NBD_REP_ERR_UNSUP`: rely on the unix socket's permissions or
//!   loopback.
//! - CAN_MULTI_CONN is advertised: every connection to an export reaches
//!   the same [`ExportSource`] object, so a completed write is seen by all
//!   and a flush on one covers the writes made on the others. A source
//!   that cannot promise this must not be shared by several exports.

pub mod image;
pub mod protocol;
mod server;
mod session;
mod source;
pub mod tls;

pub use server::{ListenAddr, NbdError, NbdServer, RemoveMode, ServerOptions};
pub use session::serve_bytes;
pub use source::{Export, ExportSource, MemorySource};

/// Longest option data the server reads (names, queries).
pub const MAX_OPTION_DATA: u32 = 64 * 1024;
/// Most descriptors of one context in one BLOCK_STATUS reply; the client
/// asks again from where the reply ends.
pub const MAX_DESCRIPTORS: usize = 64 * 1024;
