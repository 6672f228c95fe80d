//! COM port redirection: what each guest serial port (a 16550A UART) is
//! connected to on the host. The UART runs on the vCPU threads and hands
//! output to a bounded queue (`queue`); all host I/O for a port runs on the
//! event-loop thread (`port`).

pub mod port;
pub mod queue;
pub mod rfc2217;
pub mod sock;
pub mod spec;
pub mod stdio;
pub mod telnet;
pub mod termios;

use std::net::ToSocketAddrs;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use rehost_devices::events::MachineEvents;
use rehost_devices::irq::RecordingIrq;
use rehost_devices::serial::{NullBackend, Uart16550};

use port::{Link, PortLoop};
use queue::{PortShared, QueueBackend};
use sock::{Listener, Target};
use stdio::{EscapeKeys, RawModeGuard};

pub use spec::ComSpec;

/// One guest COM port: index 0 is COM1.
pub struct ComPort {
    pub index: usize,
    pub uart: Arc<Mutex<Uart16550>>,
    /// What the user asked the port to be connected to.
    pub spec: ComSpec,
    /// The port's queue, whose connection state the control socket
    /// reports; `None` for a port with nothing behind it.
    pub shared: Option<Arc<PortShared>>,
}

/// The configured ports, their event-loop halves, and the terminal state
/// to restore.
pub struct ComPorts {
    pub ports: Vec<ComPort>,
    pub loops: Vec<Arc<Mutex<PortLoop>>>,
    pub raw_mode: Option<RawModeGuard>,
}

/// The one message for a port that cannot be connected as asked: the
/// guest keeps the UART (output dropped, no input) and the machine runs.
pub fn warn_disconnected(index: usize, why: &str) {
    tracing::warn!(
        "{why}; COM{} is disconnected and the machine runs on",
        index + 1
    );
}

/// Settles the ports as a whole: only one can use the terminal; a later
/// stdio port is disconnected with one message.
pub fn settle_specs(specs: &mut [ComSpec; 4]) {
    let mut first_stdio = None;
    for (i, spec) in specs.iter_mut().enumerate() {
        if *spec != ComSpec::Stdio {
            continue;
        }
        match first_stdio {
            None => first_stdio = Some(i),
            Some(first) => {
                warn_disconnected(
                    i,
                    &format!(
                        "--com{} and --com{} are both stdio; only one port can use the terminal",
                        first + 1,
                        i + 1
                    ),
                );
                *spec = ComSpec::Null;
            }
        }
    }
}

/// A UART with nothing connected.
fn null_port(index: usize, spec: ComSpec) -> ComPort {
    ComPort {
        index,
        spec,
        shared: None,
        // The interrupt line is connected when the machine is built.
        uart: Arc::new(Mutex::new(Uart16550::new(
            RecordingIrq::new(),
            Box::new(NullBackend),
        ))),
    }
}

fn resolve(host: &str, port: u16) -> anyhow::Result<std::net::SocketAddr> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("{host} has no address"))
}

impl ComPorts {
    /// Opens what each port is connected to (files, devices, listening
    /// sockets) and builds the UARTs. A port that cannot be connected as
    /// asked is one message and stays disconnected; a host serial port that
    /// is not there yet is opened when it appears. Client connections start
    /// on the event loop.
    /// `specs` are settled (`settle_specs`) by the configuration.
    pub fn start(specs: &[ComSpec; 4], host_requests: &Arc<MachineEvents>) -> anyhow::Result<Self> {
        let mut ports = Vec::new();
        let mut loops = Vec::new();
        let mut raw_mode = None;
        for (index, spec) in specs.iter().enumerate() {
            let name = format!("COM{}", index + 1);
            let (link, buffer) = match spec {
                ComSpec::None => continue,
                ComSpec::Null => {
                    ports.push(null_port(index, spec.clone()));
                    continue;
                }
                _ => match open_link(index, spec, host_requests, &mut raw_mode) {
                    Ok(link) => link,
                    Err(e) => {
                        warn_disconnected(index, &format!("{e:#}"));
                        ports.push(null_port(index, spec.clone()));
                        continue;
                    }
                },
            };
            let shared = PortShared::new(buffer)?;
            let uart = Arc::new(Mutex::new(Uart16550::new(
                RecordingIrq::new(),
                Box::new(QueueBackend::new(shared.clone())),
            )));
            let lp = PortLoop::new(name, uart.clone(), shared.clone(), link)?;
            loops.push(Arc::new(Mutex::new(lp)));
            ports.push(ComPort {
                index,
                uart,
                spec: spec.clone(),
                shared: Some(shared),
            });
        }
        Ok(Self {
            ports,
            loops,
            raw_mode,
        })
    }
}

