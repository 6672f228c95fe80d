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
}

/// The configured ports, their event-loop halves, and the terminal state
/// to restore.
pub struct ComPorts {
    pub ports: Vec<ComPort>,
    pub loops: Vec<Arc<Mutex<PortLoop>>>,
    pub raw_mode: Option<RawModeGuard>,
}

/// Checks the ports as a whole: one terminal, one port per listening
/// address.
pub fn check_specs(specs: &[ComSpec; 4]) -> Result<(), String> {
    let stdio: Vec<_> = (0..4).filter(|&i| specs[i] == ComSpec::Stdio).collect();
    if stdio.len() > 1 {
        return Err(format!(
            "--com{} and --com{} are both stdio; only one port can use the terminal",
            stdio[0] + 1,
            stdio[1] + 1
        ));
    }
    Ok(())
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
    /// sockets: their errors stop rehost before the guest starts) and
    /// builds the UARTs. Client connections start on the event loop.
    pub fn start(specs: &[ComSpec; 4], host_requests: &Arc<MachineEvents>) -> anyhow::Result<Self> {
        check_specs(specs).map_err(|e| anyhow!(e))?;
        let mut ports = Vec::new();
        let mut loops = Vec::new();
        let mut raw_mode = None;
        for (index, spec) in specs.iter().enumerate() {
            let name = format!("COM{}", index + 1);
            let opt = format!("--com{}", index + 1);
            let (link, buffer) = match spec {
                ComSpec::None => continue,
                ComSpec::Null => {
                    ports.push(ComPort {
                        index,
                        // The interrupt line is connected when the machine is built.
                        uart: Arc::new(Mutex::new(Uart16550::new(
                            RecordingIrq::new(),
                            Box::new(NullBackend),
                        ))),
                    });
                    continue;
                }
                ComSpec::Stdio => {
                    raw_mode = RawModeGuard::enable(0);
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
                    let (master, path) =
                        termios::open_pty().with_context(|| format!("{opt} pty"))?;
                    eprintln!("rehost: {name} is {path}");
                    (Link::Pty { master, path }, *buffer)
                }
                ComSpec::Tty { device, buffer } => {
                    let fd = termios::open_serial_port(device)
                        .with_context(|| format!("{opt} tty:{}", device.display()))?;
                    (
                        Link::Tty {
                            device: device.clone(),
                            fd: Some(fd),
                        },
                        *buffer,
                    )
                }
                ComSpec::Unix {
                    path,
                    server,
                    buffer,
                } => {
                    let target = Target::Unix(path.clone());
                    let link = if *server {
                        let listener = Listener::bind(&target).with_context(|| {
                            format!("{opt} unix:{}: cannot listen", path.display())
                        })?;
                        Link::Server { listener }
                    } else {
                        Link::Client {
                            target,
                            rfc2217: false,
                        }
                    };
                    (link, *buffer)
                }
                ComSpec::Tcp {
                    host,
                    port,
                    server,
                    buffer,
                } => {
                    let addr =
                        resolve(host, *port).with_context(|| format!("{opt} tcp:{host}:{port}"))?;
                    let target = Target::Tcp(addr);
                    let link = if *server {
                        let listener = Listener::bind(&target)
                            .with_context(|| format!("{opt} tcp:{host}:{port}: cannot listen"))?;
                        Link::Server { listener }
                    } else {
                        Link::Client {
                            target,
                            rfc2217: false,
                        }
                    };
                    (link, *buffer)
                }
                ComSpec::Rfc2217 { host, port, buffer } => {
                    let addr = resolve(host, *port)
                        .with_context(|| format!("{opt} rfc2217:{host}:{port}"))?;
                    (
                        Link::Client {
                            target: Target::Tcp(addr),
                            rfc2217: true,
                        },
                        *buffer,
                    )
                }
            };
            let shared = PortShared::new(buffer)?;
            let uart = Arc::new(Mutex::new(Uart16550::new(
                RecordingIrq::new(),
                Box::new(QueueBackend::new(shared.clone())),
            )));
            let lp = PortLoop::new(name, uart.clone(), shared, link)?;
            loops.push(Arc::new(Mutex::new(lp)));
            ports.push(ComPort { index, uart });
        }
        Ok(Self {
            ports,
            loops,
            raw_mode,
        })
    }
}
