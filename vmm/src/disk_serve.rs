//! `rehost disk serve --nbd ADDR IMAGE`: one image exported over NBD by the
//! library in [`crate::nbd`], until SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rehost_disk::dirty::{self, DirtyTracker, TrackerOptions};
use rehost_disk::{DiskImage, OpenOptions};

use crate::nbd::image::ImageSource;
use crate::nbd::tls;
use crate::nbd::{Export, ExportSource, ListenAddr, NbdServer, ServerOptions};
use crate::signals::ShutdownSignals;

/// Sets the idle limit (milliseconds) of peers stalled in the handshake or
/// mid-request; for tests.
pub const IDLE_ENV: &str = "REHOST_NBD_IDLE_TIMEOUT_MS";

pub const SERVE_HELP: &str = "\
When the export is ready, its URI is printed on stdout, e.g.
  nbd+unix:///disk?socket=/tmp/nbd.sock   or   nbd://127.0.0.1:10809/disk
which qemu-img, qemu-io, nbdinfo, nbdcopy and libnbd take as they are.
The empty export name also opens the export.

Offered: the newstyle fixed handshake (NBD_OPT_GO, INFO, LIST,
EXPORT_NAME, ABORT), structured replies, NBD_CMD_READ, WRITE, FLUSH, TRIM,
WRITE_ZEROES, DISC and BLOCK_STATUS with the metadata contexts
base:allocation (ranges no image of the chain holds are holes that read as
zeros) and qemu:dirty-bitmap:NAME for each --bitmap (dirty ranges have
flag 1), e.g. `nbdinfo --map=qemu:dirty-bitmap:NAME URI`.

Writes through the export go through the image's dirty tracker when it has
bitmaps (IMAGE.rehost-bitmaps), so every bitmap stays up to date; they are
on stable storage after an NBD flush, and all of them when rehost exits.

Limits: requests up to 32 MiB; --max-clients connections (more are closed
at once); a peer stalled in the handshake or in the middle of a request
for 30 s is closed (idle clients between requests are kept).

Security: NBD's one form of authentication is TLS with client
certificates. With --tls-creds DIR (the layout of QEMU's tls-creds-x509
and qemu-nbd --tls-creds: DIR/server-cert.pem, DIR/server-key.pem and, to
verify clients, DIR/ca-cert.pem) the server speaks only TLS
(NBD_OPT_STARTTLS; other options before it get NBD_REP_ERR_TLS_REQD), the
printed URI is nbds:// or nbds+unix://, and with --tls-verify-peer on (the
default, as QEMU's) only clients presenting a certificate signed by a CA in
ca-cert.pem are served. Clients, e.g.:
  nbdinfo 'nbds+unix:///disk?socket=/tmp/nbd.sock&tls-certificates=CDIR'
  qemu-img info --object tls-creds-x509,id=t0,dir=CDIR,endpoint=client \
    --image-opts driver=nbd,path=/tmp/nbd.sock,export=disk,tls-creds=t0,tls-hostname=localhost
(CDIR: ca-cert.pem, client-cert.pem, client-key.pem).
Without TLS, prefer a unix socket (mode 0600, same user only) or loopback
TCP; a TCP HOST other than loopback without TLS exposes the disk to anyone
who can reach the port.";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen: unix:PATH, tcp:HOST:PORT or tcp:PORT (127.0.0.1).
    /// Port 0 lets the kernel choose (see the printed URI).
    #[arg(long, value_name = "ADDR")]
    nbd: String,
    /// Offer this dirty bitmap of the image as the metadata context
    /// qemu:dirty-bitmap:NAME (repeatable).
    #[arg(long = "bitmap", value_name = "NAME")]
    bitmaps: Vec<String>,
    /// Open the image read-only; writes get NBD_EPERM.
    #[arg(long)]
    read_only: bool,
    /// The export's name.
    #[arg(long, value_name = "EXPORT", default_value = "disk")]
    name: String,
    /// Serve only over TLS with the X.509 credentials in DIR
    /// (server-cert.pem, server-key.pem, and ca-cert.pem to verify
    /// clients; see below).
    #[arg(long, value_name = "DIR")]
    tls_creds: Option<PathBuf>,
    /// With --tls-creds: serve only clients whose certificate a CA in
    /// DIR/ca-cert.pem signed (on), or any client that completes TLS (off).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    tls_verify_peer: bool,
    /// Most clients connected at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_clients: usize,
    /// The image file (raw, VHD, VHDX; a differencing image is served
    /// through its whole chain).
    image: PathBuf,
}