/// A listening socket, or a plain (not RFC 2217) client of `target`.
fn socket_link(target: Target, server: bool, what: &str) -> anyhow::Result<Link> {
    Ok(if server {
        let listener = Listener::bind(&target).with_context(|| format!("{what}: cannot listen"))?;
        Link::Server { listener }
    } else {
        Link::Client {
            target,
            rfc2217: false,
        }
    })
}

/// What one port (not `None` or `Null`) is connected to, and its buffer.
fn open_link(
    index: usize,
    spec: &ComSpec,
    host_requests: &Arc<MachineEvents>,
    raw_mode: &mut Option<RawModeGuard>,
) -> anyhow::Result<(Link, usize)> {
    let name = format!("COM{}", index + 1);
    let opt = format!("--com{}", index + 1);
    Ok(match spec {
        ComSpec::None | ComSpec::Null => anyhow::bail!("{opt}: nothing to connect"),
        ComSpec::Stdio => {
            *raw_mode = RawModeGuard::enable(0);
            let (out, pollable) =
                stdio::stdout_writer().with_context(|| format!("{opt} stdio: stdout"))?;
            let keys = raw_mode
                .is_some()
                .then(|| EscapeKeys::new(host_requests.clone()));
            // Always connected; the buffer covers the moment
            // before the event loop starts.
            (
                Link::Stdio {
                    out,
                    pollable,
                    keys,
                },
                spec::DEFAULT_BUFFER,
            )
        }
        ComSpec::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| {
                    format!("{opt} file:{}: cannot open for COM output", path.display())
                })?;
            (
                Link::File {
                    file,
                    path: path.clone(),
                },
                spec::DEFAULT_BUFFER,
            )
        }
        ComSpec::Pty { buffer } => {
            let (master, path) = termios::open_pty().with_context(|| format!("{opt} pty"))?;
            eprintln!("rehost: {name} is {path}");
            (Link::Pty { master, path }, *buffer)
        }
        ComSpec::Tty { device, buffer } => {
            let fd = match termios::open_serial_port(device) {
                Ok(fd) => Some(fd),
                // Not plugged in yet: the event loop opens it when it appears.
                Err(_) if !device.exists() => {
                    tracing::warn!(
                        "{opt} tty:{}: no such device yet; {name} is disconnected \
                         and rehost opens it when it appears",
                        device.display()
                    );
                    None
                }
                Err(e) => return Err(e).with_context(|| format!("{opt} tty:{}", device.display())),
            };
            (
                Link::Tty {
                    device: device.clone(),
                    fd,
                },
                *buffer,
            )
        }
        ComSpec::Unix {
            path,
            server,
            buffer,
        } => {
            let what = format!("{opt} unix:{}", path.display());
            (
                socket_link(Target::Unix(path.clone()), *server, &what)?,
                *buffer,
            )
        }
        ComSpec::Tcp {
            host,
            port,
            server,
            buffer,
        } => {
            let addr = resolve(host, *port).with_context(|| format!("{opt} tcp:{host}:{port}"))?;
            let what = format!("{opt} tcp:{host}:{port}");
            (socket_link(Target::Tcp(addr), *server, &what)?, *buffer)
        }
        ComSpec::Rfc2217 { host, port, buffer } => {
            let addr =
                resolve(host, *port).with_context(|| format!("{opt} rfc2217:{host}:{port}"))?;
            (
                Link::Client {
                    target: Target::Tcp(addr),
                    rfc2217: true,
                },
                *buffer,
            )
        }
    })
}