/// Runs the server until a signal; returns the exit code.
pub fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    let addr: ListenAddr = args.nbd.parse()?;
    let tls = match &args.tls_creds {
        Some(dir) => Some(tls::load(dir, args.tls_verify_peer)?),
        None => None,
    };
    let image: Arc<dyn DiskImage> = Arc::from(rehost_disk::open(
        &args.image,
        &OpenOptions {
            read_only: args.read_only,
            ..Default::default()
        },
    )?);
    let has_sidecar = dirty::sidecar_path(&args.image).exists();
    if !args.bitmaps.is_empty() && !has_sidecar {
        anyhow::bail!(
            "{}: the image has no dirty bitmaps (add one with `rehost disk bitmap add`)",
            args.image.display()
        );
    }
    let tracker = if has_sidecar {
        let t = DirtyTracker::open_image(image.clone(), &TrackerOptions::default())?;
        if let Some(p) = t.problem() {
            eprintln!("rehost: warning: {p}; the bitmaps report every block dirty");
        }
        Some(Arc::new(t))
    } else {
        None
    };
    let source = Arc::new(ImageSource::new(
        image.clone(),
        tracker.clone(),
        args.bitmaps.clone(),
        args.read_only,
    )?);
    let mut options = ServerOptions {
        max_clients: args.max_clients.max(1),
        tls,
        ..ServerOptions::default()
    };
    if let Some(ms) = std::env::var(IDLE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        options.idle_timeout = Duration::from_millis(ms.max(1));
    }
    let signals = ShutdownSignals::install().context("installing signal handlers")?;
    let server = NbdServer::start(&addr, options)?;
    server.add_export(
        Export::new(args.name.clone(), source.clone())
            .read_only(args.read_only)
            .description(args.image.display().to_string()),
    )?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", server.uri(&args.name))?;
        out.flush()?;
    }
    let mut notes = Vec::new();
    if args.read_only {
        notes.push("read-only");
    }
    match (&args.tls_creds, args.tls_verify_peer) {
        (None, _) => {}
        (Some(_), true) => notes.push("TLS only, client certificates required"),
        (Some(_), false) => notes.push("TLS only, any client"),
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    };
    eprintln!(
        "rehost: serving {} as NBD export {:?} on {}{notes} until SIGINT or SIGTERM",
        args.image.display(),
        args.name,
        server.addr(),
    );
    wait_readable(signals.eventfd());
    server.stop();
    let flushed = source.flush();
    drop(source);
    drop(image);
    match tracker.map(Arc::try_unwrap) {
        // Read-only: nothing was written, and the sidecar stays as it was
        // (closing would rewrite it).
        Some(Ok(t)) if !args.read_only => t.close()?,
        Some(Ok(t)) => drop(t),
        Some(Err(_)) => anyhow::bail!("internal error: the dirty tracker is still in use"),
        None => {}
    }
    flushed?;
    eprintln!(
        "rehost: NBD server stopped; {} flushed",
        args.image.display()
    );
    Ok(0)
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

fn wait_readable(evt: &vmm_sys_util::eventfd::EventFd) {
    use std::os::fd::AsRawFd;
    loop {
        let mut fd = libc::pollfd {
            fd: evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes only the one pollfd it is given.
        let n = unsafe { libc::poll(&mut fd, 1, -1) };
        if n > 0 {
            return;
        }
    }
}
